"""The capstone's chat widget: question box, answer, 👍/👎, quality slider, corrected answer, stats panel.

Only widgets and traits that ipywidgets 7 (Colab) and 8 (JupyterLab) share are used. Every handler is a
plain method, so a notebook (or CI) can drive the widget from code: ``ui.ask("…")``, ``ui.rate("up")``.

Example::

    ui = ChatUI(bot)
    display(ui.widget)
"""

from __future__ import annotations

import html

from course_utils.chatbot.store import DOMAINS, FeedbackError

DOWNVOTE_MAX_QUALITY = 0.2   # a 👎 without a correction is kept for analysis but stays below any threshold


class ChatUI:
    """An ipywidgets front end for a ``Chatbot``; training rounds run in the bot's background thread."""

    def __init__(self, bot):
        import ipywidgets as w

        self.bot = bot
        self.last = None  # the last Reply
        self.question = w.Textarea(placeholder="질문을 입력하세요 · Ask a question about Korean tax or accounting",
                                   layout=w.Layout(width="98%", height="56px"))
        self.domain = w.Dropdown(options=[("auto", "auto")] + [(d, d) for d in DOMAINS], value="auto",
                                 description="domain", layout=w.Layout(width="200px"))
        self.ask_button = w.Button(description="Ask · 질문", button_style="primary")
        self.answer = w.HTML("<i>(no answer yet)</i>")
        # words beside the emoji: without an emoji font a button must still say what it does
        self.up = w.Button(description="👍 Good · 좋아요", tooltip="store this answer as good",
                           layout=w.Layout(width="130px"))
        self.down = w.Button(description="👎 Bad · 별로예요", tooltip="store this answer as bad",
                             layout=w.Layout(width="130px"))
        self.quality = w.FloatSlider(value=0.9, min=0.0, max=1.0, step=0.05, description="quality",
                                     readout_format=".2f")
        self.correction = w.Textarea(placeholder="corrected answer (optional) · 올바른 답변 (선택)",
                                     layout=w.Layout(width="98%", height="48px"))
        self.status = w.HTML()
        self.stats = w.HTML()
        self.refresh_button = w.Button(description="refresh stats")
        self.ask_button.on_click(lambda _: self._on_ask())
        self.up.on_click(lambda _: self._on_rate("up"))
        self.down.on_click(lambda _: self._on_rate("down"))
        self.refresh_button.on_click(lambda _: self.refresh())
        bot.on_round.append(lambda result: self.refresh())  # called from the training thread
        self.widget = w.HBox([
            w.VBox([self.question, w.HBox([self.domain, self.ask_button]), self.answer,
                    w.HBox([self.up, self.down, self.quality]), self.correction, self.status],
                   layout=w.Layout(width="62%")),
            w.VBox([self.stats, self.refresh_button], layout=w.Layout(width="36%"))])
        self.refresh()

    # ------------------------------------------------------------------ handlers
    def _on_ask(self) -> None:
        domain = None if self.domain.value == "auto" else self.domain.value
        try:
            self.last = self.bot.ask(self.question.value, domain)
        except FeedbackError as e:
            self.status.value = f"❌ {html.escape(str(e))}"
            return
        r = self.last
        cut = " · cut at the length cap: ends at its last full sentence" if r.cut else ""
        self.answer.value = (f"<b>Q</b> {html.escape(r.question)}<br><b>A</b> {html.escape(r.answer)}<br>"
                             f"<small>{r.domain} adapter v{r.version} · {r.seconds:.1f} s{cut}</small>")
        self.correction.value = ""
        self.status.value = ""

    def _on_rate(self, thumb: str) -> None:
        if self.last is None:
            self.status.value = "Ask a question first."
            return
        text = self.correction.value.strip()
        if text:                       # a correction replaces the answer; the slider says how sure the user is
            answer, quality, corrected = text, self.quality.value, True
        elif thumb == "up":
            answer, quality, corrected = self.last.answer, self.quality.value, False
        else:
            answer, quality, corrected = self.last.answer, min(self.quality.value, DOWNVOTE_MAX_QUALITY), False
        try:
            rid = self.bot.feedback(self.last.question, answer, quality, self.last.domain, corrected)
        except FeedbackError as e:
            self.status.value = f"❌ not stored — {html.escape(str(e))}"
            return
        self.status.value = (f"✅ stored as #{rid} ({'correction' if corrected else thumb}, quality {quality:.2f})"
                             + (" · training started in the background" if self.bot.training else ""))
        self.refresh()

    def refresh(self) -> None:
        """Redraw the stats panel from ``bot.monitor()``."""
        m = self.bot.monitor()
        rows = "".join(
            f"<tr><td>{d}</td><td>{m['buffer'][d]}/{m['trigger_at']}</td><td>v{m['live_version'][d]}</td>"
            f"<td>{_last(m['last_eval'].get(d))}</td></tr>" for d in DOMAINS)
        p = m["progress"]
        running = (f"🏋️ training <b>{p['domain']}</b>: step {p['step']}/{p['steps']}"
                   + (f", loss {p['loss']:.3f}" if p.get("loss") is not None else "")) if p else "idle"
        self.stats.value = (
            "<b>Stats</b><table><tr><th>domain</th><th>buffer</th><th>live</th><th>last round</th></tr>"
            f"{rows}</table>feedback stored: {m['feedback_total']} · rounds: {m['training_rounds']} "
            f"(✅ accepted {m['accepted']} · ⛔ rejected {m['rejected']} · 💥 failed {m['failed']})<br>LoRA layers: {m['lora_layers']}"
            f" · {running}")

    # ------------------------------------------------------------------ driving from code
    def ask(self, question: str, domain: str = "auto") -> str:
        """Type ``question``, pick ``domain`` and press Ask; return the answer text ('' if refused)."""
        self.question.value, self.domain.value = question, domain
        self.last = None
        self.ask_button.click()
        return self.last.answer if self.last else ""

    def rate(self, thumb: str, quality: float = 0.9, correction: str = "") -> str:
        """Set the slider and the correction, press 👍 or 👎; return the status line."""
        self.quality.value, self.correction.value = quality, correction
        (self.up if thumb == "up" else self.down).click()
        return self.status.value


def _last(ev: dict | None) -> str:
    if not ev:
        return "—"
    icon = {"accepted": "✅ accepted", "rejected": "⛔ rejected", "failed": "💥 failed"}[ev["status"]]
    if ev["live"] is None or ev["candidate"] is None:
        return icon
    return f"{icon} {ev['live']:.3f}→{ev['candidate']:.3f}"


def plot_dashboard(mon: dict, rounds: list[dict]):
    """Three panels: buffer vs trigger, held-out loss per round (live vs candidate), live versions."""
    import matplotlib.pyplot as plt

    from course_utils.core.plots import PALETTE

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), gridspec_kw={"width_ratios": [1, 1.6, 1]})
    ax = axes[0]
    ax.bar(list(mon["buffer"]), list(mon["buffer"].values()), color=PALETTE[:3])
    ax.axhline(mon["trigger_at"], color="#d62728", ls="--", lw=1)
    ax.text(2.4, mon["trigger_at"], " trigger", color="#d62728", va="bottom", ha="right", fontsize=8)
    ax.set(title="pending feedback (≥ threshold)", ylabel="records")
    ax = axes[1]
    colors = {"accepted": "#2ca02c", "rejected": "#d62728", "failed": "#7f7f7f"}
    for i, r in enumerate(rounds):
        if r["live_score"] is not None:
            ax.plot([i, i], [r["live_score"], r["candidate_score"] or r["live_score"]], color="#999999", lw=1)
            ax.scatter([i], [r["live_score"]], color="#1f77b4", marker="o", zorder=3,
                       label="live" if i == 0 else None)
        if r["candidate_score"] is not None:
            ax.scatter([i], [r["candidate_score"]], color=colors[r["status"]], marker="s", zorder=3)
        ax.annotate(r["status"], (i, (r["candidate_score"] or r["live_score"] or 0)), fontsize=7,
                    xytext=(4, 4), textcoords="offset points", color=colors[r["status"]])
    ax.set_xticks(range(len(rounds)), [f"#{r['id']}\n{r['domain']}" for r in rounds], fontsize=8)
    ax.set(title="held-out answer loss per round (■ candidate)", ylabel="loss")
    if rounds:
        ax.set_xlim(-0.5, len(rounds) - 0.3)
        ax.legend(fontsize=8, loc="best")
    ax = axes[2]
    ax.bar(list(mon["live_version"]), list(mon["live_version"].values()), color=PALETTE[:3])
    ax.set(title=f"live adapter version · {mon['lora_layers']} LoRA layers", ylabel="version")
    ax.yaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig
