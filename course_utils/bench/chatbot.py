"""The capstone's benchmarks (printed, never asserted): feedback writes/s, one training round, UI latency."""

from __future__ import annotations

import time
from pathlib import Path

from course_utils.chatbot.bot import Chatbot, qa_pairs_by_domain
from course_utils.chatbot.config import DEFAULT_N_TRIGGER, ChatbotConfig
from course_utils.chatbot.store import FeedbackStore


def _goal_line(name: str, value: float, unit: str, goal: str, ok: bool) -> str:
    return f"{name:<44} {value:>10,.1f} {unit:<10} goal {goal:<10} {'✅' if ok else '❌'}"


def bench_feedback_writes(n: int = 2000, n_full: int = 200, batch: int = 100, root: str | Path | None = None) -> dict:
    """Feedback writes per second: one commit per record (NORMAL, FULL) and ``add_many`` batches (FULL).

    Goal ≥ 1,000 writes/s. Prints one line per mode and returns {mode: writes per second}.
    """
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        for sync, count in (("NORMAL", n), ("FULL", n_full)):
            with FeedbackStore(Path(tmp) / f"{sync}.db", synchronous=sync) as store:
                t0 = time.perf_counter()
                for i in range(count):
                    store.add(f"질문 {i}: 부가가치세 신고 기한은?", "1기 확정신고는 7월 25일까지입니다.", 0.9, "tax")
                out[f"add() · synchronous={sync}"] = count / (time.perf_counter() - t0)
        with FeedbackStore(Path(tmp) / "batch.db", synchronous="FULL") as store:
            items = [dict(question=f"질문 {i}", answer="답변입니다.", quality=0.9, domain="tax") for i in range(n)]
            t0 = time.perf_counter()
            for k in range(0, n, batch):
                store.add_many(items[k:k + batch])
            out[f"add_many({batch}) · synchronous=FULL"] = n / (time.perf_counter() - t0)
    print("Feedback writes (each committed before the call returns)")
    for name, rate in out.items():
        print(_goal_line(name, rate, "writes/s", "≥ 1,000", rate >= 1000))
    return out


def _bench_bot(root: Path, n_trigger: int, background: bool, config: ChatbotConfig | None = None):
    from course_utils.core.models import load_model, load_tokenizer

    tok, model = load_tokenizer("chat"), load_model("chat")
    cfg = config or ChatbotConfig.from_settings(n_trigger=n_trigger)
    return Chatbot.open(root, model, tok, cfg, background=background), cfg


def _feed_good(bot: Chatbot, domain: str, n: int) -> None:
    pairs = qa_pairs_by_domain("train")[domain]
    bot.store.add_many([dict(question=q, answer=a, quality=1.0, domain=domain) for q, a in pairs[:n]])


def bench_training_round(n: int = DEFAULT_N_TRIGGER, domain: str = "tax") -> dict:
    """Wall time of one real training round on ``n`` records in the active profile (goal ≤ 60 s on cpu)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bot, cfg = _bench_bot(Path(tmp), n, background=False)
        _feed_good(bot, domain, n)
        result = bot.run_round(domain)
        bot.store.close()
    print(f"Training round: {n} new + {result.n_replay} replay records, {cfg.steps} steps × batch "
          f"{cfg.batch_size} × ≤{cfg.seq_len} tokens, LoRA r={cfg.r} on {', '.join(cfg.target_modules)}")
    print(_goal_line("one round (train + 2 held-out evals + save)", result.seconds, "s", "≤ 60 s",
                     result.seconds <= 60))
    print(f"   held-out loss {result.live_score:.3f} → {result.candidate_score:.3f} ({result.status})")
    return {"seconds": result.seconds, "status": result.status, "live_score": result.live_score,
            "candidate_score": result.candidate_score}


def measure_latency(bot: Chatbot, questions: list[str]) -> list[float]:
    """Seconds per ``bot.ask`` for each question (the UI's answer latency)."""
    return [bot.ask(q).seconds for q in questions]


def bench_ui_latency(n_trigger: int = 12, questions: list[str] | None = None) -> dict:
    """Answer latency while idle vs while a training round runs in the background thread.

    Prints both medians and their ratio; with 2 CPU cores shared by both threads a ratio near 2 is
    expected — the point is that answers keep coming instead of waiting for the round to finish.
    """
    import statistics
    import tempfile

    questions = questions or [q for q, _ in qa_pairs_by_domain("test")["tax"][:3]]
    with tempfile.TemporaryDirectory() as tmp:
        bot, cfg = _bench_bot(Path(tmp), n_trigger, background=True)
        idle = measure_latency(bot, questions)
        _feed_good(bot, "tax", n_trigger)
        if not bot.maybe_train():
            raise RuntimeError("the trigger did not fire")
        busy = []
        while bot.training and len(busy) < 3 * len(questions):
            busy += measure_latency(bot, questions[:1])
        round_s = bot.wait()[-1].seconds
        bot.store.close()
    idle_m, busy_m = statistics.median(idle), statistics.median(busy) if busy else float("nan")
    print(f"Chat answer latency ({cfg.max_new_tokens} new tokens), round of {round_s:.1f} s in the background")
    print(f"{'idle':<44} {idle_m:>10.2f} s")
    print(f"{'while training (' + str(len(busy)) + ' answers)':<44} {busy_m:>10.2f} s   "
          f"ratio {busy_m / idle_m:.2f}× · a blocking design would wait up to {round_s:.0f} s")
    return {"idle_s": idle_m, "busy_s": busy_m, "ratio": busy_m / idle_m, "round_s": round_s}


def run_benchmarks(which: list[str] | None = None) -> dict:
    """Run the chatbot benchmarks (writes, round, latency): ``python -m course_utils.bench chatbot``."""
    which = which or ["writes", "round", "latency"]
    fns = {"writes": bench_feedback_writes, "round": bench_training_round, "latency": bench_ui_latency}
    return {name: fns[name]() for name in which}


if __name__ == "__main__":
    import sys

    run_benchmarks(sys.argv[1:] or None)
