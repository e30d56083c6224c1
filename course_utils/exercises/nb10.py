"""Exercises of notebook 10 (scaling out)."""

from course_utils.exercises import Exercise, Incorrect, expect_number
from course_utils.lessons.scaling import per_gpu_gb


def _q1_answer() -> float:
    return per_gpu_gb(7e9, scheme="zero2", n_gpus=4)["total"]


def _check_q1(gb) -> None:
    if abs(float(gb) - per_gpu_gb(7e9, scheme="ddp", n_gpus=1)["total"]) < 1e-6:
        raise Incorrect("that is the unsharded total: ZeRO-2 divides gradients and optimizer states by 4")
    if abs(float(gb) - per_gpu_gb(7e9, scheme="zero3", n_gpus=4)["total"]) < 1e-6:
        raise Incorrect("that is ZeRO-3: in ZeRO-2 every GPU still holds all the weights")
    expect_number(gb, _q1_answer(), rel=0.01, what="GB per GPU")


q1 = Exercise(
    name="Q1 🐕 ZeRO-2 memory for a 7B model",
    checker=_check_q1,
    hint_text="Mixed-precision AdamW: 2 B weights + 2 B gradients + 12 B optimizer per parameter. ZeRO-2 "
              "shards gradients and optimizer states over the 4 GPUs; the weights stay whole.",
    solution_text="```python\ngb = (7e9 * 2 + 7e9 * (2 + 12) / 4) / 1e9   # = 38.5 GB\n"
                  "# or: per_gpu_gb(7e9, scheme='zero2', n_gpus=4)['total']\n```",
    solution_answer=lambda: (_q1_answer(),),
    wrong_answer=lambda: (per_gpu_gb(7e9)["total"],),
)


def _smallest_fitting(params: float, budget_gb: float, n_gpus: int) -> str:
    for scheme in ("ddp", "zero1", "zero2", "zero3"):
        if per_gpu_gb(params, scheme=scheme, n_gpus=n_gpus)["total"] <= budget_gb:
            return scheme
    return "none"


def _check_q2(scheme) -> None:
    right = _smallest_fitting(13e9, 40, 8)
    if not isinstance(scheme, str):
        raise Incorrect(f"answer with a scheme name such as 'zero1', got {type(scheme).__name__}")
    if scheme.strip().lower() != right:
        fits = per_gpu_gb(13e9, scheme=scheme.strip().lower(), n_gpus=8)["total"] if scheme in (
            "ddp", "zero1", "zero2", "zero3") else None
        msg = f"{scheme!r} needs {fits:.1f} GB per GPU" if fits is not None else f"{scheme!r} is not a scheme here"
        raise Incorrect(msg + "; find the least sharding whose states fit in 40 GB")


q2 = Exercise(
    name="Q2 🦁 least sharding that fits",
    checker=_check_q2,
    hint_text="Full fine-tuning of 13B on 8 × 40 GB GPUs, states only (ignore activations). Try ddp, zero1, "
              "zero2, zero3 in order with `per_gpu_gb(13e9, scheme=..., n_gpus=8)`.",
    solution_text="```python\nfor s in ['ddp', 'zero1', 'zero2', 'zero3']:\n"
                  "    print(s, per_gpu_gb(13e9, scheme=s, n_gpus=8)['total'])\n"
                  "# ddp 208, zero1 71.5, zero2 48.8, zero3 26 GB → 'zero3'\n```",
    solution_answer=lambda: (_smallest_fitting(13e9, 40, 8),),
    wrong_answer=lambda: ("zero2",),
)
