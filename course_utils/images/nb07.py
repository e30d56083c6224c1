"""Images of notebook 07: what QLoRA keeps in 4-bit and what it trains, and the lesson's pipeline."""

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas


@figure("07_qlora.png")
def qlora():
    """One QLoRA layer: frozen NF4 weight dequantized on the fly, plus a trainable 16-bit LoRA path."""
    fig, ax = canvas(10, 4.2)
    box(ax, 0.2, 1.7, 1.4, 0.8, "x\n(16-bit)", "#fde9c9")
    box(ax, 2.4, 2.7, 2.6, 1.1, "W in NF4 (frozen)\n4 bits + block scales\n≈ 0.52 byte / weight", "#dbe9f6", 8)
    box(ax, 5.5, 2.7, 1.9, 1.1, "dequantize\nto 16-bit\n(every forward)", "#eeeeee", 8)
    box(ax, 2.4, 0.3, 1.7, 1.0, "A  (r × d_in)\ntrainable", "#d9f2d9", 8)
    box(ax, 4.5, 0.3, 1.7, 1.0, "B  (d_out × r)\ntrainable, starts 0", "#d9f2d9", 8)
    box(ax, 6.6, 0.3, 1.1, 1.0, "× α / r", "#d9f2d9", 8)
    box(ax, 8.2, 1.7, 1.6, 0.8, "h = W x\n  + (α/r) B A x", "#eee0f7", 8)
    arrow(ax, 1.6, 2.3, 2.4, 3.2)
    arrow(ax, 5.0, 3.25, 5.5, 3.25)
    arrow(ax, 7.4, 3.2, 8.3, 2.5)
    arrow(ax, 1.6, 1.9, 2.4, 0.8)
    arrow(ax, 4.1, 0.8, 4.5, 0.8)
    arrow(ax, 6.2, 0.8, 6.6, 0.8)
    arrow(ax, 7.7, 0.8, 8.4, 1.7)
    ax.text(5.0, 2.2, "gradients flow through W (to reach earlier layers) but only A and B are updated",
            ha="center", fontsize=8, style="italic", color="#555555")
    return fig


@figure("07_pipeline.png")
def pipeline():
    """The lesson: data → 4-bit base + LoRA → SFT on Korean tokens → adapter → reload / merge → chrF."""
    fig, ax = canvas(10.5, 3.2)
    box(ax, 0.1, 1.9, 1.9, 0.9, "EN→KO pairs\nchat format\n(system + user)", "#fde9c9", 8)
    box(ax, 0.1, 0.4, 1.9, 0.9, "4-bit base\n+ LoRA (r, α)", "#dbe9f6", 8)
    box(ax, 2.7, 1.15, 2.0, 0.9, "SFTTrainer\nloss on Korean\ntokens only", "#d9f2d9", 8)
    box(ax, 5.3, 1.9, 1.9, 0.9, "adapter\n(a few MB)", "#eee0f7", 8)
    box(ax, 5.3, 0.4, 1.9, 0.9, "merged 16-bit\nmodel (deploy)", "#eee0f7", 8)
    box(ax, 7.9, 1.9, 2.4, 0.9, "fresh 4-bit base\n+ adapter → stream", "#dbe9f6", 8)
    box(ax, 7.9, 0.4, 2.4, 0.9, "before vs after:\nchrF on the test split", "#f7d9d9", 8)
    arrow(ax, 2.0, 2.35, 2.7, 1.75)
    arrow(ax, 2.0, 0.85, 2.7, 1.45)
    arrow(ax, 4.7, 1.6, 5.3, 2.3)
    arrow(ax, 6.25, 1.9, 6.25, 1.3, "merge")
    arrow(ax, 7.2, 2.35, 7.9, 2.35, "reload")
    arrow(ax, 9.1, 1.9, 9.1, 1.3)
    return fig
