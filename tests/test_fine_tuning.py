"""Freezing strategies, the memory formulas (checked against what PyTorch really stores) and the notebook's
inline versions of both (they must agree with the package)."""

from pathlib import Path

import pytest
import torch
from notebook_cells import run_inline

from course_utils.core import models
from course_utils.core.models import count_parameters
from course_utils.core.train import train
from course_utils.lessons import fine_tuning as F
from course_utils.lessons import memory as M

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_fine_tuning_basics.ipynb"


def _tiny(tied: bool = True, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    return LlamaForCausalLM(cfg).eval()


def _block_params(model) -> int:
    return sum(p.numel() for p in models.decoder_layers(model)[-1].parameters())


@pytest.mark.parametrize("strategy", F.STRATEGIES)
def test_freeze_counts(strategy):
    model = _tiny()
    h, L = model.config.hidden_size, model.config.num_hidden_layers
    n = F.freeze(model, strategy, n_last=1)
    expected = {"full": count_parameters(model)[1], "last_n": _block_params(model) + h,
                "head": model.config.vocab_size * h, "norms": (2 * L + 1) * h}[strategy]
    assert n == expected == count_parameters(model)[0]


def test_head_strategy_unties_and_leaves_embeddings_alone(toy_batch):
    model = _tiny(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    F.freeze(model, "head")
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # same values, own copy
    emb, head = model.model.embed_tokens.weight.detach().clone(), model.lm_head.weight.detach().clone()
    train(model, [toy_batch], steps=3, lr=1e-2, progress=False)
    assert torch.equal(model.model.embed_tokens.weight, emb)
    assert not torch.equal(model.lm_head.weight, head)


@pytest.mark.parametrize("strategy", ["last_n", "head", "norms"])
def test_partial_training_changes_only_trainable(strategy, toy_batch):
    model = _tiny()
    F.freeze(model, strategy, n_last=1)
    snap = F.snapshot_frozen(model)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    res = train(model, [toy_batch], steps=4, lr=1e-2, progress=False)
    assert F.changed_frozen(model, snap) == []
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n], before) for n, before in trainable.items())
    assert res.losses[-1] < res.losses[0]
    # the check can fail: perturb one frozen weight and it is reported
    name = next(iter(snap))
    with torch.no_grad():
        params[name].view(-1)[0] += 1e-3
    assert F.changed_frozen(model, snap) == [name]


def test_model_shape_counts_match_real_models():
    for tied in (True, False):
        model = _tiny(tied)
        shape = M.ModelShape.from_config(model.config, "tiny")
        assert shape.params == count_parameters(model)[1]
    # Phi-3-mini has 3.82 B parameters, Llama-2-7B 6.74 B (their model cards)
    assert abs(M.PHI3_MINI.params / 1e9 - 3.82) < 0.01
    assert abs(M.LLAMA_7B.params / 1e9 - 6.74) < 0.01


def test_lora_param_count_matches_peft():
    from peft import LoraConfig, get_peft_model

    model = _tiny(tied=False)
    shape = M.ModelShape.from_config(model.config, "tiny")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(models.LORA_TARGETS)))
    assert count_parameters(peft_model)[0] == shape.lora_params(4)


def _extras(batch, shape, head_dim, embeddings_trainable) -> int:
    """Bytes autograd saves besides activations: int64 labels (and ids when the embedding trains), RoPE cos/sin."""
    B, T = batch["input_ids"].shape
    ids = B * T * 8 if embeddings_trainable else 0
    return ids + B * T * 8 + 2 * T * head_dim * 4


def test_activation_formula_full_matches_saved_tensors(toy_batch):
    model = _tiny(tied=False).train()
    shape = M.ModelShape.from_config(model.config, "tiny")
    B, T = toy_batch["input_ids"].shape
    measured = M.saved_activation_bytes(model, toy_batch)
    predicted = M.activation_values(shape, "full") * B * T * 4
    assert measured == predicted + _extras(toy_batch, shape, model.config.head_dim, True) + 4  # + loss scalar


def test_activation_formula_lora_matches_saved_tensors(toy_batch):
    from peft import LoraConfig, get_peft_model

    model = _tiny(tied=False)
    shape = M.ModelShape.from_config(model.config, "tiny")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=list(models.LORA_TARGETS))).train()
    B, T = toy_batch["input_ids"].shape
    measured = M.saved_activation_bytes(peft_model, toy_batch)
    predicted = M.activation_values(shape, "lora", r=4) * B * T * 4
    assert measured == predicted + _extras(toy_batch, shape, model.config.head_dim, False) + 4


def test_activation_formula_with_checkpointing_matches_saved_tensors(toy_batch):
    """Checkpointing: the forward pass keeps each block's input (h per token) and the tail, and backward
    recomputes one block at a time. Formula = what a checkpointed forward saves + what one block saves."""
    B, T = toy_batch["input_ids"].shape
    plain = {n: M.saved_activation_bytes(_tiny(tied=False, layers=n).train(), toy_batch) for n in (2, 3)}
    one_block = plain[3] - plain[2]
    model = _tiny(tied=False).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    shape = M.ModelShape.from_config(model.config, "tiny")
    forward = M.saved_activation_bytes(model, toy_batch)
    # besides activations: int64 ids (the embedding trains) and labels, the loss scalar; RoPE's cos/sin are
    # saved inside the checkpointed blocks only
    extras = 2 * B * T * 8 + 4
    predicted = M.activation_values(shape, "full", checkpointing=True) * B * T * 4
    assert one_block == (M.activation_values(_shape(3), "full") - M.activation_values(shape, "full")) * B * T * 4
    assert predicted == forward - extras + one_block
    mem = M.memory_breakdown(shape, "full", batch=B, seq_len=T, weight_bytes=4, checkpointing=True)
    assert mem["activations"] == predicted


def _shape(layers: int) -> M.ModelShape:
    return M.ModelShape.from_config(_tiny(tied=False, layers=layers).config, "tiny")


def test_nf4_bytes_per_weight_match_real_4bit_tensors():
    """QLoRA's base: 4-bit codes + a uint8 absmax per 64 weights + an fp32 scale per 256 absmax values."""
    import bitsandbytes.functional as bnbf

    from course_utils.lessons.quantization import bits_per_param

    assert M.NF4_DQ_BYTES == bits_per_param(64, double_quant=True) / 8
    assert M.NF4_DQ_BYTES == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256), rel=1e-12)
    # every projection a whole number of second-level blocks (64·256 weights), so only the per-tensor offset
    # (one fp32) is left over
    shape = M.ModelShape("mid", layers=2, hidden=256, intermediate=512, heads=4, kv_dim=128, vocab=64)
    h, kv, i = shape.hidden, shape.kv_dim, shape.intermediate
    projections = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)] * shape.layers   # (out, in)
    assert sum(o * n for o, n in projections) == shape.linear_params
    g, stored = torch.Generator().manual_seed(0), 0
    for out_f, in_f in projections:
        packed, st = bnbf.quantize_4bit(torch.randn(out_f, in_f, generator=g), blocksize=64,
                                        compress_statistics=True, quant_type="nf4")
        assert st.nested and st.absmax.dtype == torch.uint8
        stored += sum(t.numel() * t.element_size() for t in (packed, st.absmax, st.state2.absmax, st.offset))
    mem = M.memory_breakdown(shape, "qlora", r=8, weight_bytes=2)
    rest = (shape.params - shape.linear_params) * 2 + 4 * shape.lora_params(8)   # 16-bit rest, fp32 adapters
    assert mem["weights"] == stored - 4 * len(projections) + rest


def test_gradient_and_optimizer_bytes_are_exact(toy_batch):
    model = _tiny(tied=False)
    shape = M.ModelShape.from_config(model.config, "tiny")
    mem = M.memory_breakdown(shape, "full", weight_bytes=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**toy_batch).loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    opt.step()
    moments = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    assert grads == mem["grads"] and moments == mem["optimizer"]
    assert mem["weights"] == sum(p.numel() * p.element_size() for p in model.parameters())


def test_plain_16bit_training_keeps_moments_in_the_weight_dtype(toy_batch):
    model = _tiny(tied=False).to(torch.bfloat16)
    shape = M.ModelShape.from_config(model.config, "tiny")
    mem = M.memory_breakdown(shape, "full", weight_bytes=2, mixed_precision=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**toy_batch).loss.backward()
    opt.step()
    moments = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    assert moments == mem["optimizer"] == 4 * shape.params


def test_memory_breakdown_orders_methods_and_sums():
    for shape in (M.PHI3_MINI, M.LLAMA_7B):
        full, lora, qlora = (M.memory_breakdown(shape, m, batch=4, seq_len=512) for m in ("full", "lora", "qlora"))
        for mem in (full, lora, qlora):
            assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"))
        assert full["total"] > lora["total"] > qlora["total"]
        assert full["optimizer"] == 12 * shape.params  # 16-bit weights: fp32 master + two fp32 moments
        assert qlora["weights"] < lora["weights"] / 3
    ckpt = M.memory_breakdown(M.PHI3_MINI, "qlora", batch=4, seq_len=512, checkpointing=True)
    assert ckpt["activations"] < M.memory_breakdown(M.PHI3_MINI, "qlora", batch=4, seq_len=512)["activations"] / 5


# --------------------------------------------------------------------------- the notebook's inline versions

def test_notebook_inline_freeze_agrees_with_package():
    ns = run_inline(NOTEBOOK.name, "freeze")
    for strategy in F.STRATEGIES:
        a, b = _tiny(), _tiny()
        assert ns["freeze"](a, strategy, n_last=1) == F.freeze(b, strategy, n_last=1)
        assert [n for n, p in a.named_parameters() if p.requires_grad] == \
               [n for n, p in b.named_parameters() if p.requires_grad]


def test_notebook_inline_memory_formula_agrees_with_package():
    ns = run_inline(NOTEBOOK.name, "memory")
    tiny = M.ModelShape.from_config(_tiny().config, "tiny")
    for shape in (tiny, M.PHI3_MINI, M.LLAMA_7B):
        for method in ("full", "lora", "qlora"):
            for wb in (2, 4):
                for mixed, ckpt in ((True, False), (False, False), (True, True)):
                    kw = dict(batch=3, seq_len=100, r=8, weight_bytes=wb, mixed_precision=mixed, checkpointing=ckpt)
                    assert ns["memory_breakdown"](shape, method, **kw) == M.memory_breakdown(shape, method, **kw)
