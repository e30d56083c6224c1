"""Quantization from scratch: number formats, linear quantization, NF4 with double quantization, QAT.

Everything here is plain, vectorised torch (no Python loop over elements) and is checked against
bitsandbytes in ``tests/test_quantization.py``. Notebook 04 shows the core definitions inline and uses these.

    >>> w = torch.linspace(-1, 1, 64).repeat(2, 1)                                   # (out, in) = (2, 64)
    >>> w_hat = fake_quant(w, bits=4, symmetric=True, granularity="group", group_size=64)
    >>> w_hat.shape, w_hat[0].unique().numel()        # same shape; a group takes at most 15 levels (−7 … 7)
    (torch.Size([2, 64]), 15)
    >>> packed, state = quantize_4bit(w, "nf4", blocksize=64, double_quant=True)   # bitsandbytes' layout
    >>> packed.shape, dequantize_4bit(packed, state).shape                          # two 4-bit codes per byte
    (torch.Size([64, 1]), torch.Size([2, 64]))
    >>> bits_per_param(64, double_quant=True)             # 4 + 8/64 + 32/(64·256)
    4.126953125

Why one module of ~700 lines: it is notebook 04 end to end (formats, linear quantization, NF4/FP4, blockwise
and double quantization, QAT, outliers), each piece tested against bitsandbytes here.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

# --------------------------------------------------------------------------- number formats

FLOAT_FORMATS = {"FP32": torch.float32, "FP16": torch.float16, "BF16": torch.bfloat16}
INT_FORMATS = {"INT8": 8, "INT4": 4}


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Smallest and largest integer of a ``bits``-bit two's-complement (or unsigned) integer.

    >>> int_range(8), int_range(4), int_range(8, signed=False)
    ((-128, 127), (-8, 7), (0, 255))
    """
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def format_table() -> list[dict]:
    """Range, precision and storage of FP32/FP16/BF16/INT8/INT4/NF4, read from torch (finfo/iinfo) and code.

    Columns: format, bits, bytes (per value), max (largest finite), smallest (smallest positive normal
    for floats, 1 step for integers), eps (gap after 1.0 for floats; for integers and NF4 the relative
    step at full scale, i.e. step / max), digits (decimal digits of precision, −log10 of eps).
    NF4 values are multiples of a per-block absmax; the row shows the normalised code in [-1, 1].
    """
    rows = []
    for name, dt in FLOAT_FORMATS.items():
        fi = torch.finfo(dt)
        rows.append(dict(format=name, bits=fi.bits, bytes=fi.bits / 8, max=fi.max, smallest=fi.tiny,
                         eps=fi.eps, digits=-math.log10(fi.eps)))
    ii = torch.iinfo(torch.int8)
    for name, bits in INT_FORMATS.items():
        lo, hi = (ii.min, ii.max) if bits == ii.bits else int_range(bits)
        rows.append(dict(format=name, bits=bits, bytes=bits / 8, max=float(hi), smallest=1.0,
                         eps=1.0 / hi, digits=-math.log10(1.0 / hi)))
    code = nf4_codebook()
    gaps = code.diff()
    rows.append(dict(format="NF4", bits=4, bytes=0.5, max=float(code.max()), smallest=float(gaps.min()),
                     eps=float(gaps.max()), digits=-math.log10(float(gaps.max()))))
    return rows


def round_trip(values: list[float], dtype: torch.dtype) -> list[float]:
    """What ``values`` become after a round trip through ``dtype`` (overflow → inf, underflow → 0).

    >>> round_trip([0.1, 70000.0], torch.float16)
    [0.0999755859375, inf]
    """
    return torch.tensor(values, dtype=torch.float64).to(dtype).to(torch.float64).tolist()


# --------------------------------------------------------------------------- bit packing

def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (< 2**bits) into bytes, first value in the high bits (bitsandbytes' 4-bit order).

    bits ∈ {1, 2, 4, 8}. Shape: any → (ceil(n·bits/8),) uint8.
    >>> pack_bits(torch.tensor([1, 2]), 4)    # 0x12
    tensor([18], dtype=torch.uint8)
    """
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits={bits}: packing supports 1, 2, 4 or 8 bits per code")
    per = 8 // bits                                                         # codes per byte
    flat = codes.reshape(-1).to(torch.uint8)
    flat = nn.functional.pad(flat, (0, (-flat.numel()) % per)).view(-1, per)   # (bytes, per)
    packed = torch.zeros(flat.shape[0], dtype=torch.uint8, device=flat.device)
    for j in range(per):                                                    # ≤ 8 bit positions, not elements
        packed |= flat[:, j] << (8 - bits * (j + 1))
    return packed                                                           # (bytes,)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: the first ``n`` codes as uint8. Shape: (bytes,) → (n,)."""
    per, mask = 8 // bits, 2**bits - 1
    flat = packed.reshape(-1)
    codes = torch.stack([(flat >> (8 - bits * (j + 1))) & mask for j in range(per)], dim=1)  # (bytes, per)
    return codes.reshape(-1)[:n]


# --------------------------------------------------------------------------- linear quantization

GRANULARITIES = ("tensor", "channel", "group")


def group_view(x: torch.Tensor, granularity: str = "tensor", group_size: int = 64) -> torch.Tensor:
    """View ``x`` as rows that share one scale: (1, n) per tensor, (out, in) per channel, (n/g, g) per group.

    For a Linear weight (out, in), a channel is an output row and a group is ``group_size`` consecutive
    inputs of one row (rows shorter than a group are grouped in memory order).
    >>> group_view(torch.zeros(8, 128), "group", 64).shape
    torch.Size([16, 64])
    """
    if granularity == "tensor":
        return x.reshape(1, -1)
    if granularity == "channel":
        return x.reshape(x.shape[0], -1)
    if granularity == "group":  # consecutive values in memory: inside one row when its length is a multiple
        if x.numel() % group_size:
            raise ValueError(f"{x.numel()} values do not split into groups of group_size={group_size}")
        return x.reshape(-1, group_size)
    raise ValueError(f"granularity={granularity!r}: choose one of {GRANULARITIES}")


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid: symmetric = signed and restricted (−(2^(b−1)−1) … 2^(b−1)−1), asymmetric = 0 … 2^b−1.

    >>> qrange(8, True), qrange(8, False), qrange(4, True)
    ((-127, 127), (0, 255), (-7, 7))
    """
    if bits < 2:
        raise ValueError("need at least 2 bits")
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def scale_zero(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point that map the clipping range [lo, hi] onto the integer grid.

    Symmetric: scale = max(|lo|, |hi|) / qmax, zero = 0. Asymmetric: scale = (hi − lo) / (2^b − 1),
    zero = −round(lo / scale), so that the real 0 is exactly an integer. Shapes: lo, hi (G, 1) → (G, 1).
    """
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax                    # (G, 1)
        return scale.clamp_min(1e-12), torch.zeros_like(scale)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)                                # the range must contain 0
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-12)                    # (G, 1)
    zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)               # (G, 1)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """q = clamp(round(x / scale) + zero, qmin, qmax) — integers stored in a float tensor (exact up to 2^24)."""
    qmin, qmax = qrange(bits, symmetric)
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """x̂ = (q − zero) · scale."""
    return (q - zero) * scale


def _kth(x: torch.Tensor, pct: float) -> torch.Tensor:
    """Per-row ``pct``-th percentile via kthvalue (torch.quantile refuses tensors over 16 M elements)."""
    k = min(max(int(math.ceil(pct / 100 * x.shape[-1])), 1), x.shape[-1])
    return x.kthvalue(k, dim=-1, keepdim=True).values                       # (G, 1)


def clip_range(xg: torch.Tensor, bits: int, symmetric: bool, method: str = "minmax", pct: float = 99.9,
               alphas: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range (lo, hi) per row of ``xg`` (G, n): 'minmax', 'percentile' or 'mse' (searched).

    'mse' shrinks the min/max range by α ∈ ``alphas`` (default 0.02 … 1.00) and keeps, per row, the α with
    the smallest round-trip mean squared error. Returns lo, hi of shape (G, 1).
    """
    if method == "minmax":
        lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)        # (G, 1)
    elif method == "percentile":
        if symmetric:
            hi = _kth(xg.abs(), pct)
            lo = -hi
        else:
            lo, hi = _kth(xg, 100 - pct), _kth(xg, pct)
    elif method == "mse":
        lo0, hi0 = clip_range(xg, bits, symmetric, "minmax")
        alphas = torch.linspace(0.02, 1.0, 50) if alphas is None else alphas
        best = torch.full_like(lo0, float("inf"))
        lo, hi = lo0.clone(), hi0.clone()
        for a in alphas.tolist():                                           # a loop over candidates, not elements
            err = ((fake_quant_rows(xg, bits, symmetric, a * lo0, a * hi0) - xg) ** 2).mean(-1, keepdim=True)
            better = err < best                                             # (G, 1)
            best = torch.where(better, err, best)
            lo, hi = torch.where(better, a * lo0, lo), torch.where(better, a * hi0, hi)
    else:
        raise ValueError(f"method={method!r}: choose 'minmax', 'percentile' or 'mse'")
    return lo, hi


def fake_quant_rows(xg: torch.Tensor, bits: int, symmetric: bool, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Quantize then dequantize rows of ``xg`` (G, n) with the range (lo, hi) of each row (G, 1)."""
    scale, zero = scale_zero(lo, hi, bits, symmetric)
    return dequantize(quantize(xg, scale, zero, bits, symmetric), scale, zero)


def fake_quant(x: torch.Tensor, bits: int = 8, symmetric: bool = True, granularity: str = "tensor",
               group_size: int = 64, clip: str = "minmax", pct: float = 99.9) -> torch.Tensor:
    """Quantize and dequantize ``x`` (the values a quantized model really computes with). Same shape as x.

    >>> fake_quant(torch.tensor([0.0, 0.5, 1.0]), bits=2)     # grid −1, 0, 1 (scale 1)
    tensor([0., 0., 1.])
    """
    xg = group_view(x.float(), granularity, group_size)                     # (G, n)
    if symmetric and clip == "minmax":  # fast path (QAT runs it every step); same numbers as the general one
        qmax = qrange(bits, True)[1]
        scale = (xg.abs().amax(-1, keepdim=True) / qmax).clamp_min(1e-12)  # (G, 1)
        return (torch.round(xg / scale).clamp(-qmax, qmax) * scale).reshape(x.shape).to(x.dtype)
    lo, hi = clip_range(xg, bits, symmetric, clip, pct)
    return fake_quant_rows(xg, bits, symmetric, lo, hi).reshape(x.shape).to(x.dtype)


def rel_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Relative round-trip error ‖x − x̂‖ / ‖x‖."""
    return float((x - x_hat).norm() / x.norm().clamp_min(1e-12))


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Mean squared round-trip error."""
    return float(((x - x_hat) ** 2).mean())


def minmax_fake_quant(x: torch.Tensor, bits: int = 4, group_size: int = 32) -> torch.Tensor:
    """Asymmetric with a float offset, GGUF Q4_1's rule: lo + s·round((x − lo)/s), s = (hi − lo)/(2^b − 1) per group.

    Unlike ``fake_quant(..., symmetric=False)`` the grid starts at the group's minimum (0.0 is not kept exact).
    Shape: like x (its size a multiple of ``group_size``).
    """
    xg = group_view(x.float(), "group", group_size)                         # (G, group_size)
    lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)            # (G, 1)
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
    q = torch.round((xg - lo) / scale).clamp(0, 2**bits - 1)
    return (lo + q * scale).reshape(x.shape).to(x.dtype)


def block_distinct(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Number of distinct values in each block of ``block`` consecutive values. (n,) → (n / block,)."""
    s = x.detach().reshape(-1, block).sort(-1).values                       # (G, block)
    return 1 + (s[:, 1:] != s[:, :-1]).sum(-1)


def code_usage(x: torch.Tensor, name: str = "nf4", blocksize: int = 64) -> torch.Tensor:
    """Share of the values of ``x`` that each level of a 4-bit codebook takes (blockwise absmax), ascending levels.

    INT4's duplicate 0 (its 16th entry) is merged into its 0, so INT4 has 15 shares and NF4 16. Sums to 1.
    """
    code = codebook(name).to(x.device)
    codes, _ = blockwise_quantize(x, code, blocksize)
    values = code[codes.long()]                                              # (n,) the level each value took
    levels = code.unique()                                                   # ascending, duplicates merged
    counts = torch.bincount(torch.searchsorted(levels, values), minlength=len(levels))   # values are levels
    return counts.float() / values.numel()


def entropy_bits(shares: torch.Tensor) -> float:
    """Entropy in bits of a distribution (the shares of code_usage): 4.0 when 16 codes are used equally."""
    p = shares[shares > 0].double()
    return float(-(p * p.log2()).sum())


def static_fake_quant(x: torch.Tensor, absmax: float, bits: int = 8) -> torch.Tensor:
    """Symmetric per-tensor quantization with a fixed (static, calibrated) range ±absmax; beyond it values clip."""
    qmax = 2 ** (bits - 1) - 1
    scale = max(float(absmax), 1e-12) / qmax
    return torch.round(x / scale).clamp(-qmax, qmax) * scale


def quantize_codes(x: torch.Tensor, bits: int, symmetric: bool = True, granularity: str = "group",
                   group_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unsigned integer codes (n,) uint8 plus per-row scale and zero (G,) for storage (min/max clipping)."""
    xg = group_view(x.float(), granularity, group_size)                     # (G, n)
    lo, hi = clip_range(xg, bits, symmetric)
    scale, zero = scale_zero(lo, hi, bits, symmetric)
    q = quantize(xg, scale, zero, bits, symmetric) - qrange(bits, symmetric)[0]   # shift to 0 … 2^b − 1
    return q.reshape(-1).to(torch.uint8), scale.reshape(-1), zero.reshape(-1)


# --------------------------------------------------------------------------- 4-bit codebooks (NF4, FP4)

BNB_NF4_OFFSET = 0.9677083  # bitsandbytes' constant: nf4_offset() rounded to 7 decimals


def nf4_offset() -> float:
    """Outermost NF4 quantile: the mean of 1 − 1/(2·15) and 1 − 1/(2·16) = 0.96770833… (QLoRA's recipe).

    It keeps ±1 finite (Φ⁻¹(1) = ∞) while spacing 16 (positive side) and 15 (negative side) quantiles.
    """
    return 1 - 0.5 * (1 / (2 * 15) + 1 / (2 * 16))


def nf4_codebook(offset: float = BNB_NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values: normal quantiles, 8 positive + 7 negative + exact 0, normalised to [-1, 1].

    Shape (16,), sorted. With bitsandbytes' rounded offset (the default) it equals
    ``bitsandbytes.functional.get_4bit_type("nf4")`` bit for bit; with ``nf4_offset()`` within 3e-7.
    """
    p_pos = torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1].double()   # 8 probabilities > 0.5
    p_neg = torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1].double()   # 7 probabilities > 0.5
    pos = torch.special.ndtri(p_pos)                                        # Φ⁻¹: normal quantiles
    neg = -torch.special.ndtri(p_neg)
    values = torch.cat([neg, torch.zeros(1, dtype=torch.float64), pos]).float().sort().values
    return values / values.max()                                            # (16,) in [-1, 1], fp32 like bnb


def fp4_codebook() -> torch.Tensor:
    """bitsandbytes' FP4 (1 sign, 2 exponent, 1 mantissa bit) values in code order, normalised to [-1, 1]."""
    import bitsandbytes.functional as bnbf

    return bnbf.get_4bit_type("fp4", device="cpu")


def int4_codebook() -> torch.Tensor:
    """Symmetric INT4 absmax levels −7/7 … 7/7 as a codebook (15 values + a duplicate 0), shape (16,)."""
    return torch.cat([torch.arange(-7, 8, dtype=torch.float32) / 7, torch.zeros(1)])


def codebook(name: str) -> torch.Tensor:
    """Codebook by name: 'nf4', 'fp4', 'int4' or 'dynamic8' (bitsandbytes' 8-bit dynamic map)."""
    table = {"nf4": nf4_codebook, "fp4": fp4_codebook, "int4": int4_codebook, "dynamic8": dynamic_map}
    if name not in table:
        raise ValueError(f"unknown codebook {name!r}: choose one of {sorted(table)}")
    return table[name]()


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """bitsandbytes' 8-bit *dynamic* data type (Dettmers 2015): a decimal exponent, then a linear fraction.

    For exponent i = 0 … 6, 2^i evenly spaced fractions in (0.1, 1] times 10^(i−6), ± signs, plus 0 and 1.
    Shape (256,), sorted. Equals ``bitsandbytes.functional.create_dynamic_map()``.
    """
    non_sign = total_bits - 1
    parts = []
    for i in range(max_exponent_bits):                                      # 7 exponents, not a loop over values
        n = 2 ** (i + non_sign - max_exponent_bits) + 1 if signed else 2 ** (i + non_sign - max_exponent_bits + 1) + 1
        edges = torch.linspace(0.1, 1, n, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0                              # fp32 arithmetic, as bnb
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        parts += [scale * means, -scale * means] if signed else [scale * means]
    values = torch.cat(parts + [torch.tensor([0.0, 1.0])])
    values = torch.cat([values, torch.zeros(2**total_bits - values.numel())])
    return values.sort().values                                             # (256,)


# --------------------------------------------------------------------------- blockwise (absmax) quantization

def nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook value for each element (midpoints + bucketize; ties go down).

    Shape: any → same, int64. Works for unsorted codebooks (FP4 is stored in bit order).
    """
    values, order = code.to(scaled.device).sort()
    midpoints = (values[1:] + values[:-1]) / 2                              # (len(code) − 1,)
    idx = torch.bucketize(scaled, midpoints, out_int32=True)
    return order.index_select(0, idx.reshape(-1)).reshape(idx.shape)


def blockwise_quantize(x: torch.Tensor, code: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax-scale each block of ``blocksize`` consecutive values to [-1, 1] and pick the nearest code.

    Shapes: x any (n values) → codes (n,) uint8, absmax (ceil(n / blocksize),) fp32. The last block may be short.
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = nn.functional.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)   # (nb, blocksize)
    absmax = blocks.abs().amax(1)                                           # (nb,)
    scaled = (blocks * (1.0 / absmax.clamp_min(1e-38)).unsqueeze(1)).clamp(-1, 1)   # × reciprocal, as bnb
    codes = nearest_code(scaled, code).reshape(-1)[:n]                      # (n,)
    return codes.to(torch.uint8), absmax


def blockwise_dequantize(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int,
                         shape) -> torch.Tensor:
    """Look the codes up in the codebook and multiply by their block's absmax. (n,) → ``shape``."""
    n = codes.numel()
    values = code.to(codes.device).index_select(0, codes.reshape(-1).int())    # (n,)
    values = nn.functional.pad(values, (0, (-n) % blocksize))
    return (values.view(-1, blocksize) * absmax.unsqueeze(1)).reshape(-1)[:n].reshape(shape)


def double_quantize(absmax: torch.Tensor, blocksize: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Double quantization: the fp32 absmax constants, minus their mean, as 8-bit dynamic codes in blocks of 256.

    Returns (codes (nb,) uint8, absmax2 (ceil(nb / 256),) fp32, offset () fp32).
    """
    offset = absmax.mean()
    codes, absmax2 = blockwise_quantize(absmax - offset, dynamic_map(), blocksize)
    return codes, absmax2, offset


def double_dequantize(codes: torch.Tensor, absmax2: torch.Tensor, offset: torch.Tensor,
                      blocksize: int = 256) -> torch.Tensor:
    """Recover the first-level absmax constants: dynamic code × absmax2 + offset. (nb,) → (nb,)."""
    return blockwise_dequantize(codes, absmax2, dynamic_map(), blocksize, codes.shape) + offset


@dataclass
class State4bit:
    """What a 4-bit tensor needs besides its packed codes (mirrors bitsandbytes' QuantState)."""

    shape: tuple
    quant_type: str
    blocksize: int
    absmax: torch.Tensor                  # fp32 (nb,), or uint8 codes when double-quantized
    absmax2: torch.Tensor | None = None   # second-level fp32 constants (double quant)
    offset: torch.Tensor | None = None    # mean subtracted before double quant
    dq_blocksize: int = 256

    @property
    def nested(self) -> bool:
        return self.absmax2 is not None

    def nbytes(self) -> int:
        """Bytes of the constants (absmax, second level, offset)."""
        extra = [self.absmax2, self.offset] if self.nested else []
        return sum(t.numel() * t.element_size() for t in [self.absmax, *extra])


def quantize_4bit(x: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False,
                  dq_blocksize: int = 256) -> tuple[torch.Tensor, State4bit]:
    """NF4/FP4 blockwise quantization, packed two codes per byte like ``bitsandbytes.functional.quantize_4bit``.

    Shapes: x (…) with n values → packed (ceil(n / 2), 1) uint8 and a ``State4bit``.
    """
    code = codebook(quant_type)
    codes, absmax = blockwise_quantize(x, code, blocksize)
    if codes.numel() % 2:                    # an odd count is padded with the code of 0.0, as bitsandbytes does
        codes = torch.cat([codes, nearest_code(torch.zeros(1, device=x.device), code).to(torch.uint8)])
    packed = pack_bits(codes, 4).unsqueeze(1)                               # (ceil(n/2), 1), bnb's layout
    state = State4bit(tuple(x.shape), quant_type, blocksize, absmax, dq_blocksize=dq_blocksize)
    if double_quant:
        state.absmax, state.absmax2, state.offset = double_quantize(absmax, dq_blocksize)
    return packed, state


def dequantize_4bit(packed: torch.Tensor, state: State4bit) -> torch.Tensor:
    """Inverse of ``quantize_4bit``: unpack, look up, scale by the (double-dequantized) absmax."""
    n = math.prod(state.shape)
    absmax = double_dequantize(state.absmax, state.absmax2, state.offset, state.dq_blocksize) if state.nested \
        else state.absmax
    codes = unpack_bits(packed, 4, n)
    return blockwise_dequantize(codes, absmax, codebook(state.quant_type), state.blocksize, state.shape)


def bits_per_param(blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256, code_bits: int = 4,
                   absmax_bits: int = 32, dq_code_bits: int = 8) -> float:
    """Storage bits per weight: the code plus each weight's share of the scaling constants.

    >>> bits_per_param(64), bits_per_param(64, double_quant=True)     # 4 + 32/64; 4 + 8/64 + 32/(64·256)
    (4.5, 4.126953125)
    """
    if not double_quant:
        return code_bits + absmax_bits / blocksize
    return code_bits + dq_code_bits / blocksize + absmax_bits / (blocksize * dq_blocksize)


def measured_bits_per_param(packed: torch.Tensor, state: State4bit) -> float:
    """Bits per weight counted from the tensors actually stored (packed codes + constants)."""
    return 8 * (packed.numel() * packed.element_size() + state.nbytes()) / math.prod(state.shape)


# --------------------------------------------------------------------------- whole-model (weight-only) PTQ

def linear_layers(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules of a model, by name, except ``skip`` (the tied lm_head stays full precision)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] not in skip]


def quantize_weight(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, int]:
    """Dequantized weight and the bytes its quantized storage takes, for one weight-only format.

    fmt: 'fp32', 'bf16', 'int8' (per-channel absmax), 'int4' / 'int3' / 'int2' (absmax, groups of 64),
    'nf4' (blocks of 64 + double quant), 'fp4' (blocks of 64 + double quant).
    """
    if fmt == "fp32":
        return w, w.numel() * 4
    if fmt == "bf16":
        return w.to(torch.bfloat16).to(w.dtype), w.numel() * 2
    if fmt == "int8":
        codes, scale, _ = quantize_codes(w, 8, True, "channel")
        return fake_quant(w, 8, True, "channel"), codes.numel() + scale.numel() * 4
    if fmt in ("int4", "int3", "int2"):
        bits = int(fmt[-1])
        codes, scale, _ = quantize_codes(w, bits, True, "group", 64)
        # 3-bit codes do not fit a byte evenly: count ideal packing (3 bits each) instead of pack_bits
        stored = math.ceil(codes.numel() * 3 / 8) if bits == 3 else pack_bits(codes, bits).numel()
        return fake_quant(w, bits, True, "group", 64), stored + scale.numel() * 4
    if fmt in ("nf4", "fp4"):
        packed, state = quantize_4bit(w, fmt, 64, double_quant=True)
        return dequantize_4bit(packed, state).to(w.dtype), packed.numel() + state.nbytes()
    raise ValueError(f"unknown weight format {fmt!r}")


def snapshot_linear(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every quantizable Linear weight, to restore after a fake-quant experiment."""
    return {n: m.weight.detach().clone() for n, m in linear_layers(model)}


@torch.no_grad()
def restore_linear(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Put the snapshot's weights back (undo ``quantize_model``)."""
    for n, m in linear_layers(model):
        m.weight.copy_(snapshot[n])


@torch.no_grad()
def quantize_model(model: nn.Module, fmt: str) -> dict:
    """Weight-only PTQ in place: replace each Linear weight by its dequantized ``fmt`` version.

    Returns storage measured from the quantized tensors: linear_bytes, other_bytes (parameters left in fp32,
    tied weights counted once), total_mb and bits (per Linear weight).
    """
    linear_bytes, n_linear = 0, 0
    for _, m in linear_layers(model):
        w_hat, nbytes = quantize_weight(m.weight, fmt)
        m.weight.copy_(w_hat)
        linear_bytes += nbytes
        n_linear += m.weight.numel()
    linear_ids = {id(m.weight) for _, m in linear_layers(model)}
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in linear_ids)
    other += sum(b.numel() * b.element_size() for b in model.buffers())
    return dict(linear_bytes=linear_bytes, other_bytes=other, total_mb=(linear_bytes + other) / 2**20,
                bits=8 * linear_bytes / n_linear)


def memory_by_bits(model: nn.Module, bits: tuple[int, ...] = (32, 16, 8, 4, 2)) -> list[dict]:
    """Measured storage of the model with its Linear weights at each bit width (scales included).

    32/16: fp32/bf16 copies; 8: per-channel int8; 4 and 2: absmax groups of 64, packed. The weights are only
    measured, not changed. Returns rows: bits, linear_mb, total_mb, vs_fp32 (ratio of totals).
    """
    layers = linear_layers(model)
    linear_ids = {id(m.weight) for _, m in layers}
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in linear_ids)
    fmt = {32: "fp32", 16: "bf16", 8: "int8", 4: "int4", 2: "int2"}
    rows = []
    for b in bits:
        linear = 0
        for _, m in layers:
            if b in (32, 16):
                linear += m.weight.detach().to(torch.float32 if b == 32 else torch.bfloat16).nbytes
            elif b == 8:
                codes, scale, _ = quantize_codes(m.weight.detach(), 8, True, "channel")
                linear += codes.nbytes + scale.nbytes
            else:
                codes, scale, _ = quantize_codes(m.weight.detach(), b, True, "group", 64)
                linear += pack_bits(codes, b).nbytes + scale.nbytes
        rows.append(dict(bits=b, format=fmt[b], linear_mb=linear / 2**20, total_mb=(linear + other) / 2**20))
    for r in rows:
        r["vs_fp32"] = r["total_mb"] / rows[0]["total_mb"] if rows[0]["bits"] == 32 else float("nan")
    return rows


# --------------------------------------------------------------------------- QAT: fake quant + STE

def ste(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: forward gives ``x_hat``, backward passes the gradient to ``x`` unchanged."""
    return x + (x_hat - x).detach()


class FakeQuant(nn.Module):
    """A weight parametrization: forward = fake-quantized weight, gradient = straight through (STE).

    >>> linear = nn.Linear(16, 4)
    >>> _ = torch.nn.utils.parametrize.register_parametrization(linear, "weight", FakeQuant(bits=3))
    >>> linear.weight.sum().backward()             # the forward sees the 3-bit weight
    >>> torch.equal(linear.parametrizations.weight.original.grad, torch.ones(4, 16))   # STE: passed as is
    True
    """

    def __init__(self, bits: int = 4, symmetric: bool = True, granularity: str = "channel", group_size: int = 64):
        super().__init__()
        self.bits, self.symmetric, self.granularity, self.group_size = bits, symmetric, granularity, group_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            w_hat = fake_quant(w, self.bits, self.symmetric, self.granularity, self.group_size)
        return ste(w, w_hat)


def add_fake_quant(model: nn.Module, bits: int, granularity: str = "channel", symmetric: bool = True,
                   layers: list[tuple[str, nn.Linear]] | None = None) -> int:
    """Fake-quantize the weights of ``layers`` (default: all Linear but lm_head) on every forward; returns count."""
    from torch.nn.utils import parametrize

    layers = linear_layers(model) if layers is None else layers
    for _, m in layers:
        parametrize.register_parametrization(m, "weight", FakeQuant(bits, symmetric, granularity))
    return len(layers)


def remove_fake_quant(model: nn.Module) -> None:
    """Bake the fake-quantized weights in (the deployed, quantized model) and drop the parametrizations."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


# --------------------------------------------------------------------------- activations

@contextlib.contextmanager
def capture(modules: dict[str, nn.Module], what: str = "output", max_rows: int | None = None):
    """Record the (flattened to (tokens, features)) input or output of each module while inside the block.

    >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4))
    >>> with capture({"act": mlp[1]}) as acts:
    ...     _ = mlp(torch.ones(2, 3, 4))              # (B, T, d)
    >>> acts["act"].shape                             # (B·T, 8)
    torch.Size([6, 8])
    """
    store: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, inputs, output):
            t = (inputs[0] if what == "input" else output).detach().float()
            t = t.reshape(-1, t.shape[-1])                                  # (B·T, d)
            store[name] = t if name not in store else torch.cat([store[name], t])
            if max_rows is not None:
                store[name] = store[name][:max_rows]
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def outlier_features(acts: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """Feature (column) indices whose magnitude reaches ``threshold`` in any token (LLM.int8's criterion).

    Shape: acts (tokens, d) → (k,) int64.
    """
    return (acts.abs().amax(0) >= threshold).nonzero().flatten()


def outlier_linears(model: nn.Module, batch: dict, threshold: float = 20.0) -> list[str]:
    """Names of the ``nn.Linear`` layers whose input reaches ``threshold`` in magnitude on ``batch``.

    These are the layers where one per-tensor activation scale must stretch to cover an outlier, so every
    ordinary value lands on a handful of int8 levels.

    Example::

        outlier_linears(model, batch)   # e.g. ['lm_head', 'model.layers.2.mlp.down_proj', ...]
    """
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    keep = batch["attention_mask"].reshape(-1).bool() if "attention_mask" in batch else None
    with capture(linears, what="input") as acts, torch.no_grad():
        model(**batch)
    return sorted(n for n, a in acts.items()
                  if (a[keep] if keep is not None and len(a) == len(keep) else a).abs().max() >= threshold)


def cpu_fp32_copy(model: nn.Module) -> nn.Module:
    """``model`` itself if it is an fp32 model on the CPU, else a CPU fp32 copy (for CPU-only kernels)."""
    from course_utils.core.runtime import device_of

    p = next(model.parameters())
    if device_of(model).type == "cpu" and p.dtype == torch.float32:
        return model
    return copy.deepcopy(model).cpu().float()


def quantize_dynamic_int8(model: nn.Module, skip: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` with torch's dynamic int8 Linear layers (weights int8, activations int8 per batch).

    ``skip``: names of Linear layers to keep in fp32 (e.g. ``outlier_linears(model, batch)``).
    """
    import warnings

    from torch.ao.quantization import quantize_dynamic

    skip = set(skip)
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip}
    with warnings.catch_warnings():   # torch.ao.quantization is deprecated in favour of torchao, still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8)

