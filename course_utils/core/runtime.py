"""Profile, device, seeding and environment report: the one object that decides lesson sizes.

The profile is ``cpu`` (offline, embedded model, few steps) or ``gpu`` (Colab/CUDA, hub models).
``COURSE_PROFILE`` overrides the default, which is ``gpu`` when CUDA is available, else ``cpu``.

    >>> S = settings("cpu")                           # settings(): the active profile's
    >>> S.profile, S.steps, S.batch_size, S.seq_len
    ('cpu', 12, 4, 64)

Why one module of ~430 lines: the profile, the device and dtype decisions, seeding and the timers are one
decision chain (profile → device → dtype → sizes) that every notebook reads through ``settings()``.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import random
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PROFILES = ("cpu", "gpu")
# A simulated GPU for the rehearsal (``make rehearse-gpu``): a Colab T4 unless COURSE_SIM_CAPABILITY says otherwise.
SIM_CAPABILITY = "7.5"
SIM_GPU_NAME = "Tesla T4 (simulated on the CPU by the rehearsal)"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _cuda_available() -> bool:
    """True when torch sees a CUDA device (False when torch is missing)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard requirement of the lessons
        return False
    return torch.cuda.is_available()


def in_colab() -> bool:
    """True inside Google Colab (its kernel imports ``google.colab``)."""
    return "google.colab" in sys.modules


def profile_name() -> str:
    """The active profile: ``COURSE_PROFILE`` if set, else ``gpu`` with CUDA, else ``cpu``."""
    name = os.environ.get("COURSE_PROFILE", "").strip().lower()
    if name and name not in PROFILES:
        raise ValueError(f"COURSE_PROFILE={name!r} is not a profile; choose one of {PROFILES}")
    return name or ("gpu" if _cuda_available() else "cpu")


def apply_offline_defaults() -> None:
    """In the cpu profile, set the Hugging Face offline variables unless the user set them.

    Must run before ``huggingface_hub`` is imported: it reads them once, at import.
    """
    if os.environ.get("COURSE_PROFILE", "").strip().lower() == "gpu":
        return
    if os.environ.get("COURSE_PROFILE", "").strip().lower() != "cpu" and _cuda_available():
        return
    for var in OFFLINE_VARS:
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rehearsing() -> bool:
    """True in the gpu-profile rehearsal on a CPU (``COURSE_REHEARSAL=1``, see ``course_utils.core.rehearsal``)."""
    return os.environ.get("COURSE_REHEARSAL", "").strip() == "1"


def standins() -> bool:
    """True when the hub ids resolve to the rehearsal's small random stand-ins.

    That is in the rehearsal, or with ``COURSE_STANDINS=1`` as ``make gpu-check`` sets it on a real GPU."""
    return rehearsing() or os.environ.get("COURSE_STANDINS", "").strip() == "1"


def is_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` is truthy)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """Per-profile sizes; lessons read these instead of branching on the profile.

    steps: optimizer steps of a typical training demo; batch_size/seq_len: its batch shape;
    eval_size: examples used for an evaluation; max_new_tokens: generation length.
    """

    profile: str
    device: str
    steps: int
    batch_size: int
    seq_len: int
    eval_size: int
    max_new_tokens: int
    threads: int
    rehearsal: bool = False


_SIZES = {
    "cpu": dict(steps=12, batch_size=4, seq_len=64, eval_size=16, max_new_tokens=24),
    "gpu": dict(steps=120, batch_size=8, seq_len=256, eval_size=100, max_new_tokens=64),
}
# The rehearsal runs the gpu profile's code with stand-in models on a CPU: sizes capped to what 2 cores finish.
REHEARSAL_CAPS = dict(steps=4, batch_size=2, seq_len=64, eval_size=8, max_new_tokens=8)


def capped(value: int, cap: int) -> int:
    """``value``, or at most ``cap`` in the rehearsal: for sizes a lesson writes down itself.

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"COURSE_REHEARSAL": "0"}):
    ...     capped(60, 4)
    60
    >>> with mock.patch.dict(os.environ, {"COURSE_REHEARSAL": "1"}):
    ...     capped(60, 4)
    4
    """
    return min(value, cap) if rehearsing() else value


def settings(profile: str | None = None) -> Settings:
    """The Settings of ``profile`` (default: the active profile).

    >>> settings("cpu").device
    'cpu'
    """
    apply_offline_defaults()  # before any Hugging Face library is imported (they read the variables once)
    name = profile or profile_name()
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is not one of {PROFILES}")
    rehearsal = name == "gpu" and rehearsing()
    device = "cuda" if name == "gpu" and (_cuda_available() or rehearsal) else "cpu"
    import torch

    sizes = dict(_SIZES[name])
    if rehearsal:
        from course_utils.core import rehearsal as _rehearsal

        _rehearsal.activate()  # the simulated GPU and its device audit, before any model is loaded
        sizes = {k: min(v, REHEARSAL_CAPS[k]) for k, v in sizes.items()}
    return Settings(profile=name, device=device, threads=torch.get_num_threads(), rehearsal=rehearsal, **sizes)


# --------------------------------------------------------------------------- dtype: one decision

def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of GPU 0 (e.g. (7, 5) for a T4), the simulated one in the rehearsal, or None."""
    if rehearsing():
        major, minor = os.environ.get("COURSE_SIM_CAPABILITY", SIM_CAPABILITY).split(".")
        return int(major), int(minor)
    if not _cuda_available():
        return None
    import torch

    return tuple(torch.cuda.get_device_capability(0))


def gpu_name() -> str | None:
    """Name of GPU 0 (the simulated T4 in the rehearsal), or None without one."""
    if rehearsing():
        return SIM_GPU_NAME
    if not _cuda_available():
        return None
    import torch

    return torch.cuda.get_device_name(0)


def fast_bf16() -> bool:
    """True on GPUs with native bf16 (Ampere, sm80, and newer).

    A T4 (sm75) has none: ``torch.cuda.is_bf16_supported()`` still says True there because it counts emulation,
    which is slow, and Unsloth loads fp16 on it. So the course asks the capability, not that function.
    """
    cap = cuda_capability()
    return cap is not None and cap >= (8, 0)


CPU_BF16_ENV = "COURSE_CPU_BF16"   # "1"/"0": force bf16 autocast on a CPU on/off (default: measured)
CPU_BF16_MIN_SPEEDUP = 1.5         # bf16 matmul must measure this much faster than fp32 to be used


def cpu_bf16(measure=None) -> bool:
    """True when training on this CPU runs its matmuls in bf16 (``torch.autocast("cpu")``, fp32 master weights).

    Decided by a measurement, not by CPU flags: bf16 and fp32 square matmuls timed once per machine (cached with the
    efficiency line's peak, ``course_utils.core.peaks.machine_peaks``); bf16 is used where it measures
    ≥ ``CPU_BF16_MIN_SPEEDUP``× fp32 (an AVX2-only CPU emulates bf16 and is slower than fp32).
    ``COURSE_CPU_BF16=1``/``0`` overrides. ``measure(device) -> {"fp32", "bf16"}`` fakes the measurement (tests).
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in {"0", "1", "true", "false", "yes", "no", "on", "off"}:
        return forced in {"1", "true", "yes", "on"}
    if forced:
        raise ValueError(f"{CPU_BF16_ENV}={forced!r}: use 1 (bf16 autocast) or 0 (fp32)")
    from course_utils.core.peaks import machine_peaks

    peaks = machine_peaks("cpu", measure=measure)
    return peaks["bf16"] >= CPU_BF16_MIN_SPEEDUP * peaks["fp32"]


def autocast_dtype(device: str | None = None):
    """The dtype training autocasts to: bf16 on a CPU where ``cpu_bf16()``, else None (GPUs keep 16-bit weights).

    >>> autocast_dtype("cuda") is None
    True
    """
    import torch

    device = device or settings().device
    return torch.bfloat16 if device == "cpu" and cpu_bf16() else None


def autocast_dtype_name(device: str | None = None) -> str | None:
    """``"bf16"`` when ``autocast_dtype(device)`` is bf16, else None (for reports)."""
    return "bf16" if autocast_dtype(device) is not None else None


def autocast(device: str | None = None):
    """The training forward's precision context: ``torch.autocast("cpu", bfloat16)`` where ``cpu_bf16()``.

    Elsewhere a no-op. The weights stay in ``compute_dtype`` (fp32 on a CPU): autocast casts each matmul's
    inputs.

    Example::

        with autocast("cpu"):
            loss = model(**batch).loss
    """
    import contextlib

    import torch

    dtype = autocast_dtype(device)
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def compute_dtype(device: str | None = None):
    """The dtype for weights and compute: bf16 on Ampere+, fp16 on older GPUs (T4), fp32 on a CPU.

    On a CPU with fast bf16 the weights stay fp32 and the training forward autocasts (``autocast``).

    >>> compute_dtype("cpu")
    torch.float32
    """
    import torch

    device = device or settings().device
    if device != "cuda":
        return torch.float32
    return torch.bfloat16 if fast_bf16() else torch.float16


def precision_flags(device: str | None = None) -> dict:
    """``bf16``/``fp16`` for ``TrainingArguments``/``SFTConfig``: mixed precision matching ``compute_dtype``.

    On a CPU, bf16 where ``cpu_bf16()`` (the Trainer then autocasts on the CPU and keeps fp32 weights).

    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"COURSE_CPU_BF16": "0"}):    # as on a CPU whose bf16 is not faster
    ...     precision_flags("cpu")
    {'bf16': False, 'fp16': False}
    >>> with mock.patch.dict(os.environ, {"COURSE_CPU_BF16": "1"}):    # as on a CPU whose bf16 is faster
    ...     precision_flags("cpu")
    {'bf16': True, 'fp16': False}
    """
    import torch

    device = device or settings().device
    dtype = compute_dtype(device)
    return {"bf16": dtype == torch.bfloat16 or autocast_dtype(device) == torch.bfloat16,
            "fp16": dtype == torch.float16}


# --------------------------------------------------------------------------- one device convention

def real_cuda() -> bool:
    """True on a real CUDA GPU (False on a CPU, and in the rehearsal, whose GPU is simulated)."""
    return _cuda_available()


def synchronize() -> None:
    """Wait for queued GPU work (for timing); nothing to wait for on a CPU or in the rehearsal."""
    if real_cuda():
        import torch

        torch.cuda.synchronize()


def wall_times(fn, repeats: int = 7, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` calls (GPU work synced)."""
    import time

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize()
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, repeats: int = 7, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    >>> median_time(lambda: sum(range(10)), repeats=3) >= 0
    True
    """
    times = sorted(wall_times(fn, repeats, warmup))
    return times[len(times) // 2]


def device_of(model) -> torch.device:
    """The device a model's inputs must be on (its first parameter's)."""
    if rehearsing() and any(getattr(m, "_course_on_gpu", False) for m in model.modules()):
        import torch  # the rehearsal's simulated GPU (a peft wrapper around a placed model included)

        return torch.device("cuda", 0)
    return next(model.parameters()).device


def to_device(batch, model_or_device):
    """Move a tensor, a tokenizer batch, or a dict/list of tensors to a model's device (the one way in).

    Returns a new batch: unlike ``BatchEncoding.to``, the batch passed in is never changed in place.

    >>> import torch
    >>> batch = {"input_ids": torch.ones(1, 3, dtype=torch.long)}       # or a tokenizer's BatchEncoding
    >>> moved = to_device(batch, torch.nn.Linear(2, 2))                 # to the model's device, here the CPU
    >>> moved["input_ids"].device, moved is batch
    (device(type='cpu'), False)
    """
    import torch

    device = model_or_device if isinstance(model_or_device, (str, torch.device)) else device_of(model_or_device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(getattr(batch, "data", None), dict):  # a tokenizer's BatchEncoding: copied, never moved in place
        import copy

        out = copy.copy(batch)
        out.data = {k: to_device(v, device) if _movable(v) else v for k, v in batch.data.items()}
        return out
    if isinstance(batch, dict):
        return {k: to_device(v, device) if _movable(v) else v for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) if _movable(v) else v for v in batch)
    raise TypeError(f"to_device: cannot move a {type(batch).__name__}; pass a tensor, a dict, a list or a batch")


def _movable(v) -> bool:
    import torch

    return isinstance(v, (torch.Tensor, dict, list, tuple))


def to_cpu(t):
    """A detached CPU copy of a tensor (the one way out, for plots, tables and numpy)."""
    return t.detach().cpu()


def to_numpy(t):
    """A tensor as a numpy array, whatever its device and dtype (numpy has no bf16: those become fp32).

    >>> import torch
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16))
    array([1., 1.], dtype=float32)
    """
    import torch

    t = to_cpu(t)
    return (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t).numpy()


def check_real(condition: bool, message: str) -> bool:
    """Assert a checkpoint that holds only for the real model (its size, what it learned); the rehearsal reports it.

    The rehearsal's stand-in models have random weights, so "answers in Korean" cannot hold there; every other
    checkpoint stays a plain ``assert``. The cpu and gpu profiles always assert; only runs on stand-ins
    (``standins()``: the rehearsal, and ``make gpu-check``) report.
    """
    if standins():
        print(f"rehearsal: reported, not asserted ({'holds' if condition else 'does not hold'} on random stand-in "
              f"weights): {message}")
        return bool(condition)
    if not condition:
        raise AssertionError(message)
    return True


def seed_everything(seed: int = 0) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so lesson numbers repeat run to run."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


REPORTED_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate",
                     "bitsandbytes", "unsloth")


def env_report() -> dict:
    """Versions, device, profile and offline state as a dict (what ``preflight.print_env`` shows)."""
    s = settings()
    cap = cuda_capability()
    report = {"python": platform.python_version(), "platform": platform.platform(terse=True),
              **{p: _version(p) for p in REPORTED_PACKAGES}, "profile": s.profile, "device": s.device,
              "cuda": f"{gpu_name()} (sm{cap[0]}{cap[1]})" if cap else "none",
              "dtype": str(compute_dtype(s.device)).replace("torch.", "") + (
                  " weights, bf16 autocast (" + ("forced by " + CPU_BF16_ENV if os.environ.get(CPU_BF16_ENV, "").strip()
                                                 else "measured faster here") + ")"
                  if autocast_dtype(s.device) is not None else ""),
              "rehearsal": s.rehearsal,
              "torch threads": s.threads, "colab": in_colab(), "hf offline": is_offline()}
    return report
