"""Exercises of notebook 06 (knowledge distillation)."""

import math

import torch

from course_utils.exercises import Exercise, Incorrect, expect_number

_V = 49152  # SmolLM2 vocabulary


def _check_q1(n_bytes) -> None:
    if isinstance(n_bytes, bool):
        raise Incorrect("expected a number of bytes")
    right = 8 * 128 * _V * 4
    if n_bytes == 8 * 128 * _V:
        raise Incorrect("that counts logits, not bytes: each fp32 logit takes 4 bytes")
    if n_bytes == 8 * 128 * _V * 2:
        raise Incorrect("fp32 takes 4 bytes per number, not 2")
    expect_number(n_bytes, right, rel=1e-3, what="logit_bytes")


q1 = Exercise(
    name="Q1 🐢 how big are the teacher's logits?",
    checker=_check_q1,
    hint_text="One logit per position per vocabulary entry: batch × sequence × 49,152, at 4 bytes each (fp32).",
    solution_text="```python\nlogit_bytes = 8 * 128 * 49152 * 4   # = 201,326,592 bytes ≈ 201 MB for one batch\n```",
    solution_answer=lambda: (8 * 128 * _V * 4,),
    wrong_answer=lambda: (8 * 128 * _V,),
)


def _soft_top(T: float) -> float:
    z = [4.0, 2.0, 0.0]
    e = [math.exp(v / T) for v in z]
    return e[0] / sum(e)


def _check_q2(p_top) -> None:
    try:
        v = float(p_top)
    except (TypeError, ValueError):
        raise Incorrect(f"expected a probability, got {p_top!r}") from None
    if abs(v - _soft_top(1.0)) < 1e-3:
        raise Incorrect("that is the probability at T = 1: divide the logits by T = 2 first")
    expect_number(v, _soft_top(2.0), rel=1e-3, what="p_top")


q2 = Exercise(
    name="Q2 🐕 softmax with a temperature",
    checker=_check_q2,
    hint_text="softmax(z / T): divide [4, 2, 0] by 2 to get [2, 1, 0], then e² / (e² + e¹ + e⁰).",
    solution_text="```python\nimport math\np_top = math.exp(2) / (math.exp(2) + math.exp(1) + 1)   # ≈ 0.665 (0.867 at T = 1)\n```",
    solution_answer=lambda: (_soft_top(2.0),),
    wrong_answer=lambda: (_soft_top(1.0),),
)


def _reference(teacher_logits: torch.Tensor, k: int, T: float):
    values, indices = teacher_logits.topk(k, dim=-1)
    return torch.softmax(values / T, dim=-1), indices


def _check_q3(fn) -> None:
    if not callable(fn):
        raise Incorrect(f"pass your function topk_soft_targets itself, got {type(fn).__name__}")
    z = torch.randn(5, 100, generator=torch.Generator().manual_seed(11)) * 3
    for k, T in ((4, 1.0), (10, 2.0)):
        try:
            probs, idx = fn(z.clone(), k, T)
        except Exception as e:  # a learner's bug: report it, do not crash the notebook
            raise Incorrect(f"topk_soft_targets(z, {k}, {T}) raised {type(e).__name__}: {e}") from None
        ref_p, ref_i = _reference(z, k, T)
        if tuple(probs.shape) != (5, k) or tuple(idx.shape) != (5, k):
            raise Incorrect(f"expected two tensors of shape (5, {k})")
        order = idx.sort(-1).indices
        ref_order = ref_i.sort(-1).indices
        if not torch.equal(idx.gather(-1, order), ref_i.gather(-1, ref_order)):
            raise Incorrect("the indices are not the teacher's k largest logits")
        if not torch.allclose(probs.sum(-1), torch.ones(5), atol=1e-5):
            raise Incorrect("the k probabilities of each position should sum to 1 (renormalise over the k tokens)")
        if not torch.allclose(probs.gather(-1, order), ref_p.gather(-1, ref_order), atol=1e-5):
            raise Incorrect(f"the probabilities differ: use softmax(values / T) with T = {T}")


q3 = Exercise(
    name="Q3 🦁 soft targets from a top-k cache",
    checker=_check_q3,
    hint_text="`values, indices = teacher_logits.topk(k, dim=-1)`; the softmax of `values / T` over the last "
              "dimension renormalises the teacher's distribution on its k tokens.",
    solution_text="```python\ndef topk_soft_targets(teacher_logits, k, T):\n"
                  "    values, indices = teacher_logits.topk(k, dim=-1)       # (N, k), (N, k)\n"
                  "    return torch.softmax(values / T, dim=-1), indices\n\nex.q3.check(topk_soft_targets)\n```",
    solution_answer=lambda: (_reference,),
    wrong_answer=lambda: (lambda z, k, T: (torch.softmax(z / T, -1).topk(k, -1).values, z.topk(k, -1).indices),),
)
