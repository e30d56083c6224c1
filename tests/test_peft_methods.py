"""The hand-written bottleneck adapter: identity at init, adapter-only gradients, placement, save/load, and the
notebook's inline version equal to the package's."""

import copy
from pathlib import Path

import pytest
import torch
from notebook_cells import run_inline

from course_utils.core import models
from course_utils.core.models import count_parameters
from course_utils.core.train import train
from course_utils.lessons import peft_methods as A

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "02_peft_methods.ipynb"


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_zero_init_leaves_output_exactly_unchanged(tiny_llama, toy_batch):
    before = _logits(tiny_llama, toy_batch)
    A.add_adapters(tiny_llama, bottleneck=8)
    assert torch.equal(_logits(tiny_llama, toy_batch), before)
    # the check can fail: a non-zero up-projection changes the output
    with torch.no_grad():
        A.adapter_modules(tiny_llama)[0].up.bias.fill_(0.1)
    assert not torch.equal(_logits(tiny_llama, toy_batch), before)


def test_zero_init_identity_on_the_embedded_model(embedded, toy_batch):
    model, _ = embedded
    model = copy.deepcopy(model)
    ids = toy_batch["input_ids"] * 700 + 5  # spread the toy ids over the 49,152-token vocabulary
    batch = {"input_ids": ids, "attention_mask": toy_batch["attention_mask"]}
    before = _logits(model, batch)
    A.add_adapters(model, bottleneck=64)
    assert torch.equal(_logits(model, batch), before)
    trainable, total = count_parameters(model)
    assert trainable == A.adapter_param_count(576, 64, 30) == 4_462_080


def test_one_adapter_after_attention_and_after_mlp_of_every_layer(tiny_llama, toy_batch):
    adapters = A.add_adapters(tiny_llama, bottleneck=8)
    L = tiny_llama.config.num_hidden_layers
    assert len(adapters) == 2 * L
    calls = []
    for a in adapters:
        a.register_forward_hook(lambda m, i, o: calls.append(m))
    _logits(tiny_llama, toy_batch)
    assert calls == adapters  # each called once, in order: layer 0 attn, layer 0 mlp, layer 1 attn, …
    names = {n for n, _ in tiny_llama.named_modules() if n.endswith(".adapter")}
    assert names == {f"model.layers.{i}.{p}.adapter" for i in range(L) for p in A.ADAPTER_POINTS}


def test_only_adapter_parameters_get_gradients(tiny_llama, toy_batch):
    A.add_adapters(tiny_llama, bottleneck=8)
    opt = torch.optim.AdamW([p for p in tiny_llama.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # step 1: only `up` has a non-zero gradient (up = 0 blocks down's); step 2: both
        opt.zero_grad()
        tiny_llama(**toy_batch).loss.backward()
        opt.step()
    for name, p in tiny_llama.named_parameters():
        if ".adapter." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} got a gradient"


def test_training_adapters_lowers_loss_and_keeps_base_bit_for_bit(toy_batch):
    from transformers import LlamaConfig, LlamaForCausalLM

    # a larger init than the fixture's: with std 0.02 the frozen random head caps what any adapter can reach
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    A.add_adapters(model, bottleneck=8)
    res = train(model, [toy_batch], steps=10, lr=3e-2, progress=False)
    assert res.losses[-1] < 0.8 * res.losses[0]
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in base.items())


def test_save_load_roundtrip_and_remove(tiny_llama, toy_batch, tmp_path):
    original = _logits(tiny_llama, toy_batch)
    fresh = copy.deepcopy(tiny_llama)
    A.add_adapters(tiny_llama, bottleneck=8, activation="relu")
    train(tiny_llama, [toy_batch], steps=3, lr=1e-2, progress=False)
    adapted = _logits(tiny_llama, toy_batch)
    path = A.save_adapters(tiny_llama, tmp_path / "task.safetensors")
    n_params = sum(v.numel() for v in A.adapter_state_dict(tiny_llama).values())
    assert abs(path.stat().st_size - 4 * n_params) < 4096  # fp32 tensors + a small JSON header
    A.load_adapters(fresh, path)
    assert torch.equal(_logits(fresh, toy_batch), adapted)
    assert fresh._course_adapter_config == {"bottleneck": 8, "activation": "relu"}
    A.remove_adapters(fresh)
    assert A.adapter_modules(fresh) == [] and torch.equal(_logits(fresh, toy_batch), original)
    assert not any(".adapter." in k for k in fresh.state_dict())


def test_load_rejects_mismatched_files(tiny_llama, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"format": "other"})
    with pytest.raises(ValueError, match="not a course adapter"):
        A.load_adapters(tiny_llama, bad)
    A.add_adapters(tiny_llama, bottleneck=8)
    with pytest.raises(ValueError, match="already has adapters"):
        A.add_adapters(tiny_llama, bottleneck=8)


def test_adapters_work_under_generate(tiny_llama):
    A.add_adapters(tiny_llama, bottleneck=8)
    out = tiny_llama.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)


def test_notebook_inline_adapter_agrees_with_package():
    ns = run_inline(NOTEBOOK.name, "adapter")
    torch.manual_seed(0)
    mine = ns["BottleneckAdapter"](32, 8)
    ref = A.BottleneckAdapter(32, 8)
    assert set(mine.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 5, 32)
    assert torch.equal(mine(x), x)  # zero-initialised up-projection: identity
    with torch.no_grad():
        for p in mine.parameters():
            p.normal_()
    ref.load_state_dict(mine.state_dict())
    torch.testing.assert_close(mine(x), ref(x))


class _CharTok:
    """Characters → ids 1..63: enough to turn a text into tokens for the tiny model."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1 + ord(c) % 63 for c in text]}


def test_prefix_initialised_from_text_equals_prompting_with_that_text(tiny_llama, toy_batch):
    from peft import PrefixTuningConfig, get_peft_model

    text, n = "coffee", 4
    prefix_ids = A.text_ids(_CharTok(), text, n)                         # (1, n): "coff"
    ids = toy_batch["input_ids"][:2]
    with torch.no_grad():
        expected = tiny_llama(input_ids=torch.cat([prefix_ids.expand(2, -1), ids], 1)).logits[:, n:]
    model = get_peft_model(copy.deepcopy(tiny_llama), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))
    random_start = _logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    A.init_prefix_from_text(model, _CharTok(), text)
    got = _logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(random_start, expected, atol=1e-3)  # peft's random prefix starts elsewhere


def test_evaluate_answers_matches_evaluate_loss_and_counts_answer_tokens_only(tiny_llama, toy_batch):
    from course_utils.core.train import evaluate_loss

    batch = dict(toy_batch, labels=toy_batch["labels"].clone())
    batch["labels"][:, :6] = -100
    with torch.no_grad():
        pred = tiny_llama(input_ids=batch["input_ids"]).logits[:, :-1].argmax(-1)
    target = batch["labels"][:, 1:]
    mask = target != -100
    loss, acc = A.evaluate_answers(tiny_llama, [batch])
    assert loss == pytest.approx(evaluate_loss(tiny_llama, [batch]), rel=1e-5)
    assert acc == pytest.approx(float((pred[mask] == target[mask]).float().mean()))
    perfect = dict(batch, labels=torch.cat([batch["labels"][:, :1], pred], 1))
    perfect["labels"][:, :6] = -100
    assert A.evaluate_answers(tiny_llama, [perfect])[1] == 1.0


def test_dir_size_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    assert models.dir_size_bytes(tmp_path) == 15 and models.dir_size_bytes(tmp_path / "a") == 10


def test_prompt_initialised_from_text_equals_prompting_with_that_text(tiny_llama, toy_batch):
    from peft import PromptTuningConfig, get_peft_model

    text, n = "coffee", 4
    ids = toy_batch["input_ids"][:2]
    with torch.no_grad():
        expected = tiny_llama(input_ids=torch.cat([A.text_ids(_CharTok(), text, n).expand(2, -1), ids], 1)).logits
    model = get_peft_model(copy.deepcopy(tiny_llama), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n))
    A.init_prompt_from_text(model, _CharTok(), text)
    got = _logits(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})   # (B, n + T, V)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt", "adapter"])
def test_changed_base_weights_maps_names_and_detects_changes(tiny_llama, toy_batch, method):
    from peft import IA3Config, LoraConfig, PromptTuningConfig, get_peft_model

    model = copy.deepcopy(tiny_llama)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"]))
    elif method == "ia3":
        model = get_peft_model(model, IA3Config(task_type="CAUSAL_LM"))
    elif method == "prompt":
        model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    else:
        A.add_adapters(model, bottleneck=4)
    train(model, [toy_batch], steps=2, lr=1e-2, progress=False)
    assert A.changed_base_weights(model, tiny_llama) == []
    inner = dict(model.named_parameters())
    key = next(n for n in inner if "q_proj" in n and "lora" not in n)
    with torch.no_grad():
        inner[key].view(-1)[0] += 1.0
    assert A.changed_base_weights(model, tiny_llama) == ["model.layers.0.self_attn.q_proj.weight"]
