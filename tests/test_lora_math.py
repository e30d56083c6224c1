"""course_utils.lessons.lora_math: the math, merge/unmerge, freezing, and parity with peft (tiny Llama and the embedded model)."""

import copy
import math

import pytest
import torch
from notebook_cells import run_inline
from torch import nn

from course_utils.lessons import lora_math as lora
from course_utils.lessons.lora_math import (
    LoRALinear,
    copy_lora_to_peft,
    delta_weight,
    energy_captured,
    inject_lora,
    linear_shapes,
    lora_count_table,
    lora_modules,
    lora_param_count,
    lora_scaling,
    merge_lora,
    remove_lora,
    unmerge_lora,
)
from course_utils.tools.course import NOTEBOOK_DIR

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NOTEBOOK = NOTEBOOK_DIR / "03_lora_math.ipynb"


def _perturb_B(model: nn.Module, std: float = 0.05, seed: int = 1) -> None:
    """B is zero at init (ΔW = 0), so every equality test would pass trivially without this."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * std)


def _peft_twin(base: nn.Module, targets, r, alpha, use_rslora=False, layers=None):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                     use_rslora=use_rslora, layers_to_transform=layers)
    return get_peft_model(copy.deepcopy(base), cfg).eval()


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# --------------------------------------------------------------------------- the math


def test_scaling_lora_and_rslora():
    assert lora_scaling(8, 16) == 2.0
    assert lora_scaling(64, 16, use_rslora=True) == 2.0
    assert lora_scaling(4, 8, use_rslora=True) == pytest.approx(8 / math.sqrt(4))
    with pytest.raises(ValueError):
        lora_scaling(0, 8)


def test_init_gives_zero_update_and_peft_like_A():
    torch.manual_seed(0)
    base = nn.Linear(40, 24)
    layer = LoRALinear(base, r=4, lora_alpha=8)
    assert layer.lora_A.weight.shape == (4, 40) and layer.lora_B.weight.shape == (24, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    # Kaiming-uniform with a=√5 (nn.Linear's default, as in peft): U(−1/√d_in, 1/√d_in), not zero
    bound = 1 / math.sqrt(40)
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.abs().max() > bound / 2
    x = torch.randn(3, 5, 40)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)
    assert not base.weight.requires_grad and not base.bias.requires_grad


@pytest.mark.parametrize("r", [1, 3, 8])
def test_delta_weight_has_rank_at_most_r(r):
    g = torch.Generator().manual_seed(r)
    A, B = torch.randn(r, 48, generator=g), torch.randn(32, r, generator=g)
    dw = delta_weight(A, B, lora_scaling(r, 16))
    assert dw.shape == (32, 48)
    rank = int(torch.linalg.matrix_rank(dw))
    assert rank <= r
    assert rank == r  # random factors: exactly r (so the bound is tight, and the test can see a wrong formula)
    torch.testing.assert_close(dw, (16 / r) * B @ A)


def test_forward_equals_merged_weight_and_merge_roundtrip():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    layer = LoRALinear(base, r=4, lora_alpha=8)
    with torch.no_grad():
        layer.lora_B.weight.normal_(std=0.1)
    W0 = base.weight.detach().clone()
    x = torch.randn(6, 32)
    expected = x @ (W0 + layer.get_delta_weight()).T + base.bias  # (6, 16)
    unmerged = layer(x)
    torch.testing.assert_close(unmerged, expected, atol=1e-5, rtol=1e-5)
    assert (unmerged - base(x)).abs().max() > 1e-2, "the perturbed B must change the output"
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(base.weight, W0 + layer.get_delta_weight())
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=1e-5)
    layer.merge()  # merging twice must not add ΔW twice
    torch.testing.assert_close(base.weight, W0 + layer.get_delta_weight())
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(base.weight, W0, atol=1e-6, rtol=0)


def test_param_count_and_table():
    assert lora_param_count(576, 1536, 8) == 8 * (576 + 1536)
    rows = lora_count_table({"q_proj": (576, 576), "down_proj": (1536, 576)}, r=8, n_layers=30)
    assert rows[-1]["full"] == 30 * (576 * 576 + 1536 * 576)
    assert rows[-1]["lora"] == 30 * (8 * 1152 + 8 * 2112)
    assert energy_captured(torch.tensor([3.0, 1.0]), 1) == pytest.approx(0.9)
    assert energy_captured(torch.tensor([3.0, 1.0]), 2) == pytest.approx(1.0)


def test_phi3_shapes_from_config_on_meta_device():
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config()
    with torch.device("meta"):
        model = Phi3ForCausalLM(cfg)
    shapes = linear_shapes(model)
    h, m = cfg.hidden_size, cfg.intermediate_size
    assert shapes["o_proj"] == (h, h) and shapes["down_proj"] == (m, h)
    assert shapes["gate_up_proj"] == (h, 2 * m)
    assert shapes["qkv_proj"][0] == h


# --------------------------------------------------------------------------- injection and freezing


def test_inject_wraps_targets_and_freezes_everything_else(tiny_llama, toy_batch):
    names = inject_lora(tiny_llama, ["q_proj", "v_proj"], r=4, lora_alpha=8)
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = {n for n, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    expected = sum(lora_param_count(m.in_features, m.out_features, 4) for m in lora_modules(tiny_llama).values())
    assert sum(p.numel() for p in tiny_llama.parameters() if p.requires_grad) == expected

    tiny_llama.train()
    tiny_llama(**toy_batch).loss.backward()
    for n, p in tiny_llama.named_parameters():
        if n in trainable:
            continue
        assert p.grad is None, f"frozen weight {n} received a gradient"
    for m in lora_modules(tiny_llama).values():
        assert m.lora_B.weight.grad.abs().sum() > 0, "B must get a gradient from the first step"
        # with B = 0 the gradient of A (∝ Bᵀ·…) is exactly zero: A starts moving only once B has
        assert torch.count_nonzero(m.lora_A.weight.grad) == 0


def test_A_gets_gradient_once_B_is_nonzero(tiny_llama, toy_batch):
    inject_lora(tiny_llama, ["q_proj"], r=2, lora_alpha=4)
    _perturb_B(tiny_llama)
    tiny_llama(**toy_batch).loss.backward()
    assert all(m.lora_A.weight.grad.abs().sum() > 0 for m in lora_modules(tiny_llama).values())


def test_training_step_leaves_base_weights_unchanged(tiny_llama, toy_batch):
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    inject_lora(tiny_llama, ALL_LINEAR, r=4, lora_alpha=8)
    params = [p for p in tiny_llama.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        tiny_llama(**toy_batch).loss.backward()
        opt.step()
        opt.zero_grad()
    remove_lora(tiny_llama)
    for n, p in tiny_llama.named_parameters():
        assert torch.equal(p, before[n]), f"{n} changed although it was frozen"


def test_layers_to_transform_and_no_match():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, num_key_value_heads=2))
    names = inject_lora(model, ["down_proj"], r=2, layers_to_transform=[1, 3])
    assert names == ["model.layers.1.mlp.down_proj", "model.layers.3.mlp.down_proj"]
    with pytest.raises(ValueError, match="not found"):
        inject_lora(model, ["query"], r=2)


def test_remove_lora_restores_or_merges(tiny_llama, toy_batch):
    ref = _logits(tiny_llama, toy_batch)
    inject_lora(tiny_llama, ALL_LINEAR, r=4, lora_alpha=8)
    _perturb_B(tiny_llama)
    adapted = _logits(tiny_llama, toy_batch)
    assert (adapted - ref).abs().max() > 1e-3
    merge_lora(tiny_llama)
    remove_lora(tiny_llama)  # unmerges first: back to W₀
    assert not lora_modules(tiny_llama)
    torch.testing.assert_close(_logits(tiny_llama, toy_batch), ref, atol=1e-5, rtol=0)
    inject_lora(tiny_llama, ALL_LINEAR, r=4, lora_alpha=8)
    _perturb_B(tiny_llama, seed=2)
    adapted = _logits(tiny_llama, toy_batch)
    remove_lora(tiny_llama, merge=True)  # like peft's merge_and_unload: plain nn.Linear with W₀ + ΔW
    assert all(type(m) is nn.Linear for n, m in tiny_llama.named_modules() if n.endswith("q_proj"))
    torch.testing.assert_close(_logits(tiny_llama, toy_batch), adapted, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- parity with peft


def _check_parity(model, batch, targets, r, alpha, use_rslora=False, layers=None):
    """Ours vs peft with the same A and B: logits, ΔW, scaling; merged = unmerged = merge_and_unload."""
    base_logits = _logits(model, batch)
    peft_model = _peft_twin(model, targets, r, alpha, use_rslora, layers)
    ours = copy.deepcopy(model)
    names = inject_lora(ours, targets, r=r, lora_alpha=alpha, use_rslora=use_rslora, layers_to_transform=layers)
    _perturb_B(ours)
    assert copy_lora_to_peft(ours, peft_model) == 2 * len(names)

    peft_base = peft_model.base_model.model
    for name, m in lora_modules(ours).items():
        theirs = peft_base.get_submodule(name)
        assert theirs.scaling["default"] == pytest.approx(m.scaling)
        torch.testing.assert_close(m.get_delta_weight(), theirs.get_delta_weight("default"))

    unmerged = _logits(ours, batch)
    assert (unmerged - base_logits).abs().max() > 1e-2, "perturbed adapters must change the logits"
    torch.testing.assert_close(unmerged, _logits(peft_model, batch), atol=1e-5, rtol=1e-5)

    merge_lora(ours)
    merged = _logits(ours, batch)
    peft_merged = _logits(peft_model.merge_and_unload(), batch)
    torch.testing.assert_close(merged, peft_merged, atol=1e-5, rtol=1e-5)
    # (W₀+ΔW)x rounds differently from W₀x+ΔWx; over 30 layers that reaches ~1e-4 on logits of size ~20,
    # still 100× below the adapters' own effect asserted above
    torch.testing.assert_close(merged, unmerged, atol=5e-4, rtol=1e-4)
    unmerge_lora(ours)
    torch.testing.assert_close(_logits(ours, batch), unmerged, atol=5e-4, rtol=1e-4)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_parity_with_peft_tiny_llama(tiny_llama, toy_batch, use_rslora):
    _check_parity(tiny_llama, toy_batch, ALL_LINEAR, r=4, alpha=8, use_rslora=use_rslora)


def test_parity_with_peft_tiny_llama_some_layers(tiny_llama, toy_batch):
    _check_parity(tiny_llama, toy_batch, ["q_proj", "v_proj"], r=2, alpha=16, layers=[1])


def test_parity_with_peft_embedded_model(embedded):
    model, tok = embedded
    enc = tok(["LoRA adds a low-rank update to a frozen weight.", "Merged or not, the logits agree."],
              return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    _check_parity(model, batch, ["q_proj", "v_proj", "down_proj"], r=8, alpha=16)
    assert not lora_modules(model), "the shared fixture must stay untouched"


# --------------------------------------------------------------------------- the notebook's inline core


@pytest.mark.parametrize("use_rslora", [False, True])
def test_notebook_inline_core_agrees_with_package(use_rslora):
    ns = run_inline(NOTEBOOK.name, "lora-core")
    assert ns["lora_scaling"](16, 8, use_rslora) == lora_scaling(16, 8, use_rslora)
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    ours = lora.LoRALinear(copy.deepcopy(base), r=4, lora_alpha=8, use_rslora=use_rslora)
    theirs = ns["LoRALinear"](copy.deepcopy(base), r=4, lora_alpha=8, use_rslora=use_rslora)
    for attr in ("r", "lora_alpha", "scaling"):
        assert getattr(theirs, attr) == pytest.approx(getattr(ours, attr)), attr
    assert theirs.lora_A.weight.shape == ours.lora_A.weight.shape
    assert theirs.lora_B.weight.shape == ours.lora_B.weight.shape
    assert torch.count_nonzero(theirs.lora_B.weight) == 0, "the notebook's B must start at zero"
    assert not theirs.base_layer.weight.requires_grad, "the notebook's layer must freeze W₀"
    with torch.no_grad():
        ours.lora_B.weight.normal_(std=0.1)
        theirs.lora_A.weight.copy_(ours.lora_A.weight)
        theirs.lora_B.weight.copy_(ours.lora_B.weight)
    x = torch.randn(3, 7, 24)
    torch.testing.assert_close(theirs.get_delta_weight(), ours.get_delta_weight())
    torch.testing.assert_close(theirs(x), ours(x))
    ours.merge()
    theirs.merge()
    torch.testing.assert_close(theirs.base_layer.weight, ours.base_layer.weight)
    torch.testing.assert_close(theirs(x), ours(x))
    ours.unmerge()
    theirs.unmerge()
    torch.testing.assert_close(theirs.base_layer.weight, base.weight)


def test_cached_prefix_gives_the_full_models_loss_and_gradients(tiny_llama, toy_batch):
    from course_utils.lessons.lora_math import cache_frozen_prefix, top_layers_only

    inject_lora(tiny_llama, ["q_proj", "down_proj"], r=2, layers_to_transform=[1])
    _perturb_B(tiny_llama)
    full = tiny_llama(**toy_batch).loss
    full.backward()
    grads = {n: p.grad.clone() for n, p in tiny_llama.named_parameters() if p.requires_grad}
    tiny_llama.zero_grad()
    cached = cache_frozen_prefix(tiny_llama, [toy_batch], first_layer=1)
    assert cached[0]["inputs_embeds"].shape == (4, 12, 32)
    with top_layers_only(tiny_llama, 1):
        assert len(tiny_llama.model.layers) == 1
        top = tiny_llama(**cached[0]).loss
        top.backward()
    assert len(tiny_llama.model.layers) == 2, "the full layer list must come back"
    torch.testing.assert_close(top, full, atol=1e-5, rtol=1e-5)
    for n, g in grads.items():
        torch.testing.assert_close(dict(tiny_llama.named_parameters())[n].grad, g, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- DoRA


class _TwoLinear(nn.Module):
    """Two projections (one with bias, one without) named like a Llama attention block's."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.v_proj = nn.Linear(24, 40), nn.Linear(40, 24, bias=False)

    def forward(self, x):
        return self.v_proj(torch.relu(self.q_proj(x)))


def _perturb_dora(model: nn.Module, seed: int = 1) -> None:
    """B = 0 and m = ‖W₀‖_c make DoRA the identity at init: move both so parity tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.1)
            m.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn(m.lora_magnitude_vector.shape, generator=g))


def test_dora_starts_at_W0_with_the_row_norms():
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    layer = lora.DoRALinear(copy.deepcopy(base), r=4, lora_alpha=8)
    torch.testing.assert_close(layer.lora_magnitude_vector, base.weight.detach().norm(dim=1))
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(layer(x), base(x))
    assert count_params(layer) == lora.dora_param_count(24, 40, 4) == 4 * (24 + 40) + 40


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_dora_parity_with_peft_forward_grads_merge(use_rslora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = _TwoLinear()
    ours = copy.deepcopy(base)
    inject_lora(ours, ["q_proj", "v_proj"], r=4, lora_alpha=8, use_rslora=use_rslora, use_dora=True)
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                            lora_dropout=0.0, use_rslora=use_rslora, use_dora=True))
    assert count_params(ours) == count_params(theirs) == sum(lora.dora_param_count(i, o, 4) for i, o in [(24, 40), (40, 24)])
    _perturb_dora(ours)
    assert copy_lora_to_peft(ours, theirs) == 6, "A, B and m of both layers"
    x = torch.randn(3, 5, 24)
    assert (ours(x) - base(x)).abs().max() > 1e-2, "perturbed DoRA should change the output"
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.q_proj.base_layer.weight, base.q_proj.weight)  # W₀ untouched
    ours(x).square().mean().backward()
    theirs(x).square().mean().backward()
    for name, m in lora_modules(ours).items():
        t = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(m.lora_magnitude_vector.grad, t.lora_magnitude_vector["default"].weight.grad)
        torch.testing.assert_close(m.lora_A.weight.grad, t.lora_A["default"].weight.grad)
        torch.testing.assert_close(m.lora_B.weight.grad, t.lora_B["default"].weight.grad)
    with torch.no_grad():
        unmerged = ours(x)
        merge_lora(ours)
        torch.testing.assert_close(ours(x), theirs.merge_and_unload()(x))
        torch.testing.assert_close(ours(x), unmerged, atol=1e-5, rtol=1e-5)
        unmerge_lora(ours)
    torch.testing.assert_close(ours.q_proj.base_layer.weight, base.q_proj.weight, atol=1e-6, rtol=1e-5)


def test_dora_weight_is_magnitude_times_unit_rows():
    g = torch.Generator().manual_seed(0)
    W0, dW, m = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g), torch.rand(6, generator=g) + 0.5
    W = lora.dora_weight(W0, dW, m)
    torch.testing.assert_close(W.norm(dim=1), m)  # every output row has length m
    torch.testing.assert_close(W / W.norm(dim=1, keepdim=True), (W0 + dW) / (W0 + dW).norm(dim=1, keepdim=True))


def test_notebook_dora_core_agrees_with_package():
    ns = run_inline(NOTEBOOK.name, "dora-core", run_inline(NOTEBOOK.name, "lora-core"))
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    ours = lora.DoRALinear(copy.deepcopy(base), r=4, lora_alpha=8)
    theirs = ns["DoRALinear"](copy.deepcopy(base), r=4, lora_alpha=8)
    torch.testing.assert_close(theirs.lora_magnitude_vector, ours.lora_magnitude_vector)
    assert count_params(theirs) == count_params(ours), "same trainable parameters (A, B, m)"
    torch.testing.assert_close(ns["weight_norm"](base.weight, torch.zeros_like(base.weight)),
                               lora.weight_norm(base.weight))
    with torch.no_grad():
        ours.lora_B.weight.normal_(std=0.1)
        ours.lora_magnitude_vector.mul_(1.1)
        theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 24)
    torch.testing.assert_close(theirs(x), ours(x))
    theirs(x).sum().backward()
    ours(x).sum().backward()
    torch.testing.assert_close(theirs.lora_magnitude_vector.grad, ours.lora_magnitude_vector.grad)
    torch.testing.assert_close(theirs.lora_A.weight.grad, ours.lora_A.weight.grad)
    with torch.no_grad():
        ours.merge()
        theirs.merge()
        torch.testing.assert_close(theirs.base_layer.weight, ours.base_layer.weight)
        torch.testing.assert_close(theirs(x), ours(x))
