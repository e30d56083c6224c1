"""The capstone chatbot's feedback store: strict input validation and a crash-safe SQLite table.

One row per feedback: question, answer (the user's correction when there is one), quality 0–1, domain,
timestamp, and ``used_in_training`` (0 = not yet; otherwise the id of the training round that used it).
Bad input raises ``FeedbackError`` naming the argument, and nothing is stored.

Example::

    store = FeedbackStore("outputs/chatbot/feedback.db")
    store.add("부가가치세 세율은?", "기본세율은 10%입니다.", quality=0.9, domain="tax")   # 1
    store.count_pending("tax", threshold=0.7)                                       # 1

Durability: WAL journal + ``synchronous=NORMAL`` by default. A commit writes its WAL frames with
``write()`` before it returns, so they sit in the operating system's page cache: a process killed with
SIGKILL right after ``add()`` returned loses nothing (``tests/test_chatbot_reliability.py`` kills writers to
prove it). What NORMAL does not promise is the last few commits after a *power cut or OS crash*: the WAL is
fsync'ed at checkpoints, not at every commit. ``synchronous="FULL"`` fsyncs every commit and closes that gap
too, at the price of one fsync per commit (``course_utils.bench.chatbot.bench_feedback_writes`` measures the
rate on your disk) — use it with ``add_many`` (one fsync per batch) when a power cut must not lose
acknowledged feedback.

Why one module of ~400 lines: validation, the schema and the SQLite durability settings are one contract
(what is accepted is what survives a SIGKILL), tested together in tests/test_chatbot_reliability.py.
"""

from __future__ import annotations

import math
import numbers
import random
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from course_utils.core.data import SCHEMAS

if TYPE_CHECKING:  # only for read_rest's annotation; sigkill_demo imports it when it runs
    import subprocess

DOMAINS = SCHEMAS["ko_tax_qa"]["domain"][1]   # ("tax", "accounting", "general"): the data set's domains, one adapter each
MAX_TEXT_CHARS = 2000       # per question / answer; the course data's longest answer has 107 characters
SYNCHRONOUS = "NORMAL"      # see the module docstring: SIGKILL-safe; FULL adds power-cut safety
BUSY_TIMEOUT_MS = 30_000    # a second writer process waits this long for the write lock instead of failing

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS feedback (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    question         TEXT    NOT NULL CHECK (length(trim(question)) > 0),
    answer           TEXT    NOT NULL CHECK (length(trim(answer)) > 0),
    quality          REAL    NOT NULL CHECK (quality >= 0 AND quality <= 1),
    domain           TEXT    NOT NULL CHECK (domain IN ({", ".join(repr(d) for d in DOMAINS)})),
    corrected        INTEGER NOT NULL DEFAULT 0 CHECK (corrected IN (0, 1)),
    created_at       TEXT    NOT NULL,
    used_in_training INTEGER NOT NULL DEFAULT 0   -- 0 = not yet, else rounds.id
);
CREATE INDEX IF NOT EXISTS feedback_pending ON feedback (domain, used_in_training, quality);
CREATE TABLE IF NOT EXISTS rounds (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    domain          TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('accepted', 'rejected', 'failed')),
    version         INTEGER,          -- the saved adapter version (accepted rounds)
    live_version    INTEGER NOT NULL, -- the version that was live while the round ran
    n_new           INTEGER NOT NULL,
    n_replay        INTEGER NOT NULL,
    live_score      REAL,             -- held-out answer loss of the live adapter (lower is better)
    candidate_score REAL,             -- held-out answer loss of the new adapter
    tolerance       REAL,
    seconds         REAL,
    manifest_sha256 TEXT,
    error           TEXT,
    created_at      TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS live (
    domain          TEXT PRIMARY KEY,
    version         INTEGER NOT NULL,
    manifest_sha256 TEXT,
    round_id        INTEGER,
    updated_at      TEXT NOT NULL
);
"""


class FeedbackError(ValueError):
    """Invalid feedback input; ``.argument`` names the offending argument. Nothing was stored."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument


# --------------------------------------------------------------------------- validation

def validate_text(argument: str, value, max_chars: int = MAX_TEXT_CHARS) -> str:
    """A clean ``str`` from ``value`` (str or UTF-8 bytes), or ``FeedbackError`` naming ``argument``.

    Rejects: non-text types, invalid UTF-8 (bytes, or str holding lone surrogates such as
    ``surrogateescape`` leftovers), NUL characters, empty or whitespace-only text, text over ``max_chars``.

    >>> validate_text("question", b"  \\xeb\\xb6\\x80\\xea\\xb0\\x80\\xec\\x84\\xb8?  ")
    '부가세?'
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise FeedbackError(argument, f"is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(value, str):
        raise FeedbackError(argument, f"must be text (str), got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise FeedbackError(argument, f"is not valid UTF-8 (lone surrogate at character {e.start})") from None
    if "\x00" in value:
        raise FeedbackError(argument, "contains a NUL character")
    value = value.strip()
    if not value:
        raise FeedbackError(argument, "is empty or only whitespace")
    if len(value) > max_chars:
        raise FeedbackError(argument, f"has {len(value):,} characters; the limit is {max_chars:,}")
    return value


def validate_quality(value) -> float:
    """A quality score as a float in [0, 1], or ``FeedbackError('quality', …)``.

    Booleans, strings, None, NaN and ±inf are refused (``True`` is an int in Python, but not a score).

    >>> validate_quality(0.8)
    0.8
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FeedbackError("quality", f"must be a number in [0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise FeedbackError("quality", f"must be a number in [0, 1], got {value!r}")
    return value


def validate_domain(value) -> str:
    """One of ``DOMAINS``, or ``FeedbackError('domain', …)``.

    >>> validate_domain("tax")
    'tax'
    """
    if not isinstance(value, str) or value not in DOMAINS:
        raise FeedbackError("domain", f"must be one of {DOMAINS}, got {value!r}")
    return value


@dataclass(frozen=True)
class Feedback:
    """One validated feedback record (what a row of the ``feedback`` table holds, without bookkeeping)."""

    question: str
    answer: str
    quality: float
    domain: str
    corrected: bool = False


def validate_feedback(question, answer, quality, domain, corrected=False) -> Feedback:
    """Validate every argument and return a ``Feedback``; the first problem raises ``FeedbackError``.

    >>> validate_feedback("부가가치세 세율은?", "10%입니다.", 1, "tax").quality
    1.0
    """
    if not isinstance(corrected, bool):
        raise FeedbackError("corrected", f"must be True or False, got {corrected!r}")
    return Feedback(validate_text("question", question), validate_text("answer", answer),
                    validate_quality(quality), validate_domain(domain), corrected)


# --------------------------------------------------------------------------- the database

def now_iso() -> str:
    """The current UTC time as ISO-8601 text with milliseconds (what ``created_at`` stores)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(path: str | Path, synchronous: str = SYNCHRONOUS) -> sqlite3.Connection:
    """Open (or create) the feedback database with the course's PRAGMAs and schema.

    WAL lets readers (the dashboard, the trainer) run while a writer commits; ``busy_timeout`` makes a
    second writer process wait for the lock instead of failing with "database is locked".
    """
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous={synchronous!r}: expected OFF, NORMAL, FULL or EXTRA")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE takes the write lock up front)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise RuntimeError(f"{path}: could not switch to WAL (journal_mode={mode}); is it on a network drive?")
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(SCHEMA)
    return conn


class FeedbackStore:
    """The feedback table plus the training bookkeeping (rounds, live adapter versions).

    Thread-safe within a process (one connection behind a lock); several processes may write at once
    (WAL + busy timeout). Every write is its own transaction, committed before the method returns.
    """

    def __init__(self, path: str | Path, synchronous: str = SYNCHRONOUS):
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self._conn = connect(self.path, self.synchronous)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        """Close the connection (the data is already committed)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, fn):
        """Run ``fn(conn)`` inside BEGIN IMMEDIATE … COMMIT (ROLLBACK on any error) and return its result."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return out

    def _read(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def pragma(self, name: str):
        """The value of ``PRAGMA name`` (e.g. ``"journal_mode"`` → ``"wal"``, ``"synchronous"`` → 1)."""
        return self._read(f"PRAGMA {name}")[0][0]

    def integrity_check(self) -> str:
        """SQLite's own consistency check: ``"ok"`` for a healthy file."""
        return self.pragma("integrity_check")

    # ------------------------------------------------------------------ feedback
    def add(self, question, answer, quality, domain, corrected: bool = False) -> int:
        """Validate and store one feedback; return its id once it is committed.

        Example: ``store.add("복식부기란?", "모든 거래를 차변과 대변에 기록하는 방식입니다.", 0.9, "accounting")``.
        """
        fb = validate_feedback(question, answer, quality, domain, corrected)
        return self._write(lambda c: c.execute(
            "INSERT INTO feedback (question, answer, quality, domain, corrected, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (fb.question, fb.answer, fb.quality, fb.domain, int(fb.corrected), now_iso())).lastrowid)

    def add_many(self, items: list[dict]) -> list[int]:
        """Validate every item first, then store all of them in one transaction (one fsync); return ids.

        Each item holds the keyword arguments of ``add``. One bad item stores nothing.
        """
        fbs = []
        for i, item in enumerate(items):
            try:
                fbs.append(validate_feedback(**item))
            except FeedbackError as e:
                raise FeedbackError(f"items[{i}].{e.argument}", str(e).split(": ", 1)[1]) from None
        stamp = now_iso()
        return self._write(lambda c: [c.execute(
            "INSERT INTO feedback (question, answer, quality, domain, corrected, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (f.question, f.answer, f.quality, f.domain, int(f.corrected), stamp)).lastrowid for f in fbs])

    def count(self, domain: str | None = None) -> int:
        """Number of stored feedback rows (of one domain, or all)."""
        if domain is None:
            return self._read("SELECT count(*) FROM feedback")[0][0]
        return self._read("SELECT count(*) FROM feedback WHERE domain = ?", (validate_domain(domain),))[0][0]

    def rows(self, domain: str | None = None) -> list[dict]:
        """All feedback rows (of one domain, or all) as dicts, oldest first."""
        if domain is None:
            return [dict(r) for r in self._read("SELECT * FROM feedback ORDER BY id")]
        return [dict(r) for r in self._read("SELECT * FROM feedback WHERE domain = ? ORDER BY id",
                                            (validate_domain(domain),))]

    def count_pending(self, domain: str, threshold: float) -> int:
        """Rows of ``domain`` not yet used in training whose quality is at least ``threshold``."""
        return self._read("SELECT count(*) FROM feedback WHERE domain = ? AND used_in_training = 0 "
                          "AND quality >= ?", (validate_domain(domain), threshold))[0][0]

    def pending(self, domain: str, threshold: float, limit: int | None = None) -> list[dict]:
        """The oldest pending rows of ``domain`` at or above ``threshold`` (at most ``limit``)."""
        return [dict(r) for r in self._read(
            "SELECT * FROM feedback WHERE domain = ? AND used_in_training = 0 AND quality >= ? "
            "ORDER BY id LIMIT ?", (validate_domain(domain), threshold, -1 if limit is None else limit))]

    def replay_sample(self, domain: str, k: int, threshold: float, seed: int = 0) -> list[dict]:
        """Up to ``k`` older rows of ``domain`` that an *accepted* round trained on, drawn with ``seed``.

        Rejected rounds' rows are quarantined, never replayed; the same seed draws the same rows."""
        rows = [dict(r) for r in self._read(
            "SELECT f.* FROM feedback f JOIN rounds r ON f.used_in_training = r.id "
            "WHERE f.domain = ? AND r.status = 'accepted' AND f.quality >= ? ORDER BY f.id",
            (validate_domain(domain), threshold))]
        return random.Random(seed).sample(rows, min(k, len(rows)))

    # ------------------------------------------------------------------ rounds and live versions
    def live_version(self, domain: str) -> tuple[int, str | None]:
        """(version, manifest SHA-256) of the live adapter of ``domain``; (0, None) = the untouched base."""
        row = self._read("SELECT version, manifest_sha256 FROM live WHERE domain = ?", (validate_domain(domain),))
        return (row[0][0], row[0][1]) if row else (0, None)

    def commit_round(self, domain: str, status: str, record_ids: list[int], live_version: int,
                     n_replay: int, live_score: float | None, candidate_score: float | None,
                     tolerance: float, seconds: float, version: int | None = None,
                     manifest_sha256: str | None = None, error: str | None = None) -> int:
        """Record a finished round in ONE transaction — the commit point of a training round.

        accepted: insert the round, mark its records used, point ``live`` at the new version.
        rejected: insert the round and mark its records used (quarantined: they are not retried).
        failed:   insert the round only; its records stay pending.
        """
        if status not in ("accepted", "rejected", "failed"):
            raise ValueError(f"status={status!r}")
        if status == "accepted" and version is None:
            raise ValueError("an accepted round needs the saved adapter version")

        def txn(c: sqlite3.Connection) -> int:
            rid = c.execute(
                "INSERT INTO rounds (domain, status, version, live_version, n_new, n_replay, live_score, "
                "candidate_score, tolerance, seconds, manifest_sha256, error, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (domain, status, version, live_version, len(record_ids), n_replay, live_score,
                 candidate_score, tolerance, seconds, manifest_sha256, error, now_iso())).lastrowid
            if status != "failed":
                c.executemany("UPDATE feedback SET used_in_training = ? WHERE id = ? AND used_in_training = 0",
                              [(rid, i) for i in record_ids])
            if status == "accepted":
                c.execute("INSERT INTO live (domain, version, manifest_sha256, round_id, updated_at) "
                          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET version = excluded.version, "
                          "manifest_sha256 = excluded.manifest_sha256, round_id = excluded.round_id, "
                          "updated_at = excluded.updated_at",
                          (domain, version, manifest_sha256, rid, now_iso()))
            return rid

        return self._write(txn)

    def rounds(self, domain: str | None = None) -> list[dict]:
        """Every recorded training round (of one domain, or all), oldest first."""
        if domain is None:
            return [dict(r) for r in self._read("SELECT * FROM rounds ORDER BY id")]
        return [dict(r) for r in self._read("SELECT * FROM rounds WHERE domain = ? ORDER BY id", (domain,))]


# --------------------------------------------------------------------------- a crash you can watch

_WRITER = """
import sys
from course_utils.chatbot.store import FeedbackStore

store = FeedbackStore(sys.argv[1], synchronous=sys.argv[2])
for i in range(10**9):
    rid = store.add(f"질문 {i}: 원천징수 세액은 언제까지 내나요?", f"답변 {i}", 1.0, "tax")
    print(rid, flush=True)  # the acknowledgement: add() has returned, so the commit is done
"""


def read_rest(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[str, str]:
    """Wait for a (killed) text-mode process and return the rest of its stdout and stderr.

    Example: ``proc.kill(); out, err = read_rest(proc)`` (tests/test_chatbot_reliability.py runs it).

    Not ``proc.communicate()``: with two pipes it reads the file descriptors directly, so lines that an
    earlier ``proc.stdout.readline()`` had already pulled into the buffer would be lost (in CI: 11
    acknowledgements of a writer under SIGKILL). ``read()`` returns the buffer first, then the pipe to EOF.
    """
    proc.wait(timeout=timeout_s)  # the process is gone, so neither read below can block on a full pipe
    return proc.stdout.read(), proc.stderr.read()


def sigkill_demo(path: str | Path, synchronous: str = SYNCHRONOUS, after: int = 200, timeout_s: float = 120) -> dict:
    """SIGKILL a process streaming feedback into ``path``, then check the database it leaves.

    The writer is killed after ``after`` acknowledged writes; the database is reopened: which acknowledged
    ids are missing, and does it pass ``integrity_check``?

    Example: ``sigkill_demo("outputs/kill.db")["missing"]`` is ``[]``.
    """
    import os
    import signal
    import subprocess
    import sys
    import time

    from course_utils import REPO_ROOT

    root = REPO_ROOT
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), synchronous], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines, t0 = [], time.monotonic()
    while len(lines) < after and time.monotonic() - t0 < timeout_s:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    proc.send_signal(signal.SIGKILL)  # no clean-up code runs: like a crash or the OOM killer
    rest, err = read_rest(proc, timeout_s)
    if proc.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the writer ended with {proc.returncode} before it was killed: {err[-500:]}")
    acked = [int(x) for x in (lines + rest.splitlines()) if x.strip().isdigit()]
    with FeedbackStore(path, synchronous) as store:
        stored = {r["id"] for r in store.rows()}
        integrity = store.integrity_check()
    return {"acknowledged": len(acked), "stored": len(stored), "missing": sorted(set(acked) - stored),
            "integrity": integrity}
