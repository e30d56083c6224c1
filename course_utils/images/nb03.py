"""Images of notebook 03 (LoRA math): the LoRA layer W₀ + (α/r)·B·A, and merging/unmerging."""

from matplotlib.patches import Polygon

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas

FROZEN, TRAIN, DATA, SUM = "#dbe9f6", "#f7d9d9", "#fde9c9", "#d9f2d9"


def _trapezoid(ax, x: float, y: float, w: float, h_wide: float, h_narrow: float, narrowing: bool, text: str,
               color: str) -> None:
    """A trapezoid from (x, y) of width w: wide→narrow (A, down-projection) or narrow→wide (B)."""
    yc = y + h_wide / 2
    left, right = (h_wide, h_narrow) if narrowing else (h_narrow, h_wide)
    pts = [(x, yc - left / 2), (x + w, yc - right / 2), (x + w, yc + right / 2), (x, yc + left / 2)]
    ax.add_patch(Polygon(pts, closed=True, fc=color, ec="#333333", lw=1))
    ax.text(x + w / 2, yc, text, ha="center", va="center", fontsize=9)


@figure("03_lora_diagram.png")
def lora_diagram():
    """x goes through the frozen W₀ and, in parallel, through A (d_in→r) and B (r→d_out), scaled by α/r."""
    fig, ax = canvas(10, 4.2)
    box(ax, 0.2, 1.7, 1.2, 0.8, "x\n(…, d_in)", DATA)
    box(ax, 3.0, 2.9, 3.0, 0.9, "W₀  (d_out × d_in)\nfrozen — requires_grad=False", FROZEN)
    _trapezoid(ax, 2.6, 0.25, 1.5, 1.6, 0.45, True, "A\n(r × d_in)\nrandom", TRAIN)
    _trapezoid(ax, 4.6, 0.25, 1.5, 1.6, 0.45, False, "B\n(d_out × r)\nzero", TRAIN)
    arrow(ax, 4.1, 1.05, 4.6, 1.05)
    ax.text(4.35, 1.3, "(…, r)", ha="center", fontsize=8, style="italic")
    box(ax, 6.55, 0.75, 0.95, 0.6, "× α/r", SUM)
    box(ax, 7.9, 1.75, 0.7, 0.7, "+", SUM, 14)
    box(ax, 8.95, 1.7, 0.95, 0.8, "h\n(…, d_out)", DATA)
    arrow(ax, 1.4, 2.25, 3.0, 3.3)
    arrow(ax, 1.4, 1.95, 2.6, 1.05)
    arrow(ax, 6.1, 1.05, 6.55, 1.05)
    arrow(ax, 6.0, 3.3, 7.95, 2.4, "W₀·x")
    arrow(ax, 7.5, 1.1, 7.95, 1.8, "")
    arrow(ax, 8.6, 2.1, 8.95, 2.1)
    ax.text(5.0, 0.0, "trainable: r·(d_in + d_out) numbers instead of d_in·d_out", ha="center", fontsize=9,
            style="italic")
    ax.text(5.0, 4.05, "h = W₀·x + (α/r)·B·A·x      ΔW = (α/r)·B·A has rank ≤ r;  B = 0 ⇒ ΔW = 0 at step 0",
            ha="center", fontsize=10)
    return fig


@figure("03_merge.png")
def merge_diagram():
    """Merge: fold ΔW into W₀ for inference; unmerge: subtract it again."""
    fig, ax = canvas(10, 3.0)
    box(ax, 0.2, 1.1, 2.2, 0.9, "W₀ frozen\n+ A, B (unmerged)\n2 matmul paths", FROZEN)
    box(ax, 3.9, 1.1, 2.4, 0.9, "merge():\nW ← W₀ + (α/r)·B·A", SUM)
    box(ax, 7.7, 1.1, 2.1, 0.9, "one nn.Linear\nsame speed as W₀\n(adapter baked in)", FROZEN)
    arrow(ax, 2.4, 1.7, 3.9, 1.7, "training done")
    arrow(ax, 6.3, 1.7, 7.7, 1.7, "serve")
    arrow(ax, 7.7, 1.25, 6.3, 1.25)
    ax.text(7.0, 0.85, "unmerge(): W ← W − (α/r)·B·A", ha="center", fontsize=8, color="#555555")
    ax.text(5.0, 0.25, "merged and unmerged outputs agree up to float rounding; keep W₀ to swap adapters",
            ha="center", fontsize=9, style="italic")
    return fig
