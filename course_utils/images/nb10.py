"""Images of notebook 10: data parallel vs sharded training."""

from course_utils.images import figure
from course_utils.images._draw import box, canvas


@figure("10_ddp_vs_sharded.png")
def ddp_vs_sharded():
    """Two GPUs: DDP replicates every state, ZeRO-3/FSDP full shard splits all of them."""
    fig, ax = canvas(10, 3.6)
    colors = {"W": "#dbe9f6", "G": "#fde9c9", "O": "#f7d9d9"}
    ax.text(2.4, 3.35, "DDP: every GPU holds everything", ha="center", fontsize=10, weight="bold")
    ax.text(7.5, 3.35, "ZeRO-3 / FSDP full shard: each GPU holds 1/N", ha="center", fontsize=10, weight="bold")
    for g, x0 in enumerate((0.2, 2.6)):
        ax.text(x0 + 1.0, 2.95, f"GPU {g}", ha="center", fontsize=9)
        for i, (k, label) in enumerate((("W", "weights"), ("G", "gradients"), ("O", "optimizer (Adam m, v, fp32)"))):
            box(ax, x0, 2.1 - i * 0.75, 2.0, 0.55, label, colors[k], 8)
    for g, x0 in enumerate((5.4, 7.8)):
        ax.text(x0 + 1.0, 2.95, f"GPU {g}", ha="center", fontsize=9)
        for i, (k, label) in enumerate((("W", "weights"), ("G", "gradients"), ("O", "optimizer"))):
            box(ax, x0, 2.1 - i * 0.75, 1.0, 0.55, f"{label}\nhalf {g + 1}", colors[k], 7)
    ax.text(5, 0.05, "Sharded states are gathered layer by layer when needed: less memory, more communication",
            ha="center", fontsize=9, style="italic")
    return fig
