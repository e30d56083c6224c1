"""The course's plots stay readable: bar labels never overlap, whatever their length."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_utils.core.plots import overlapping_ticks, plot_bars, wrap_label  # noqa: E402

NB09_WRITES = {"add() · synchronous=NORMAL": 2.1e4, "add() · synchronous=FULL": 310.0,
               "add_many(100) · synchronous=FULL": 4.2e4}   # nb09's three bars (names as the bench makes them)


@pytest.mark.parametrize("values", [
    NB09_WRITES,
    {"fp32": 538.0, "nf4": 166.5},
    {f"a rather long configuration name {i}": float(i + 1) for i in range(8)},
])
def test_bar_labels_do_not_overlap(values):
    fig = plot_bars(values, logy=True)
    try:
        assert not overlapping_ticks(fig.axes[0])
    finally:
        plt.close(fig)


def test_the_overlap_check_sees_an_overlap():
    fig, ax = plt.subplots()
    ax.bar(range(3), [1, 2, 3])
    ax.set_xticks(range(3), [" ".join(["synchronous=FULL"] * 3)] * 3)   # what nb09 showed before the fix
    try:
        assert overlapping_ticks(ax)
    finally:
        plt.close(fig)


def test_wrap_label_breaks_at_the_separator():
    assert wrap_label("add_many(100) · synchronous=FULL") == "add_many(100)\nsynchronous=FULL"
    assert wrap_label("fp32") == "fp32"
