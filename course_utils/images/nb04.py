"""Images of notebook 04: symmetric vs asymmetric mapping, NF4 blocks with double quantization, PTQ vs QAT."""

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas


def _number_line(ax, y, x0, x1, ticks, labels, color="#333333"):
    """A horizontal axis from x0 to x1 at height y with labelled ticks."""
    ax.plot([x0, x1], [y, y], color=color, lw=1.4)
    for t, lab in zip(ticks, labels):
        ax.plot([t, t], [y - 0.07, y + 0.07], color=color, lw=1.2)
        ax.text(t, y - 0.22, lab, ha="center", va="top", fontsize=8)


@figure("04_sym_vs_asym.png")
def sym_vs_asym():
    """Real values mapped onto an 8-bit grid: symmetric (absmax, zero = 0) vs asymmetric (min/max, zero-point)."""
    fig, ax = canvas(10, 4.4)
    ax.text(0.1, 4.15, "symmetric (absmax): scale = max|x| / 127, zero = 0", fontsize=10, weight="bold")
    _number_line(ax, 3.3, 0.8, 9.2, [0.8, 2.6, 5.0, 9.2], ["−max|x|", "min x", "0", "max x = max|x|"])
    ax.axvspan(0.8, 2.6, ymin=0.70, ymax=0.80, color="#f7d9d9")
    ax.text(1.7, 3.55, "codes never used", ha="center", fontsize=8, color="#b03030")
    _number_line(ax, 2.45, 0.8, 9.2, [0.8, 5.0, 9.2], ["−127", "0", "127"], "#1f77b4")
    for x_real, x_int in [(2.6, 2.6), (5.0, 5.0), (9.2, 9.2)]:
        ax.annotate("", xy=(x_int, 2.52), xytext=(x_real, 3.23), arrowprops=dict(arrowstyle="->", color="#777777"))
    ax.text(0.1, 1.75, "asymmetric (min/max): scale = (max − min) / 255, zero-point z = −round(min / scale)",
            fontsize=10, weight="bold")
    _number_line(ax, 1.05, 0.8, 9.2, [0.8, 3.0, 9.2], ["min x", "0", "max x"])
    _number_line(ax, 0.3, 0.8, 9.2, [0.8, 3.0, 9.2], ["0", "z", "255"], "#2ca02c")
    for x in (0.8, 3.0, 9.2):
        ax.annotate("", xy=(x, 0.37), xytext=(x, 0.98), arrowprops=dict(arrowstyle="->", color="#777777"))
    ax.text(6.1, 0.62, "all 256 codes cover the data", ha="center", fontsize=8, color="#2c7a2c")
    return fig


@figure("04_nf4_double_quant.png")
def nf4_double_quant():
    """NF4 storage: 4-bit codes per block of 64, fp32 absmax per block, then double quantization of the absmax."""
    fig, ax = canvas(10, 4.2)
    ax.text(0.1, 3.95, "a weight matrix, flattened", fontsize=9, style="italic")
    colors = ["#dbe9f6", "#d9f2d9", "#fde9c9", "#eee0f7"]
    for i in range(4):
        box(ax, 0.2 + i * 1.9, 3.1, 1.7, 0.55, f"block {i + 1}: 64 weights\n→ 64 × 4-bit NF4 codes", colors[i], 7)
    ax.text(7.95, 3.35, "…", fontsize=14)
    for i in range(4):
        box(ax, 0.55 + i * 1.9, 2.05, 1.0, 0.5, "absmax\nfp32", colors[i], 7)
        arrow(ax, 1.05 + i * 1.9, 3.05, 1.05 + i * 1.9, 2.6)
    ax.text(8.3, 2.3, "32 bits / 64 weights\n= 0.5 bit per weight", fontsize=8)
    box(ax, 0.4, 0.75, 7.2, 0.6, "double quantization: 256 absmax values − their mean → 256 × 8-bit codes "
        "+ 1 fp32 constant", "#f7d9d9", 8)
    for i in range(4):
        arrow(ax, 1.05 + i * 1.9, 2.0, 1.05 + i * 1.9, 1.4)
    ax.text(7.8, 0.8, "8/64 + 32/(64·256)\n= 0.127 bit per weight", fontsize=8)
    ax.text(5.0, 0.15, "bits per weight: 4 + 0.5 = 4.5 without, 4 + 0.127 ≈ 4.127 with double quantization",
            ha="center", fontsize=9, weight="bold")
    return fig


@figure("04_ptq_vs_qat.png")
def ptq_vs_qat():
    """PTQ rounds a trained model once; QAT trains through fake quantization with a straight-through gradient."""
    fig, ax = canvas(10, 3.8)
    ax.text(0.1, 3.5, "PTQ — post-training quantization", fontsize=10, weight="bold")
    box(ax, 0.2, 2.55, 2.3, 0.6, "train in fp32", "#dbe9f6")
    box(ax, 3.4, 2.55, 2.6, 0.6, "round weights once\n(scale from min/max)", "#fde9c9", 8)
    box(ax, 6.9, 2.55, 2.8, 0.6, "deploy: errors land\nwhere they land", "#f7d9d9", 8)
    arrow(ax, 2.5, 2.85, 3.4, 2.85)
    arrow(ax, 6.0, 2.85, 6.9, 2.85)
    ax.text(0.1, 1.85, "QAT — quantization-aware training", fontsize=10, weight="bold")
    box(ax, 0.2, 0.55, 2.3, 0.9, "fp32 latent\nweights W", "#dbe9f6")
    box(ax, 3.4, 0.85, 2.6, 0.6, "forward: Ŵ = dequant(quant(W))", "#fde9c9", 8)
    box(ax, 3.4, 0.05, 2.6, 0.6, "backward: ∂L/∂W ≈ ∂L/∂Ŵ\n(straight-through)", "#eee0f7", 8)
    box(ax, 6.9, 0.45, 2.8, 0.7, "deploy Ŵ: the loss already\nsaw the rounding", "#d9f2d9", 8)
    arrow(ax, 2.5, 1.15, 3.4, 1.15)
    arrow(ax, 3.4, 0.35, 2.5, 0.8)
    arrow(ax, 6.0, 1.1, 6.9, 0.85)
    return fig
