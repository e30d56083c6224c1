"""Pruning from scratch vs torch.nn.utils.prune, slicing vs masking, 2:4, costs, and the notebook's inline code."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as tprune
from notebook_cells import run_inline

from course_utils.lessons import pruning as P

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_pruning.ipynb"


def _linears(model):
    return P.decoder_linears(model)


def test_kth_smallest_matches_torch():
    x = torch.randn(1000)
    for k in (1, 17, 500, 1000):
        assert P.kth_smallest(x, k) == x.kthvalue(k).values


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.9])
def test_magnitude_mask_equals_l1_unstructured(tiny_llama, amount):
    for name, lin in _linears(tiny_llama).items():
        ref = copy.deepcopy(lin)
        tprune.l1_unstructured(ref, "weight", amount=amount)
        assert torch.equal(P.magnitude_mask(lin.weight, amount), ref.weight_mask), name


def test_magnitude_mask_prunes_ties_together():
    w = torch.tensor([[0.1, -0.1, 0.1, 0.5], [0.7, 0.1, 0.9, 0.2]])
    mask = P.magnitude_mask(w, 0.25)  # k = 2: the threshold 0.1 is shared by four weights
    assert mask.sum() == 4 and bool((mask[w.abs() == 0.1] == 0).all())


def test_global_masks_equal_global_unstructured(tiny_llama):
    lins = _linears(tiny_llama)
    ours = P.global_magnitude_masks({n: m.weight for n, m in lins.items()}, 0.4)
    copies = {n: copy.deepcopy(m) for n, m in lins.items()}
    tprune.global_unstructured([(m, "weight") for m in copies.values()], tprune.L1Unstructured, amount=0.4)
    for n in lins:
        assert ours[n].dtype == torch.bool and torch.equal(ours[n].float(), copies[n].weight_mask), n
    assert abs(P.sparsity(ours.values()) - 0.4) < 1e-3


def test_row_norm_mask_equals_ln_structured(tiny_llama):
    for name, lin in _linears(tiny_llama).items():
        ref = copy.deepcopy(lin)
        tprune.ln_structured(ref, "weight", amount=0.25, n=2, dim=0)
        assert torch.equal(P.row_norm_mask(lin.weight, 0.25), ref.weight_mask), name


def test_slicing_equals_masking_one_mlp(tiny_llama):
    mlp = tiny_llama.model.layers[0].mlp
    keep = P.keep_channels(P.mlp_channel_scores(mlp), 0.5)
    masked, sliced = copy.deepcopy(mlp), copy.deepcopy(mlp)
    P.mask_mlp_channels_(masked, keep)
    P.slice_mlp_channels_(sliced, keep)
    assert sliced.gate_proj.weight.shape == (32, 32) and sliced.down_proj.weight.shape == (32, 32)
    x = torch.randn(3, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(sliced(x), masked(x))
        # and masking really changed something (so the test can fail)
        assert not torch.allclose(mlp(x), masked(x))


def test_slicing_equals_masking_whole_model(tiny_llama, toy_batch):
    acts = P.activation_norms(tiny_llama, _linears(tiny_llama), toy_batch)
    masked, sliced = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    kept_m = P.prune_mlp_channels_(masked, 0.25, act_norms=acts)
    kept_s = P.prune_mlp_channels_(sliced, 0.25, act_norms=acts, slice_=True)
    assert all(torch.equal(a, b) for a, b in zip(kept_m, kept_s))
    with torch.no_grad():
        torch.testing.assert_close(sliced(**toy_batch).logits, masked(**toy_batch).logits)
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in masked.parameters())


def test_channel_scores_activation_aware():
    mlp = torch.nn.Module()
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(4, 3, bias=False), torch.nn.Linear(4, 3, bias=False)
    mlp.down_proj = torch.nn.Linear(3, 4, bias=False)
    act = torch.tensor([1.0, 100.0, 0.0])
    scores = P.mlp_channel_scores(mlp, act)
    torch.testing.assert_close(scores, act * mlp.down_proj.weight.norm(dim=0))
    assert P.keep_channels(scores, 1 / 3).tolist() == [0, 1]


def _l2(row) -> float:
    return math.sqrt(sum(float(x) ** 2 for x in row))


def test_weight_only_channel_scores_multiply_gate_up_and_down_norms(tiny_llama):
    """Without activations, channel i scores ‖gate_i‖·‖up_i‖·‖down[:, i]‖ (h_i = silu(g_i·x)·(u_i·x))."""
    torch.manual_seed(0)
    mlp = torch.nn.Module()
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(8, 4, bias=False)
    mlp.down_proj = torch.nn.Linear(4, 8, bias=False)
    with torch.no_grad():
        mlp.up_proj.weight.mul_(torch.tensor([1.0, 1.0, 1e-3, 30.0])[:, None])   # only up_proj tells 2 and 3 apart
    for m in (mlp, tiny_llama.model.layers[1].mlp):
        gate, up, down = (w.detach().double() for w in (m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight))
        expected = torch.tensor([_l2(gate[i]) * _l2(up[i]) * _l2(down[:, i]) for i in range(gate.shape[0])],
                                dtype=torch.float64)
        torch.testing.assert_close(P.mlp_channel_scores(m).double(), expected, rtol=1e-5, atol=0)
    assert P.keep_channels(P.mlp_channel_scores(mlp), 0.25).tolist() == [0, 1, 3]


def test_activation_norms_match_manual(tiny_llama, toy_batch):
    batch = dict(toy_batch)
    batch["attention_mask"] = batch["attention_mask"].clone()
    batch["attention_mask"][0, -3:] = 0  # padded tokens must not count
    lins = _linears(tiny_llama)
    norms = P.activation_norms(tiny_llama, lins, batch)
    layer0 = tiny_llama.model.layers[0]
    with torch.no_grad():
        h = layer0.input_layernorm(tiny_llama.model.embed_tokens(batch["input_ids"]))   # (B, T, d)
    h = h[batch["attention_mask"].bool()]                                                 # (tokens, d)
    torch.testing.assert_close(norms["model.layers.0.self_attn.q_proj"], h.pow(2).sum(0).sqrt())
    assert set(norms) == set(lins)


def test_wanda_mask():
    w = torch.randn(6, 8)
    ones = P.wanda_mask(w, torch.ones(8), 0.5)
    assert bool((ones.sum(1) == 4).all())                      # per row, half kept
    per_row = torch.stack([P.magnitude_mask(r, 0.5) for r in w])
    assert torch.equal(ones, per_row)                          # constant activations: per-row magnitude
    loud = torch.ones(8)
    loud[2] = 1e6
    assert bool((P.wanda_mask(w, loud, 0.5)[:, 2] == 1).all())  # a loud input keeps its weights


def test_two_four_mask():
    w = torch.randn(8, 16)
    m = P.two_four_mask(w)
    g, keep = w.abs().reshape(-1, 4), m.reshape(-1, 4)
    assert bool((keep.sum(1) == 2).all())
    kept_min = torch.where(keep > 0, g, torch.inf).min(1).values
    dropped_max = torch.where(keep == 0, g, -torch.inf).max(1).values
    assert bool((kept_min >= dropped_max).all())
    with pytest.raises(ValueError):
        P.two_four_mask(torch.randn(4, 6))


def test_semi_structured_guard():
    w = torch.randn(64, 64)
    if P.semi_structured_available():
        sp = P.to_semi_structured(w)
        x = torch.randn(64, 32, dtype=torch.half, device="cuda")
        dense = (w * P.two_four_mask(w)).half().cuda()
        torch.testing.assert_close(torch.mm(sp, x), torch.mm(dense, x), rtol=1e-2, atol=1e-2)
    else:
        with pytest.raises(RuntimeError, match="CUDA"):
            P.to_semi_structured(w)


def test_storage_bytes_formulas():
    w = torch.randn(10, 20)
    w[w.abs() < 0.8] = 0
    nnz = int((w != 0).sum())
    b = P.storage_bytes(w)
    assert b["dense"] == 200 * 4
    assert b["COO (int64)"] == nnz * (2 * 8 + 4)
    assert b["CSR (int64)"] == nnz * (8 + 4) + 11 * 8
    assert b["CSR (int32)"] == nnz * (4 + 4) + 11 * 4


def test_prune_unstructured_and_restore(tiny_llama):
    lins = _linears(tiny_llama)
    saved = P.snapshot(lins)
    masks = P.prune_unstructured_(lins, 0.5)
    assert abs(P.sparsity([m.weight for m in lins.values()]) - 0.5) < 1e-3
    assert all(m.dtype == torch.bool for m in masks.values())
    P.restore_(lins, saved)
    assert all(torch.equal(m.weight, saved[n]) for n, m in lins.items())


def test_lora_keeps_mask_until_merge(tiny_llama, toy_batch):
    from peft import LoraConfig, get_peft_model

    from course_utils.core.train import train

    lins = _linears(tiny_llama)
    masks = P.prune_unstructured_(lins, 0.5)
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, lora_alpha=8, target_modules=list(P.LINEAR_KINDS)))
    train(peft_model, [toy_batch], steps=3, lr=1e-2, progress=False)
    base = P.decoder_linears(peft_model)
    assert set(base) == set(lins)                                    # names map back through base_layer
    assert abs(P.sparsity([m.weight for m in base.values()]) - 0.5) < 1e-3   # frozen base: mask holds
    merged = peft_model.merge_and_unload()
    merged_lins = P.decoder_linears(merged)
    assert P.sparsity([m.weight for m in merged_lins.values()]) < 0.05     # merging fills the zeros in
    P.apply_masks_(merged_lins, masks)
    assert abs(P.sparsity([m.weight for m in merged_lins.values()]) - 0.5) < 1e-3


# --------------------------------------------------------------------------- the notebook's inline code

@pytest.mark.parametrize("amount", [0.2, 0.5, 0.8])
def test_inline_magnitude_mask_agrees(amount):
    fn = run_inline(NOTEBOOK.name, "magnitude_mask")["magnitude_mask"]
    w = torch.randn(64, 48)
    assert torch.equal(fn(w, amount), P.magnitude_mask(w, amount))


def test_inline_two_four_mask_agrees():
    fn = run_inline(NOTEBOOK.name, "two_four_mask")["two_four_mask"]
    w = torch.randn(32, 64)
    assert torch.equal(fn(w), P.two_four_mask(w))


def test_inline_slice_agrees(tiny_llama):
    fn = run_inline(NOTEBOOK.name, "slice_mlp_channels_")["slice_mlp_channels_"]
    mlp = tiny_llama.model.layers[1].mlp
    keep = P.keep_channels(P.mlp_channel_scores(mlp), 0.3)
    a, b = copy.deepcopy(mlp), copy.deepcopy(mlp)
    fn(a, keep)
    P.slice_mlp_channels_(b, keep)
    for proj in ("gate_proj", "up_proj", "down_proj"):
        assert torch.equal(getattr(a, proj).weight, getattr(b, proj).weight), proj
