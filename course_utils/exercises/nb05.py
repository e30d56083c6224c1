"""Exercises of notebook 05 (pruning)."""

import torch

from course_utils.exercises import Exercise, Incorrect, expect_number

_OUT, _IN, _HIDDEN, _INTER = 1536, 576, 576, 1536


def _csr32_bytes(sparsity: float) -> int:
    nnz = _OUT * _IN - round(sparsity * _OUT * _IN)
    return nnz * 4 + nnz * 4 + (_OUT + 1) * 4  # values + column indices + row pointers


def _check_q1(n_bytes) -> None:
    nnz = _OUT * _IN - round(0.9 * _OUT * _IN)
    if n_bytes == nnz * 4:
        raise Incorrect("that is only the values: each kept value also stores its int32 column index")
    if n_bytes == nnz * 8:
        raise Incorrect("values and column indices are there, but the rows + 1 row pointers are missing")
    expect_number(n_bytes, _csr32_bytes(0.9), rel=1e-3, what="csr_bytes")


q1 = Exercise(
    name="Q1 🐢 bytes of a CSR matrix",
    checker=_check_q1,
    hint_text="At 90 % sparsity 10 % of the 1536·576 values remain (nnz). Each costs 4 bytes of value + 4 bytes "
              "of int32 column index; the row pointer array has 1537 int32 entries.",
    solution_text="```python\nnnz = 1536 * 576 - round(0.9 * 1536 * 576)   # 88,474 kept values\n"
                  "csr_bytes = nnz * 4 + nnz * 4 + (1536 + 1) * 4   # = 713,940 bytes (dense: 3,538,944)\n```",
    solution_answer=lambda: (_csr32_bytes(0.9),),
    wrong_answer=lambda: ((_OUT * _IN - round(0.9 * _OUT * _IN)) * 4,),
)


def _check_q2(break_even) -> None:
    try:
        v = float(break_even)
    except (TypeError, ValueError):
        raise Incorrect(f"expected a fraction such as 0.5, got {break_even!r}") from None
    if 1 < v <= 100:
        raise Incorrect("give a fraction between 0 and 1, not a percentage")
    if abs(v - 0.5) < 0.01:
        raise Incorrect("0.5 is the break-even with int32 indices; int64 indices cost 8 bytes per value")
    expect_number(v, 2 / 3, rel=0.015, what="break_even")


q2 = Exercise(
    name="Q2 🐕 when does CSR start to save memory?",
    checker=_check_q2,
    hint_text="Dense costs 4 bytes per entry. CSR costs (4 + 8) bytes per *kept* entry. Solve 12·density = 4.",
    solution_text="```python\n# 12 bytes per kept value vs 4 per entry: density 1/3 → sparsity 2/3\n"
                  "break_even = 1 - 4 / 12   # ≈ 0.667: below 67 % sparsity CSR (int64) is bigger than dense\n```",
    solution_answer=lambda: (1 - 4 / 12,),
    wrong_answer=lambda: (0.5,),
)


def _mlp_params(amount: float) -> int:
    kept = _INTER - round(amount * _INTER)
    return 3 * _HIDDEN * kept


def _check_q3(n_params) -> None:
    if isinstance(n_params, bool):
        raise Incorrect("expected a number of parameters")
    if n_params == 2 * _HIDDEN * (_INTER - round(0.25 * _INTER)):
        raise Incorrect("three matrices lose the channel: gate_proj, up_proj *and* down_proj")
    if n_params == 3 * _HIDDEN * _INTER:
        raise Incorrect("that is the full MLP: 25 % of the 1536 channels are gone")
    expect_number(n_params, _mlp_params(0.25), rel=0, what="mlp_params")


q3 = Exercise(
    name="Q3 🐕 parameters of a sliced MLP",
    checker=_check_q3,
    hint_text="1536 − 384 = 1152 channels remain. gate and up are (1152, 576), down is (576, 1152); no biases.",
    solution_text="```python\nmlp_params = 3 * 576 * 1152   # = 1,990,656 (was 2,654,208)\n```",
    solution_answer=lambda: (_mlp_params(0.25),),
    wrong_answer=lambda: (3 * _HIDDEN * _INTER,),
)


def _reference_n_m(weight: torch.Tensor, n: int, m: int, largest: bool = True) -> torch.Tensor:
    groups = weight.abs().reshape(weight.shape[0], -1, m)                # (out, in/m, m)
    top = groups.topk(n, dim=-1, largest=largest).indices                # (out, in/m, n)
    return torch.zeros_like(groups).scatter_(-1, top, 1.0).reshape(weight.shape)


def _check_q4(fn) -> None:
    if not callable(fn):
        raise Incorrect(f"pass your function n_m_mask itself, got {type(fn).__name__}")
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(5))
    for n, m in ((2, 4), (1, 4), (4, 8)):
        try:
            got = fn(w.clone(), n, m)
        except Exception as e:  # a learner's bug: report it, do not crash the notebook
            raise Incorrect(f"n_m_mask(w, {n}, {m}) raised {type(e).__name__}: {e}") from None
        if not isinstance(got, torch.Tensor) or got.shape != w.shape:
            raise Incorrect(f"n_m_mask(w, {n}, {m}) should return a tensor of shape {tuple(w.shape)}")
        if not torch.equal(got.float(), _reference_n_m(w, n, m)):
            kept = got.float().reshape(16, -1, m).sum(-1)
            if not bool((kept == n).all()):
                raise Incorrect(f"for {n}:{m} every group of {m} must keep exactly {n} weights")
            raise Incorrect(f"for {n}:{m} the kept weights are not the {n} largest |w| of each group")


q4 = Exercise(
    name="Q4 🦁 an N:M mask",
    checker=_check_q4,
    hint_text="Reshape |w| to (out, in/m, m), take `.topk(n, dim=-1).indices`, and `scatter_` ones into "
              "`torch.zeros_like(groups)` along the last dimension; reshape back.",
    solution_text="```python\ndef n_m_mask(weight, n, m):\n"
                  "    groups = weight.detach().abs().reshape(weight.shape[0], -1, m)   # (out, in/m, m)\n"
                  "    top = groups.topk(n, dim=-1).indices                             # (out, in/m, n)\n"
                  "    return torch.zeros_like(groups).scatter_(-1, top, 1.0).reshape(weight.shape)\n"
                  "\nex.q4.check(n_m_mask)\n```",
    solution_answer=lambda: (_reference_n_m,),
    wrong_answer=lambda: (lambda w, n, m: _reference_n_m(w, n, m, largest=False),),  # keeps the smallest
)
