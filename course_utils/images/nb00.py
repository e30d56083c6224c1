"""Images of notebook 00: how a lesson flows, and the two profiles."""

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas


@figure("00_lesson_flow.png")
def lesson_flow():
    """data → model → training → metrics: the flow every lesson shares."""
    fig, ax = canvas(10, 3)
    box(ax, 0.2, 1.8, 2.0, 0.8, "data/*.jsonl\n(validated)", "#fde9c9")
    box(ax, 0.2, 0.4, 2.0, 0.8, "model registry\n(role → id per profile)", "#dbe9f6")
    box(ax, 3.3, 1.1, 2.2, 0.8, "training\n(course loop / TRL)", "#d9f2d9")
    box(ax, 6.5, 1.1, 1.6, 0.8, "adapter /\nmodel", "#eee0f7")
    box(ax, 8.4, 1.1, 1.4, 0.8, "metrics\n+ asserts", "#f7d9d9")
    arrow(ax, 2.2, 2.2, 3.3, 1.6)
    arrow(ax, 2.2, 0.8, 3.3, 1.4)
    arrow(ax, 5.5, 1.5, 6.5, 1.5)
    arrow(ax, 8.1, 1.5, 8.4, 1.5)
    ax.text(5, 0.15, "runtime profile (cpu | gpu) picks sizes and model ids — the lesson reads the same",
            ha="center", fontsize=9, style="italic")
    return fig


@figure("00_profiles.png")
def profiles():
    """One notebook, two profiles."""
    fig, ax = canvas(9, 3)
    box(ax, 3.2, 2.0, 2.6, 0.7, "one notebook\n(same cells, same prose)", "#fde9c9")
    box(ax, 0.3, 0.3, 3.6, 1.1, "cpu profile (default without GPU)\noffline · SmolLM2-135M (embedded)\n"
        "few steps · ~1 min per notebook", "#dbe9f6", 8)
    box(ax, 5.1, 0.3, 3.6, 1.1, "gpu profile (Colab / CUDA)\nhub models: Phi-3-mini 4-bit, opt-125m,\n"
        "flan-t5-small · real training sizes", "#d9f2d9", 8)
    arrow(ax, 4.2, 2.0, 2.4, 1.45, "COURSE_PROFILE=cpu")
    arrow(ax, 4.8, 2.0, 6.6, 1.45, "COURSE_PROFILE=gpu")
    return fig
