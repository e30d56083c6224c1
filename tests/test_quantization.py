"""course_utils.lessons.quantization: formats, linear quantization, NF4/FP4 + double quant (parity with bitsandbytes), QAT."""

import math
from pathlib import Path

import bitsandbytes.functional as bnbf
import pytest
import torch
from notebook_cells import run_inline

from course_utils.bench import quant as bench_quant
from course_utils.lessons import quantization as Q

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_quantization.ipynb"
SHAPES = [(64, 64), (33, 77), (1000,), (3, 5, 7), (1, 1)]   # most are not multiples of the block size


def _weights(shape=(768, 576), seed=0):
    """Weight-like values: normal, with rows of different scale and a few outliers."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02 * (0.5 + torch.rand(shape[0], 1, generator=g) * 2)
    w.view(-1)[torch.randint(0, w.numel(), (20,), generator=g)] *= 12
    return w


# --------------------------------------------------------------------------- number formats, packing

def test_format_table_reads_torch():
    rows = {r["format"]: r for r in Q.format_table()}
    assert rows["FP16"]["max"] == 65504.0 and rows["FP16"]["eps"] == 2**-10
    assert rows["BF16"]["max"] == torch.finfo(torch.bfloat16).max and rows["BF16"]["eps"] == 2**-7
    assert rows["FP32"]["bytes"] == 4 and rows["BF16"]["bytes"] == 2 and rows["NF4"]["bytes"] == 0.5
    assert (rows["INT8"]["max"], rows["INT4"]["max"]) == (127.0, 7.0)
    assert Q.int_range(8) == (torch.iinfo(torch.int8).min, torch.iinfo(torch.int8).max)
    assert rows["NF4"]["max"] == 1.0 and 0.07 < rows["NF4"]["smallest"] < rows["NF4"]["eps"] < 0.35


def test_round_trip_shows_overflow_and_precision():
    fp16 = Q.round_trip([70000.0, 0.1, 1e-8], torch.float16)
    bf16 = Q.round_trip([70000.0, 300.5], torch.bfloat16)
    assert math.isinf(fp16[0]) and fp16[1] != 0.1 and fp16[2] == 0.0
    assert math.isfinite(bf16[0]) and bf16[1] == 300.0


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n", [1, 7, 64, 1001])
def test_pack_unpack_round_trip(bits, n):
    codes = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(n))
    packed = Q.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(Q.unpack_bits(packed, bits, n), codes.to(torch.uint8))


def test_pack_rejects_3_bits():
    with pytest.raises(ValueError):
        Q.pack_bits(torch.zeros(8), 3)


# --------------------------------------------------------------------------- linear quantization

def test_qrange_and_scale_zero_by_hand():
    assert Q.qrange(8, True) == (-127, 127) and Q.qrange(8, False) == (0, 255) and Q.qrange(3, True) == (-3, 3)
    scale, zero = Q.scale_zero(torch.tensor([[-1.0]]), torch.tensor([[3.0]]), 8, symmetric=False)
    assert scale.item() == pytest.approx(4 / 255) and zero.item() == 64
    scale, zero = Q.scale_zero(torch.tensor([[-1.0]]), torch.tensor([[3.0]]), 8, symmetric=True)
    assert scale.item() == pytest.approx(3 / 127) and zero.item() == 0


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", Q.GRANULARITIES)
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_round_trip_error_is_at_most_half_a_step(symmetric, granularity, bits):
    x = _weights((96, 128))
    xg = Q.group_view(x, granularity, 64)
    lo, hi = Q.clip_range(xg, bits, symmetric)
    scale, zero = Q.scale_zero(lo, hi, bits, symmetric)
    q = Q.quantize(xg, scale, zero, bits, symmetric)
    qmin, qmax = Q.qrange(bits, symmetric)
    assert q.min() >= qmin and q.max() <= qmax and torch.equal(q, q.round())
    err = (Q.dequantize(q, scale, zero) - xg).abs()
    assert (err <= scale / 2 + 1e-6).all()
    # 0 is exactly representable (padding, ReLU zeros, …)
    assert Q.fake_quant(torch.zeros(2, 64), bits, symmetric, granularity).abs().max() == 0


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_symmetric_fast_path_equals_general_path(bits):
    x = _weights((64, 128))
    xg = Q.group_view(x, "channel")
    lo, hi = Q.clip_range(xg, bits, True, "minmax")
    torch.testing.assert_close(Q.fake_quant(x, bits, True, "channel"),
                               Q.fake_quant_rows(xg, bits, True, lo, hi).reshape(x.shape), rtol=0, atol=0)


def test_finer_granularity_lowers_error():
    w = _weights()
    errs = [Q.rel_error(w, Q.fake_quant(w, 4, True, g, 64)) for g in Q.GRANULARITIES]
    assert errs[0] > errs[1] > errs[2]


def test_group_view_rejects_ragged_groups():
    with pytest.raises(ValueError):
        Q.group_view(torch.zeros(3, 100), "group", 64)
    assert Q.group_view(torch.zeros(4, 32), "group", 64).shape == (2, 64)   # short rows: memory order


def test_clipping_methods():
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((1, 20000))   # long tails: min/max wastes the grid
    lo_mm, hi_mm = Q.clip_range(x, 4, True, "minmax")
    lo_p, hi_p = Q.clip_range(x, 4, True, "percentile", pct=99.0)
    assert hi_p < hi_mm.abs().max() and torch.equal(lo_p, -hi_p)
    errs = {m: Q.mse(x, Q.fake_quant(x, 4, True, "tensor", clip=m, pct=99.0)) for m in ("minmax", "percentile", "mse")}
    assert errs["mse"] < 0.5 * errs["minmax"] and errs["mse"] <= errs["percentile"] * 1.001


def test_asymmetric_wins_on_skewed_data():
    x = torch.nn.functional.silu(torch.randn(1, 50000) * 2)        # min ≈ −0.28, long positive tail
    sym, asym = (Q.mse(x, Q.fake_quant(x, 4, s)) for s in (True, False))
    assert asym < 0.6 * sym


# --------------------------------------------------------------------------- NF4, FP4, dynamic 8-bit

def test_nf4_codebook_matches_bitsandbytes():
    ours = Q.nf4_codebook()
    assert torch.equal(ours, bnbf.get_4bit_type("nf4", device="cpu"))
    assert ours.numel() == 16 and (ours > 0).sum() == 8 and (ours < 0).sum() == 7 and (ours == 0).sum() == 1
    exact = Q.nf4_codebook(Q.nf4_offset())          # the un-rounded offset: equal to 3e-7
    torch.testing.assert_close(exact, ours, rtol=0, atol=3e-7)
    assert Q.nf4_offset() == pytest.approx(0.9677083, abs=1e-7)


def test_dynamic_map_matches_bitsandbytes():
    assert torch.equal(Q.dynamic_map(), bnbf.create_dynamic_map())


def test_nearest_code_is_nearest():
    code = Q.nf4_codebook()
    x = torch.rand(10000) * 2 - 1
    idx = Q.nearest_code(x, code)
    brute = (x[:, None] - code[None]).abs().argmin(1)
    assert torch.equal(code[idx], code[brute])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_parity_with_bitsandbytes(shape, quant_type, double_quant):
    """Packed bytes equal; dequantized values equal (double quant: within one 8-bit step of the absmax)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    pb, sb = bnbf.quantize_4bit(x, blocksize=64, compress_statistics=double_quant, quant_type=quant_type)
    po, so = Q.quantize_4bit(x, quant_type, 64, double_quant)
    assert torch.equal(po, pb)
    ours, theirs = Q.dequantize_4bit(po, so), bnbf.dequantize_4bit(pb, sb).reshape(shape)
    assert ours.shape == x.shape
    if not double_quant:
        torch.testing.assert_close(so.absmax, sb.absmax, rtol=0, atol=0)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    else:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0.01 * float(x.abs().max()))


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_parity_on_a_large_weight(quant_type):
    """Our 8-bit rounding of the absmax is exact nearest; bnb's CPU kernel differs on rare near-ties.

    Stated tolerance: ≥ 99.5 % of the 8-bit absmax codes equal, the others one code apart, dequantized weights
    within 1 % of max |w|, and our dequantizer fed bnb's own state reproduces bnb exactly.
    """
    w = _weights((1536, 576))
    pb, sb = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type=quant_type)
    po, so = Q.quantize_4bit(w, quant_type, 64, double_quant=True)
    assert torch.equal(po, pb)
    assert torch.equal(so.absmax2, sb.state2.absmax) and float(so.offset) == pytest.approx(float(sb.offset), abs=1e-9)
    same = so.absmax == sb.absmax
    assert same.float().mean() >= 0.995
    rank = torch.empty(256, dtype=torch.long)
    rank[Q.dynamic_map().argsort()] = torch.arange(256)
    if (~same).any():
        assert (rank[so.absmax[~same].long()] - rank[sb.absmax[~same].long()]).abs().max() <= 1
    theirs = bnbf.dequantize_4bit(pb, sb)
    torch.testing.assert_close(Q.dequantize_4bit(po, so), theirs, rtol=0, atol=0.01 * float(w.abs().max()))
    bnb_state = Q.State4bit(tuple(w.shape), quant_type, 64, sb.absmax, sb.state2.absmax, sb.offset)
    torch.testing.assert_close(Q.dequantize_4bit(pb, bnb_state), theirs, rtol=0, atol=0)


@pytest.mark.parametrize("n", [4096, 4103, 999 * 333])
@pytest.mark.parametrize("blocksize", [64, 256, 4096])
def test_8bit_blockwise_parity_with_bitsandbytes(n, blocksize):
    x = torch.randn(n, generator=torch.Generator().manual_seed(2))
    qb, sb = bnbf.quantize_blockwise(x, blocksize=blocksize)
    qo, absmax = Q.blockwise_quantize(x, Q.dynamic_map(), blocksize)
    code = Q.dynamic_map()
    assert torch.equal(absmax, sb.absmax)
    assert (qo == qb).float().mean() >= 0.995
    ours = Q.blockwise_dequantize(qo, absmax, code, blocksize, x.shape)
    theirs = bnbf.dequantize_blockwise(qb, sb)
    assert ((ours - x).abs() <= (theirs - x).abs() + 1e-7).all(), "ours rounds to the nearest code"
    torch.testing.assert_close(Q.blockwise_dequantize(qb, sb.absmax, code, blocksize, x.shape), theirs,
                               rtol=0, atol=0)


def test_bits_per_param_arithmetic_and_measurement():
    assert Q.bits_per_param(64) == 4.5
    assert Q.bits_per_param(64, double_quant=True) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert Q.bits_per_param(32, double_quant=True) == pytest.approx(4.2539, abs=1e-4)
    w = torch.randn(1024, 1024)
    for dq in (False, True):
        packed, state = Q.quantize_4bit(w, "nf4", 64, dq)
        assert Q.measured_bits_per_param(packed, state) == pytest.approx(Q.bits_per_param(64, dq), abs=1e-3)


def test_nf4_beats_int4_on_normal_weights():
    w = torch.randn(512, 512) * 0.02
    errs = {}
    for name in ("nf4", "int4"):
        codes, absmax = Q.blockwise_quantize(w, Q.codebook(name), 64)
        errs[name] = Q.mse(w, Q.blockwise_dequantize(codes, absmax, Q.codebook(name), 64, w.shape))
    assert errs["nf4"] < 0.9 * errs["int4"]


# --------------------------------------------------------------------------- model-level helpers, QAT

def test_ste_forward_quantizes_backward_passes_through():
    w = torch.randn(8, 16, requires_grad=True)
    fq = Q.FakeQuant(bits=3)
    out = fq(w)
    torch.testing.assert_close(out, Q.fake_quant(w.detach(), 3, True, "channel"))
    upstream = torch.randn(8, 16)
    out.backward(upstream)
    torch.testing.assert_close(w.grad, upstream)


def test_fake_quant_parametrization_bakes_quantized_weights(tiny_llama, toy_batch):
    layers = Q.linear_layers(tiny_llama)
    assert layers and all(n.split(".")[-1] != "lm_head" for n, _ in layers)
    latent = {n: m.weight.detach().clone() for n, m in layers}
    assert Q.add_fake_quant(tiny_llama, bits=3) == len(layers)
    loss = tiny_llama(**toy_batch).loss
    loss.backward()
    assert all(m.parametrizations.weight.original.grad is not None for _, m in layers)
    Q.remove_fake_quant(tiny_llama)
    for n, m in layers:
        torch.testing.assert_close(m.weight.detach(), Q.fake_quant(latent[n], 3, True, "channel"))
        assert max(len(row.unique()) for row in m.weight.detach()) <= 7


def test_quantize_model_reports_storage_and_restores(tiny_llama, toy_batch):
    snap = Q.snapshot_linear(tiny_llama)
    with torch.no_grad():
        ref = tiny_llama(**toy_batch).logits
    info = Q.quantize_model(tiny_llama, "int8")
    in_features = {m.in_features for _, m in Q.linear_layers(tiny_llama)}
    assert 8 < info["bits"] <= 8 + 32 / min(in_features)
    nf4 = Q.quantize_model(tiny_llama, "nf4")  # (on top of int8: only the storage numbers matter here)
    assert nf4["bits"] == pytest.approx(Q.bits_per_param(64, True), abs=0.2)
    Q.restore_linear(tiny_llama, snap)
    with torch.no_grad():
        torch.testing.assert_close(tiny_llama(**toy_batch).logits, ref, rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["bf16", "int8", "int4", "int3", "int2", "nf4", "fp4"])
def test_quantize_weight_formats(fmt):
    w = _weights((64, 128))
    w_hat, nbytes = Q.quantize_weight(w, fmt)
    assert w_hat.shape == w.shape and 0 < Q.rel_error(w, w_hat) < 0.8
    assert nbytes < w.nbytes


def test_quantize_weight_rejects_unknown():
    with pytest.raises(ValueError):
        Q.quantize_weight(torch.zeros(4, 64), "int5")


def test_memory_by_bits(tiny_llama):
    rows = {r["bits"]: r for r in Q.memory_by_bits(tiny_llama)}
    assert rows[16]["linear_mb"] == pytest.approx(rows[32]["linear_mb"] / 2)
    assert rows[2]["linear_mb"] < rows[4]["linear_mb"] < rows[8]["linear_mb"] < rows[16]["linear_mb"]
    assert rows[4]["linear_mb"] == pytest.approx(rows[32]["linear_mb"] * 4.5 / 32, rel=0.02)
    assert rows[32]["vs_fp32"] == 1.0 and rows[4]["vs_fp32"] < 1.0


def test_capture_and_outliers(tiny_llama, toy_batch):
    mlp0 = tiny_llama.model.layers[0].mlp
    with Q.capture({"act": mlp0.act_fn, "down_in": mlp0.down_proj}, what="output") as acts:
        tiny_llama(**toy_batch)
    assert acts["act"].shape == (4 * 12, 64) and acts["down_in"].shape == (48, 32)
    with Q.capture({"down_in": mlp0.down_proj}, what="input", max_rows=10) as acts:
        tiny_llama(**toy_batch)
    assert acts["down_in"].shape == (10, 64)
    a = torch.zeros(5, 8)
    a[2, 3], a[0, 6] = 7.0, -6.5
    assert Q.outlier_features(a).tolist() == [3, 6]


def test_dynamic_int8_is_close(tiny_llama, toy_batch):
    q = Q.quantize_dynamic_int8(tiny_llama)
    assert isinstance(q.model.layers[0].mlp.down_proj, torch.ao.nn.quantized.dynamic.Linear)
    with torch.no_grad():
        a, b = tiny_llama(**toy_batch).logits, q(**toy_batch).logits
    assert Q.rel_error(a, b) < 0.05


def test_dynamic_int8_skips_named_layers_and_finds_outlier_inputs(tiny_llama, toy_batch):
    mlp0, mlp1 = tiny_llama.model.layers[0].mlp, tiny_llama.model.layers[1].mlp
    with Q.capture({"down1": mlp1.down_proj}, what="input") as acts, torch.no_grad():
        tiny_llama(**toy_batch)
    typical = acts["down1"].abs().max().item()
    with torch.no_grad():
        mlp0.up_proj.weight.mul_(1e4)       # layer 0's down_proj now sees inputs ~1e4× the usual
        mlp1.up_proj.weight.mul_(1e-2)      # and layer 1's stay small, so the threshold separates them
    found = Q.outlier_linears(tiny_llama, toy_batch, threshold=100 * typical)
    assert "model.layers.0.mlp.down_proj" in found and "model.layers.1.mlp.down_proj" not in found
    assert Q.outlier_linears(tiny_llama, toy_batch, threshold=1e12) == []
    q = Q.quantize_dynamic_int8(tiny_llama, skip=found)
    assert type(q.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert isinstance(q.model.layers[1].mlp.down_proj, torch.ao.nn.quantized.dynamic.Linear)


def test_bench_nf4_prints_a_ratio(capsys):
    res = bench_quant.bench_nf4(size=256, repeats=1)
    assert res["ratio"] > 0 and res["max_abs_diff"] < 0.01 and "ratio ours/bnb" in capsys.readouterr().out


# --------------------------------------------------------------------------- notebook ↔ package

def _inline_namespace() -> dict:
    """Execute the notebook's from-scratch cells (marked ``# inline: …``) in one namespace."""
    ns: dict = {}
    for name in ("linear quantization", "NF4 codebook", "blockwise absmax quantization", "straight-through estimator"):
        run_inline(NOTEBOOK.name, name, ns)
    return ns


def test_notebook_inline_definitions_match_package():
    ns = _inline_namespace()
    x = _weights((32, 128))
    for bits, sym in [(8, True), (4, False), (3, True)]:
        xg = Q.group_view(x, "channel")
        lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)
        s_nb, z_nb = ns["scale_zero"](lo, hi, bits, sym)
        s_pk, z_pk = Q.scale_zero(lo, hi, bits, sym)
        torch.testing.assert_close(s_nb, s_pk)
        torch.testing.assert_close(z_nb, z_pk)
        q_nb = ns["quantize"](xg, s_nb, z_nb, bits, sym)
        torch.testing.assert_close(q_nb, Q.quantize(xg, s_pk, z_pk, bits, sym))
        torch.testing.assert_close(ns["dequantize"](q_nb, s_nb, z_nb), Q.dequantize(q_nb, s_pk, z_pk))
    assert torch.equal(ns["nf4_codebook"](), Q.nf4_codebook())
    codes_nb, absmax_nb = ns["blockwise_quantize"](x, Q.nf4_codebook(), 64)
    codes_pk, absmax_pk = Q.blockwise_quantize(x, Q.nf4_codebook(), 64)
    assert torch.equal(codes_nb.to(torch.uint8), codes_pk) and torch.equal(absmax_nb, absmax_pk)
    torch.testing.assert_close(ns["blockwise_dequantize"](codes_nb, absmax_nb, Q.nf4_codebook(), 64, x.shape),
                               Q.blockwise_dequantize(codes_pk, absmax_pk, Q.nf4_codebook(), 64, x.shape))
    w = torch.randn(4, 8, requires_grad=True)
    ns["ste"](w, w.detach().round()).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(4, 8))


def test_exercise_answers_agree_with_package():
    from course_utils.exercises import nb04

    scale, zero = Q.scale_zero(torch.tensor([[-1.0]]), torch.tensor([[3.0]]), 8, symmetric=False)
    assert nb04.q1.solution_answer() == pytest.approx((scale.item(), zero.item()))
    assert nb04.q3.solution_answer()[0] == pytest.approx(Q.bits_per_param(32, double_quant=True))
    w, answer = nb04.q2.solution_answer()
    torch.testing.assert_close(answer, Q.group_view(w, "group", 64).abs().amax(1))


# --------------------------------------------------------------------------- the GGUF grid, code usage, calibration

def test_minmax_fake_quant_reproduces_gguf_q4_1():
    """gguf's own Q4_1 (blocks of 32, fp16 scale and minimum): re-quantizing its output with the same rule is lossless."""
    import gguf
    import numpy as np

    w = _weights((64, 128))
    raw = gguf.quants.quantize(w.numpy().astype(np.float32), gguf.GGMLQuantizationType.Q4_1)
    on_grid = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)).float().reshape(w.shape)
    assert int(Q.block_distinct(on_grid).max()) <= 16 and Q.block_distinct(w).float().mean() > 24
    torch.testing.assert_close(Q.minmax_fake_quant(on_grid, 4, 32), on_grid, rtol=0, atol=1e-6)
    assert Q.rel_error(on_grid, Q.minmax_fake_quant(on_grid, 4, 64)) > 0.02       # misaligned blocks: a real error
    assert Q.rel_error(w, Q.minmax_fake_quant(w, 4, 32)) > 0.02                   # off the grid: a real error
    # close to gguf's own rounding of the same weights (it rounds d and m to fp16)
    assert Q.rel_error(on_grid, Q.minmax_fake_quant(w, 4, 32)) < 0.01


def test_minmax_fake_quant_error_at_most_half_a_step():
    w = _weights((16, 64))
    xg = w.reshape(-1, 32)
    step = (xg.amax(1, keepdim=True) - xg.amin(1, keepdim=True)) / 15
    assert ((Q.minmax_fake_quant(w, 4, 32).reshape(-1, 32) - xg).abs() <= step / 2 + 1e-7).all()


def test_block_distinct_counts_by_hand():
    x = torch.tensor([1.0, 1.0, 2.0, 3.0, 5.0, 5.0, 5.0, 5.0])
    assert Q.block_distinct(x, 4).tolist() == [3, 1]
    w = _weights((8, 64))
    assert Q.block_distinct(w, 32).tolist() == [len(b.unique()) for b in w.reshape(-1, 32)]


@pytest.mark.parametrize("name", ["nf4", "int4"])
def test_code_usage_counts_the_codes(name):
    w = _weights((64, 128))
    shares = Q.code_usage(w, name, 64)
    codes, _ = Q.blockwise_quantize(w, Q.codebook(name), 64)
    values = Q.codebook(name)[codes.long()]
    by_hand = torch.tensor([(values == v).float().mean().item() for v in Q.codebook(name).unique()])
    torch.testing.assert_close(shares, by_hand)
    assert len(shares) == (16 if name == "nf4" else 15) and abs(shares.sum().item() - 1) < 1e-6


def test_entropy_bits_and_nf4_uses_codes_more_evenly():
    assert Q.entropy_bits(torch.full((16,), 1 / 16)) == pytest.approx(4.0)
    assert Q.entropy_bits(torch.tensor([1.0, 0.0])) == pytest.approx(0.0)
    g = torch.randn(256, 256, generator=torch.Generator().manual_seed(1))
    nf4, int4 = (Q.entropy_bits(Q.code_usage(g, n)) for n in ("nf4", "int4"))
    assert nf4 > int4 + 0.2 and nf4 < 4.0


def test_static_fake_quant_equals_per_tensor_and_clips():
    x = _weights((32, 64))
    torch.testing.assert_close(Q.static_fake_quant(x, x.abs().max().item()), Q.fake_quant(x, 8, True, "tensor"))
    small = Q.static_fake_quant(x, 0.01)
    assert small.abs().max() <= 0.01 + 1e-7                                        # beyond the range: clipped
    assert Q.rel_error(x, small) > Q.rel_error(x, Q.static_fake_quant(x, x.abs().max().item()))


def test_nf4_keeps_pruned_zeros():
    w = _weights((64, 128))
    w = w * (torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) > 0.5)
    w_hat, _ = Q.quantize_weight(w, "nf4")
    assert bool((w_hat[w == 0] == 0).all()), "NF4's exact 0 should keep every pruned zero"
