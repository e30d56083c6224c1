"""Benchmarks that print ratios measured in one run (never timed tests): ``python -m course_utils.bench NAME``.

    $ python -m course_utils.bench quant        # our NF4 quantize+dequantize vs bitsandbytes, 4096×4096
    $ python -m course_utils.bench qlora        # plain transformers+peft+bnb QLoRA vs Unsloth (GPU; tiny on CPU)
    $ python -m course_utils.bench chatbot      # feedback writes/s, one training round, UI latency under training
    $ python -m course_utils.bench efficiency   # LoRA/QLoRA/full steps and generation vs the machine's own limits
    $ python -m course_utils.bench all
"""

from __future__ import annotations

import importlib
import json
import sys

# name → (module of course_utils.bench, the function that runs it and returns what it measured)
BENCHES = {"quant": ("quant", "bench_nf4"), "qlora": ("qlora", "bench_qlora"),
           "chatbot": ("chatbot", "run_benchmarks"), "efficiency": ("efficiency", "run")}


def run(name: str):
    """Run one benchmark (its module is imported only now: each pulls in a different stack)."""
    module, fn = BENCHES[name]
    return getattr(importlib.import_module(f"course_utils.bench.{module}"), fn)()


def main(argv: list[str]) -> int:
    from course_utils.core.quiet import quiet_known_warnings

    quiet_known_warnings()  # before a benchmark imports bitsandbytes: its harmless CPU-kernel message stays hidden
    names = list(BENCHES) if argv in ([], ["all"]) else argv
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)} or 'all'", file=sys.stderr)
        return 2
    for name in names:
        print(f"=== {name} ===")
        print(json.dumps(run(name), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
