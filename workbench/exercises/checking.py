"""What every exercise check shares: the verdict it returns and the comparisons it makes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

# The placeholder a notebook's answer cell starts with: `answer = ...`
UNANSWERED = Ellipsis


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: truthy when the answer passes, and a message saying why (or why not)."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return ("correct: " if self.passed else "not yet: ") + self.message

    def _repr_pretty_(self, printer, cycle) -> None:  # how IPython shows a verdict as a cell's result
        printer.text(repr(self))


@dataclass(frozen=True)
class Exercise:
    """One exercise: its check, a function giving the reference answer, and answers the check must reject."""

    name: str
    check: Callable[[Any], Verdict]
    solution: Callable[[], Any]
    wrong_answers: Callable[[], list] = field(default=lambda: [])


def not_answered(answer: Any) -> Verdict | None:
    """The verdict for an answer cell still holding `...`, or None when the learner has answered."""
    if answer is UNANSWERED:
        return Verdict(False, "no answer yet: replace `...` with yours and run the cell again.")
    return None


def expect_close(answer: Any, expected: float, what: str, rel: float = 0.01, unit: str = "",
                 hint: str = "") -> Verdict:
    """Pass when `answer` is a number within `rel` (relative) of `expected`."""
    if (verdict := not_answered(answer)) is not None:
        return verdict
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return Verdict(False, f"{what} should be a number, got {type(answer).__name__}.")
    suffix = f" {unit}" if unit else ""
    if math.isfinite(value) and abs(value - expected) <= rel * abs(expected):
        return Verdict(True, f"{what} = {value:.6g}{suffix}.")
    direction = "high" if value > expected else "low"
    message = f"{what} = {value:.6g}{suffix} is too {direction}: expected about {expected:.6g}{suffix}"
    message += f" (within {rel:.0%})." if rel else "."
    return Verdict(False, message + (f" Hint: {hint}" if hint else ""))


def expect_equal(answer: Any, expected: Any, what: str, hint: str = "") -> Verdict:
    """Pass when `answer == expected` (exact: integers, strings, tuples)."""
    if (verdict := not_answered(answer)) is not None:
        return verdict
    if answer == expected:
        return Verdict(True, f"{what} = {answer!r}.")
    return Verdict(False, f"{what} = {answer!r}, expected {expected!r}." + (f" Hint: {hint}" if hint else ""))
