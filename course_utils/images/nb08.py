"""Images of notebook 08: the three data formats, and which tokens carry the loss."""

from course_utils.images import figure
from course_utils.images._draw import arrow, box, canvas


@figure("08_formats.png")
def formats():
    """Alpaca row ↔ chat messages ↔ prompt/completion, then the chat template turns messages into text."""
    fig, ax = canvas(11, 4.2)
    box(ax, 0.2, 2.3, 3.0, 1.5, "Alpaca row\n{instruction,\n input,\n output}", "#fde9c9", 9)
    box(ax, 4.0, 2.3, 3.0, 1.5, "chat messages\n[{role: user, …},\n {role: assistant, …}]", "#dbe9f6", 9)
    box(ax, 7.8, 2.3, 3.0, 1.5, "prompt / completion\nprompt: [user]\ncompletion: [assistant]", "#d9f2d9", 9)
    arrow(ax, 3.2, 3.25, 4.0, 3.25)
    arrow(ax, 4.0, 2.85, 3.2, 2.85)
    ax.text(3.6, 3.45, "to messages", ha="center", fontsize=7, color="#555555")
    ax.text(3.6, 2.55, "back", ha="center", fontsize=7, color="#555555")
    arrow(ax, 7.0, 3.05, 7.8, 3.05, "split last turn")
    box(ax, 2.2, 0.2, 6.6, 1.3, "chat template (Jinja) → one string with special tokens\n"
        "<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n…<|im_end|>   (SmolLM2)\n"
        "<|user|>\\n…<|end|>\\n<|assistant|>\\n…<|end|>   (Phi-3)", "#eee0f7", 8)
    arrow(ax, 5.5, 2.3, 5.5, 1.5, "apply_chat_template")
    ax.text(5.5, 4.05, "each arrow is a function you can pass to datasets.map", ha="center", fontsize=9,
            style="italic")
    return fig


@figure("08_loss_mask.png")
def loss_mask():
    """Full-sequence loss vs completion-only loss: which positions have a label other than −100."""
    fig, ax = canvas(11.6, 3.4)
    segments = [("system prompt", 1.9), ("user: instruction + input", 2.6), ("<|im_start|>assistant↵", 2.2),
                ("answer … <|im_end|>", 2.3)]
    rows = [("full-sequence loss", [True, True, True, True]),
            ("completion-only loss\n(prompt/completion data, or\n{% generation %} markers)", [False, False, False, True])]
    for r, (name, mask) in enumerate(rows):
        y = 2.0 - r * 1.35
        ax.text(0.1, y + 0.3, name, ha="left", va="center", fontsize=8)
        x = 2.5
        for (label, w), trained in zip(segments, mask):
            color = "#c7efc7" if trained else "#e6e6e6"
            box(ax, x, y, w - 0.1, 0.6, label + ("" if trained else "\nlabel −100"), color, 8)
            x += w
    ax.text(6.9, 3.15, "green = the model is trained to predict these tokens · grey = ignored by the loss",
            ha="center", fontsize=9, style="italic")
    return fig
