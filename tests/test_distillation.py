"""The distillation loss against a direct formula and its limits, top-k KD, the student, and the notebook's
inline code."""

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from notebook_cells import run_inline

from course_utils.lessons import distillation as D

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_distillation.ipynb"


def _logits(n=6, v=11, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, v, (n,), generator=g)
    return s, t, y


def _direct(s, t, y, T, alpha):
    """The formula written out term by term, in float64 Python loops."""
    total_kl = total_ce = 0.0
    for i in range(s.shape[0]):
        zs, zt = s[i].tolist(), t[i].tolist()
        ns = sum(math.exp(z / T) for z in zs)
        nt = sum(math.exp(z / T) for z in zt)
        p = [math.exp(z / T) / nt for z in zt]
        q = [math.exp(z / T) / ns for z in zs]
        total_kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        total_ce += -math.log(math.exp(zs[y[i]]) / sum(math.exp(z) for z in zs))
    n = s.shape[0]
    return alpha * T * T * total_kl / n + (1 - alpha) * total_ce / n


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (0.5, 0.9)])
def test_kd_loss_matches_direct_formula(T, alpha):
    s, t, y = _logits()
    assert D.kd_loss(s, t, y, T, alpha).item() == pytest.approx(_direct(s, t, y, T, alpha), rel=1e-6)


def test_alpha_zero_is_cross_entropy():
    s, t, y = _logits(seed=1)
    torch.testing.assert_close(D.kd_loss(s.float(), t.float(), y, T=3.0, alpha=0.0), F.cross_entropy(s.float(), y))


def test_identical_logits_give_zero_kl():
    s, _, y = _logits(seed=2)
    assert D.kd_loss(s, s.clone(), y, T=2.0, alpha=1.0).item() == pytest.approx(0.0, abs=1e-12)
    # and different logits give a positive KL, so the test above can fail
    assert D.kd_loss(s, s + torch.randn_like(s), y, T=2.0, alpha=1.0).item() > 1e-3


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_gradient_is_T_times_q_minus_p(T):
    s, t, y = _logits(seed=3)
    s = s.clone().requires_grad_(True)
    D.kd_loss(s, t, y, T=T, alpha=1.0).backward()
    expected = T * (torch.softmax(s.detach() / T, -1) - torch.softmax(t / T, -1)) / s.shape[0]
    torch.testing.assert_close(s.grad, expected)


def test_T_squared_keeps_gradient_scale():
    s, t, y = _logits(seed=4, scale=1.0)
    norms = {}
    for T in (10.0, 40.0):
        z = s.clone().requires_grad_(True)
        D.kd_loss(z, t, y, T=T, alpha=1.0).backward()
        norms[T] = z.grad.norm().item()
    assert norms[40.0] / norms[10.0] == pytest.approx(1.0, rel=0.05)   # with T²: about the same
    # without the T² factor the gradient would shrink by (40/10)² = 16


def test_large_T_limit_is_logit_matching():
    s, t, y = _logits(seed=5, scale=1.0)
    V = s.shape[1]
    d = (s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))
    mse_limit = (d.pow(2).sum(-1) / (2 * V)).mean()
    assert D.kd_loss(s, t, y, T=1000.0, alpha=1.0).item() == pytest.approx(mse_limit.item(), rel=1e-2)


def test_ignore_index_skips_tokens():
    s, t, y = _logits(seed=6)
    y2 = y.clone()
    y2[:2] = D.IGNORE_INDEX
    torch.testing.assert_close(D.kd_loss(s, t, y2, 2.0, 0.5), D.kd_loss(s[2:], t[2:], y[2:], 2.0, 0.5))


def test_topk_with_full_vocabulary_equals_kd_loss():
    s, t, y = _logits(seed=7)
    values, indices = D.topk_logits(t, k=t.shape[1])
    torch.testing.assert_close(D.topk_kd_loss(s, values, indices, y, 2.0, 0.5), D.kd_loss(s, t, y, 2.0, 0.5))


def test_topk_close_for_peaked_teacher_and_never_negative():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(16, 500, generator=g)
    t = torch.randn(16, 500, generator=g)
    t[:, :5] += 12                                     # a peaked teacher: 5 tokens hold nearly all the mass
    y = torch.randint(0, 500, (16,), generator=g)
    full = D.kd_loss(s, t, y, 1.0, 1.0)
    v, i = D.topk_logits(t, 8)
    approx = D.topk_kd_loss(s, v, i, y, 1.0, 1.0)
    assert approx.item() >= 0 and approx.item() == pytest.approx(full.item(), rel=0.02)


def test_shift_for_causal_lm():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    labels = torch.arange(8).reshape(2, 4)
    flat, targets = D.shift_for_causal_lm(logits, labels)
    assert flat.shape == (6, 3) and targets.tolist() == [1, 2, 3, 5, 6, 7]
    assert torch.equal(flat[0], logits[0, 0])


def test_layer_subset_student(tiny_llama, toy_batch):
    same = D.layer_subset_student(tiny_llama, [0, 1])
    with torch.no_grad():
        torch.testing.assert_close(same(**toy_batch).logits, tiny_llama(**toy_batch).logits)
    small = D.layer_subset_student(tiny_llama, [1])
    assert small.config.num_hidden_layers == 1 and len(small.model.layers) == 1
    torch.testing.assert_close(small.model.layers[0].mlp.up_proj.weight, tiny_llama.model.layers[1].mlp.up_proj.weight)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in tiny_llama.parameters())
    assert len(tiny_llama.model.layers) == 2 and tiny_llama.config.num_hidden_layers == 2, "teacher left intact"
    assert small.model.layers[0].mlp.up_proj.weight is not tiny_llama.model.layers[1].mlp.up_proj.weight
    assert all(p.requires_grad for p in small.parameters()), "a student is trainable"


def test_layer_subset_student_generates_with_its_kv_cache(tiny_llama, toy_batch):
    # the kept layer 1 becomes layer 0: its cache slot must follow, or cached decoding differs or fails
    small = D.layer_subset_student(tiny_llama, [1])
    ids = toy_batch["input_ids"][:1, :5]
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        torch.testing.assert_close(small.generate(ids, use_cache=True, **kw), small.generate(ids, use_cache=False, **kw))


@pytest.mark.parametrize("keep", [[], [0, 0], [2], [-1]])
def test_layer_subset_student_rejects_bad_keep(tiny_llama, keep):
    with pytest.raises(ValueError, match="keep="):
        D.layer_subset_student(tiny_llama, keep)


def test_agreement_and_eval_student(tiny_llama, toy_batch):
    targets = D.teacher_targets(tiny_llama, [toy_batch], k=64)       # k = V: the KL is exact
    res = D.eval_student(tiny_llama, [toy_batch], targets)
    assert res["agreement"] == 1.0 and res["kl"] == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        assert res["perplexity"] == pytest.approx(math.exp(tiny_llama(**toy_batch).loss.item()), rel=1e-4)
    other = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn_like(other.lm_head.weight))
        s_logits, t_logits = other(**toy_batch).logits, tiny_llama(**toy_batch).logits
    s_flat, y = D.shift_for_causal_lm(s_logits, toy_batch["labels"])
    t_flat, _ = D.shift_for_causal_lm(t_logits, toy_batch["labels"])
    res2 = D.eval_student(other, [toy_batch], targets)
    assert res2["kl"] == pytest.approx(D.kd_loss(s_flat, t_flat, y, T=1.0, alpha=1.0).item(), rel=1e-4)
    assert res2["agreement"] < 1.0
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert D.top1_agreement(logits, torch.tensor([[1, 1]])) == 0.5
    assert D.top1_agreement(logits, torch.tensor([[1, 1]]), mask=torch.tensor([[1, 0]])) == 1.0


def test_eval_student_averages_over_tokens_not_batches(tiny_llama, toy_batch):
    """Two batches with 44 and 9 scored tokens: every mean is over the 53 tokens, computed here directly."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (2, 7), generator=g)
    labels = ids.clone()
    labels[1, :4] = D.IGNORE_INDEX
    batches = [toy_batch, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]
    teacher = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        teacher.lm_head.weight.add_(0.02 * torch.randn(teacher.lm_head.weight.shape, generator=g))
    res = D.eval_student(tiny_llama, batches, D.teacher_targets(teacher, batches, k=64))   # k = V: exact KL
    per_batch = []
    with torch.no_grad():
        for b in batches:
            s, y = D.shift_for_causal_lm(tiny_llama(**b).logits.double(), b["labels"])
            t, _ = D.shift_for_causal_lm(teacher(**b).logits.double(), b["labels"])
            s, t, y = s[y != D.IGNORE_INDEX], t[y != D.IGNORE_INDEX], y[y != D.IGNORE_INDEX]
            log_p, log_q = F.log_softmax(t, -1), F.log_softmax(s, -1)
            per_batch.append((len(y), float(F.cross_entropy(s, y, reduction="sum")),
                              int((s.argmax(-1) == t.argmax(-1)).sum()), float((log_p.exp() * (log_p - log_q)).sum())))
    assert [n for n, *_ in per_batch] == [44, 9]
    n, nll, agree, kl = (sum(col) for col in zip(*per_batch))
    assert res["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    assert res["agreement"] == pytest.approx(agree / n, rel=1e-6)
    assert res["kl"] == pytest.approx(kl / n, rel=1e-4)
    # the batches differ enough that a mean of per-batch means would be told apart
    batch_mean_kl = sum(k / m for m, _, _, k in per_batch) / 2
    assert abs(batch_mean_kl - kl / n) > 1e-3 * (kl / n)


def test_inline_kd_loss_agrees():
    fn = run_inline(NOTEBOOK.name, "kd_loss")["kd_loss"]
    s, t, y = _logits(seed=9)
    y[0] = D.IGNORE_INDEX
    for T, alpha in ((1.0, 0.5), (3.0, 0.2)):
        torch.testing.assert_close(fn(s, t, y, T, alpha), D.kd_loss(s, t, y, T, alpha))
