"""NF4 benchmark (printed, never asserted): our quantize+dequantize vs bitsandbytes on CPU, same run."""

from __future__ import annotations

import torch

from course_utils.core.runtime import median_time
from course_utils.lessons.quantization import dequantize_4bit, quantize_4bit


def bench_nf4(size: int = 4096, repeats: int = 3, double_quant: bool = True, seed: int = 0) -> dict:
    """Our NF4 quantize+dequantize of a size×size fp32 matrix vs bitsandbytes on CPU, same run; prints the ratio.

    Returns dict(ours_s, bnb_s, ratio (ours / bnb), max_abs_diff). Not a timed test: a printed measurement.
    """
    import bitsandbytes.functional as bnbf

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(size, size, generator=g) * 0.02                         # (size, size)

    def ours():
        packed, state = quantize_4bit(w, "nf4", 64, double_quant)
        return dequantize_4bit(packed, state)

    def theirs():
        packed, state = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
        return bnbf.dequantize_4bit(packed, state)

    ours_s, bnb_s = median_time(ours, repeats), median_time(theirs, repeats)
    diff = float((ours() - theirs()).abs().max())
    res = dict(size=size, ours_s=ours_s, bnb_s=bnb_s, ratio=ours_s / bnb_s, max_abs_diff=diff)
    print(f"NF4 quantize+dequantize {size}×{size} fp32 (double quant={double_quant}), {torch.get_num_threads()} "
          f"threads: ours {ours_s * 1e3:.0f} ms · bitsandbytes {bnb_s * 1e3:.0f} ms · ratio ours/bnb "
          f"{res['ratio']:.2f}× · max |ours − bnb| {diff:.2e}")
    return res


if __name__ == "__main__":
    import sys

    bench_nf4(int(sys.argv[1]) if len(sys.argv) > 1 else 4096)
