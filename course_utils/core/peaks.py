"""This machine's matmul peak, measured once and cached: the efficiency line's MFU denominator
(``course_utils.core.efficiency``) and the CPU's bf16 decision (``runtime.cpu_bf16``) read the same measurement.

The peak is measured once per machine (fp32 and bf16 square matmuls with torch's threads) and cached in
``~/.cache/course-kit/machine-peaks.json`` (``$COURSE_CACHE_DIR`` overrides the folder). This module imports
nothing of the course, so that ``runtime`` can ask it without a cycle.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

PEAK_N, PEAK_REPEATS = 1024, 5          # square matmul size and timed repeats of the cached peak probe
CACHE_ENV = "COURSE_CACHE_DIR"


# --------------------------------------------------------------------------- the machine's peak (cached)

def cache_path() -> Path:
    """``$COURSE_CACHE_DIR/machine-peaks.json`` (default ``~/.cache/course-kit/``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "course-kit"
    return Path(root) / "machine-peaks.json"


def machine_key(device: str = "cpu") -> str:
    """What the peak depends on: the processor (or GPU), torch's threads and torch's version."""
    import platform

    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
        except OSError:
            pass
    return f"{device}|{name}|threads={torch.get_num_threads()}|torch={torch.__version__}"


_PEAKS: dict[str, dict] = {}
_LOCK = threading.Lock()


def cpu_matmul_flops(dtype, n: int = PEAK_N, repeats: int = PEAK_REPEATS) -> float:
    """FLOP/s of one CPU core on an n×n matmul in ``dtype``, by the thread's CPU time (best of ``repeats``).

    CPU time, not wall time: on a shared machine other processes pause this one, which a wall clock would count
    (on this course's 2-core machine under a load of 17, wall-clock probes read 10× low and even flipped the
    bf16/fp32 order); the CPU time a matmul consumes does not depend on the load.
    """
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.thread_time()
            torch.mm(a, b)
            best = min(best, time.thread_time() - t0)
    finally:
        torch.set_num_threads(threads)
    return 2 * n ** 3 / max(best, 1e-9)


def matmul_flops(dtype=None, n: int = PEAK_N, repeats: int = PEAK_REPEATS, device: str = "cpu") -> float:
    """FLOP/s of an n×n by n×n matmul in ``dtype`` (default fp32) on ``device``, best of ``repeats`` after one warm-up.

    Wall time, on a CPU with torch's current threads; on a GPU each call waits for the kernel
    (``torch.cuda.synchronize``). ``python -m course_utils.bench efficiency`` reports it too.
    """
    import time

    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype or torch.float32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def measure_peaks(device: str = "cpu") -> dict:
    """{"fp32": FLOP/s, "bf16": FLOP/s} of square matmuls on ``device``.

    On a CPU one core's (CPU time) × torch's threads; on a GPU ``matmul_flops`` (wall time, synchronized)."""
    import torch

    if device == "cuda":
        return {d: matmul_flops(getattr(torch, t), n=PEAK_N, repeats=PEAK_REPEATS, device="cuda")
                for d, t in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))}
    threads = torch.get_num_threads()
    return {"fp32": threads * cpu_matmul_flops(torch.float32), "bf16": threads * cpu_matmul_flops(torch.bfloat16),
            "how": f"one core's matmul by CPU time ({PEAK_N}², best of {PEAK_REPEATS}) × {threads} threads"}


def machine_peaks(device: str = "cpu", measure=None) -> dict:
    """The matmul peaks of this machine: measured once, then read from the cache (per machine key).

    ``measure(device) -> {"fp32", "bf16"}`` replaces the measurement (tests pass fake numbers).
    """
    key = machine_key(device)
    with _LOCK:
        if key in _PEAKS:
            return _PEAKS[key]
        path = cache_path()
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        if not isinstance(cached.get(key), dict):
            cached[key] = (measure or measure_peaks)(device)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(cached, indent=1))
                tmp.replace(path)
            except OSError:
                pass  # a read-only home: measured again next session
        _PEAKS[key] = cached[key]
        return _PEAKS[key]
