"""Small drawing helpers shared by the concept images (boxes, arrows)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch


def canvas(width: float = 9, height: float = 3):
    """A blank figure with a 0..width × 0..height data box and no axes."""
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    return fig, ax


def box(ax, x: float, y: float, w: float, h: float, text: str, color: str = "#dbe9f6", fontsize: int = 9):
    """A rounded box centred text at (x, y) lower-left, size w × h."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="#333333", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize, wrap=True)


def arrow(ax, x0: float, y0: float, x1: float, y1: float, text: str = "") -> None:
    """An arrow from (x0, y0) to (x1, y1) with an optional label at its middle."""
    ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", lw=1.3, color="#333333"))
    if text:
        ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", fontsize=8, color="#555555")
