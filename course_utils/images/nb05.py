"""Images of notebook 05: sparsity patterns, and MLP channels sliced away."""

import numpy as np
from matplotlib.patches import Rectangle

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas

_KEPT, _ZERO, _GONE = "#4c72b0", "#f0f0f0", "#ffffff"


def _grid(ax, x0: float, y0: float, mask: np.ndarray, cell: float = 0.28, removed_rows=()) -> None:
    """Draw a matrix as cells: blue = kept weight, light grey = zero, dashed = removed row."""
    rows, cols = mask.shape
    for r in range(rows):
        for c in range(cols):
            y = y0 + (rows - 1 - r) * cell
            if r in removed_rows:
                ax.add_patch(Rectangle((x0 + c * cell, y), cell, cell, fc=_GONE, ec="#bbbbbb", lw=0.6, ls="--"))
            else:
                ax.add_patch(Rectangle((x0 + c * cell, y), cell, cell, fc=_KEPT if mask[r, c] else _ZERO,
                                       ec="white", lw=0.8))


@figure("05_sparsity_patterns.png")
def sparsity_patterns():
    """Dense, unstructured, structured (rows) and 2:4 sparsity on the same 8×8 matrix."""
    rng = np.random.default_rng(3)
    w = np.abs(rng.normal(size=(8, 8)))
    dense = np.ones_like(w, dtype=bool)
    unstructured = w > np.median(w)
    row_norm = np.linalg.norm(w, axis=1)
    gone = set(np.argsort(row_norm)[:4].tolist())
    structured = np.ones_like(w, dtype=bool)
    groups = w.reshape(8, 2, 4)
    two_four = np.zeros_like(groups, dtype=bool)
    top2 = np.argsort(-groups, axis=-1)[..., :2]
    np.put_along_axis(two_four, top2, True, axis=-1)
    two_four = two_four.reshape(8, 8)

    fig, ax = canvas(12, 4.2)
    panels = [("dense", dense, (), "all weights"),
              ("unstructured 50 %", unstructured, (), "smallest |w| anywhere → 0\nsame shape, needs indices"),
              ("structured 50 % (rows)", structured, gone, "whole rows removed\nmatrix really shrinks"),
              ("2:4 semi-structured", two_four, (), "2 of every 4 kept (dotted: group edge)\nGPU sparse tensor cores")]
    for i, (title, mask, removed, note) in enumerate(panels):
        x0 = 0.4 + i * 2.95
        _grid(ax, x0, 1.1, mask, removed_rows=removed)
        ax.text(x0 + 1.12, 3.55, title, ha="center", fontsize=10, weight="bold")
        ax.text(x0 + 1.12, 0.35, note, ha="center", fontsize=8.5, color="#444444")
    for x in (0.4 + 3 * 2.95 + 1.12,):
        ax.plot([x, x], [1.1, 3.34], color="#d62728", lw=1.2, ls=":")
    return fig


@figure("05_mlp_slicing.png")
def mlp_slicing():
    """A Llama MLP: channel i = row i of gate and up, column i of down; slicing removes all three."""
    fig, ax = canvas(11, 3.6)
    box(ax, 0.2, 1.4, 1.2, 0.8, "x\n(d = 576)", "#fde9c9")
    box(ax, 2.0, 2.2, 2.2, 0.8, "gate_proj  (I, d)\nrow i", "#dbe9f6")
    box(ax, 2.0, 0.6, 2.2, 0.8, "up_proj  (I, d)\nrow i", "#dbe9f6")
    box(ax, 4.9, 1.4, 2.2, 0.8, "h = silu(gate·x) ⊙ up·x\n(I = 1536 channels)", "#d9f2d9")
    box(ax, 7.8, 1.4, 2.2, 0.8, "down_proj  (d, I)\ncolumn i", "#dbe9f6")
    arrow(ax, 1.4, 1.8, 2.0, 2.6)
    arrow(ax, 1.4, 1.8, 2.0, 1.0)
    arrow(ax, 4.2, 2.6, 4.9, 1.9)
    arrow(ax, 4.2, 1.0, 4.9, 1.7)
    arrow(ax, 7.1, 1.8, 7.8, 1.8)
    ax.text(5.5, 3.25, "prune channel i  ⇒  delete row i of gate and up + column i of down", ha="center",
            fontsize=10, weight="bold", color="#d62728")
    ax.text(5.5, 0.15, "masking = same shapes with zeros (no speed-up) · slicing = (k, d), (k, d), (d, k): "
            "same output, less work", ha="center", fontsize=9, style="italic")
    return fig
