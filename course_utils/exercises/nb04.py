"""Exercises of notebook 04 (quantization)."""

import torch

from course_utils.exercises import Exercise, Incorrect, expect_number

# Q1: an activation range of [-1.0, 3.0] stored as asymmetric uint8 (0 … 255)
_LO, _HI = -1.0, 3.0
_SCALE = (_HI - _LO) / 255
_ZERO = round(-_LO / _SCALE)


def _check_q1(scale, zero_point) -> None:
    if isinstance(scale, bool) or isinstance(zero_point, bool):
        raise Incorrect("expected two numbers: the scale and the zero-point")
    try:
        s, z = float(scale), float(zero_point)
    except (TypeError, ValueError):
        raise Incorrect("expected two numbers: the scale and the zero-point") from None
    if abs(s - (_HI - _LO) / 256) < 1e-9:
        raise Incorrect("uint8 has 256 values but 255 *steps* between 0 and 255: divide the range by 255")
    expect_number(s, _SCALE, rel=1e-3, what="scale")
    if z != int(z):
        raise Incorrect(f"the zero-point must be an integer (it is a code), got {zero_point}")
    if z == -_ZERO:
        raise Incorrect("the sign is flipped: x = −1.0 must map to code 0, so zero = −round(lo / scale)")
    expect_number(z, _ZERO, rel=0, what="zero_point")


q1 = Exercise(
    name="Q1 🐢 scale and zero-point by hand",
    checker=_check_q1,
    hint_text="Asymmetric uint8: scale = (hi − lo) / (2⁸ − 1); zero = −round(lo / scale), so that lo maps to 0.",
    solution_text=f"```python\nscale = (3.0 - (-1.0)) / 255          # {_SCALE:.6f}\n"
                  f"zero_point = round(1.0 / scale)       # {_ZERO}  (−round(lo / scale))\n```",
    solution_answer=lambda: (_SCALE, _ZERO),
    wrong_answer=lambda: ((_HI - _LO) / 256, _ZERO),
)


def _group_absmax_reference(w: torch.Tensor, group_size: int = 64) -> torch.Tensor:
    return w.reshape(-1, group_size).abs().amax(dim=1)


def _check_q2(w, absmax_per_group) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise Incorrect("pass the weight matrix first: ex.q2.check(w_ex, absmax_per_group)")
    want = _group_absmax_reference(w)
    if not isinstance(absmax_per_group, torch.Tensor):
        raise Incorrect(f"expected a tensor, got {type(absmax_per_group).__name__}")
    got = absmax_per_group.detach().float().reshape(-1) if absmax_per_group.numel() == want.numel() \
        else absmax_per_group
    if got.shape != want.shape:
        raise Incorrect(f"expected one absmax per group of 64: shape {tuple(want.shape)}, got "
                        f"{tuple(absmax_per_group.shape)}")
    if torch.allclose(got, w.reshape(-1, 64).amax(dim=1)) and not torch.allclose(got, want):
        raise Incorrect("close: that is the largest value, not the largest |value| — negative weights count too")
    if not torch.allclose(got, want):
        raise Incorrect("right shape, wrong values: take the maximum of |w| inside each group of 64")


def _q2_example() -> torch.Tensor:
    return torch.randn(48, 128, generator=torch.Generator().manual_seed(4))


q2 = Exercise(
    name="Q2 🐕 per-group absmax",
    checker=_check_q2,
    hint_text="Reshape the weight to (number of groups, 64) — consecutive weights of a row stay together — "
              "then take `.abs().amax(dim=1)`.",
    solution_text="```python\nabsmax_per_group = w_ex.reshape(-1, 64).abs().amax(dim=1)   # (out·in/64,)\n```",
    solution_answer=lambda: (_q2_example(), _group_absmax_reference(_q2_example())),
    wrong_answer=lambda: (_q2_example(), _q2_example().reshape(-1, 64).amax(dim=1)),
)

# Q3: NF4 with blocks of 32 and double quantization (8-bit constants in blocks of 256, fp32 second level)
_BITS_Q3 = 4 + 8 / 32 + 32 / (32 * 256)


def _check_q3(bits) -> None:
    if isinstance(bits, bool):
        raise Incorrect("expected a number of bits per parameter")
    try:
        b = float(bits)
    except (TypeError, ValueError):
        raise Incorrect(f"expected a number, got {type(bits).__name__}") from None
    if abs(b - (4 + 32 / 32)) < 1e-6:
        raise Incorrect("that is without double quantization: the fp32 absmax became an 8-bit code")
    if abs(b - (4 + 8 / 32)) < 1e-6:
        raise Incorrect("almost: the 8-bit codes need their own fp32 constant, one per 256 blocks of 32")
    expect_number(b, _BITS_Q3, rel=1e-4, what="bits per parameter")


q3 = Exercise(
    name="Q3 🦁 bits per parameter with blocks of 32",
    checker=_check_q3,
    hint_text="Each weight pays 4 bits + its share of one 8-bit code per block (÷ 32) + its share of one fp32 "
              "constant per 256 blocks (÷ 32·256).",
    solution_text=f"```python\nbits = 4 + 8 / 32 + 32 / (32 * 256)   # {_BITS_Q3:.4f}\n"
                  "# check: bits_per_param(32, double_quant=True)\n```",
    solution_answer=lambda: (_BITS_Q3,),
    wrong_answer=lambda: (4 + 32 / 32,),
)
