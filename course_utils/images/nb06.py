"""Images of notebook 06: logit distillation with a temperature, and sequence-level distillation."""

import numpy as np

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas


def _bars(ax, x0: float, y0: float, probs: np.ndarray, color: str, width: float = 0.16, height: float = 1.1):
    """A tiny bar chart of a distribution drawn in data coordinates."""
    for i, p in enumerate(probs):
        ax.bar(x0 + i * width * 1.25, p * height, width=width, bottom=y0, color=color, align="edge")
    ax.plot([x0 - 0.05, x0 + len(probs) * width * 1.25], [y0, y0], color="#333333", lw=0.8)


@figure("06_logit_distillation.png")
def logit_distillation():
    """Teacher and student logits, softened by T, compared with KL; plus CE on the true next token."""
    fig, ax = canvas(12, 4.4)
    z = np.array([3.0, 1.6, 1.0, 0.3, -0.5, -1.0])
    hard = np.exp(z) / np.exp(z).sum()
    soft = np.exp(z / 3) / np.exp(z / 3).sum()
    box(ax, 0.2, 2.9, 2.0, 0.9, "teacher\n(SmolLM2-135M, frozen)", "#fde9c9")
    box(ax, 0.2, 0.5, 2.0, 0.9, "student\n(smaller, trained)", "#dbe9f6")
    box(ax, 2.9, 2.9, 1.7, 0.9, "logits z_t\n(49,152 per token)", "#f3f3f3", 8)
    box(ax, 2.9, 0.5, 1.7, 0.9, "logits z_s", "#f3f3f3", 8)
    arrow(ax, 2.2, 3.35, 2.9, 3.35)
    arrow(ax, 2.2, 0.95, 2.9, 0.95)
    ax.text(5.9, 4.1, "T = 1: peaked", ha="center", fontsize=8.5)
    _bars(ax, 5.2, 2.9, hard, "#e0a040")
    ax.text(8.0, 4.1, "T = 3: soft targets p_T", ha="center", fontsize=8.5)
    _bars(ax, 7.3, 2.9, soft, "#e0a040")
    arrow(ax, 4.6, 3.35, 5.1, 3.35, "")
    arrow(ax, 6.5, 3.35, 7.2, 3.35, "÷T")
    ax.text(8.0, 1.5, "student q_T = softmax(z_s / T)", ha="center", fontsize=8.5)
    _bars(ax, 7.3, 0.5, np.exp(np.array([2.0, 2.2, 0.1, 0.5, 0.0, -0.3]) / 3) /
          np.exp(np.array([2.0, 2.2, 0.1, 0.5, 0.0, -0.3]) / 3).sum(), "#4c72b0")
    arrow(ax, 4.6, 0.95, 7.2, 0.95, "÷T")
    box(ax, 9.4, 1.6, 2.4, 1.3, "α·T²·KL(p_T ‖ q_T)\n+ (1 − α)·CE(z_s, y)", "#d9f2d9", 9)
    arrow(ax, 8.8, 3.2, 9.6, 2.9)
    arrow(ax, 8.8, 1.1, 9.6, 1.6)
    ax.text(10.6, 0.95, "y = the true next token", ha="center", fontsize=8, color="#555555")
    ax.text(6.0, 0.05, "the soft targets also rank the wrong tokens — information a one-hot label does not carry",
            ha="center", fontsize=9, style="italic")
    return fig


@figure("06_sequence_distillation.png")
def sequence_distillation():
    """Sequence-level KD: the teacher writes answers, the student is fine-tuned on them."""
    fig, ax = canvas(11, 2.8)
    box(ax, 0.2, 1.0, 1.9, 0.9, "instructions\n(data/instructions.jsonl)", "#fde9c9", 8)
    box(ax, 2.8, 1.0, 1.9, 0.9, "teacher\ngenerates answers", "#fde9c9")
    box(ax, 5.4, 1.0, 2.1, 0.9, "(instruction,\nteacher answer) pairs", "#f3f3f3", 8)
    box(ax, 8.2, 1.0, 2.3, 0.9, "student: ordinary\nfine-tuning (CE)", "#dbe9f6")
    arrow(ax, 2.1, 1.45, 2.8, 1.45)
    arrow(ax, 4.7, 1.45, 5.4, 1.45)
    arrow(ax, 7.5, 1.45, 8.2, 1.45)
    ax.text(5.5, 0.35, "no logits needed: only text — how small models imitate a large model's outputs",
            ha="center", fontsize=9, style="italic")
    return fig
