"""Every exercise checker accepts its solution and rejects a wrong answer (and a blank never raises)."""

import importlib
import pkgutil

import pytest

import course_utils.exercises as exercises
from course_utils.exercises import Exercise, ____

MODULES = [m.name for m in pkgutil.iter_modules(exercises.__path__) if m.name.startswith("nb")]
ALL = [(m, name, ex) for m in MODULES
       for name, ex in vars(importlib.import_module(f"course_utils.exercises.{m}")).items()
       if isinstance(ex, Exercise)]


def test_every_notebook_module_has_exercises():
    assert MODULES and all(any(m == mod for mod, _, _ in ALL) for m in MODULES)


@pytest.mark.parametrize("module, name, ex", ALL, ids=[f"{m}.{n}" for m, n, _ in ALL])
def test_right_answer_passes_wrong_answer_fails(monkeypatch, capsys, module, name, ex):
    monkeypatch.setenv("COURSE_STRICT", "1")
    assert ex.check(*ex.solution_answer()) is True
    with pytest.raises(AssertionError):
        ex.check(*ex.wrong_answer())
    monkeypatch.setenv("COURSE_STRICT", "0")
    assert ex.check(*ex.wrong_answer()) is False
    assert ex.check(____) is False  # not attempted: no exception, even when strict
    ex.hint()
    ex.solution()
    out = capsys.readouterr().out
    assert "✅" in out and "❌" in out and "⬜" in out and "Hint" in out and "Solution" in out
