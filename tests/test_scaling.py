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

    from course_utils.models import load_model

    model = PeftModel.from_pretrained(load_model("chat", profile="cpu"), tmp_path / "adapter")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b), "saved adapter is untrained"
    assert isinstance(model(torch.tensor([[1, 2, 3]])).logits, torch.Tensor)


def test_zero_stages_shard_the_right_states():
    from course_utils.scaling import per_gpu_bytes

    n, k = 1e9, 4
    ddp = per_gpu_bytes(n, scheme="ddp", n_gpus=k)
    assert ddp == {"weights": 2e9, "gradients": 2e9, "optimizer": 12e9, "total": 16e9}
    z1, z2, z3 = (per_gpu_bytes(n, scheme=s, n_gpus=k) for s in ("zero1", "zero2", "zero3"))
    assert z1["optimizer"] == 3e9 and z1["gradients"] == 2e9 and z1["weights"] == 2e9
    assert z2["gradients"] == 0.5e9 and z2["weights"] == 2e9
    assert z3["total"] == ddp["total"] / k
    assert per_gpu_bytes(n, scheme="fsdp_full_shard", n_gpus=k) == z3


def test_lora_and_qlora_accounting():
    from course_utils.scaling import NF4_BASE, NF4_BYTES, per_gpu_bytes

    lora = per_gpu_bytes(1e9, trainable_params=1e7)
    assert lora["gradients"] == 2e7 and lora["optimizer"] == 12e7
    assert lora["weights"] == 1e7 * 2 + (1e9 - 1e7) * 2
    qlora = per_gpu_bytes(1e9, trainable_params=1e7, precision=NF4_BASE)
    assert (qlora["gradients"], qlora["optimizer"]) == (lora["gradients"], lora["optimizer"])
    assert qlora["weights"] == pytest.approx(1e7 * 2 + (1e9 - 1e7) * NF4_BYTES, rel=1e-12)


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_nf4_bytes_per_weight_is_notebook_04s_formula_and_what_bitsandbytes_stores():
    """NF4 + double quant: 4 + 8/64 + 32/(64·256) = 4.127 bits = 0.516 B per weight (once wrongly 0.5635)."""
    import bitsandbytes.functional as bnbf
    import torch

    from course_utils import memory as finetune
    from course_utils import quantization as quant
    from course_utils.scaling import NF4_BASE, NF4_BYTES

    assert NF4_BYTES == quant.bits_per_param(64, double_quant=True) / 8 == finetune.NF4_DQ_BYTES
    assert NF4_BYTES == pytest.approx((4 + 8 / 64 + 32 / (64 * 256)) / 8, rel=1e-12)
    assert NF4_BASE.frozen == NF4_BYTES and NF4_BASE.weight == 2.0
    # measured: the bytes a real 4-bit tensor occupies (packed codes + uint8 absmax + fp32 absmax of the
    # absmax + the one fp32 offset), bitsandbytes and our own notebook-04 implementation alike
    n = 64 * 256 * 64                                      # 64 second-level blocks: the per-tensor offset is noise
    w = torch.randn(n // 512, 512, generator=torch.Generator().manual_seed(0))
    packed, st = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    assert st.nested and st.absmax.dtype == torch.uint8
    bnb_bytes = _nbytes(packed, st.absmax, st.state2.absmax, st.offset)
    ours, ours_state = quant.quantize_4bit(w, "nf4", blocksize=64, double_quant=True)
    ours_bytes = _nbytes(ours) + ours_state.nbytes()
    for measured in (bnb_bytes, ours_bytes):
        assert measured == n * NF4_BYTES + 4                # exact: the offset is the only extra
        assert measured / n == pytest.approx(NF4_BYTES, rel=1e-5)


def test_optimizer_bytes_equal_adamw_state_tensors():
    """FP32_ADAMW: 4 + 4 + 8 (m and v); MIXED_ADAMW: 2 + 2 + 12 (fp32 master + m + v), counted from torch."""
    import torch

    from course_utils.scaling import FP32_ADAMW, MIXED_ADAMW, Precision, per_gpu_bytes

    assert FP32_ADAMW == Precision(weight=4.0, grad=4.0, optimizer=8.0, frozen=4.0)
    assert MIXED_ADAMW == Precision(weight=2.0, grad=2.0, optimizer=12.0, frozen=2.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    n = sum(p.numel() for p in model.parameters())

    def states(optimizer) -> int:      # m and v of every parameter (the scalar step counters excluded)
        return sum(_nbytes(t) for s in optimizer.state.values() for k, t in s.items() if k != "step")

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    fp32 = per_gpu_bytes(n, precision=FP32_ADAMW)
    assert fp32["optimizer"] == states(opt) == 8 * n
    assert fp32["gradients"] == _nbytes(*(p.grad for p in model.parameters()))
    assert fp32["weights"] == _nbytes(*model.parameters())

    # mixed precision: bf16 working weights and gradients, AdamW on fp32 master copies
    model16 = model.to(torch.bfloat16)
    master = [p.detach().float().requires_grad_() for p in model16.parameters()]
    opt = torch.optim.AdamW(master, lr=1e-3)
    model16(torch.randn(4, 16, dtype=torch.bfloat16)).sum().backward()
    for m, p in zip(master, model16.parameters()):
        m.grad = p.grad.float()
    opt.step()
    mixed = per_gpu_bytes(n)
    assert mixed["optimizer"] == _nbytes(*master) + states(opt) == 12 * n
    assert mixed["gradients"] == _nbytes(*(p.grad for p in model16.parameters()))
    assert mixed["weights"] == _nbytes(*model16.parameters())


def test_bad_scheme_and_gpu_count():
    from course_utils.scaling import per_gpu_bytes

    with pytest.raises(ValueError, match="scheme='zero4'"):
        per_gpu_bytes(1e9, scheme="zero4")
    with pytest.raises(ValueError, match="n_gpus=0"):
        per_gpu_bytes(1e9, n_gpus=0)
