"""The course map and notebook housekeeping: Colab badges, the shared setup cell, output stripping.

The repository address lives once, in ``course_utils.REPO_SLUG``; badges and setup cells are generated
from it (``make badges``), and a test fails when a notebook is out of sync.

    $ python -m course_utils.course sync     # rewrite badges + setup cells from the templates
    $ python -m course_utils.course strip    # remove outputs and execution counts
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from course_utils import REPO_SLUG, REPO_URL
from course_utils.deps import extras, no_deps

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass(frozen=True)
class Lesson:
    """One row of the course map."""

    file: str
    title: str
    topics: str
    gpu: str


COURSE_MAP = [
    Lesson("00_setup_and_tour.ipynb", "Setup and tour", "profiles, embedded model, chat, checkpoints, exercises",
           "none"),
    Lesson("01_fine_tuning_basics.ipynb", "Fine-tuning basics",
           "full vs partial, memory accounting, learning rate, forgetting, early stopping", "optional (T4)"),
    Lesson("02_peft_methods.ipynb", "PEFT methods compared",
           "prompt/prefix/P-tuning, adapters, IA3, LoRA, DoRA, multiple adapters", "optional (T4)"),
    Lesson("03_lora_math.ipynb", "LoRA from scratch", "ΔW = (α/r)·B·A, merge/unmerge, rank sweep, rsLoRA",
           "optional (T4)"),
    Lesson("04_quantization.ipynb", "Quantization", "sym/asym, granularity, INT8/INT4/NF4, double quant, PTQ/QAT",
           "optional (T4)"),
    Lesson("05_pruning.ipynb", "Pruning", "unstructured, structured, 2:4, sparsity sweep, recovery",
           "optional (T4)"),
    Lesson("06_distillation.ipynb", "Knowledge distillation", "logit KD, temperature, sequence-level KD",
           "optional (T4)"),
    Lesson("07_qlora_unsloth_translation.ipynb", "QLoRA with Unsloth", "Phi-3 4-bit, EN→KO translation, chrF",
           "T4 16 GB for Phi-3-mini"),
    Lesson("08_instruction_tuning.ipynb", "Instruction tuning",
           "formats, chat templates, completion-only loss, TRL SFT, seq2seq", "optional (T4)"),
    Lesson("09_capstone_tax_chatbot.ipynb", "Capstone: tax chatbot",
           "feedback store, training trigger, eval gate, per-domain adapters", "optional (T4)"),
    Lesson("10_scaling_out.ipynb", "Scaling out", "the recipe as a script; DDP, FSDP, DeepSpeed ZeRO memory",
           "multi-GPU to run for real"),
]


def colab_url(notebook: str) -> str:
    """The Colab address of a notebook of this repository."""
    return f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main/notebooks/{notebook}"


def badge(notebook: str) -> str:
    """The Open-in-Colab badge line for a notebook."""
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook)})")


def setup_cell_source() -> str:
    """The shared setup cell: on Colab, fetch the course and install what is missing; locally, nothing."""
    pins = " ".join(f"'{p}'" for p in extras("course") + extras("unsloth-support"))
    nodeps = " ".join(f"'{p}'" for p in no_deps())
    return f'''# Setup — on Colab: get the course and the pinned stack (Colab's own torch is kept). Locally: nothing to do.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    if not os.path.isdir("/content/course"):
        subprocess.run(["git", "clone", "--depth", "1", "{REPO_URL}", "/content/course"], check=True)
    subprocess.run(f"{{sys.executable}} -m pip install -q {pins}", shell=True, check=True)
    subprocess.run(f"{{sys.executable}} -m pip install -q --no-deps {nodeps}", shell=True, check=True)
    sys.path.insert(0, "/content/course")
    os.chdir("/content/course/notebooks")'''


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def marked_cells(path: Path, marker: str) -> list[str]:
    """Sources of the code cells of notebook ``path`` that contain ``marker`` (e.g. ``"# inline: freeze"``)."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    return [_src(c) for c in cells if c["cell_type"] == "code" and marker in _src(c)]


def marked_cell(path: Path, marker: str) -> str:
    """The one code cell of ``path`` containing ``marker``: how tests reach a notebook's inline definitions.

    >>> exec(marked_cell(NOTEBOOK_DIR / "01_fine_tuning_basics.ipynb", "# inline: freeze"), ns := {})
    """
    found = marked_cells(path, marker)
    if len(found) != 1:
        raise ValueError(f"{Path(path).name}: expected one code cell containing {marker!r}, found {len(found)}")
    return found[0]


def notebooks() -> list[Path]:
    """The course notebooks, in order."""
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def sync_problems(path: Path) -> list[str]:
    """What is out of sync in a notebook: badge in the first cell, the tagged setup cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    if badge(path.name) not in _src(nb["cells"][0]):
        problems.append("first cell lacks this notebook's Colab badge")
    setup = [c for c in nb["cells"] if "setup" in c.get("metadata", {}).get("tags", [])]
    if len(setup) != 1:
        problems.append(f"expected one cell tagged 'setup', found {len(setup)}")
    elif _src(setup[0]) != setup_cell_source():
        problems.append("setup cell differs from course_utils.course.setup_cell_source()")
    return problems


def sync(path: Path) -> None:
    """Rewrite a notebook's badge line and setup cell from the templates."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    lines = [ln for ln in _src(nb["cells"][0]).splitlines() if "colab-badge.svg" not in ln]
    lines.insert(1 if lines and lines[0].startswith("#") else 0, badge(path.name))
    nb["cells"][0]["source"] = "\n".join(lines)
    for c in nb["cells"]:
        if "setup" in c.get("metadata", {}).get("tags", []):
            c["source"] = setup_cell_source()
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def strip(path: Path) -> bool:
    """Remove outputs and execution counts; return True if the file changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    nb.get("metadata", {}).pop("widgets", None)
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    path.write_text(new, encoding="utf-8")
    return new != text


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else ""
    if cmd not in ("sync", "strip", "check"):
        print("usage: python -m course_utils.course sync|strip|check", file=sys.stderr)
        return 2
    bad = 0
    for p in notebooks():
        if cmd == "sync":
            sync(p)
        elif cmd == "strip":
            strip(p)
        else:
            for problem in sync_problems(p):
                print(f"{p.name}: {problem}")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
