"""Learntools-style exercises: ``check()``, ``hint()``, ``solution()``, one module per notebook.

    >>> from course_utils.exercises import nb00 as ex, ____
    >>> answer = ____              # the learner replaces the blank
    >>> ex.q1.check(answer)
    ⬜ **Q1 🐢 parameters of a linear layer**: replace `____` with your answer, then run the cell again.
    not attempted
    >>> ex.q1.hint()
    💡 **Hint (Q1 🐢 parameters of a linear layer)**: `nn.Linear(576, 1536)` stores a weight of shape (1536, 576) and a bias of 1536.
    >>> ex.q1.check(576 * 1536 + 1536)
    ✅ **Q1 🐢 parameters of a linear layer**: correct!
    correct

A wrong answer prints ❌ and why (``.solution()`` shows the code), and with ``COURSE_STRICT=1`` (CI) it also
raises ``AssertionError``; a blank never does, so the notebooks run untouched in CI while the checkers
themselves are tested against right and wrong answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


class _Blank:
    """The ``____`` placeholder a learner replaces."""

    def __repr__(self) -> str:
        return "____"


____ = _Blank()


class Incorrect(Exception):
    """Raised by a checker with a message saying what is wrong with an answer."""


def strict() -> bool:
    """True when wrong answers must raise (``COURSE_STRICT=1``, set by ``make test``)."""
    return os.environ.get("COURSE_STRICT", "0") == "1"


def _show(markdown: str) -> None:
    """Rich text in Jupyter, plain text elsewhere."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(markdown))
            return
    except ImportError:  # pragma: no cover
        pass
    print(markdown)


class Verdict:
    """What ``check()`` returns: truthy when right; shows nothing itself (the check already said it).

    >>> bool(Verdict(True)), Verdict(False) == False
    (True, True)
    """

    def __init__(self, ok: bool, attempted: bool = True):
        self.ok, self.attempted = ok, attempted

    def __bool__(self) -> bool:
        return self.ok

    def __eq__(self, other) -> bool:
        return bool(self) == bool(other) if isinstance(other, (bool, Verdict)) else NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return "correct" if self.ok else ("wrong" if self.attempted else "not attempted")

    def _ipython_display_(self) -> None:
        """Jupyter would print ``Out: False`` under the message; the message is the output."""


@dataclass
class Exercise:
    """One exercise: a checker, a hint, a solution text, and a right and a wrong answer (for tests).

    checker(*answers) returns None when right and raises ``Incorrect(message)`` when wrong.
    ``solution_answer()`` and ``wrong_answer()`` return argument tuples; tests/test_exercises.py checks
    that the checker accepts the first and rejects the second.
    """

    name: str
    checker: Callable[..., None]
    hint_text: str
    solution_text: str
    solution_answer: Callable[[], tuple]
    wrong_answer: Callable[[], tuple]

    def check(self, *answers) -> Verdict:
        """Check an answer; show ✅/❌/⬜ and return a ``Verdict`` (truthy when right)."""
        if any(isinstance(a, _Blank) for a in answers) or not answers:
            _show(f"⬜ **{self.name}**: replace `____` with your answer, then run the cell again.")
            return Verdict(False, attempted=False)
        try:
            self.checker(*answers)
        except Incorrect as e:
            _show(f"❌ **{self.name}**: {e}  \nTry `.hint()` or `.solution()`.")
            if strict():
                raise AssertionError(f"{self.name}: {e}") from None
            return Verdict(False)
        _show(f"✅ **{self.name}**: correct!")
        return Verdict(True)

    def hint(self) -> None:
        """Show the hint."""
        _show(f"💡 **Hint ({self.name})**: {self.hint_text}")

    def solution(self) -> None:
        """Show the solution."""
        _show(f"🔑 **Solution ({self.name})**:\n\n{self.solution_text}")


def require_number(x, what: str) -> None:
    """Raise ``Incorrect`` unless ``x`` is an int or float (a bool is not a number here)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise Incorrect(f"{what} should be a number, got {type(x).__name__} {x!r}")


def expect_number(value, expected: float, rel: float = 1e-6, what: str = "the answer") -> None:
    """Checker helper: ``value`` must be a number within ``rel`` of ``expected``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise Incorrect(f"{what} should be a number, got {type(value).__name__} {value!r}") from None
    if abs(v - expected) > rel * max(abs(expected), 1e-12):
        hint = "too high" if v > expected else "too low"
        raise Incorrect(f"{what} = {value!r} is {hint}")
