"""Profile, device, seeding and environment report: the one object that decides lesson sizes.

The profile is ``cpu`` (offline, embedded model, few steps) or ``gpu`` (Colab/CUDA, hub models).
``COURSE_PROFILE`` overrides the default, which is ``gpu`` when CUDA is available, else ``cpu``.

    >>> S = settings()
    >>> S.profile, S.steps, S.batch_size, S.seq_len   # e.g. ('cpu', 12, 4, 64)
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import random
import sys
from dataclasses import asdict, dataclass

PROFILES = ("cpu", "gpu")
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


_SIZES = {
    "cpu": dict(steps=12, batch_size=4, seq_len=64, eval_size=16, max_new_tokens=24),
    "gpu": dict(steps=120, batch_size=8, seq_len=256, eval_size=100, max_new_tokens=64),
}


def settings(profile: str | None = None) -> Settings:
    """The Settings of ``profile`` (default: the active profile).

    >>> settings("cpu").device
    'cpu'
    """
    name = profile or profile_name()
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is not one of {PROFILES}")
    device = "cuda" if name == "gpu" and _cuda_available() else "cpu"
    import torch

    return Settings(profile=name, device=device, threads=torch.get_num_threads(), **_SIZES[name])


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
    """Versions, device, profile and offline state as a dict (what ``print_env`` shows)."""
    import torch

    s = settings()
    report = {"python": platform.python_version(), "platform": platform.platform(terse=True),
              **{p: _version(p) for p in REPORTED_PACKAGES}, "profile": s.profile, "device": s.device,
              "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
              "torch threads": s.threads, "colab": in_colab(), "hf offline": is_offline()}
    return report


def print_env() -> dict:
    """Print the environment report (first cell of every notebook) and return it."""
    report = env_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}} : {value}")
    print("sizes".ljust(width), ":", {k: v for k, v in asdict(settings()).items()
                                        if k not in ("profile", "device", "threads")})
    return report
