"""``make gpu-check``: on a CUDA machine, every notebook in the gpu profile on the stand-ins, then the QLoRA benchmark.

One command for a GPU machine that may have no registry access (a lent CI GPU, a fresh Colab runtime):

1. bitsandbytes, trl and unsloth are imported; those missing are installed from wheels carried along
   (``--wheels DIR``, made here with ``python scripts/gpu_check.py --download DIR``) into a scratch folder
   with ``pip install --no-deps --no-index --target``; the scratch folder goes first on ``PYTHONPATH``;
2. the notebooks run under nbval with ``COURSE_PROFILE=gpu COURSE_STANDINS=1`` on the real GPU: the gpu
   branch of every cell with the rehearsal's small stand-in models (their cache is carried along:
   ``--hub DIR``, default ``course_utils.tools.standins.hub_cache()``), checkpoints on real weights reported;
3. ``python -m course_utils.bench qlora``;
4. one report (``--report``, default ``outputs/gpu-check.md``): the GPU, versions, per notebook pass/fail
   and seconds, the benchmark table.

On a machine without CUDA it says so and exits with status 2: the CPU's check is ``make rehearse-gpu``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("bitsandbytes", "trl", "unsloth", "unsloth_zoo")
NOT_ON_GPU = 2


def cuda_name() -> str | None:
    """The name of GPU 0, or None without CUDA."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def missing_packages(names=NEEDED) -> list[str]:
    """The packages of ``names`` that do not import here."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - unsloth fails in many ways
            missing.append(name)
    return missing


def install_from_wheels(wheels: Path, scratch: Path) -> None:
    """pip-install every wheel in ``wheels`` into ``scratch`` without an index or dependencies."""
    files = sorted(str(p) for p in wheels.glob("*.whl"))
    if not files:
        raise SystemExit(f"--wheels {wheels}: no .whl files there")
    scratch.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(scratch), *files], check=True)


def download_wheels(dest: Path) -> None:
    """On a machine with PyPI: the pinned bitsandbytes/trl/unsloth wheels for a GPU machine to carry."""
    from course_utils.core.deps import extras, no_deps

    pins = [p for p in extras("course") + no_deps() if p.split("==")[0].replace("-", "_") in NEEDED]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), *pins],
                   check=True)
    print(f"{len(list(dest.glob('*.whl')))} wheels in {dest}: {', '.join(pins)}")


def run_notebooks(env: dict, report: list[str]) -> bool:
    """Each notebook under nbval on the GPU; a report row per notebook; True if all passed."""
    ok = True
    report += ["| notebook | result | seconds |", "|---|---|---|"]
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env",
                               "--nbval-cell-timeout=300", str(nb), "-p", "no:cacheprovider", "-q"],
                              env=env, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
        ok &= proc.returncode == 0
        report.append(f"| `{nb.stem}` | {'pass' if proc.returncode == 0 else 'FAIL: ' + last} | {seconds:.0f} |")
        print(report[-1], flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, help="folder of .whl files for packages this machine lacks")
    ap.add_argument("--scratch", type=Path, default=ROOT / ".gpu-scratch", help="where those are installed")
    ap.add_argument("--hub", type=Path, help="the stand-in cache (default: course_utils.tools.standins.hub_cache())")
    ap.add_argument("--report", type=Path, default=ROOT / "outputs" / "gpu-check.md")
    ap.add_argument("--download", type=Path, help="only download the wheels to carry into this folder, then stop")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.download:
        download_wheels(args.download)
        return 0
    gpu = cuda_name()
    if gpu is None:
        print("gpu-check: no CUDA GPU on this machine, so nothing was checked. It runs on a GPU machine; "
              "here, `make rehearse-gpu` rehearses the gpu profile on the CPU.")
        return NOT_ON_GPU
    missing = missing_packages()
    if missing and args.wheels:
        install_from_wheels(args.wheels, args.scratch)
        sys.path.insert(0, str(args.scratch))
        importlib.invalidate_caches()
        missing = missing_packages()
    if missing:
        print(f"gpu-check: {', '.join(missing)} cannot be imported; pass --wheels DIR (made with --download).")
        return 1
    from course_utils.tools.standins import hub_cache

    hub = args.hub or hub_cache()
    if not (hub / "course_standins.json").is_file():
        print(f"gpu-check: no stand-in cache at {hub}: build it with `python -m course_utils.tools.standins build` "
              "(on any machine with the course installed) and pass --hub")
        return 1
    env = {**os.environ, "COURSE_PROFILE": "gpu", "COURSE_STANDINS": "1", "COURSE_STRICT": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(hub),
           "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(args.scratch), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    import torch

    cap = torch.cuda.get_device_capability(0)
    report = [f"# gpu-check on {gpu} (sm{cap[0]}{cap[1]}), {dt.date.today().isoformat()}", "",
              f"torch {torch.__version__}, CUDA {torch.version.cuda}; stand-in models (random weights): "
              "checkpoints that need real weights are reported, not asserted.", ""]
    ok = run_notebooks(env, report)
    bench = subprocess.run([sys.executable, "-m", "course_utils.bench", "qlora"], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    report += ["", "## `python -m course_utils.bench qlora`", "", "```", bench.stdout.strip() or bench.stderr[-2000:],
               "```"]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(report) + "\n")
    print(f"report: {args.report}")
    return 0 if ok and bench.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
