"""course_utils.lessons.memory: the byte counts of training state, each checked exactly against tensors that exist.

(The shape formulas ``ModelShape``/``memory_breakdown``/``activation_values`` are tested with notebook 01's
parity in tests/test_fine_tuning.py; the sharding of these bytes in tests/test_scaling.py.)
"""

import pytest
import torch
from notebook_cells import run_inline

from course_utils.lessons import memory


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_value_sizes_are_torchs():
    """The definitions every byte count derives from: fp32 and bf16 sizes as torch stores them, two moments."""
    assert memory.FP32_BYTES == torch.zeros(1).element_size() == 4
    assert memory.HALF_BYTES == torch.zeros(1, dtype=torch.bfloat16).element_size() == 2
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    opt = torch.optim.AdamW([p])
    opt.step()
    moments = [k for k, t in opt.state[p].items() if k != "step"]
    assert len(moments) == memory.ADAMW_MOMENTS and memory.ADAMW_BYTES == 8


def test_training_state_bytes_frozen_weights_have_no_gradient_or_optimizer_state():
    lora = memory.training_state_bytes(1e9, trainable_params=1e7)
    assert lora == {"weights": 1e7 * 2 + (1e9 - 1e7) * 2, "gradients": 2e7, "optimizer": 12e7}
    q = memory.training_state_bytes(1e9, trainable_params=1e7, precision=memory.NF4_BASE)
    assert q["weights"] == 1e7 * 2 + (1e9 - 1e7) * memory.NF4_DQ_BYTES
    assert (q["gradients"], q["optimizer"]) == (lora["gradients"], lora["optimizer"])


def test_nf4_bytes_per_weight_is_notebook_04s_formula_and_what_bitsandbytes_stores():
    """NF4 + double quant: 4 + 8/64 + 32/(64·256) = 4.127 bits = 0.516 B per weight (once wrongly 0.5635)."""
    import bitsandbytes.functional as bnbf
    import torch

    from course_utils.lessons import quantization as quant

    NF4_BYTES = memory.NF4_DQ_BYTES
    assert NF4_BYTES == quant.bits_per_param(64, double_quant=True) / 8
    assert NF4_BYTES == pytest.approx((4 + 8 / 64 + 32 / (64 * 256)) / 8, rel=1e-12)
    assert memory.NF4_BASE.frozen == NF4_BYTES and memory.NF4_BASE.weight == 2.0
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

    from course_utils.lessons.memory import FP32_ADAMW, MIXED_ADAMW, Precision, training_state_bytes

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
    fp32 = training_state_bytes(n, precision=FP32_ADAMW)
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
    mixed = training_state_bytes(n)
    assert mixed["optimizer"] == _nbytes(*master) + states(opt) == 12 * n
    assert mixed["gradients"] == _nbytes(*(p.grad for p in model16.parameters()))
    assert mixed["weights"] == _nbytes(*model16.parameters())


def test_adamw_state_bytes_match_torch_and_bitsandbytes():
    import bitsandbytes as bnb

    for shapes, cls, bits in [
            ([(16, 576), (576, 16), (192, 16), (16, 8)], torch.optim.AdamW, 32),   # SmolLM2's LoRA A/B; 3072, 128
            ([(16, 576), (576, 16), (192, 16), (16, 8)], bnb.optim.AdamW8bit, 8),  # < 4096 elements stay 32-bit
            ([(8, 64), (64, 8)], bnb.optim.AdamW8bit, 8)]:                          # all 32-bit: no code tables
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = cls(params, lr=1e-3)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        assert memory.state_bytes(opt) == memory.adamw_state_bytes([p.numel() for p in params], bits), cls
    with pytest.raises(ValueError):
        memory.adamw_state_bytes([10], bits=4)


def test_notebook_inline_footprint_agrees_with_package():
    ns = run_inline("07_qlora_unsloth_translation.ipynb", "course_utils.lessons.memory footprint")
    for args in [(3_623_878_656, 197_200_896, 4.127, 2), (100, 7, 4, 4)]:
        assert ns["footprint_bytes"](*args) == memory.footprint_bytes(*args)


def test_footprint_bytes_is_what_an_nf4_weight_and_its_16_bit_neighbours_occupy():
    """Exact against tensors: bitsandbytes' NF4 (double quant) weight + fp16 rest = footprint_bytes + the offset."""
    import bitsandbytes.functional as bnbf

    from course_utils.lessons.quantization import bits_per_param

    n = 64 * 256 * 8                                     # 8 second-level blocks
    w = torch.randn(n // 256, 256, generator=torch.Generator().manual_seed(0))
    packed, st = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    other = torch.zeros(1000, dtype=torch.float16)     # an embedding row, a norm: stays 16-bit
    measured = _nbytes(packed, st.absmax, st.state2.absmax, st.offset, other)
    assert measured == memory.footprint_bytes(n, other.numel(), bits_per_param(64, double_quant=True), 2) + 4
