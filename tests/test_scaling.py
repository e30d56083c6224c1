"""scripts/finetune.py runs unchanged under python and under a 2-process launcher on CPU (gloo)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "finetune.py"
ARGS = ["--config", str(ROOT / "configs" / "finetune_cpu.yaml"), "--max_steps", "4", "--max_examples", "32",
        "--batch_size", "2", "--max_length", "64"]


def _env():
    return {**os.environ, "COURSE_PROFILE": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def test_config_validation_names_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: chat\nlearning_rate: 1e-4\n")
    out = subprocess.run([sys.executable, str(SCRIPT), "--config", str(bad)], capture_output=True, text=True,
                         env=_env())
    assert out.returncode != 0 and f"{bad}: unknown key(s) learning_rate" in out.stderr
    out = subprocess.run([sys.executable, str(SCRIPT), "--method", "magic"], capture_output=True, text=True,
                         env=_env())
    assert out.returncode != 0 and "method='magic'" in out.stderr


@pytest.mark.timeout(600)
def test_two_process_cpu_run_trains_and_saves_one_adapter(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml")]
    out = subprocess.run(launcher + [str(SCRIPT), *ARGS, "--output_dir", str(tmp_path)], capture_output=True,
                         text=True, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all("MULTI_CPU" in r["distributed_type"] for r in ranks)
    for r in ranks:
        assert len(r["losses"]) == 4 and all(math.isfinite(x) for x in r["losses"])
        assert r["losses"][-1] < r["losses"][0], f"rank {r['rank']}: loss did not fall {r['losses']}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["adapter"]  # one save, by rank 0

    import torch
    from peft import PeftModel

    from course_utils.models import load_model

    model = PeftModel.from_pretrained(load_model("chat", profile="cpu"), tmp_path / "adapter")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b), "saved adapter is untrained"
    assert isinstance(model(torch.tensor([[1, 2, 3]])).logits, torch.Tensor)
