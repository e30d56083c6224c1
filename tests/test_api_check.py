"""The API-drift check: the course's own calls match the installed stack, and a renamed keyword fails by name and cell.

The real tree is checked once per module (about 15 s on 2 cores, almost all of it importing transformers, trl,
peft, datasets and bitsandbytes); the synthetic cases reuse those imports and take milliseconds.
"""

import json
import shutil
from pathlib import Path

import pytest

from course_utils.tools import api_check
from course_utils.tools.api_check import check, module_unit, notebook_unit

ROOT = Path(__file__).resolve().parents[1]
NB07 = ROOT / "notebooks" / "07_qlora_unsloth_translation.ipynb"
NB08 = ROOT / "notebooks" / "08_instruction_tuning.ipynb"


@pytest.fixture(scope="module")
def real_report():
    return check()


def _edit_copy(src: Path, dst_dir: Path, old: str, new: str) -> tuple[Path, int]:
    """Copy a notebook into ``dst_dir`` with ``old`` → ``new`` in the one code cell holding ``old``; (path, cell)."""
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    nb = json.loads(dst.read_text(encoding="utf-8"))
    hits = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and old in "".join(c["source"])]
    assert len(hits) == 1, f"{old!r} should be in exactly one code cell of {src.name}, found {hits}"
    cell = nb["cells"][hits[0]]
    cell["source"] = "".join(cell["source"]).replace(old, new)
    dst.write_text(json.dumps(nb), encoding="utf-8")
    return dst, hits[0]


def _module(tmp_path, code: str, name: str = "drift_demo.py"):
    path = tmp_path / name
    path.write_text(code, encoding="utf-8")
    return module_unit(path, root=tmp_path)


def test_real_tree_has_no_problems(real_report):
    assert real_report.ok, real_report.summary()
    assert real_report.sources >= 11 + 20        # every notebook and every module was read
    for api in ("trl.SFTConfig", "trl.SFTTrainer", "peft.LoraConfig", "transformers.TrainingArguments",
                "transformers.BitsAndBytesConfig"):
        assert api in real_report.apis, f"{api} should be among the checked calls"
    # nb08 shows the old spelling failing inside try/except TypeError: seen, and counted as expected
    assert any(p.where.startswith("notebook 08 cell") and "'evaluation_strategy'" in p.message
               for p in real_report.expected), real_report.summary()


def test_renamed_sftconfig_keyword_in_a_notebook_copy_fails_with_name_and_cell(tmp_path):
    """TRL renamed SFTConfig(max_seq_length=…) to max_length: put the old name back in a copy of nb07."""
    nb, cell = _edit_copy(NB07, tmp_path, "    max_length=MAX_SEQ_LENGTH,", "    max_seq_length=MAX_SEQ_LENGTH,")
    report = check([notebook_unit(nb)])
    assert [str(p) for p in report.problems] == [
        f"notebook 07 cell {cell}: trl.SFTConfig got unknown keyword 'max_seq_length'"]


def test_removed_trainer_keyword_fails(tmp_path):
    """SFTTrainer(tokenizer=…) became processing_class=…; the real nb07 cell with the old keyword fails."""
    nb, cell = _edit_copy(NB07, tmp_path, "train_dataset=text_ds, processing_class=tokenizer,",
                          "train_dataset=text_ds, tokenizer=tokenizer,")
    assert [str(p) for p in check([notebook_unit(nb)]).problems] == [
        f"notebook 07 cell {cell}: trl.SFTTrainer got unknown keyword 'tokenizer'"]


def test_renamed_keyword_through_forwarders_and_a_dict_of_defaults(tmp_path):
    """nb08's ``shared = dict(...)`` goes to sft_config(**{**shared, **overrides}), whose **kwargs go to SFTConfig."""
    nb, cell = _edit_copy(NB08, tmp_path, "seed=SEED, gradient_checkpointing=False)",
                          "seed=SEED, gradient_checkpointing=False, evaluation_strategy=\"steps\")")
    units = [u for u in api_check.default_units() if u.module] + [notebook_unit(nb)]  # sft_config lives in a module
    problems = [str(p) for p in check(units).problems]
    assert problems == [f"notebook 08 cell {cell}: trl.SFTConfig (via course_utils.core.trl_compat.sft_config) got "
                        "unknown keyword 'evaluation_strategy'"], problems


def test_module_cases(tmp_path):
    unit = _module(tmp_path, """\
from transformers import TrainingArguments
import bitsandbytes as bnb
from trl import SFTConfg
from unsloth import FastLanguageModel
from trl import SFTConfig, SFTTrainer


def build(**kwargs):
    return SFTConfig(**{**dict(report_to="none"), **kwargs})


args = TrainingArguments(output_dir="x", evaluation_strategy="steps")
opt = bnb.optim.AdamW8bit([], lr=1e-3, betas=(0.9, 0.99))
opt2 = bnb.optim.AdamW8bit([], learning_rate=1e-3)
build(output_dir="x", eval_strategy="steps", max_seq_length=8)
trainer = SFTTrainer(model="m", args=args)
trainer.train(resume=True)
trainer.model(input_ids=None)   # an instance attribute: not chased
FastLanguageModel.from_pretrained("m", max_seq_length=8)
try:
    TrainingArguments(output_dir="x", no_such_option=1)
except TypeError:
    pass
""")
    report = check([unit])
    assert [str(p) for p in report.problems] == [
        "drift_demo.py:3: trl.SFTConfg: trl has no attribute 'SFTConfg'",
        "drift_demo.py:12: transformers.TrainingArguments got unknown keyword 'evaluation_strategy'",
        "drift_demo.py:14: bitsandbytes.optim.AdamW8bit got unknown keyword 'learning_rate'",
        "drift_demo.py:15: trl.SFTConfig (via drift_demo.build) got unknown keyword 'max_seq_length'",
        "drift_demo.py:17: trl.SFTTrainer.train got unknown keyword 'resume'",
    ]
    assert [str(p) for p in report.expected] == [
        "drift_demo.py:21: transformers.TrainingArguments got unknown keyword 'no_such_option'"]
    assert {p.api for p in report.skipped} == {"unsloth.FastLanguageModel", "unsloth.FastLanguageModel.from_pretrained"}
    assert all("patches transformers" in p.message for p in report.skipped)


def test_kwargs_signatures_and_config_extras_are_accepted(tmp_path):
    unit = _module(tmp_path, """\
from transformers import AutoModelForCausalLM, LlamaConfig
from peft import LoraConfig

AutoModelForCausalLM.from_pretrained("m", dtype="auto", anything_goes=1)
LlamaConfig(hidden_size=8, decoder_start_token_id=0)
LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM")
LoraConfig(rank=8)
""")
    assert [str(p) for p in check([unit]).problems] == ["drift_demo.py:7: peft.LoraConfig got unknown keyword 'rank'"]


def test_magics_and_syntax_errors_do_not_crash(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["%pip install x\n", "from trl import SFTConfig\n"]},
                    {"cell_type": "markdown", "source": "SFTConfig(bogus=1)"},
                    {"cell_type": "code", "source": "def broken(:\n"},
                    {"cell_type": "code", "source": "if True:\n    !ls\nSFTConfig(output_dir='x', bogus=1)\n"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "99_demo.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    report = check([notebook_unit(path)])
    assert [str(p) for p in report.problems] == ["notebook 99 cell 3: trl.SFTConfig got unknown keyword 'bogus'"]
    assert [p.where for p in report.skipped] == ["notebook 99 cell 2"]
