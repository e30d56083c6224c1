"""Every exercise checker accepts its solution and rejects a wrong answer (a blank never raises), and every
exercise cell in the notebooks is followed by its hint/solution cell."""

import importlib
import json
import pkgutil
import re

import pytest
import torch

import course_utils.exercises as exercises
from course_utils.exercises import Exercise, ____
from course_utils.tools import course

MODULES = [m.name for m in pkgutil.iter_modules(exercises.__path__) if m.name.startswith("nb")]
ALL = [(m, name, ex) for m in MODULES
       for name, ex in vars(importlib.import_module(f"course_utils.exercises.{m}")).items()
       if isinstance(ex, Exercise)]


def test_every_notebook_module_has_exercises():
    assert MODULES and all(any(m == mod for mod, _, _ in ALL) for m in MODULES)


@pytest.mark.parametrize("module, name, ex", ALL, ids=[f"{m}.{n}" for m, n, _ in ALL])
def test_right_answer_passes_wrong_answer_fails(monkeypatch, capsys, module, name, ex):
    monkeypatch.setenv("COURSE_STRICT", "1")
    right = ex.check(*ex.solution_answer())
    assert right and right.attempted
    with pytest.raises(AssertionError):
        ex.check(*ex.wrong_answer())
    monkeypatch.setenv("COURSE_STRICT", "0")
    wrong = ex.check(*ex.wrong_answer())
    assert not wrong and wrong.attempted
    blank = ex.check(____)  # not attempted: no exception, even when strict
    assert not blank and not blank.attempted
    ex.hint()
    ex.solution()
    out = capsys.readouterr().out
    assert "✅" in out and "❌" in out and "⬜" in out and "Hint" in out and "Solution" in out


def test_a_checked_cell_shows_only_the_message():
    """As a cell's last line in a real kernel, ``check()`` shows its message and no ``Out: False`` under it."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nos.environ['COURSE_STRICT'] = '0'  # a learner's kernel: a wrong answer shows ❌, raises nothing\n"
        "from course_utils.exercises import ____, nb00 as ex")] + [
        nbformat.v4.new_code_cell(f"ex.q1.check({answer})") for answer in ("____", "-1", "*ex.q1.solution_answer()")]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    for cell, mark in zip(nb.cells[1:], "⬜❌✅"):
        kinds = [o["output_type"] for o in cell.outputs]
        assert kinds == ["display_data"], (cell.source, kinds)
        assert mark in cell.outputs[0]["data"]["text/markdown"]


# --------------------------------------------------------------------------- answers vs the libraries
# The exercise modules compute their answers by hand (that is the exercise); these tests make sure the
# hand arithmetic agrees with what the package and peft count on the real architectures.

def _meta_model(config):
    """The architecture with no weights allocated: parameter counts only."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _smollm2_config():
    from course_utils.core.models import load_model

    return load_model("chat", profile="cpu").config


def test_nb01_answers_agree_with_package_and_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig

    from course_utils.exercises import nb01
    from course_utils.lessons.fine_tuning import freeze
    from course_utils.lessons.memory import MIXED_ADAMW

    assert freeze(_meta_model(_smollm2_config()), "norms") == nb01.q1.solution_answer()[0]
    per_param = MIXED_ADAMW.weight + MIXED_ADAMW.grad + MIXED_ADAMW.optimizer
    assert nb01.q2.solution_answer()[0] == pytest.approx(6.74e9 * per_param / 1e9)
    llama7b = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32)
    with torch.device("meta"):
        lora = get_peft_model(_meta_model(llama7b), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    assert _trainable(lora) == nb01.q3.solution_answer()[0]


def test_nb02_answers_agree_with_package_and_peft():
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    from course_utils.core.models import LORA_TARGETS
    from course_utils.exercises import nb02
    from course_utils.lessons.peft_methods import adapter_param_count

    cfg = _smollm2_config()
    assert adapter_param_count(cfg.hidden_size, 32, cfg.num_hidden_layers) == nb02.q1.solution_answer()[0]
    with torch.device("meta"):
        lora = get_peft_model(_meta_model(cfg), LoraConfig(r=8, target_modules=list(LORA_TARGETS)))
        prefix = get_peft_model(_meta_model(cfg), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10))
    assert _trainable(lora) == nb02.q2.solution_answer()[0]
    assert _trainable(prefix) == nb02.q3.solution_answer()[0]


# --------------------------------------------------------------------------- every exercise has its hint cell
# An exercise cell is a code cell that calls an exercise's checker, `ex.q2.check(...)` (the course pattern:
# `from course_utils.exercises import nbNN as ex`). The cell right after it must be the code cell that offers
# `ex.q2.hint()` and `ex.q2.solution()` (commented out, so the notebook runs untouched in CI).

EXERCISE_CALL = re.compile(r"^[^#\n]*\b(\w+)\.(q\w+)\.check\(", re.M)


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def exercises_without_hint_cell(cells: list[dict]) -> list[str]:
    """``"cell 35: ex.q2"`` for every exercise cell not followed by its hint/solution code cell."""
    missing = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        for module, q in EXERCISE_CALL.findall(_source(cell)):
            nxt = cells[i + 1] if i + 1 < len(cells) else None
            text = _source(nxt) if nxt is not None and nxt["cell_type"] == "code" else ""
            if f"{module}.{q}.hint()" not in text or f"{module}.{q}.solution()" not in text:
                missing.append(f"cell {i}: {module}.{q}")
    return missing


def test_hint_cell_detector_on_a_small_notebook():
    ok = [{"cell_type": "code", "source": "x = ____\nex.q1.check(x)"},
          {"cell_type": "code", "source": ["# ex.q1.hint()\n", "# ex.q1.solution()"]}]
    assert exercises_without_hint_cell(ok) == []
    no_cell = ok[:1] + [{"cell_type": "markdown", "source": "**Q2**"}]
    assert exercises_without_hint_cell(no_cell) == ["cell 0: ex.q1"]
    wrong_q = ok[:1] + [{"cell_type": "code", "source": "# ex.q2.hint()\n# ex.q2.solution()"}]
    assert exercises_without_hint_cell(wrong_q) == ["cell 0: ex.q1"]
    assert exercises_without_hint_cell(ok[:1]) == ["cell 0: ex.q1"]                  # last cell of the notebook
    commented = [{"cell_type": "code", "source": "# ex.q1.check(x) is how you check"}]
    assert exercises_without_hint_cell(commented) == []                          # prose in a comment is no exercise


@pytest.mark.parametrize("path", course.notebooks(), ids=lambda p: p.name)
def test_every_exercise_has_its_hint_and_solution_cell(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    assert any(EXERCISE_CALL.search(_source(c)) for c in cells if c["cell_type"] == "code"), "no exercise found"
    missing = exercises_without_hint_cell(cells)
    assert not missing, f"{path.name}: add a `# ex.qN.hint()` / `# ex.qN.solution()` cell after {missing}"
