"""One plot style for the course: loss curves and comparison bars.

    >>> fig = plot_losses({"full": [2.0, 1.6, 1.3], "LoRA": [2.0, 1.8, 1.6]})   # e.g. train(...).losses
    >>> [line.get_label() for line in fig.axes[0].lines]
    ['full', 'LoRA']
    >>> fig = plot_bars({"fp32": 538.0, "nf4": 166.4}, ylabel="MB", title="Footprint")
    >>> [t.get_text() for t in fig.axes[0].texts]       # each bar's value written on it (fmt "{:.3g}")
    ['538', '166']
    >>> plt.close("all")
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def use_style() -> None:
    """Apply the course style (called on import; safe to call again)."""
    plt.rcParams.update({
        "figure.figsize": (7, 3.6), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "axes.prop_cycle": plt.cycler(color=PALETTE),
        "font.size": 10, "legend.frameon": False,
        # Korean labels: use an installed CJK font when there is one, else the default
        "font.family": ["DejaVu Sans"],
    })


def smooth(values: list[float], k: int = 1) -> list[float]:
    """Trailing moving average over ``k`` points (k=1 returns the values).

    >>> smooth([1.0, 2.0, 3.0, 4.0], k=2)
    [1.0, 1.5, 2.5, 3.5]
    """
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_losses(histories: dict[str, list[float]], title: str = "Training loss", xlabel: str = "step",
                ylabel: str = "loss", smooth_k: int = 1, logy: bool = False, ax=None):
    """Loss curves, one line per run; returns the figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    for name, values in histories.items():
        ax.plot(range(1, len(values) + 1), smooth(list(values), smooth_k), label=name, lw=1.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return fig


def wrap_label(name: str, width: int = 16) -> str:
    """A tick label broken at " · " and wrapped to ``width`` characters per line.

    >>> wrap_label("add_many(100) · synchronous=FULL")
    'add_many(100)\\nsynchronous=FULL'
    """
    return "\n".join(textwrap.fill(part, width) for part in name.split(" · "))


def overlapping_ticks(ax) -> bool:
    """Whether any two x tick labels of ``ax`` overlap once drawn."""
    ax.figure.canvas.draw()
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def plot_bars(values: dict[str, float], ylabel: str = "", title: str = "", fmt: str = "{:.3g}",
              logy: bool = False, ax=None):
    """A labelled bar chart of ``values`` (name → number); returns the figure.

    Long names are wrapped; if labels still overlap they stand upright (checked on the drawn figure).
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots()
    names = list(values)
    bars = ax.bar(range(len(names)), [values[n] for n in names],
                  color=PALETTE[: len(names)] * (len(names) // 10 + 1))
    ax.set_xticks(range(len(names)), [wrap_label(n) for n in names])
    for b in bars:
        ax.annotate(fmt.format(b.get_height()), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    fig.tight_layout()
    if overlapping_ticks(ax):
        ax.tick_params(axis="x", rotation=90)
        fig.tight_layout()
    return fig


use_style()
