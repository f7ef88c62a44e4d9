"""Checks for notebook 10 (the compression study): a Pareto front of your own against
`workbench.study.pareto_front`, and the additive prediction of what pruning and quantization cost
together against `workbench.study.composition`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..study.analysis import composition, pareto_front
from .checking import Exercise, Verdict, call_answer, not_answered


# -- 1. the Pareto front ----------------------------------------------------------------------------

def _frames(seed: int = 0) -> list[pd.DataFrame]:
    """Rows of (bytes, perplexity) with ties and repeats, as a study writes them."""
    rng = np.random.default_rng(seed)
    frames = []
    for n in (5, 12, 30):
        weight_bytes = rng.choice([70e6, 90e6, 135e6, 270e6, 538e6], size=n)
        ppl = np.round(rng.uniform(10, 30, size=n), 1)
        frames.append(pd.DataFrame({"weight_bytes": weight_bytes, "ppl": ppl}))
    frames.append(pd.DataFrame({"weight_bytes": [100.0, 100.0, 50.0], "ppl": [12.0, 12.0, 20.0]}))  # equal rows
    return frames


def check_pareto(fn) -> Verdict:
    """`fn(frame)`: True for each row of `frame` that no other row beats on both `weight_bytes` and
    `ppl` (lower is better in both; at least as good in both and better in one), as a boolean list."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    for frame in _frames():
        expected = pareto_front(frame, "weight_bytes").tolist()
        got, verdict = call_answer(fn, frame.copy())
        if verdict is not None:
            return verdict
        got = [bool(v) for v in got]
        if len(got) != len(frame):
            return Verdict(False, f"return one True/False per row: {len(frame)} rows, got {len(got)} values.")
        if got != expected:
            wrong = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
            row = frame.iloc[wrong]
            why = ("another row is at least as small and as good, and better in one" if not expected[wrong]
                   else "no other row beats it on both (equal rows do not dominate each other)")
            return Verdict(False, f"row {wrong} ({row['weight_bytes']:.0f} bytes, ppl {row['ppl']}) should be "
                                  f"{'on' if expected[wrong] else 'off'} the front: {why}.")
    return Verdict(True, f"your front equals workbench.study.pareto_front on {len(_frames())} sets of rows.")


def _pareto_solution():
    def front(frame):
        x, y = frame["weight_bytes"].to_numpy(), frame["ppl"].to_numpy()
        return [not (((x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))).any()) for i in range(len(x))]
    return front


def _pareto_wrong():
    def strict(frame):   # "dominated" when another row is merely as good in both: equal rows knock each other out
        x, y = frame["weight_bytes"].to_numpy(), frame["ppl"].to_numpy()
        return [not (((x <= x[i]) & (y <= y[i])).sum() > 1) for i in range(len(x))]

    def best_per_size(frame):   # the best perplexity at each size, dominated or not
        return (frame["ppl"] == frame.groupby("weight_bytes")["ppl"].transform("min")).tolist()
    return [strict, best_per_size]


# -- 2. does compression compose? ---------------------------------------------------------------------

COMPOSE_CASES = [(10.0, 12.0, 11.0), (15.2, 21.0, 19.5), (8.0, 8.0, 9.6), (20.0, 40.0, 30.0)]  # base, pruned, quantized


def _study_rows(base: float, pruned: float, quantized: float, measured: float) -> pd.DataFrame:
    cells = [("none", "none", base), ("magnitude:0.3", "none", pruned), ("none", "q4_1", quantized),
             ("magnitude:0.3", "q4_1", measured)]
    return pd.DataFrame([{"status": "ok", "model": "m", "prune": p, "quant": q, "dtype": "float32", "kv": "auto",
                          "teacher": None, "ppl": v} for p, q, v in cells])


def check_predicted_ppl(fn) -> Verdict:
    """`fn(base, pruned, quantized)`: the perplexity pruning and quantization together would have if
    their relative increases over `base` simply added up."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    for case in COMPOSE_CASES:
        expected = float(composition(_study_rows(*case, measured=case[0] * 2))["ppl_predicted"].iloc[0])
        got, verdict = call_answer(fn, *case)
        if verdict is not None:
            return verdict
        if not abs(float(got) - expected) <= 1e-6 * expected:
            return Verdict(False, f"for (base, pruned, quantized) = {case} you predict {float(got):.4g}, "
                                  f"workbench.study.composition predicts {expected:.4g}. Hint: "
                                  "base x (1 + relative increase of pruning + relative increase of quantization).")
    return Verdict(True, f"your prediction equals workbench.study.composition's on {len(COMPOSE_CASES)} cases.")


EXERCISES = [
    Exercise("pareto", check_pareto, _pareto_solution, _pareto_wrong),
    Exercise("predicted_ppl", check_predicted_ppl, lambda: (lambda base, a, b: base * (a / base + b / base - 1)),
             lambda: [lambda base, a, b: a * b / base, lambda base, a, b: (a + b) / 2, lambda base, a, b: a + b]),
]
