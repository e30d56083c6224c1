"""Process-level reliability of the feedback store: SIGKILL mid-stream, concurrent writer processes.

A writer process prints the id of every record right after ``add()`` returned (the acknowledgement a
client would see). The parent kills it with SIGKILL in the middle of the stream, then checks that every
acknowledged record is in the database, byte for byte, and that the file passes ``integrity_check``.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from course_utils.chatbot.store import FeedbackStore, read_rest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent("""
    import sys
    import time
    from course_utils.chatbot.store import FeedbackStore

    path, sync, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = FeedbackStore(path, synchronous=sync)
    print("ready", flush=True)
    sys.stdin.readline()                     # wait for "go", so that two writers start together
    print("start", time.time(), flush=True)
    for i in range(n):
        rid = store.add(f"{tag} 질문 {i}: 부가가치세 신고 기한은?", f"{tag} 답변 {i}", (i % 11) / 10, "tax")
        print(rid, i, flush=True)          # acknowledged: add() returned, the commit is done
    print("done", time.time(), flush=True)
""")


def start_writer(db: Path, sync: str, tag: str, n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), sync, tag, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def go(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()


def stamp(out: str, word: str) -> float:
    """The wall-clock time a writer printed after ``word`` ("start" or "done")."""
    return next(float(line.split()[1]) for line in out.splitlines() if line.startswith(word + " "))


def acks(lines: list[str]) -> dict[int, int]:
    """record id → loop index from the writer's acknowledgement lines."""
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def check_records(db: Path, tag: str, acked: dict[int, int]) -> dict[int, dict]:
    """Open the database after the fact: integrity ok, every acknowledged record present and exact."""
    with FeedbackStore(db) as store:
        assert store.integrity_check() == "ok"
        rows = {r["id"]: r for r in store.rows()}
        for rid, i in acked.items():
            assert rid in rows, f"acknowledged record {rid} (write #{i}) is missing"
            r = rows[rid]
            assert (r["question"], r["answer"], r["quality"]) == (f"{tag} 질문 {i}: 부가가치세 신고 기한은?",
                                                                  f"{tag} 답변 {i}", (i % 11) / 10)
        store.add("재시작 후 질문", "재시작 후 답변", 1.0, "general")  # and it is writable again
    return rows


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
def test_sigkill_mid_stream_loses_no_acknowledged_record(tmp_path, sync):
    db = tmp_path / "feedback.db"
    proc = start_writer(db, sync, "kill", 10**9)
    go(proc)
    assert proc.stdout.readline().startswith("start ")
    lines, t0 = [], time.monotonic()
    while len(lines) < 150 and time.monotonic() - t0 < 120:  # let it write a while, then kill it mid-stream
        lines.append(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    rest, _ = read_rest(proc)  # acknowledgements still in the pipe (or read ahead) count too
    assert proc.returncode == -signal.SIGKILL
    acked = acks(lines + rest.splitlines())
    assert len(acked) >= 150 and "done" not in rest
    rows = check_records(db, "kill", acked)
    assert len(rows) - len(acked) in (0, 1), "at most the one write in flight (never acknowledged) may be extra"
    assert sorted(acked) == list(range(1, len(acked) + 1)), "ids are dense: nothing was skipped or reused"


@pytest.mark.timeout(240)
def test_two_concurrent_writer_processes_lose_nothing(tmp_path):
    db = tmp_path / "feedback.db"
    FeedbackStore(db).close()  # create the schema once, before both writers race
    n = 5000  # ~0.5 s of writes each here: long enough that two processes told "go" together overlap
    procs = {tag: start_writer(db, "NORMAL", tag, n) for tag in ("A", "B")}
    go(*procs.values())
    outs = {tag: p.communicate(timeout=200) for tag, p in procs.items()}
    for tag, p in procs.items():
        assert p.returncode == 0, outs[tag][1][-2000:]
    acked = {tag: acks(outs[tag][0].splitlines()) for tag in procs}
    assert all(len(a) == n for a in acked.values())
    assert not set(acked["A"]) & set(acked["B"]), "two writers got the same id"
    with FeedbackStore(db) as store:
        assert store.integrity_check() == "ok"
        rows = {r["id"]: r for r in store.rows()}
    assert len(rows) == 2 * n
    for tag in procs:
        for rid, i in acked[tag].items():
            assert rows[rid]["answer"] == f"{tag} 답변 {i}"
    # Concurrency was tested if each writer started before the other finished: then one of them wrote while
    # the other held or waited for the lock. (Whether their ids interleave is up to SQLite's busy handler,
    # which is not fair: a writer that commits back to back can keep the lock until it is done.)
    span = {tag: (stamp(outs[tag][0], "start"), stamp(outs[tag][0], "done")) for tag in procs}
    assert span["A"][0] < span["B"][1] and span["B"][0] < span["A"][1], \
        f"the two writers did not overlap in time ({span}): the test did not test concurrency"


@pytest.mark.timeout(240)
def test_sigkill_demo_counts_every_acknowledgement(tmp_path):
    """nb09's demo: no acknowledged id missing, and at most the one write in flight stored but unacknowledged."""
    from course_utils.chatbot.store import sigkill_demo

    c = sigkill_demo(tmp_path / "kill.db", after=300)
    assert c["acknowledged"] >= 300 and c["missing"] == [] and c["integrity"] == "ok"
    assert c["stored"] - c["acknowledged"] in (0, 1), c


def test_read_rest_keeps_the_lines_readline_read_ahead():
    """2000 lines wait in the pipe; after one readline() most sit in proc.stdout's buffer, not the pipe.

    ``communicate()`` returned 140 of the 1999 left here (it reads the descriptor, not the buffer).
    """
    # one write() of ~9 kB: all of it is in the pipe before readline() can return (a pipe holds 64 kB)
    code = "import os, time\nos.write(1, ''.join(f'{i}\\n' for i in range(2000)).encode())\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # blocks until the write: then the buffer holds what the pipe had
    proc.send_signal(signal.SIGKILL)
    rest, _ = read_rest(proc)
    assert [first, *rest.splitlines(keepends=True)] == [f"{i}\n" for i in range(2000)]
