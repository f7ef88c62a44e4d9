"""Checks for notebook 09 (evaluation): perplexity from per-token log-probabilities, checked against
the package's perplexity, and the width of a score's 95% interval, checked against the bootstrap."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..eval import perplexity
from ..evals.tasks import mean_ci
from .checking import Exercise, Verdict, call_answer, not_answered
from .kv_cache import _tiny_model


# -- 1. perplexity from log-probs ------------------------------------------------------------------------

def _scored_text(seed: int, length: int):
    """Token ids and the model's log-probability of each token after the first (tiny model: milliseconds)."""
    model = _tiny_model()
    ids = torch.randint(3, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(ids[None]).float(), -1)[0, :-1].gather(-1, ids[1:, None])[:, 0]
    return ids.tolist(), logprobs.tolist()


def check_perplexity(fn) -> Verdict:
    """`fn(logprobs)`: perplexity of a text from the natural-log probability of each predicted token."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    model = _tiny_model()
    for seed, length in ((0, 12), (1, 40), (2, 97)):
        ids, logprobs = _scored_text(seed, length)
        expected = perplexity(model, ids, window=length).ppl    # one window: every token after the first
        got, verdict = call_answer(fn, list(logprobs))
        if verdict is not None:
            return verdict
        if not math.isclose(float(got), expected, rel_tol=1e-4):
            return Verdict(False, f"for {len(logprobs)} log-probs you get {float(got):.6g}, "
                                  f"workbench.eval.perplexity gives {expected:.6g}. Hint: perplexity = "
                                  "exp(mean negative log-probability): the mean, not the sum, and mind the sign.")
    return Verdict(True, "your perplexity equals workbench.eval.perplexity on three texts scored by a model.")


# -- 2. the 95% interval of a score ---------------------------------------------------------------------

SCORE_CASES = [(108, 0.3), (40, 0.85), (30, 0.5), (400, 0.25)]   # (questions, accuracy)


def _scores(n: int, accuracy: float) -> list[float]:
    right = round(n * accuracy)
    return [1.0] * right + [0.0] * (n - right)


def check_interval_half_width(fn) -> Verdict:
    """`fn(scores)`: half the width of the 95% interval of the mean of per-question scores (normal
    approximation), checked against the percentile bootstrap the notebook's tables use."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    for n, accuracy in SCORE_CASES:
        scores = _scores(n, accuracy)
        mean, low, high = mean_ci(scores)
        bootstrap = (high - low) / 2
        got, verdict = call_answer(fn, list(scores))
        if verdict is not None:
            return verdict
        if not abs(float(got) - bootstrap) <= 0.15 * bootstrap:
            return Verdict(False, f"for {n} questions at {mean:.0%} you get ±{float(got):.3f}; the bootstrap's "
                                  f"95% interval is ±{bootstrap:.3f}. Hint: 1.96 x the standard deviation of the "
                                  "scores / sqrt(number of questions).")
    return Verdict(True, f"within 15% of the bootstrap interval for {len(SCORE_CASES)} question sets: "
                         "four times the questions halve the interval.")


def _half_width_solution():
    def half_width(scores):
        x = np.asarray(scores, dtype=float)
        return 1.96 * x.std() / math.sqrt(len(x))
    return half_width


EXERCISES = [
    Exercise("perplexity", check_perplexity,
             lambda: (lambda logprobs: math.exp(-sum(logprobs) / len(logprobs))),
             lambda: [lambda lp: math.exp(-sum(lp)), lambda lp: math.exp(sum(lp) / len(lp)),
                      lambda lp: 2 ** (-sum(lp) / len(lp))]),
    Exercise("interval_half_width", check_interval_half_width, _half_width_solution,
             lambda: [lambda s: 1.96 * np.std(s), lambda s: 1.96 * np.std(s) / len(s),
                      lambda s: np.std(s) / math.sqrt(len(s))]),
]
