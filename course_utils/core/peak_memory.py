"""Peak memory of a block of code, measured: the CUDA allocator's peak, or the process's peak RSS on CPU.

The lessons' memory arithmetic (``course_utils.lessons.memory``) is checked against these measurements.

>>> rss_mb() > 0
True
"""

from __future__ import annotations

import os
import threading

import torch


def rss_mb() -> float:
    """Resident memory of this process in MB."""
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def _reset_rss_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "5" resets VmHWM to the current RSS (see proc(5))
        return True
    except OSError:
        return False


def rss_high_water_mb() -> float | None:
    """Peak resident memory since the last reset in MB (Linux VmHWM), or None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB → MB
    except OSError:
        pass
    return None


class PeakMemory:
    """Context manager measuring peak memory in MB: CUDA allocator peak, or peak RSS on CPU.

    ``device`` defaults to the profile's (``runtime.settings().device``). In the rehearsal the GPU is simulated
    and its tensors live in RAM, so there the peak is RSS too.

    On Linux the CPU peak is the kernel's own high-water mark (exact, even for an allocation
    freed a microsecond later); elsewhere it falls back to sampling RSS every `interval_s`.

    >>> with PeakMemory("cpu") as mem:
    ...     x = torch.ones(2**20)   # 4 MiB
    >>> mem.peak_mb >= mem.baseline_mb > 0 and mem.delta_mb == mem.peak_mb - mem.baseline_mb
    True
    """

    def __init__(self, device: str | None = None, interval_s: float = 0.005):
        from course_utils.core.runtime import real_cuda, settings

        self.device = device or settings().device
        self._cuda = self.device == "cuda" and real_cuda()
        self.interval_s = interval_s
        self.baseline_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._kernel_hwm = False

    _active: list[PeakMemory] = []  # open CPU measurements, outermost first

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline_mb = torch.cuda.memory_allocated() / 2**20
        else:
            # Resetting the counter would erase an enclosing PeakMemory's peak: hand it over first.
            self._share_peak(rss_high_water_mb())
            self._kernel_hwm = _reset_rss_high_water_mark() and rss_high_water_mb() is not None
            PeakMemory._active.append(self)
            self.baseline_mb = self.peak_mb = rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._cuda:
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb())
            if self._kernel_hwm:
                self.peak_mb = max(self.peak_mb, rss_high_water_mb() or 0.0)
            PeakMemory._active.remove(self)
            self._share_peak(self.peak_mb)

    @staticmethod
    def _share_peak(mb: float | None) -> None:
        for outer in PeakMemory._active:
            if outer._kernel_hwm and mb is not None:
                outer.peak_mb = max(outer.peak_mb, mb)

    @property
    def delta_mb(self) -> float:
        """Peak above the memory in use when the block started."""
        return self.peak_mb - self.baseline_mb
