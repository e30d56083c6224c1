"""scripts/gpu_check.py on a machine without CUDA: it says so and checks nothing (exit status 2)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_says_it_is_not_on_a_gpu():
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA GPU on this machine, so nothing was checked" in proc.stdout
    assert "make rehearse-gpu" in proc.stdout


def test_missing_packages_names_what_does_not_import():
    mod = _module()
    assert mod.missing_packages(("json", "no_such_package_course_kit")) == ["no_such_package_course_kit"]


def test_wheels_it_would_download_are_the_pinned_ones(monkeypatch):
    mod = _module()
    calls = []
    monkeypatch.setattr(mod.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    mod.download_wheels(Path("/tmp/none"))
    pins = [a for a in calls[0] if "==" in a]
    assert {p.split("==")[0] for p in pins} == {"bitsandbytes", "trl", "unsloth", "unsloth_zoo"}
