"""Images of notebook 02: where each PEFT method acts, the bottleneck adapter, two adapters on one base."""

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas

FROZEN, TRAIN, NOTE = "#cfe2f3", "#f9c784", "#eee0f7"


@figure("02_peft_family.png")
def peft_family():
    """A decoder block with the place each PEFT method trains marked beside it."""
    fig, ax = canvas(11, 6.2)
    # the frozen model, bottom to top
    stack = [("tokens → embeddings", 0.3), ("RMSNorm → attention (q, k, v, o)", 1.5),
             ("+ residual", 2.55), ("RMSNorm → MLP (gate, up, down)", 3.35), ("+ residual", 4.4),
             ("… × 30 blocks → LM head", 5.2)]
    for text, y in stack:
        box(ax, 3.6, y, 3.6, 0.55, text, FROZEN, 8)
    for y0, y1 in [(0.85, 1.5), (2.05, 2.55), (3.1, 3.35), (3.9, 4.4), (4.95, 5.2)]:
        arrow(ax, 5.4, y0, 5.4, y1)
    # what each method trains
    notes = [
        (0.2, 0.1, "prompt tuning / P-tuning:\nn trainable virtual tokens\nprepended to the input"),
        (0.2, 1.45, "prefix tuning: trainable keys\nand values of n virtual tokens\nin every layer's attention"),
        (7.6, 1.1, "LoRA / DoRA: W + (α/r)·B·A\nbeside q, k, v, o, gate, up, down\n(DoRA: + magnitude per output)"),
        (7.6, 2.35, "IA3: learned scaling vectors\nfor keys, values and the\nMLP's down-projection input"),
        (7.6, 3.6, "bottleneck adapter: small\nresidual MLP after attention\nand after the MLP"),
        (0.2, 3.9, "prompt design: no training —\nonly the words of the prompt\n(zero-shot / few-shot)"),
    ]
    for x, y, text in notes:
        box(ax, x, y, 3.1, 0.95, text, TRAIN if "no training" not in text else NOTE, 8)
    arrow(ax, 3.3, 0.55, 3.6, 0.55)
    arrow(ax, 3.3, 1.9, 3.6, 1.8)
    arrow(ax, 7.6, 1.5, 7.2, 1.7)     # LoRA → attention and MLP projections
    arrow(ax, 7.6, 1.7, 7.2, 3.5)
    arrow(ax, 7.6, 2.7, 7.2, 1.9)     # IA3 → attention and MLP
    arrow(ax, 7.6, 2.9, 7.2, 3.7)
    arrow(ax, 7.6, 4.0, 5.5, 2.3)     # adapter → after attention and after the MLP (before each +)
    arrow(ax, 7.6, 4.3, 5.5, 4.15)
    ax.text(5.4, 6.05, "frozen model (blue) · what each method trains (orange)", ha="center", fontsize=9,
            style="italic")
    return fig


@figure("02_adapter_placement.png")
def adapter_placement():
    """Where the two adapters of a block sit, and what one adapter computes."""
    fig, ax = canvas(11, 4.4)
    # one decoder block, left to right
    labels = ["x", "RMSNorm", "attention", "adapter", "+", "RMSNorm", "MLP", "adapter", "+", "next block"]
    xs = [0.1 + k * 1.08 for k in range(len(labels))]
    for x, text in zip(xs, labels):
        box(ax, x, 3.0, 0.86, 0.6, text, TRAIN if text == "adapter" else FROZEN, 8)
    for x0, x1 in zip(xs, xs[1:]):
        arrow(ax, x0 + 0.9, 3.3, x1 - 0.04, 3.3)
    for a, b in [(0, 4), (4, 8)]:  # the residual connections skip norm, sub-layer and adapter
        ax.annotate("", xy=(xs[b] + 0.43, 3.65), xytext=(xs[a] + 0.43, 3.65),
                    arrowprops=dict(arrowstyle="->", lw=1, color="#777777", connectionstyle="arc3,rad=-0.2"))
    ax.text(xs[2] + 0.43, 4.05, "residual", ha="center", fontsize=8, color="#555555")
    ax.text(xs[6] + 0.43, 4.05, "residual", ha="center", fontsize=8, color="#555555")
    # inside one adapter
    ax.text(5.5, 2.35, "inside one adapter (hidden d = 576, bottleneck b)", ha="center", fontsize=9, weight="bold")
    box(ax, 1.6, 0.9, 1.2, 0.7, "h\n(B, T, d)", FROZEN, 8)
    box(ax, 3.4, 0.9, 1.6, 0.7, "down\nd → b", TRAIN, 8)
    box(ax, 5.5, 0.9, 1.0, 0.7, "GELU", TRAIN, 8)
    box(ax, 7.0, 0.9, 1.6, 0.7, "up  b → d\nstarts at 0", TRAIN, 8)
    box(ax, 9.1, 0.9, 1.1, 0.7, "h + ·", FROZEN, 8)
    for x0, x1 in [(2.8, 3.4), (5.0, 5.5), (6.5, 7.0), (8.6, 9.1)]:
        arrow(ax, x0, 1.25, x1, 1.25)
    ax.annotate("", xy=(9.65, 0.9), xytext=(2.2, 0.9),
                arrowprops=dict(arrowstyle="->", lw=1, color="#777777", connectionstyle="arc3,rad=0.2"))
    ax.text(5.9, 0.05, "residual: with up = 0 the adapter returns h exactly, so training starts from the "
            "pretrained model", ha="center", fontsize=8, style="italic")
    return fig


@figure("02_multi_adapter.png")
def multi_adapter():
    """One base model in memory, small task adapters switched per request."""
    fig, ax = canvas(10, 3.4)
    box(ax, 3.6, 1.2, 2.8, 0.9, "base model (frozen)\nloaded once", FROZEN, 9)
    box(ax, 0.2, 1.2, 2.6, 0.9, "adapter 'x2'\n(coffee-machine Q&A)\na few MB", TRAIN, 8)
    box(ax, 7.2, 2.2, 2.6, 0.9, "adapter 'math'\n(arithmetic)\na few MB", TRAIN, 8)
    box(ax, 7.2, 0.2, 2.6, 0.9, "the next task's\nadapter …", TRAIN, 8)
    arrow(ax, 2.8, 1.65, 3.6, 1.65)
    arrow(ax, 7.2, 2.6, 6.4, 1.95)
    arrow(ax, 7.2, 0.7, 6.4, 1.35)
    ax.text(3.2, 2.25, "set_adapter('x2')", ha="center", fontsize=8, color="#555555")
    ax.text(6.3, 2.6, "set_adapter('math')", ha="center", fontsize=8, color="#555555")
    ax.text(6.1, 0.65, "load_adapter(path, name)", ha="center", fontsize=8, color="#555555")
    ax.text(5.0, 3.2, "switching an adapter swaps a few MB of weights, never the base model", ha="center",
            fontsize=8, style="italic")
    return fig
