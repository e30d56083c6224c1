"""The efficiency line (course_utils.core.efficiency) and the CPU's measured bf16 decision (runtime.cpu_bf16)."""

import pytest
import torch

from course_utils.bench.efficiency import Shape, flops_per_token, matmul_params
from course_utils.core import efficiency, peaks, runtime


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty peak cache for this test (file and in-process memo), restored afterwards."""
    monkeypatch.setenv(peaks.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(peaks, "_PEAKS", {})
    return tmp_path


def _fake(fp32, bf16, calls=None):
    def measure(device):
        if calls is not None:
            calls.append(device)
        return {"fp32": fp32, "bf16": bf16}
    return measure


@pytest.mark.parametrize("bf16, expected", [(4.0e11, True), (1.2e11, False), (0.6e11, False), (0.07e11, False)])
def test_cpu_bf16_is_decided_by_the_measurement(fresh_cache, monkeypatch, bf16, expected):
    """4× faster (an AVX512-BF16 EPYC) → autocast; 1.2× (not worth the casts), 0.6× (this Xeon, whose flags say avx512_bf16) or 14× slower
    (AVX2 emulation) → fp32."""
    monkeypatch.delenv(runtime.CPU_BF16_ENV, raising=False)
    assert runtime.cpu_bf16(measure=_fake(1.0e11, bf16)) is expected
    assert runtime.precision_flags("cpu") == {"bf16": expected, "fp16": False}
    assert runtime.compute_dtype("cpu") == torch.float32        # weights stay fp32 either way
    assert (runtime.autocast_dtype("cpu") == torch.bfloat16) is expected


def test_the_env_override_wins_over_the_measurement(fresh_cache, monkeypatch):
    calls = []
    monkeypatch.setattr(peaks, "measure_peaks", _fake(1e11, 1e9, calls))
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "1")
    assert runtime.cpu_bf16() and runtime.precision_flags("cpu")["bf16"]
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "0")
    assert not runtime.cpu_bf16() and runtime.autocast_dtype("cpu") is None
    assert calls == []                                             # no measurement when forced
    monkeypatch.setenv(runtime.CPU_BF16_ENV, "maybe")
    with pytest.raises(ValueError, match="COURSE_CPU_BF16"):
        runtime.cpu_bf16()


def test_the_peak_is_measured_once_and_cached_on_disk(fresh_cache, monkeypatch):
    calls = []
    assert peaks.machine_peaks("cpu", measure=_fake(2e11, 8e11, calls))["bf16"] == 8e11
    monkeypatch.setattr(peaks, "_PEAKS", {})                  # a new session: read from the file
    assert peaks.machine_peaks("cpu", measure=_fake(1.0, 1.0, calls)) == {"fp32": 2e11, "bf16": 8e11}
    assert calls == ["cpu"] and peaks.cache_path().is_relative_to(fresh_cache)


def test_cpu_time_probe_measures_a_positive_rate():
    assert peaks.cpu_matmul_flops(torch.float32, n=64, repeats=2) > 0


def _tiny(tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg)


def test_full_fine_tuning_flops_equal_the_benchmarks_count():
    model, T = _tiny(), 12
    shape = Shape.from_config(model.config)
    assert (efficiency.linear_flops_per_token(model) + efficiency.attention_flops_per_token(model, T)
            == flops_per_token(shape, T, "full"))


def test_lora_flops_are_the_benchmarks_count_less_backward_where_nothing_upstream_trains():
    from peft import LoraConfig, get_peft_model

    from course_utils.bench.efficiency import SEVEN

    model = get_peft_model(_tiny(), LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, target_modules=list(SEVEN)))
    shape, T = Shape.from_config(model.config), 12
    ours = efficiency.linear_flops_per_token(model) + efficiency.attention_flops_per_token(model, T)
    q = shape.hidden * shape.heads * shape.head_dim
    assert ours == flops_per_token(shape, T, "lora", lora_r=4) - 2 * q   # block 0's q_proj: no input gradient
    frozen = _tiny()
    frozen.requires_grad_(False)
    frozen.lm_head.weight.requires_grad_(True)                   # only the head trains: the blocks run forward only
    assert efficiency.linear_flops_per_token(frozen) == 2 * matmul_params(shape)["blocks"] + 6 * 64 * 32


def _run(**kw):
    return efficiency.Run(**{"tokens": 900, "positions": 1000, "seconds": 2.0, "flops": 4e11, "peak_mb": 512.0,
                             "device": "cpu", "dtype": "fp32", **kw})


def test_the_line_has_tokens_per_s_padding_memory_and_mfu():
    line = efficiency.format_line([_run()], {"fp32": 1e12, "bf16": 4e12})
    assert line.count("\n") == 0 and "450 tokens/s (10% of the positions were padding)" in line
    assert "peak memory 512 MB" in line and "MFU 20% of this machine's fp32 matmul peak (1,000 GFLOP/s" in line
    bf16 = efficiency.format_line([_run(dtype="bf16"), _run(dtype="bf16", peak_mb=700.0)], {"fp32": 1e12,
                                                                                          "bf16": 4e12})
    assert "over 2 runs" in bf16 and "MFU 5% of this machine's bf16" in bf16 and "peak memory 700 MB" in bf16
    assert "bf16 autocast, fp32 weights" in bf16
    assert "MFU: rehearsal" in efficiency.format_line([_run(device="cuda")], None)


def test_a_cell_prints_one_line_for_all_its_runs(capsys, fresh_cache, monkeypatch):
    monkeypatch.setattr(peaks, "measure_peaks", _fake(1e12, 4e12))
    monkeypatch.setattr(efficiency, "_in_ipython", lambda: None)
    efficiency.record(_run())                                     # outside IPython: printed at once
    assert capsys.readouterr().out.count("efficiency:") == 1
    efficiency._PENDING.extend([_run(), _run()])                  # what a cell with two runs leaves pending
    assert "over 2 runs" in efficiency.flush() and efficiency.flush() is None
    assert capsys.readouterr().out.count("efficiency:") == 1


def test_train_reports_one_line_and_autocast_keeps_fp32_weights(capsys, monkeypatch, toy_batch):
    from course_utils.core.train import train

    monkeypatch.setattr(efficiency, "_in_ipython", lambda: None)
    losses = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(runtime.CPU_BF16_ENV, flag)
        model = _tiny()
        losses[flag] = train(model, [toy_batch], steps=3, lr=1e-2, progress=False).losses
        assert all(p.dtype == torch.float32 for p in model.parameters())
        out = capsys.readouterr().out
        assert out.count("efficiency:") == 1 and ("bf16 autocast" in out) == (flag == "1")
    assert losses["1"][-1] < losses["1"][0]
    torch.testing.assert_close(torch.tensor(losses["1"]), torch.tensor(losses["0"]), rtol=0.02, atol=0.02)


def test_adamw_is_fused_and_makes_the_same_update():
    from course_utils.core.train import adamw

    w = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    v = [torch.nn.Parameter(p.detach().clone()) for p in w]
    fused, loop = adamw(w, lr=1e-2), torch.optim.AdamW(v, lr=1e-2, weight_decay=0.0, foreach=False)
    assert fused.defaults["fused"]
    for _ in range(3):
        for ps, opt in ((w, fused), (v, loop)):
            opt.zero_grad()
            sum((p ** 2).sum() for p in ps).backward()
            opt.step()
    for a, b in zip(w, v):
        torch.testing.assert_close(a, b)
