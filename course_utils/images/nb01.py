"""Images of notebook 01: the four freezing strategies, and where training memory goes."""

from matplotlib.patches import Rectangle

from course_utils.images import figure
from course_utils.images._draw import box, canvas

TRAIN, FROZEN, TIED = "#f9c784", "#cfe2f3", "#e8e8e8"


@figure("01_freezing_strategies.png")
def freezing_strategies():
    """Full, last-N blocks, LM head only and norms only: which parts of a decoder get gradients."""
    fig, ax = canvas(11, 5.2)
    parts = ["embeddings", "block 1", "block 2", "⋮", "block 29", "block 30", "final norm", "LM head"]
    columns = {
        "full": set(parts),
        "last N = 2 blocks": {"block 29", "block 30", "final norm"},
        "LM head only\n(untied copy)": {"LM head"},
        "norms only": set(),
    }
    for c, (title, trained) in enumerate(columns.items()):
        x = 0.3 + c * 2.7
        ax.text(x + 1.1, 4.95, title, ha="center", va="top", fontsize=10, weight="bold")
        for k, part in enumerate(parts):
            y = 0.2 + k * 0.52
            if part == "⋮":
                ax.text(x + 1.1, y + 0.2, "⋮", ha="center", va="center", fontsize=12)
                continue
            color = TRAIN if part in trained else FROZEN
            box(ax, x, y, 2.2, 0.38, part, color, 8)
            if title == "norms only" and part.startswith(("block", "final")):
                # the two RMSNorm weight vectors of a block (or the final norm) are the trained slivers
                for dx in ((0.05, 1.95) if part.startswith("block") else (0.05,)):
                    ax.add_patch(Rectangle((x + dx, y + 0.02), 0.18, 0.34, fc=TRAIN, ec="#333333", lw=0.6))
    box(ax, 3.0, -0.45, 1.0, 0.3, "trains", TRAIN, 8)
    box(ax, 4.3, -0.45, 1.0, 0.3, "frozen", FROZEN, 8)
    ax.text(5.5, -0.3, "input at the bottom, output at the top · SmolLM2 ties the head to the embeddings",
            va="center", fontsize=8, style="italic")
    ax.set_ylim(-0.6, 5.0)
    return fig


@figure("01_memory_parts.png")
def memory_parts():
    """Bytes per parameter for full fine-tuning, LoRA and QLoRA (schematic, to scale in bytes)."""
    fig, ax = canvas(11, 3.8)
    scale, x0 = 0.42, 2.45  # inches of drawing per byte, left edge of the bars
    rows = [
        ("full FT (bf16 + AdamW)", [("weights 2", 2, "#9fc5e8"), ("grads 2", 2, "#b6d7a8"),
                                    ("fp32 master 4", 4, "#ffe599"), ("Adam m 4", 4, "#f9cb9c"),
                                    ("Adam v 4", 4, "#f4cccc")], "= 16 B / parameter"),
        ("LoRA (bf16 base)", [("weights 2", 2, "#9fc5e8"), ("", 0.2, "#d9d2e9")],
         "≈ 2 B + adapters (~1 % of params × 16 B)"),
        ("QLoRA (NF4 base)", [("", 0.52, "#9fc5e8"), ("", 0.2, "#d9d2e9")],
         "≈ 0.52 B (4-bit + block constants) + adapters"),
    ]
    for k, (label, segments, note) in enumerate(rows):
        y = 2.75 - k * 0.95
        ax.text(x0 - 0.15, y + 0.25, label, ha="right", va="center", fontsize=9, weight="bold")
        x = x0
        for text, nbytes, color in segments:
            box(ax, x, y, nbytes * scale - 0.05, 0.5, text, color, 7)
            x += nbytes * scale
        ax.text(x + 0.15, y + 0.25, note, va="center", fontsize=8)
    ax.text(5.5, 0.25, "+ activations for every method: they grow with batch × sequence length, not with the "
            "number of trainable parameters", ha="center", fontsize=8, style="italic")
    ax.text(5.5, -0.05, "fp32 training (this notebook on CPU): weights 4 + grads 4 + Adam m 4 + v 4 — also 16 B",
            ha="center", fontsize=8, style="italic")
    ax.set_ylim(-0.2, 3.8)
    return fig
