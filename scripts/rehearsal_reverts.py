"""Show that the gpu-profile rehearsal catches each crash it was built for: undo one fix, run, expect a failure.

For every fix below, a copy of the notebook with that one fix reverted (the code as it stood before, which
would crash on a GPU) runs under ``make rehearse-gpu``'s settings, stopping at the first failing cell; the
revert counts as caught when that run fails with the expected error. The real notebooks are not touched.

    $ .venv/bin/python scripts/rehearsal_reverts.py            # about 5-8 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NUMPY = "can't convert cuda:0 device type tensor to numpy"
INPUT = "got a CPU input"
MIX = "Expected all tensors to be on the same device"

# (notebook, the fixed code, the code before the fix, what the rehearsal must say)
REVERTS = [
    ("02_peft_methods", "probe = to_device({k: v[:2] for k, v in train_batches[0].items()}, base)",
     "probe = {k: v[:2] for k, v in train_batches[0].items()}", INPUT),
    ("02_peft_methods", 'enc = to_device(tokenizer(prompt, return_tensors="pt"), model)',
     'enc = tokenizer(prompt, return_tensors="pt")', "generate on cuda:0 got a CPU tensor"),
    ("04_quantization", "batch = to_device(tokenizer(EVAL, return_tensors=\"pt\", padding=True, truncation=True, "
                        "max_length=MAX_LEN), model)",
     "batch = tokenizer(EVAL, return_tensors=\"pt\", padding=True, truncation=True, max_length=MAX_LEN)", INPUT),
    ("04_quantization", "ax.hist(to_numpy(a.flatten()), bins=200, log=True, color=\"C0\")",
     "ax.hist(a.flatten().numpy(), bins=200, log=True, color=\"C0\")", NUMPY),
    ("04_quantization", "values, order = code.to(x.device).sort()", "values, order = code.sort()", MIX),
    ("04_quantization", "ax.hist(to_numpy(normed), bins=240, color=\"#bbbbbb\")",
     "ax.hist(normed.numpy(), bins=240, color=\"#bbbbbb\")", NUMPY),
    ("04_quantization", 'axes[0].plot(to_numpy(acts[f"{i_show}.q_in"].abs().amax(0)), lw=0.8)',
     'axes[0].plot(acts[f"{i_show}.q_in"].abs().amax(0).numpy(), lw=0.8)', NUMPY),
    ("04_quantization", "cpu_model = Q.cpu_fp32_copy(model)", "cpu_model = model", "from the 'CUDA' backend"),
    ("05_pruning", "print(to_numpy(layer.weight[0, :8]).round(3))",
     "print(layer.weight[0, :8].detach().numpy().round(3))", NUMPY),
    ("08_instruction_tuning", "batch = to_device(batch, s2s_model)                   # the collator builds CPU tensors",
     "", INPUT),
    ("09_capstone_tax_chatbot",
     'ids = to_device(tokenizer("부가가치세 신고 기한", return_tensors="pt")["input_ids"], serving)',
     'ids = tokenizer("부가가치세 신고 기한", return_tensors="pt")["input_ids"]', INPUT),
]


def revert_copy(notebook: str, fixed: str, before: str, dest: Path) -> None:
    """Write ``notebook`` with ``fixed`` replaced by ``before`` (exactly one cell must contain it) to ``dest``."""
    nb = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())
    hits = [c for c in nb["cells"] if fixed in "".join(c["source"])]
    if len(hits) != 1:
        raise SystemExit(f"{notebook}: {len(hits)} cells contain the fix {fixed[:60]!r}: update REVERTS")
    hits[0]["source"] = "".join(hits[0]["source"]).replace(fixed, before)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from course_utils.tools.standins import build_standins

    hub = build_standins(verbose=False)
    env = {**os.environ, "COURSE_PROFILE": "gpu", "COURSE_REHEARSAL": "1", "COURSE_STRICT": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_CACHE": str(hub),
           "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    missed = 0
    for k, (notebook, fixed, before, expected) in enumerate(REVERTS):
        dest = ROOT / "notebooks" / f"zz_revert_{k}_{notebook}.ipynb"   # beside the others: same working folder
        revert_copy(notebook, fixed, before, dest)
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "-x",
                                   "--nbval-cell-timeout=300", str(dest), "-p", "no:cacheprovider", "-q"],
                                  env=env, cwd=ROOT, capture_output=True, text=True)
        finally:
            dest.unlink()
        caught = proc.returncode != 0 and expected in proc.stdout
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}: {notebook}: {before.strip()[:70] or '(no move to the device)'}",
              flush=True)
    print(f"{len(REVERTS) - missed} of {len(REVERTS)} reverted fixes caught by the rehearsal")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
