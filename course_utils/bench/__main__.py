"""Benchmarks that print ratios measured in one run (never timed tests): ``python -m course_utils.bench NAME``.

    $ python -m course_utils.bench quant     # our NF4 quantize+dequantize vs bitsandbytes, 4096×4096
    $ python -m course_utils.bench qlora     # plain transformers+peft+bnb QLoRA vs Unsloth (GPU; tiny on CPU)
    $ python -m course_utils.bench chatbot   # feedback writes/s, one training round, UI latency under training
    $ python -m course_utils.bench efficiency   # LoRA/QLoRA/full steps and generation vs the machine's own limits
    $ python -m course_utils.bench all
"""

from __future__ import annotations

import json
import sys


def _quant() -> dict:
    from course_utils.quant import bench_nf4

    return bench_nf4()


def _qlora() -> dict:
    from course_utils.qlora import bench_qlora

    return bench_qlora()


def _chatbot() -> dict:
    from course_utils.chatbot import bench_feedback_writes, bench_training_round, bench_ui_latency

    return {"feedback_writes": bench_feedback_writes(), "training_round": bench_training_round(),
            "ui_latency": bench_ui_latency()}


def _efficiency() -> dict:
    from course_utils.bench_efficiency import run

    return run()


BENCHES = {"quant": _quant, "qlora": _qlora, "chatbot": _chatbot, "efficiency": _efficiency}
MODULES = {"quant": "course_utils.quant", "qlora": "course_utils.qlora", "chatbot": "course_utils.chatbot",
           "efficiency": "course_utils.bench_efficiency"}


def available(name: str) -> bool:
    """True when the lesson module behind a benchmark is installed (lessons land one by one)."""
    import importlib.util

    return importlib.util.find_spec(MODULES[name]) is not None


def main(argv: list[str]) -> int:
    names = list(BENCHES) if argv in ([], ["all"]) else argv
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)} or 'all'", file=sys.stderr)
        return 2
    for name in names:
        print(f"=== {name} ===")
        if not available(name):
            print(f"skipped: {MODULES[name]} is not part of this checkout yet")
            continue
        result = BENCHES[name]()
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
