"""Exercises of notebook 00 (setup and tour)."""

from course_utils.exercises import Exercise, Incorrect, expect_number

_IN, _OUT = 576, 1536  # SmolLM2-135M: hidden size and MLP width


def _check_q1(n_params) -> None:
    if isinstance(n_params, bool):
        raise Incorrect("expected a number of parameters, not a bool")
    if n_params == _IN * _OUT:
        raise Incorrect("close: you counted the weight matrix but forgot the bias vector")
    expect_number(n_params, _IN * _OUT + _OUT, rel=0, what="n_params")


q1 = Exercise(
    name="Q1 🐢 parameters of a linear layer",
    checker=_check_q1,
    hint_text=f"`nn.Linear({_IN}, {_OUT})` stores a weight of shape ({_OUT}, {_IN}) and a bias of {_OUT}.",
    solution_text=f"```python\nn_params = {_IN} * {_OUT} + {_OUT}  # weight + bias = {_IN * _OUT + _OUT:,}\n```",
    solution_answer=lambda: (_IN * _OUT + _OUT,),
    wrong_answer=lambda: (_IN * _OUT,),
)


def _active() -> str:
    from course_utils.core.runtime import profile_name

    return profile_name()


def _check_q2(profile_name) -> None:
    if not isinstance(profile_name, str):
        raise Incorrect(f"expected a string such as 'cpu', got {type(profile_name).__name__}")
    if profile_name.strip().lower() != _active():
        raise Incorrect(f"{profile_name!r} is not the active profile: look at `print_env()`'s output")


q2 = Exercise(
    name="Q2 🐢 which profile is active?",
    checker=_check_q2,
    hint_text="`print_env()` printed it, and `settings().profile` returns it.",
    solution_text="```python\nfrom course_utils.core.runtime import settings\nmy_profile = settings().profile\n```",
    solution_answer=lambda: (_active(),),
    wrong_answer=lambda: ("gpu" if _active() == "cpu" else "cpu",),
)
