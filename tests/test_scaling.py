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
    # accelerate's MULTI_CPU launch needs mpirun; torchrun starts 2 local ranks and the trainer picks gloo
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    out = subprocess.run(launcher + [str(SCRIPT), *ARGS, "--output_dir", str(tmp_path)], capture_output=True,
                         text=True, env=_env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all("MULTI_CPU" in r["distributed_type"] and r["backend"] == "gloo" for r in ranks)
    for r in ranks:
        assert len(r["losses"]) == 4 and all(math.isfinite(x) for x in r["losses"])
        assert r["losses"][-1] < r["losses"][0], f"rank {r['rank']}: loss did not fall {r['losses']}"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["adapter"]  # one save, by rank 0

    import torch
    from peft import PeftModel

    from course_utils.core.models import load_model

    model = PeftModel.from_pretrained(load_model("chat", profile="cpu"), tmp_path / "adapter")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b), "saved adapter is untrained"
    assert isinstance(model(torch.tensor([[1, 2, 3]])).logits, torch.Tensor)


def test_zero_stages_shard_the_right_states():
    from course_utils.lessons.scaling import per_gpu_bytes

    n, k = 1e9, 4
    ddp = per_gpu_bytes(n, scheme="ddp", n_gpus=k)
    assert ddp == {"weights": 2e9, "gradients": 2e9, "optimizer": 12e9, "total": 16e9}
    z1, z2, z3 = (per_gpu_bytes(n, scheme=s, n_gpus=k) for s in ("zero1", "zero2", "zero3"))
    assert z1["optimizer"] == 3e9 and z1["gradients"] == 2e9 and z1["weights"] == 2e9
    assert z2["gradients"] == 0.5e9 and z2["weights"] == 2e9
    assert z3["total"] == ddp["total"] / k
    assert per_gpu_bytes(n, scheme="fsdp_full_shard", n_gpus=k) == z3


def test_lora_and_qlora_accounting():
    from course_utils.lessons.memory import NF4_BASE, NF4_DQ_BYTES
    from course_utils.lessons.scaling import per_gpu_bytes

    lora = per_gpu_bytes(1e9, trainable_params=1e7)
    assert lora["gradients"] == 2e7 and lora["optimizer"] == 12e7
    assert lora["weights"] == 1e7 * 2 + (1e9 - 1e7) * 2
    qlora = per_gpu_bytes(1e9, trainable_params=1e7, precision=NF4_BASE)
    assert (qlora["gradients"], qlora["optimizer"]) == (lora["gradients"], lora["optimizer"])
    assert qlora["weights"] == pytest.approx(1e7 * 2 + (1e9 - 1e7) * NF4_DQ_BYTES, rel=1e-12)


def test_bad_scheme_and_gpu_count():
    from course_utils.lessons.scaling import per_gpu_bytes

    with pytest.raises(ValueError, match="scheme='zero4'"):
        per_gpu_bytes(1e9, scheme="zero4")
    with pytest.raises(ValueError, match="n_gpus=0"):
        per_gpu_bytes(1e9, n_gpus=0)
