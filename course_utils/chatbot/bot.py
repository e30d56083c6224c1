"""Capstone: a Korean tax-and-accounting chatbot that keeps learning from feedback — safely.

The loop (notebook 09): a user asks → the live adapter of the question's domain answers → the user rates
it (👍/👎, a quality slider, an optional corrected answer) → the feedback is validated and committed to
SQLite → once ``n_trigger`` new records of a domain are at or above ``quality_threshold``, a background
round fine-tunes a *candidate* LoRA adapter on them plus a replay sample of older accepted records → the
**eval gate** scores the candidate on the domain's held-out QA → accepted: saved atomically as safetensors
and swapped in; rejected: the old adapter stays and the rejection is recorded.

Example::

    bot = Chatbot.open("outputs/chatbot", model, tok, config=ChatbotConfig(n_trigger=12))
    reply = bot.ask("부가가치세 세율은 몇 퍼센트인가요?")
    bot.feedback(reply.question, "기본세율은 10%입니다.", quality=1.0, domain="tax", corrected=True)
    bot.wait(); bot.monitor()["live_version"]

This module holds the eval gate, domain routing, rounds and monitoring; the rest of the
package is described in ``course_utils/chatbot/__init__.py``.
"""

from __future__ import annotations

import math
import random
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from course_utils import REPO_ROOT
from course_utils.chatbot.backend import LoraBackend
from course_utils.chatbot.config import ChatbotConfig
from course_utils.chatbot.registry import AdapterRegistry
from course_utils.chatbot.store import DOMAINS, FeedbackStore

DEFAULT_ROOT = REPO_ROOT / "outputs" / "chatbot"


# --------------------------------------------------------------------------- the eval gate

def should_accept(live_score: float, candidate_score: float, tolerance: float) -> bool:
    """Eval gate on held-out answer loss (lower is better): accept unless the candidate is clearly worse.

    Clearly worse: worse than the live adapter by more than ``tolerance`` (relative). A NaN/inf candidate is
    always rejected.

    >>> should_accept(2.00, 2.01, tolerance=0.01), should_accept(2.00, 2.03, tolerance=0.01)
    (True, False)
    """
    return math.isfinite(candidate_score) and candidate_score <= live_score * (1 + tolerance)


# --------------------------------------------------------------------------- domain routing

TAX_WORDS = ("부가가치세", "부가세", "소득세", "법인세", "원천징수", "연말정산", "세금", "세율", "신고", "납부",
             "공제", "환급", "가산세", "사업자", "과세", "면세", "국세청", "홈택스", "4대보험", "보험료")
ACCOUNTING_WORDS = ("부기", "분개", "차변", "대변", "재무제표", "감가상각", "자산", "부채", "자본", "시산표",
                    "결산", "계정", "손익", "대차", "회계", "현금흐름", "재무상태표", "비율", "전기", "수익", "비용")


def guess_domain(question: str) -> str:
    """Route a question to a domain by keyword counts (ties and no match → ``"general"``).

    >>> guess_domain("복식부기에서 차변은 무엇인가요?")
    'accounting'
    """
    tax = sum(w in question for w in TAX_WORDS)
    acc = sum(w in question for w in ACCOUNTING_WORDS)
    if tax == acc:
        return "general"
    return "tax" if tax > acc else "accounting"


# --------------------------------------------------------------------------- rounds

@dataclass
class RoundResult:
    """What one training round did (the database keeps the same numbers, without the loss curve)."""

    round_id: int
    domain: str
    status: str                 # accepted | rejected | failed
    live_version: int
    version: int | None
    live_score: float | None
    candidate_score: float | None
    n_new: int
    n_replay: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class Reply:
    """One chat answer and where it came from."""

    question: str
    answer: str
    domain: str
    version: int
    seconds: float
    cut: bool = False           # max_new_tokens stopped it (the answer then ends at its last full sentence)


class Chatbot:
    """Feedback store + adapter registry + backend, with the training trigger and the eval gate.

    ``background=True`` runs rounds in a daemon thread (the UI keeps answering); ``wait()`` joins it.
    """

    def __init__(self, store: FeedbackStore, registry: AdapterRegistry, backend, config: ChatbotConfig,
                 replay_pool: dict[str, list[tuple[str, str]]] | None = None, background: bool = True):
        self.store, self.registry, self.backend, self.config = store, registry, backend, config
        self.replay_pool = replay_pool or {}
        self.background = background
        self.history: list[RoundResult] = []
        self.on_round: list = []          # callbacks f(RoundResult), e.g. the UI's stats refresh
        self.progress: dict = {}          # {"domain", "step", "loss"} of the running round
        self.scores: dict[tuple[str, int], float] = {}   # (domain, version) → held-out loss, measured once
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self.registry.clean_temporary()
        self.restore_live()

    @classmethod
    def open(cls, root: str | Path, model, tokenizer, config: ChatbotConfig | None = None,
             eval_sets: dict | None = None, replay_pool: dict | None = None, background: bool = True,
             synchronous: str | None = None) -> Chatbot:
        """The course set-up: store and adapters under ``root``, held-out QA and replay pool from the data.

        The data is ``data/ko_tax_qa.jsonl``: its test split feeds the eval gate, its train split tops up
        replay."""
        from course_utils.chatbot.store import SYNCHRONOUS

        config = config or ChatbotConfig.from_settings()
        root = Path(root)
        eval_sets = eval_sets or qa_pairs_by_domain("test")
        replay_pool = replay_pool if replay_pool is not None else qa_pairs_by_domain("train")
        backend = LoraBackend(model, tokenizer, eval_sets, config)
        return cls(FeedbackStore(root / "feedback.db", synchronous or SYNCHRONOUS), AdapterRegistry(root / "adapters"),
                   backend, config, replay_pool, background)

    # ------------------------------------------------------------------ serving
    def restore_live(self) -> None:
        """Load each domain's live version (from the database) into the backend, verifying its files."""
        for d in DOMAINS:
            version, sha = self.store.live_version(d)
            if version:
                self.backend.install(d, self.registry.load(d, version, expected_manifest=sha)[0])

    def ask(self, question: str, domain: str | None = None) -> Reply:
        """Answer with the live adapter of ``domain`` (guessed from keywords when None)."""
        from course_utils.chatbot.store import validate_domain, validate_text

        question = validate_text("question", question)
        domain = validate_domain(domain) if domain is not None else guess_domain(question)
        t0 = time.perf_counter()
        answer = self.backend.answer(question, domain)
        return Reply(question, answer, domain, self.store.live_version(domain)[0], time.perf_counter() - t0,
                     cut=getattr(answer, "cut", False))

    def feedback(self, question, answer, quality, domain, corrected: bool = False) -> int:
        """Validate + commit one feedback (``FeedbackError`` on bad input), then check the trigger."""
        record_id = self.store.add(question, answer, quality, domain, corrected)
        self.maybe_train()
        return record_id

    # ------------------------------------------------------------------ trigger
    def ready_domains(self) -> list[str]:
        """Domains with at least ``n_trigger`` pending records at or above the quality threshold."""
        c = self.config
        return [d for d in DOMAINS if self.store.count_pending(d, c.quality_threshold) >= c.n_trigger]

    @property
    def training(self) -> bool:
        """True while a background round is running."""
        return self._worker is not None

    def maybe_train(self) -> bool:
        """Start rounds for ready domains (background thread, or right here); True if any started."""
        with self._worker_lock:
            if self._worker is not None or not self.ready_domains():
                return False
            if self.background:
                self._worker = threading.Thread(target=self._drain, name="chatbot-training", daemon=True)
                self._worker.start()
                return True
        self._drain()
        return True

    def _drain(self) -> None:
        """Run rounds until no domain is ready (a domain whose round failed waits for new feedback)."""
        failed: set[str] = set()
        try:
            while True:
                with self._worker_lock:  # checked and cleared under the lock: no feedback is left waiting
                    ready = [d for d in self.ready_domains() if d not in failed]
                    if not ready:
                        self._worker = None
                        return
                result = self.run_round(ready[0])
                if result is not None and result.status == "failed":
                    failed.add(result.domain)
        except BaseException:
            with self._worker_lock:
                self._worker = None
            raise

    def wait(self, timeout: float | None = None) -> list[RoundResult]:
        """Join the background round (if any) and return the history of rounds."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return self.history

    # ------------------------------------------------------------------ one round
    def _examples(self, domain: str, new: list[dict], seed: int) -> tuple[list[tuple[str, str]], int]:
        """New records + replay: older accepted records first, topped up from the curated pool."""
        k = round(self.config.n_trigger * self.config.replay_ratio)
        replay = [(r["question"], r["answer"])
                  for r in self.store.replay_sample(domain, k, self.config.quality_threshold, seed)]
        pool = [p for p in self.replay_pool.get(domain, []) if p not in replay]
        replay += random.Random(seed).sample(pool, min(k - len(replay), len(pool)))
        return [(r["question"], r["answer"]) for r in new] + replay, len(replay)

    def run_round(self, domain: str) -> RoundResult | None:
        """Train a candidate for ``domain``, gate it, and commit the outcome (None if not enough records).

        Any exception inside (training, evaluation, saving) records a *failed* round: the live adapter,
        its files and the records' pending state are left as they were.
        """
        c = self.config
        new = self.store.pending(domain, c.quality_threshold, limit=c.n_trigger)
        if len(new) < c.n_trigger:
            return None
        t0 = time.perf_counter()
        seed = c.seed + len(self.store.rounds()) + 1
        ids = [r["id"] for r in new]
        live_v, live_sha = self.store.live_version(domain)
        pairs, n_replay = self._examples(domain, new, seed)
        self.progress = {"domain": domain, "step": 0, "steps": c.steps, "loss": None}

        def on_step(step, loss):
            self.progress = {"domain": domain, "step": step + 1, "steps": c.steps, "loss": loss}

        live_score = cand_score = None
        try:
            live_state = self.registry.load(domain, live_v, expected_manifest=live_sha)[0] if live_v else None
            if (domain, live_v) not in self.scores:  # else known from the round that accepted it
                self.scores[domain, live_v] = self.backend.evaluate(domain, live_state)
            live_score = self.scores[domain, live_v]
            cand_state, res = self.backend.train(domain, pairs, live_state, seed=seed, on_step=on_step)
            cand_score = self.backend.evaluate(domain, cand_state)
            accepted = should_accept(live_score, cand_score, c.tolerance)
            version = sha = None
            if accepted:
                meta = {"live_score": live_score, "candidate_score": cand_score, "n_new": len(ids),
                        "n_replay": n_replay, "record_ids": ids, "config": asdict(c)}
                version, sha = self.registry.save(domain, cand_state, self.backend.adapter_config(), meta)
            # the commit point: one SQLite transaction records the round, marks the records, moves `live`
            rid = self.store.commit_round(domain, "accepted" if accepted else "rejected", ids, live_v, n_replay,
                                          live_score, cand_score, c.tolerance, time.perf_counter() - t0,
                                          version, sha)
            if accepted:
                self.scores[domain, version] = cand_score
                self.backend.install(domain, cand_state)
            result = RoundResult(rid, domain, "accepted" if accepted else "rejected", live_v, version,
                                 live_score, cand_score, len(ids), n_replay, time.perf_counter() - t0,
                                 list(res.losses))
        except Exception as e:  # noqa: BLE001 - any failure must leave the live adapter in place
            err = f"{type(e).__name__}: {e}"
            rid = self.store.commit_round(domain, "failed", ids, live_v, n_replay, live_score, cand_score,
                                          c.tolerance, time.perf_counter() - t0, error=err)
            result = RoundResult(rid, domain, "failed", live_v, None, live_score, cand_score, len(ids), n_replay,
                                 time.perf_counter() - t0, error=err)
            warnings.warn(f"training round {rid} ({domain}) failed and was recorded; the live adapter "
                          f"v{live_v} stays: {err}", RuntimeWarning, stacklevel=2)
        self.progress = {}
        self.history.append(result)
        for callback in self.on_round:
            try:
                callback(result)
            except Exception as e:  # noqa: BLE001 - a broken display must not break training
                warnings.warn(f"on_round callback failed: {e!r}", RuntimeWarning, stacklevel=2)
        return result

    # ------------------------------------------------------------------ monitoring
    def monitor(self) -> dict:
        """Training count, buffer per domain, live versions, last eval scores, LoRA/adapter layer counts."""
        rounds = self.store.rounds()
        last = {}
        for r in rounds:
            last[r["domain"]] = {"round": r["id"], "status": r["status"], "live": r["live_score"],
                                 "candidate": r["candidate_score"]}
        counts = self.backend.layer_counts() if hasattr(self.backend, "layer_counts") else {}
        return {
            "training_rounds": len(rounds),
            **{s: sum(r["status"] == s for r in rounds) for s in ("accepted", "rejected", "failed")},
            "training_now": self.training,
            "progress": dict(self.progress),
            "feedback_total": self.store.count(),
            "buffer": {d: self.store.count_pending(d, self.config.quality_threshold) for d in DOMAINS},
            "trigger_at": self.config.n_trigger,
            "live_version": {d: self.store.live_version(d)[0] for d in DOMAINS},
            "last_eval": last,
            "lora_layers": counts.get("lora_layers", 0),
            "adapter_layers": counts.get("adapter_layers", 0),
        }

    def dashboard(self):
        """The monitoring dashboard as a matplotlib figure (see ``chatbot.ui.plot_dashboard``)."""
        from course_utils.chatbot.ui import plot_dashboard

        return plot_dashboard(self.monitor(), self.store.rounds())


# --------------------------------------------------------------------------- data helpers

def qa_pairs_by_domain(split: str) -> dict[str, list[tuple[str, str]]]:
    """(question, answer) pairs of ``data/ko_tax_qa.jsonl`` per domain for one split."""
    from course_utils.core.data import load_rows

    rows = load_rows("ko_tax_qa", split)
    return {d: [(r["question"], r["answer"]) for r in rows if r["domain"] == d] for d in DOMAINS}
