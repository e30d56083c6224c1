"""Exercises of notebook 09 (capstone: the tax chatbot that keeps learning)."""

import sqlite3
import tempfile
from pathlib import Path

from course_utils.exercises import Exercise, Incorrect

# ----------------------------------------------------------------------------- Q1: validation

CANDIDATES = [
    ("부가가치세 세율은?", "기본세율은 10%입니다.", 0.9, "tax"),
    ("   ", "답변입니다.", 0.9, "tax"),
    ("원천징수란?", "소득을 지급할 때 세금을 미리 떼어 내는 제도입니다.", 1.2, "tax"),
    ("복식부기란?", "모든 거래를 차변과 대변에 기록합니다.", "0.8", "accounting"),
    ("안녕하세요!", "안녕하세요! 무엇이 궁금하세요?", 0.0, "general"),
    ("재무제표란?", "재무상태표, 손익계산서 등입니다.", 0.7, "finance"),
    ("연말정산은 언제 하나요?", b"2\xec\x9b\x94 \xea\xb8\x89\xec\x97\xac", 1.0, "tax"),
]


def stored_indices() -> list[int]:
    """Indices of ``CANDIDATES`` that ``validate_feedback`` accepts (what the store would keep)."""
    from course_utils.chatbot.store import FeedbackError, validate_feedback

    ok = []
    for i, (q, a, quality, domain) in enumerate(CANDIDATES):
        try:
            validate_feedback(q, a, quality, domain)
            ok.append(i)
        except FeedbackError:
            pass
    return ok


def _check_q1(indices) -> None:
    try:
        got = sorted(int(i) for i in indices)
    except (TypeError, ValueError):
        raise Incorrect(f"expected a list of indices such as [0, 2], got {indices!r}") from None
    want = stored_indices()
    if 4 in want and 4 not in got:
        raise Incorrect("quality 0.0 is a valid score: [0, 1] includes both ends (a 👎 is still useful data)")
    if 6 in want and 6 not in got:
        raise Incorrect("valid UTF-8 bytes are accepted and decoded; only invalid byte sequences are refused")
    if got != want:
        extra = sorted(set(got) - set(want))
        raise Incorrect(f"{extra or 'some'} would be refused, or one you left out is fine: check each argument "
                        "(empty text, a score outside [0, 1] or not a number, an unknown domain)")


q1 = Exercise(
    name="Q1 🐢 which feedback gets stored?",
    checker=_check_q1,
    hint_text="Go through `CANDIDATES` argument by argument: text must be non-empty valid UTF-8, quality a "
              "real number (not a string) in [0, 1], domain one of tax / accounting / general.",
    solution_text="```python\nstored = [0, 4, 6]  # 1: blank question · 2: quality 1.2 · 3: quality is a "
                  "string · 5: unknown domain\n```\nCheck it with `validate_feedback(*CANDIDATES[i])`.",
    solution_answer=lambda: (stored_indices(),),
    wrong_answer=lambda: ([0],),
)

# ----------------------------------------------------------------------------- Q2: the gate

ROUNDS = [(1.90, 1.70), (1.70, 1.71), (1.70, 1.75), (1.70, float("nan"))]   # (live, candidate) held-out loss
TOLERANCE = 0.01


def gate_decisions() -> list[bool]:
    """The package's gate applied to ``ROUNDS`` with ``TOLERANCE``."""
    from course_utils.chatbot.bot import should_accept

    return [should_accept(live, cand, TOLERANCE) for live, cand in ROUNDS]


def _check_q2(decisions) -> None:
    if not isinstance(decisions, (list, tuple)) or len(decisions) != len(ROUNDS) or not all(
            isinstance(d, bool) for d in decisions):
        raise Incorrect(f"expected a list of {len(ROUNDS)} True/False values, got {decisions!r}")
    want = gate_decisions()
    if list(decisions) == want:
        return
    if decisions[1] is False:
        raise Incorrect("round 2 is 0.6 % worse, inside the 1 % tolerance: it goes live")
    if decisions[3] is True:
        raise Incorrect("a NaN loss means training diverged: the gate must reject it")
    raise Incorrect("compare each candidate with live × (1 + tolerance); lower loss is better")


q2 = Exercise(
    name="Q2 🐕 what does the eval gate decide?",
    checker=_check_q2,
    hint_text="Accept when `candidate <= live * (1 + TOLERANCE)`; a NaN candidate is never accepted.",
    solution_text="```python\ndecisions = [True, True, False, False]\n# 1.70 ≤ 1.919 · 1.71 ≤ 1.717 · "
                  "1.75 > 1.717 · NaN → reject\n```",
    solution_answer=lambda: (gate_decisions(),),
    wrong_answer=lambda: ([True, False, False, False],),
)

# ----------------------------------------------------------------------------- Q3: the trigger query

THRESHOLD = 0.7


def _scratch_store(folder: Path):
    """A store with a known mix: pending/used, above/below the threshold, three domains."""
    from course_utils.chatbot.store import DOMAINS, FeedbackStore

    store = FeedbackStore(folder / "q3.db")
    rows = [(d, q) for d in DOMAINS for q in (0.2, 0.69, 0.7, 0.9, 1.0)]
    ids = store.add_many([dict(question=f"{d} 질문 {i}", answer="답변", quality=q, domain=d)
                          for i, (d, q) in enumerate(rows)])
    # records 0–5 were used by an accepted round
    store.commit_round("tax", "accepted", ids[:6], 0, 0, 2.0, 1.9, 0.01, 1.0, version=1)
    return store


def _check_q3(sql) -> None:
    if not isinstance(sql, str) or "select" not in sql.lower():
        raise Incorrect(f"expected an SQL SELECT statement as a string, got {sql!r}")
    with tempfile.TemporaryDirectory() as tmp:
        store = _scratch_store(Path(tmp))
        want = store.count_pending("tax", THRESHOLD)
        try:
            got = store._read(sql)
        except sqlite3.Error as e:
            store.close()
            raise Incorrect(f"SQLite refused the query: {e}") from None
        total_tax = store.count("tax")
        store.close()
    value = got[0][0] if got and len(got[0]) == 1 else None
    if value == want:
        return
    if value == total_tax:
        raise Incorrect("that counts every tax record: keep only pending ones above the threshold")
    raise Incorrect(f"your query returned {got[0][:] if got else 'no rows'}, expected one number "
                    "(pending tax records at or above 0.7)")


q3 = Exercise(
    name="Q3 🦁 write the trigger's query",
    checker=_check_q3,
    hint_text="Table `feedback`: filter on `domain`, on `used_in_training = 0` (not yet trained on) and on "
              "`quality >= 0.7`, and return `count(*)`.",
    solution_text="```python\nsql = (\"SELECT count(*) FROM feedback WHERE domain = 'tax' \"\n"
                  "       \"AND used_in_training = 0 AND quality >= 0.7\")\n```",
    solution_answer=lambda: ("SELECT count(*) FROM feedback WHERE domain = 'tax' AND used_in_training = 0 "
                             "AND quality >= 0.7",),
    wrong_answer=lambda: ("SELECT count(*) FROM feedback WHERE domain = 'tax' AND quality >= 0.7",),
)
