"""The efficiency benchmark's arithmetic (no benchmark runs here): FLOPs per token against torch's FlopCounterMode on
a tiny Llama, parameter counts against the modules, and the MFU / bandwidth ratio functions."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from course_utils.bench import __main__ as bench
from course_utils.bench.efficiency import (
    GOALS,
    SEVEN,
    Shape,
    attention_flops_per_token,
    bandwidth_bound_tokens_per_s,
    bandwidth_ratio,
    flops_per_token,
    format_table,
    gemm_ceiling,
    gemm_flops,
    goal_met,
    lora_params,
    matmul_params,
    mfu,
    step_gemms,
)

B, T = 2, 12


def _tiny(tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
                      attn_implementation="eager")   # eager: QKᵀ and AV are matmuls the FlopCounter sees
    return LlamaForCausalLM(cfg)


def _mm_flops_per_token(model, backward: bool) -> float:
    """Independent count: matmul FLOPs torch dispatches for one forward (+ backward), minus the rotary embedding."""
    ids = torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(input_ids=ids, labels=ids)
        if backward:
            out.loss.backward()
    # the rotary embedding's inv_freq @ position ids, once per forward, not per row: measured, since the latest
    # stack (torch 2.15, transformers 5.24) no longer dispatches it as a matmul (the pins do: 2·head_dim/2·T); docs/drift.md
    inner = (model.get_base_model() if hasattr(model, "get_base_model") else model).model  # peft wraps it
    rotary = FlopCounterMode(display=False)
    with rotary, torch.no_grad():
        inner.rotary_emb(inner.embed_tokens(ids), torch.arange(T)[None])
    return (counter.get_total_flops() - rotary.get_total_flops()) / (B * T)


@pytest.mark.parametrize("tie", [False, True])
def test_matmul_params_are_the_linear_weights_including_a_tied_head(tie):
    model = _tiny(tie)
    linears = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(Shape.from_config(model.config))["total"] == linears


def test_smollm2_counts_add_up_to_its_parameter_total():
    """SmolLM2-135M: matmul weights + 61 RMSNorm vectors = the 134,515,008 parameters load_model reports."""
    smol = Shape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64, vocab=49152)
    p = matmul_params(smol)
    assert p["lm_head"] == 49152 * 576 and p["total"] + (2 * 30 + 1) * 576 == 134_515_008
    assert lora_params(smol, 16) == 30 * 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))


def test_forward_and_full_flops_equal_an_independent_count():
    model = _tiny()
    shape = Shape.from_config(model.config)
    assert _mm_flops_per_token(model, backward=False) == flops_per_token(shape, T, "forward")
    assert _mm_flops_per_token(model, backward=True) == flops_per_token(shape, T, "full")
    n = matmul_params(shape)["total"]
    assert flops_per_token(shape, T, "full") == 6 * n + 3 * 4 * 2 * T * 32


def test_lora_flops_equal_an_independent_count_up_to_the_first_blocks_input_gradient():
    """Frozen base: 4N + 6·N_lora + attention. Autograd skips one thing the convention counts: the input gradient
    of block 0's q/k/v projections (and their lora_A), whose input (the frozen embedding's output) needs none."""
    from peft import LoraConfig, get_peft_model

    r = 4
    model = get_peft_model(_tiny(), LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=list(SEVEN)))
    shape = Shape.from_config(model.config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == lora_params(shape, r)
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    skipped = 2 * (h * (h + 2 * kv) + 3 * r * h)           # weights (d_out, d_in) and lora_A (r, d_in) of q, k, v
    assert _mm_flops_per_token(model, backward=True) == flops_per_token(shape, T, "lora", lora_r=r) - skipped
    assert flops_per_token(shape, T, "qlora", lora_r=r) == flops_per_token(shape, T, "lora", lora_r=r)
    with pytest.raises(ValueError, match="mode"):
        flops_per_token(shape, T, "dpo")


def test_ratio_functions():
    assert mfu(1e9, 100, 2e11) == pytest.approx(0.5)
    assert bandwidth_bound_tokens_per_s(5e8, 1e10) == pytest.approx(20)
    assert bandwidth_ratio(10, 5e8, 1e10) == pytest.approx(0.5)
    assert GOALS == {"lora": 0.70, "full": 0.70, "qlora": 0.50, "generation": 0.50}
    assert goal_met("lora", 0.70) and not goal_met("lora", 0.69) and goal_met("qlora", 0.5)


def test_table_marks_missed_goals_and_the_subcommand_is_registered():
    rows = [{"kind": "lora", "label": "LoRA", "s": 2.0, "tokens_per_s": 256, "gflop_per_token": 0.6,
             "achieved_gflops": 150, "ratio": 0.6, "goal": 0.7, "met": False},
            {"kind": "generation", "label": "gen", "s": 0.05, "tokens_per_s": 20, "bound_tokens_per_s": 25,
             "ratio": 0.8, "goal": 0.5, "met": True}]
    overhead = {"plain_s": 2.0, "trl_gc_on_s": 3.0, "trl_gc_off_s": 2.2, "ratio_gc_on": 1.5, "ratio_gc_off": 1.1,
                "sft_config_default_gradient_checkpointing": False}
    text = format_table(rows, overhead, 2.5e11, 1e10)
    assert " NO " in text and " yes " in text and "1.50×" in text and "gradient checkpointing off" in text
    assert "ceilings" not in text
    rows[0].update(ceiling=0.5, of_ceiling=0.84)
    text = format_table(rows, overhead, 2.5e11, 1e10)
    assert "LoRA: ceiling 50% of the peak, the step reaches 84% of its ceiling" in text
    assert bench.BENCHES["efficiency"] == ("efficiency", "run")


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_step_gemms_add_up_to_the_matmul_part_of_the_flops_formula(mode):
    """The ceiling's list of matmuls does exactly the step's model FLOPs, attention aside (an independent sum)."""
    smol = Shape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64, vocab=49152)
    tokens = 4 * 128
    gemms = step_gemms(smol, tokens, mode, lora_r=16)
    attention = 3 * attention_flops_per_token(smol, 128)
    assert gemm_flops(gemms) == (flops_per_token(smol, 128, mode, lora_r=16) - attention) * tokens
    assert all(c > 0 for c in gemms.values())
    with pytest.raises(ValueError, match="mode"):
        step_gemms(smol, tokens, "forward")


def test_gemm_ceiling_is_the_list_flops_over_the_summed_best_times(monkeypatch):
    from course_utils.bench import efficiency

    times = {}

    def fake_best(fn, repeats):
        out = fn()                                   # the matmul really runs on the list's shapes
        times[tuple(out.shape)] = 0.01 * out.shape[1]
        return times[tuple(out.shape)]

    monkeypatch.setattr(efficiency, "_best", fake_best)
    gemms = {(8, 4, 16): 3, (8, 16, 4): 2}
    expected = gemm_flops(gemms) / (3 * 0.16 + 2 * 0.04)
    assert gemm_ceiling(gemms) == pytest.approx(expected)
    assert set(times) == {(8, 16), (8, 4)}


def test_the_cli_hides_the_known_bitsandbytes_message_and_nothing_else(monkeypatch, capsys):
    """``python -m course_utils.bench``: the harmless bitsandbytes import message is filtered, other messages show."""
    import logging

    from course_utils.core import quiet

    known = next(k for k in quiet.KNOWN if k.logger == "bitsandbytes.backends.cpu.ops")
    logger = logging.getLogger(known.logger)
    handler = logging.StreamHandler()   # stderr, as bitsandbytes' message reaches a learner
    logger.addHandler(handler)

    def fake_bench():
        logger.warning(known.example)
        logger.warning("an unrelated bitsandbytes warning")
        return {"ok": 1}

    monkeypatch.setitem(bench.BENCHES, "fake", ("quant", "fake"))
    monkeypatch.setattr(bench, "run", lambda name: fake_bench())
    try:
        assert bench.main(["fake"]) == 0
    finally:
        logger.removeHandler(handler)
        quiet.undo()
    err = capsys.readouterr().err
    assert "an unrelated bitsandbytes warning" in err
    assert "gemm_4bit_forward" not in err
