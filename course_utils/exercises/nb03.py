"""Exercises of notebook 03 (LoRA math).

Count LoRA parameters, write get_delta_weight, predict a merged output, read a measured spectrum."""

from __future__ import annotations

import math

import torch

from course_utils.exercises import Exercise, Incorrect, ____, expect_number
from course_utils.lessons.lora_math import delta_weight, energy_captured, lora_scaling

# ----------------------------------------------------------------------------- Q1: count parameters

_D_IN, _D_OUT, _R = 8192, 3072, 16  # Phi-3-mini down_proj (intermediate → hidden), rank 16


def _check_q1(n_params) -> None:
    if isinstance(n_params, bool):
        raise Incorrect("expected a number of parameters, not a bool")
    try:
        v = float(n_params)
    except (TypeError, ValueError):
        raise Incorrect(f"expected a number, got {type(n_params).__name__}") from None
    if v == _D_IN * _D_OUT:
        raise Incorrect("that is the full weight matrix d_in·d_out — LoRA trains only A and B")
    if v == _R * _D_IN * _D_OUT:
        raise Incorrect("r·d_in·d_out is larger than the matrix itself: count A (r × d_in) and B (d_out × r)")
    if v in (_R * _D_IN, _R * _D_OUT):
        raise Incorrect("you counted only one of the two factors: A has r·d_in numbers and B has d_out·r")
    expect_number(v, _R * (_D_IN + _D_OUT), rel=0, what="n_lora")


q1 = Exercise(
    name="Q1 🐢 LoRA parameters of one Phi-3-mini down_proj",
    checker=_check_q1,
    hint_text=f"A is (r × d_in) and B is (d_out × r) with d_in = {_D_IN}, d_out = {_D_OUT}, r = {_R}.",
    solution_text=(f"```python\nn_lora = {_R} * ({_D_IN} + {_D_OUT})  # r·(d_in + d_out) = {_R * (_D_IN + _D_OUT):,}\n```\n"
                   f"That is {_R * (_D_IN + _D_OUT) / (_D_IN * _D_OUT):.2%} of the matrix's "
                   f"{_D_IN * _D_OUT:,} weights."),
    solution_answer=lambda: (_R * (_D_IN + _D_OUT),),
    wrong_answer=lambda: (_D_IN * _D_OUT,),
)


# ----------------------------------------------------------------------------- Q2: write get_delta_weight

_CASES = [(1, 5, 3, 2.0, False), (4, 12, 7, 16.0, False), (4, 12, 7, 16.0, True), (9, 6, 10, 8.0, True)]


def _reference(A, B, alpha, r, use_rslora):
    return delta_weight(A, B, lora_scaling(r, alpha, use_rslora))


def _returns_blank(fn) -> bool:
    """True when the learner's function still returns the ``____`` placeholder (not attempted yet)."""
    try:
        return fn(torch.ones(2, 3), torch.ones(4, 2), 4.0, 2, False) is ____
    except TypeError as e:  # e.g. ``____ * scaling``: arithmetic on a blank
        return "_Blank" in str(e)
    except Exception:
        return False


class FunctionExercise(Exercise):
    """An exercise whose answer is a function: a function that still returns ``____`` counts as a blank."""

    def check(self, *answers) -> bool:
        if answers and callable(answers[0]) and _returns_blank(answers[0]):
            answers = (____,)
        return super().check(*answers)


def _check_q2(fn) -> None:
    if not callable(fn):
        raise Incorrect(f"pass the function itself (my_get_delta_weight), not {type(fn).__name__}")
    g = torch.Generator().manual_seed(3)
    for r, d_in, d_out, alpha, rs in _CASES:
        A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
        try:
            got = fn(A, B, alpha, r, use_rslora=rs)
        except Exception as e:  # a learner's shape error is feedback, not a crash
            raise Incorrect(f"calling it with A {tuple(A.shape)}, B {tuple(B.shape)} raised "
                            f"{type(e).__name__}: {e}. Which product gives (d_out, d_in)?") from None
        if not isinstance(got, torch.Tensor):
            raise Incorrect(f"expected a tensor, got {type(got).__name__}")
        want = _reference(A, B, alpha, r, rs)
        if got.shape != want.shape:
            raise Incorrect(f"shape {tuple(got.shape)}, expected (d_out, d_in) = {tuple(want.shape)}")
        if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
            if torch.allclose(got, B @ A, rtol=1e-5, atol=1e-6):
                raise Incorrect("B·A is right, but the scaling factor is missing")
            if rs and torch.allclose(got, B @ A * (alpha / r), rtol=1e-5, atol=1e-6):
                raise Incorrect("with use_rslora=True the scaling is α/√r, not α/r")
            raise Incorrect(f"wrong values for r={r}, α={alpha}, use_rslora={rs}")


def _solution_fn(lora_A, lora_B, lora_alpha, r, use_rslora=False):
    scaling = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
    return (lora_B @ lora_A) * scaling  # (d_out, r) @ (r, d_in) → (d_out, d_in)


def _no_rslora_fn(lora_A, lora_B, lora_alpha, r, use_rslora=False):
    return (lora_B @ lora_A) * (lora_alpha / r)


q2 = FunctionExercise(
    name="Q2 🐕 write get_delta_weight",
    checker=_check_q2,
    hint_text="ΔW = scaling · B · A with A (r × d_in) and B (d_out × r); scaling = α/r, or α/√r when "
              "use_rslora (`math.sqrt`).",
    solution_text=("```python\ndef my_get_delta_weight(lora_A, lora_B, lora_alpha, r, use_rslora=False):\n"
                   "    scaling = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r\n"
                   "    return (lora_B @ lora_A) * scaling  # (d_out, r) @ (r, d_in) → (d_out, d_in)\n```"),
    solution_answer=lambda: (_solution_fn,),
    wrong_answer=lambda: (_no_rslora_fn,),
)


# ----------------------------------------------------------------------------- Q3: predict a merged output

_W0 = [[1.0, 2.0], [0.0, 1.0]]
_A = [[1.0, 1.0]]      # (r=1, d_in=2)
_B = [[1.0], [2.0]]    # (d_out=2, r=1)
_ALPHA, _RQ3, _X = 2.0, 1, [1.0, 1.0]


def _q3_parts():
    W0, A, B, x = (torch.tensor(t) for t in (_W0, _A, _B, _X))
    base = W0 @ x                      # (2,)
    lora = B @ (A @ x)                 # (2,)
    return base, lora, base + (_ALPHA / _RQ3) * lora


def _check_q3(h) -> None:
    try:
        got = torch.as_tensor(h, dtype=torch.float32).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise Incorrect(f"expected two numbers such as [1.0, 2.0], got {h!r}") from None
    if got.numel() != 2:
        raise Incorrect(f"h has d_out = 2 entries, you gave {got.numel()}")
    base, lora, want = _q3_parts()
    if torch.allclose(got, base):
        raise Incorrect("that is W₀·x only: the adapter adds (α/r)·B·A·x on top")
    if torch.allclose(got, base + lora):
        raise Incorrect("almost: you added B·A·x but forgot the scaling α/r")
    if not torch.allclose(got, want):
        raise Incorrect(f"{got.tolist()} is not W₀·x + (α/r)·B·A·x")


q3 = Exercise(
    name="Q3 🐕 predict the merged layer's output",
    checker=_check_q3,
    hint_text="Compute W₀·x, then A·x (one number, since r = 1), then B·(A·x), multiply by α/r and add.",
    solution_text=(f"W₀·x = {_q3_parts()[0].tolist()}, A·x = 2, B·(A·x) = {_q3_parts()[1].tolist()}, "
                   f"α/r = {_ALPHA / _RQ3:g}, so\n\n```python\nh = {_q3_parts()[2].tolist()}\n```\n"
                   "Merged: (W₀ + (α/r)·B·A)·x gives the same numbers."),
    solution_answer=lambda: (_q3_parts()[2].tolist(),),
    wrong_answer=lambda: ((_q3_parts()[0] + _q3_parts()[1]).tolist(),),
)


# ----------------------------------------------------------------------------- Q4: read a spectrum


def smallest_rank_for(singular_values: torch.Tensor, share: float = 0.9) -> int:
    """Smallest k whose top-k singular values hold at least ``share`` of Σσ²."""
    s = torch.as_tensor(singular_values).double().flatten()
    for k in range(1, s.numel() + 1):
        if energy_captured(s, k) >= share - 1e-12:
            return k
    return s.numel()


def _check_q4(singular_values, k) -> None:
    if isinstance(k, bool) or not isinstance(k, int | float) or int(k) != k:
        raise Incorrect(f"k should be a whole number of singular values, got {k!r}")
    k = int(k)
    want = smallest_rank_for(singular_values)
    if k < want:
        raise Incorrect(f"the top-{k} values hold only {energy_captured(torch.as_tensor(singular_values), k):.1%}")
    if k > want:
        raise Incorrect(f"{k} captures ≥ 90 %, but a smaller k does too: look for the smallest")


_DEMO_S = torch.tensor([5.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.25])

q4 = Exercise(
    name="Q4 🦁 which rank holds 90 % of the full fine-tuning update?",
    checker=_check_q4,
    hint_text="energy_captured(S, k) = Σ_{i≤k} σᵢ² / Σ σᵢ². Try k = 1, 2, … until it reaches 0.9.",
    solution_text=("```python\nk90 = next(k for k in range(1, len(S_full) + 1) "
                   "if energy_captured(S_full, k) >= 0.9)\n```"),
    solution_answer=lambda: (_DEMO_S, smallest_rank_for(_DEMO_S)),
    wrong_answer=lambda: (_DEMO_S, smallest_rank_for(_DEMO_S) - 1),
)
