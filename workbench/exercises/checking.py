"""What every exercise check shares: the verdict it returns and the comparisons it makes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
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
    message += f" (within {100 * rel:.2g}%)." if rel else "."
    return Verdict(False, message + (f" Hint: {hint}" if hint else ""))


def expect_equal(answer: Any, expected: Any, what: str, hint: str = "") -> Verdict:
    """Pass when `answer == expected` (exact: integers, strings, tuples)."""
    if (verdict := not_answered(answer)) is not None:
        return verdict
    if answer == expected:
        return Verdict(True, f"{what} = {answer!r}.")
    return Verdict(False, f"{what} = {answer!r}, expected {expected!r}." + (f" Hint: {hint}" if hint else ""))


def call_answer(fn: Any, *args) -> tuple[Any, Verdict | None]:
    """Call a learner's function on test inputs: (its result, None), or (None, the verdict to return)
    when the cell is untouched, the answer is not a function, it raises, or its body is still `...`."""
    if (verdict := not_answered(fn)) is not None:
        return None, verdict
    if not callable(fn):
        return None, Verdict(False, f"the answer should be a function, got {type(fn).__name__}.")
    try:
        result = fn(*args)
    except Exception as exc:  # a learner's bug is a verdict, not a crash of the notebook
        return None, Verdict(False, f"your function raised {type(exc).__name__}: {exc}")
    if result is None or result is UNANSWERED:
        return None, Verdict(False, "no answer yet: your function returns nothing; write its body and run the cell again.")
    return result, None


def expect_tensor_close(answer: Any, expected, what: str, rtol: float = 1e-5, atol: float = 1e-6,
                        hint: str = "") -> Verdict:
    """Pass when `answer` (a tensor, array or nested list) has `expected`'s shape and values; else say
    which: the shape, or the first element that differs and how many do."""
    import numpy as np
    import torch

    expected = torch.as_tensor(np.asarray(expected) if not isinstance(expected, torch.Tensor) else expected)
    try:
        got = answer.detach() if isinstance(answer, torch.Tensor) else torch.as_tensor(np.asarray(answer))
    except (TypeError, ValueError, RuntimeError):
        return Verdict(False, f"{what} should be a tensor or array, got {type(answer).__name__}.")
    suffix = f" Hint: {hint}" if hint else ""
    if tuple(got.shape) != tuple(expected.shape):
        return Verdict(False, f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}.{suffix}")
    if expected.dtype == torch.bool or got.dtype == torch.bool:
        wrong = got.bool() != expected.bool()
    else:
        got, ref = got.double(), expected.double()
        wrong = ~torch.isclose(got, ref, rtol=rtol, atol=atol) | ~torch.isfinite(got)
    if not wrong.any():
        return Verdict(True, f"{what}: all {expected.numel()} values match.")
    first = tuple(int(i) for i in wrong.nonzero()[0])
    return Verdict(False, f"{what}: {int(wrong.sum())} of {expected.numel()} values differ; the first at "
                          f"[{', '.join(map(str, first))}]: got {got[first].item():.6g}, expected "
                          f"{expected[first].item():.6g}.{suffix}")


@lru_cache(maxsize=1)
def bundled_config():
    """The bundled model's configuration, read from its GGUF header (no weights loaded)."""
    from ..checkpoints.gguf_file import GGUFCheckpoint
    from ..checkpoints.registry import bundled_path

    return GGUFCheckpoint(bundled_path("smollm2-135m")).config
