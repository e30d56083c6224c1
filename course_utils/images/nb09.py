"""Images of notebook 09: the feedback loop, one base with per-domain adapters, a round's commit point."""

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas


@figure("09_feedback_loop.png")
def feedback_loop():
    """Ask → rate → validate → SQLite → trigger → train candidate → eval gate → live or rejected."""
    fig, ax = canvas(11, 4.2)
    box(ax, 0.2, 2.9, 1.9, 0.9, "user asks\n(chat widget)", "#fde9c9")
    box(ax, 2.6, 2.9, 2.0, 0.9, "live adapter\nof the domain\nanswers", "#eee0f7", 8)
    box(ax, 5.1, 2.9, 2.1, 0.9, "up/down vote · quality 0–1\n· corrected answer", "#fde9c9", 8)
    box(ax, 7.7, 2.9, 1.5, 0.9, "validate\n(bad → error,\nnothing stored)", "#f7d9d9", 7)
    box(ax, 9.5, 2.9, 1.3, 0.9, "SQLite\nWAL", "#dbe9f6")
    box(ax, 9.1, 1.35, 1.8, 0.95, "trigger: N new\nrecords ≥ threshold\nin one domain", "#dbe9f6", 8)
    box(ax, 6.2, 1.35, 2.3, 0.95, "train candidate LoRA\nnew + replay of older\n(background thread)", "#d9f2d9", 8)
    box(ax, 3.6, 1.35, 2.0, 0.95, "eval gate\nheld-out answer loss\nnot worse than live?", "#f7d9d9", 8)
    box(ax, 0.2, 1.75, 2.6, 0.75, "yes → save v+1 atomically\n(safetensors + SHA-256) → live", "#d9f2d9", 8)
    box(ax, 0.2, 0.45, 2.6, 0.75, "no → old adapter stays;\nrejection recorded", "#f7d9d9", 8)
    arrow(ax, 2.1, 3.35, 2.6, 3.35)
    arrow(ax, 4.6, 3.35, 5.1, 3.35)
    arrow(ax, 7.2, 3.35, 7.7, 3.35)
    arrow(ax, 9.2, 3.35, 9.5, 3.35)
    arrow(ax, 10.15, 2.9, 10.0, 2.3)
    arrow(ax, 9.1, 1.8, 8.5, 1.8)
    arrow(ax, 6.2, 1.8, 5.6, 1.8)
    arrow(ax, 3.6, 1.95, 2.8, 2.1)
    arrow(ax, 3.6, 1.6, 2.8, 0.85)
    arrow(ax, 1.5, 2.5, 3.3, 2.9)
    ax.text(2.55, 2.55, "swap in", fontsize=8, color="#555555")
    ax.text(5.5, 0.2, "every arrow that writes is a committed transaction or an atomic rename: a crash leaves "
            "the previous state", ha="center", fontsize=8, style="italic")
    return fig


@figure("09_one_base.png")
def one_base():
    """Serving tree (3 domain adapters, set_adapter) and training tree (candidate) share the frozen base."""
    fig, ax = canvas(10, 3.6)
    box(ax, 2.8, 0.2, 4.4, 0.9, "frozen base weights — one copy in memory\nshared tensors: "
        "the same data_ptr in both trees", "#dbe9f6", 8)
    box(ax, 0.2, 1.8, 4.2, 1.5, "", "#f4f4f4")
    ax.text(2.3, 3.1, "serving tree — answers the chat", ha="center", fontsize=9, weight="bold")
    for i, (name, color) in enumerate([("tax", "#eee0f7"), ("accounting", "#fde9c9"), ("general", "#d9f2d9")]):
        box(ax, 0.4 + i * 1.35, 2.0, 1.2, 0.75, f"LoRA\n{name}", color, 8)
    ax.text(2.3, 1.55, "set_adapter(domain) picks one", ha="center", fontsize=8, color="#555555")
    box(ax, 5.8, 1.8, 4.0, 1.5, "", "#f4f4f4")
    ax.text(7.8, 3.1, "training tree — background rounds", ha="center", fontsize=9, weight="bold")
    box(ax, 6.9, 2.0, 1.8, 0.75, "LoRA\ncandidate", "#f7d9d9", 8)
    arrow(ax, 3.6, 1.8, 4.3, 1.1)
    arrow(ax, 7.8, 1.8, 5.8, 1.1)
    arrow(ax, 6.9, 2.4, 4.4, 2.4, "install if the gate accepts")
    return fig


@figure("09_commit_point.png")
def commit_point():
    """The steps of one round and what a crash at each step leaves behind."""
    fig, ax = canvas(11, 2.9)
    steps = [("load live\n(verify SHA-256)", "#dbe9f6"), ("score live\n(held-out)", "#dbe9f6"),
             ("train\ncandidate", "#d9f2d9"), ("score\ncandidate", "#dbe9f6"), ("gate", "#f7d9d9"),
             ("write tmp folder\n→ os.replace", "#eee0f7"), ("ONE SQLite txn:\nround + records\n+ live pointer",
                                                               "#fde9c9"), ("install in\nserving tree", "#d9f2d9")]
    for i, (text, color) in enumerate(steps):
        box(ax, 0.15 + i * 1.35, 1.4, 1.2, 1.0, text, color, 7)
        if i:
            arrow(ax, 0.15 + i * 1.35 - 0.15, 1.9, 0.15 + i * 1.35, 1.9)
    ax.annotate("", xy=(9.3, 1.3), xytext=(9.3, 0.95), arrowprops=dict(arrowstyle="-", lw=2, color="#d62728"))
    ax.text(9.3, 0.75, "commit point", ha="center", fontsize=8, color="#d62728", weight="bold")
    ax.text(4.6, 0.75, "crash before it: live unchanged, records still pending\n(an orphan version folder "
            "is never live)", ha="center", fontsize=8)
    ax.text(10.5, 0.35, "after it: a restart\nloads the new live", ha="right", fontsize=8)
    return fig
