"""Every exercise check accepts its reference solution and rejects each of its wrong answers."""

import importlib
import pkgutil

import pytest

import workbench.exercises as exercises
from workbench.exercises import Verdict, expect_close, expect_equal

MODULES = [m.name for m in pkgutil.iter_modules(exercises.__path__) if m.name != "checking"]
CASES = [(name, ex) for name in MODULES for ex in importlib.import_module(f"workbench.exercises.{name}").EXERCISES]


@pytest.mark.parametrize("module,exercise", CASES, ids=[f"{m}.{e.name}" for m, e in CASES])
def test_check_accepts_solution_and_rejects_wrong_answers(module, exercise):
    verdict = exercise.check(exercise.solution())
    assert isinstance(verdict, Verdict) and verdict.passed, f"{module}.{exercise.name}: {verdict.message}"
    wrong = exercise.wrong_answers()
    assert wrong, f"{module}.{exercise.name} lists no wrong answer to reject"
    for answer in wrong:
        verdict = exercise.check(answer)
        assert not verdict.passed, f"{module}.{exercise.name} accepted the wrong answer {answer!r}"
        assert verdict.message
    assert not exercise.check(...).passed  # the notebook's untouched placeholder


def test_comparisons_say_what_is_wrong():
    assert expect_close(100.0, 100.5, "bytes", rel=0.01)
    low = expect_close(50, 100, "bytes", unit="MB", hint="count the scales")
    assert not low and "too low" in low.message and "count the scales" in low.message
    assert not expect_close("abc", 1.0, "x") and not expect_close(float("nan"), 1.0, "x")
    assert expect_equal((2, 3), (2, 3), "shape") and not expect_equal(3, 4, "n")
    assert "no answer yet" in expect_equal(..., 4, "n").message


def test_every_notebook_calls_its_exercise_checks():
    """Each notebook imports exercise checks, and every exercise module is used by a notebook."""
    from pathlib import Path

    notebooks = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    sources = {nb.name: nb.read_text() for nb in notebooks}
    missing = [name for name, text in sources.items() if "workbench.exercises" not in text]
    assert not missing, f"notebooks without exercise checks: {missing}"
    unused = [m for m in MODULES if not any(f"exercises.{m}" in t or f"import {m}" in t for t in sources.values())]
    assert not unused, f"exercise modules no notebook uses: {unused}"
