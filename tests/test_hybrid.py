"""LoRA + bottleneck adapters trained together (course_utils.chatbot.hybrid) on a tiny random Llama."""

import pytest
import torch

from course_utils.chatbot.hybrid import (
    answer_loss,
    attach_adapters,
    bottleneck_for_budget,
    from_layer,
    layer_inputs,
    lora_model,
    same_budget_hybrid,
    shared_base,
)
from course_utils.core.models import LORA_TARGETS
from course_utils.lessons.lora_math import lora_param_count
from course_utils.lessons.peft_methods import adapter_modules, adapter_param_count, remove_adapters

TARGETS = tuple(LORA_TARGETS)   # all seven projections


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _ids():
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))


def test_shared_base_shares_every_weight_and_drops_the_adapters():
    served = lora_model(_tiny(), r=4, lora_alpha=8, targets=TARGETS, layers=[2, 3])
    with torch.no_grad():                                   # make LoRA visible: B ≠ 0
        for n, p in served.named_parameters():
            if "lora_B" in n:
                p.normal_()
    base = shared_base(served)
    from peft.tuners.lora import LoraLayer

    assert not any(isinstance(m, LoraLayer) for m in base.modules())
    assert any(isinstance(m, LoraLayer) for m in served.modules()), "the served model keeps its adapters"
    served_ptrs = {p.data_ptr() for p in served.parameters()}
    assert all(p.data_ptr() in served_ptrs for p in base.parameters()), "a base weight was copied"
    x = _ids()
    with torch.no_grad(), served.disable_adapter():
        want = served(input_ids=x).logits
    torch.testing.assert_close(base(input_ids=x).logits, want)


def test_hybrid_starts_as_the_base_and_trains_lora_and_adapters_together():
    base = _tiny()
    x = _ids()
    with torch.no_grad():
        ref = base(input_ids=x).logits
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = lora_model(base, r=2, lora_alpha=8, targets=TARGETS, layers=[2, 3])
    added = attach_adapters(model, layers=[2, 3], bottleneck=5)
    assert len(added) == 4 and adapter_modules(model.get_base_model()) == added
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, ref)           # lora_B = 0 and up = 0 at the start
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".adapter." in n for n in trainable)
    assert all(".layers.2." in n or ".layers.3." in n for n in trainable), "only the chosen layers train"
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, start[n])}
    assert any("lora_B" in n for n in moved) and any(".adapter.up." in n for n in moved), "both kinds train"
    for n, p in model.get_base_model().named_parameters():
        key = n.replace(".base_layer.", ".")
        if key in frozen:
            assert torch.equal(p, frozen[key]), f"base weight {n} changed"
    remove_adapters(model.get_base_model())
    assert adapter_modules(model.get_base_model()) == []


def test_parameter_budget_arithmetic_matches_the_models():
    model = lora_model(_tiny(), r=4, lora_alpha=8, targets=TARGETS, layers=[1, 2, 3])
    shapes = [(m.in_features, m.out_features) for n, m in model.named_modules()
              if n.endswith(TARGETS) and hasattr(m, "lora_A")]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(lora_param_count(d_in, d_out, 4) for d_in, d_out in shapes) == trainable
    b = bottleneck_for_budget(32, 6, 2000)
    attach_adapters(model, layers=[1, 2, 3], bottleneck=b)
    adapters = sum(p.numel() for a in adapter_modules(model.get_base_model()) for p in a.parameters())
    assert adapters == adapter_param_count(32, b, 3) <= 2000 < adapter_param_count(32, b + 1, 3)
    with pytest.raises(ValueError, match="cannot hold"):
        bottleneck_for_budget(32, 6, 100)
    with pytest.raises(ValueError, match="already has an adapter"):
        attach_adapters(model, layers=[3], bottleneck=2)


def test_same_budget_hybrid_fills_the_budget_left_after_lora():
    lora_alone = lora_model(_tiny(), r=4, lora_alpha=8, targets=TARGETS, layers=[2, 3])
    budget = sum(p.numel() for p in lora_alone.parameters() if p.requires_grad)
    model, b = same_budget_hybrid(_tiny(), budget, r=2, lora_alpha=4, targets=TARGETS, layers=[2, 3])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    assert lora == budget // 2 and b == bottleneck_for_budget(32, 4, budget - lora)
    assert trainable <= budget < trainable + 4 * (2 * 32 + 1), "the adapters should fill what LoRA leaves"
    assert len(adapter_modules(model.get_base_model())) == 4


def _batches():
    """Two padded batches (right padding in the second) with labels, as core.train.make_batches makes them."""
    g = torch.Generator().manual_seed(2)
    out = []
    for pad in (0, 3):
        ids = torch.randint(0, 64, (2, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 9 - pad:] = 0
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :2] = -100                                          # the prompt carries no loss
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def test_from_layer_on_cached_layer_inputs_gives_the_full_models_losses_and_gradients():
    """Also with answer_loss, which applies the head to the answer tokens only."""
    model = lora_model(_tiny(), r=2, lora_alpha=8, targets=TARGETS, layers=[2, 3])
    attach_adapters(model, layers=[2, 3], bottleneck=3)
    with torch.no_grad():                                   # make both kinds visible: B ≠ 0, up ≠ 0
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=0.1)
    batches = _batches()
    cached = layer_inputs(model, batches, first=2)
    assert [tuple(c["inputs_embeds"].shape) for c in cached] == [(2, 9, 32)] * 2 and "input_ids" not in cached[0]
    trainable = [p for p in model.parameters() if p.requires_grad]
    for full, short in zip(batches, cached):
        want = model(**full).loss
        want_grads = torch.autograd.grad(want, trainable)
        with from_layer(model, 2):
            got = model(**short).loss
            got_grads = torch.autograd.grad(got, trainable)
            head_grads = torch.autograd.grad(answer_loss(model, short), trainable)
            torch.testing.assert_close(answer_loss(model, short), want)    # the head on the answer tokens only
            with pytest.raises(RuntimeError, match="inputs_embeds"):
                model(**full)                               # token ids would skip layers 0 and 1
        torch.testing.assert_close(got, want)
        for g, h, w in zip(got_grads, head_grads, want_grads):
            torch.testing.assert_close(g, w)
            torch.testing.assert_close(h, w)
    assert len(model.get_base_model().model.layers) == 4, "the layers are back after the block"
    torch.testing.assert_close(model(**batches[1]).loss, want)     # and token ids run the whole model again


def test_from_layer_refuses_a_trainable_layer_below_it():
    model = lora_model(_tiny(), r=2, lora_alpha=8, targets=TARGETS, layers=[1, 3])
    with pytest.raises(ValueError, match="below layer 2 trains"), from_layer(model, 2):
        pass
    assert len(model.get_base_model().model.layers) == 4
