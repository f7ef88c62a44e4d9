"""Checks for notebook 07 (batching): the bytes a decode step reads per token, the idle places of
a static batch, and Little's law against the number of requests the engine held."""

from __future__ import annotations

import numpy as np
import torch

from ..engine.kv_cache import bytes_per_token
from ..parallel.cost import decode_weight_bytes
from .checking import Exercise, Verdict, not_answered
from .kv_cache import bundled_config

CASES = [(1, 100), (4, 100), (16, 100), (16, 1000), (64, 500)]   # (batch, context positions)


def _calls(fn, cases, what: str):
    """fn(*case) for every case, or the Verdict that says why the learner's function failed."""
    try:
        return [fn(*case) for case in cases], None
    except Exception as exc:
        return None, Verdict(False, f"{what} raised {type(exc).__name__}: {exc}")


def _compare(got, expected, cases, names: str, rel: float, hint: str) -> Verdict:
    for case, g, e in zip(cases, got, expected):
        if g is None or g is Ellipsis:
            return Verdict(False, "no answer yet: your function returns nothing.")
        try:
            value = float(g)
        except (TypeError, ValueError):
            return Verdict(False, f"for {names} = {case} your function returned {g!r}, not a number.")
        if not abs(value - e) <= rel * abs(e):
            return Verdict(False, f"for {names} = {case} your function gives {value:.6g}, expected {e:.6g}. "
                                  f"Hint: {hint}")
    return Verdict(True, f"right for all {len(cases)} cases ({names} = {', '.join(map(str, cases))}).")


# -- 1. bytes read per generated token ----------------------------------------------------------------

def decode_bytes_per_token(batch: int, context: int, config=None) -> float:
    """float32 weights read once per step for the whole batch, plus each sequence's cached keys/values."""
    config = config or bundled_config()
    step = decode_weight_bytes(config, 4) + batch * context * bytes_per_token(config, torch.float32)
    return step / batch


def check_decode_bytes(fn, config=None) -> Verdict:
    """`fn(batch, context)`: bytes a decode step reads per generated token (float32, every sequence
    `context` positions long), for the bundled model (or `config`)."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    got, error = _calls(fn, CASES, "your function")
    if error:
        return error
    return _compare(got, [decode_bytes_per_token(*c, config=config) for c in CASES], CASES, "(batch, context)", 1e-3,
                    "one step reads every weight once for the whole batch (model.weight_bytes()) and every "
                    "sequence's own KV cache (context x bytes per position); divide by the tokens it makes.")


def _decode_bytes_wrong():
    config = bundled_config()
    weights, kv = decode_weight_bytes(config, 4), bytes_per_token(config, torch.float32)
    return [lambda b, c: weights + b * c * kv,            # per step, not per token
            lambda b, c: weights / b,                     # forgets the KV cache
            lambda b, c: (weights + c * kv) / b]          # one sequence's cache for the whole batch


# -- 2. idle places in a static batch ------------------------------------------------------------------

def static_idle_fraction(output_lengths) -> float:
    """A static batch runs until its longest member is done; a finished member's place stays empty."""
    lengths = np.asarray(output_lengths, dtype=float)
    return float(1 - lengths.mean() / lengths.max())


LENGTH_CASES = [([16, 16, 16, 16],), ([4, 32],), ([10, 20, 30, 200],), ([1, 2, 3, 4, 5, 6, 7, 100],)]


def check_static_idle(fn) -> Verdict:
    """`fn(output_lengths)`: the fraction of a static batch's sequence places that run no sequence,
    over the steps until its longest member finishes."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    got, error = _calls(fn, LENGTH_CASES, "your function")
    if error:
        return error
    return _compare(got, [static_idle_fraction(*c) for c in LENGTH_CASES], [c[0] for c in LENGTH_CASES],
                    "output lengths", 1e-6, "the batch takes max(lengths) steps with len(lengths) places each; "
                    "sequence i fills lengths[i] of those place-steps.")


# -- 3. Little's law ---------------------------------------------------------------------------------

def mean_in_system_by_counting(arrival, finish) -> float:
    """The time average of how many requests are in the system (arrived, not finished), counted
    directly: integrate the count over [first arrival, last finish]."""
    events = sorted([(a, 1) for a in arrival] + [(f, -1) for f in finish])
    area, inside, last = 0.0, 0, events[0][0]
    for t, change in events:
        area += inside * (t - last)
        inside, last = inside + change, t
    return area / (max(finish) - min(arrival))


def _traces(seed: int = 0, count: int = 4):
    rng = np.random.default_rng(seed)
    out = []
    for n in rng.integers(5, 40, size=count):
        arrival = np.sort(rng.exponential(0.3, size=n).cumsum())
        finish = arrival + rng.uniform(0.2, 3.0, size=n)
        out.append((arrival.tolist(), finish.tolist()))
    return out


def check_littles_law(fn) -> Verdict:
    """`fn(arrival, finish)`: requests in the system on average, by Little's law L = lambda x W, from
    the arrival and finish times of each request (seconds)."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    traces = _traces()
    got, error = _calls(fn, traces, "your function")
    if error:
        return error
    expected = [mean_in_system_by_counting(*t) for t in traces]
    verdict = _compare(got, expected, [f"{len(a)} requests" for a, _ in traces], "trace", 1e-6,
                       "lambda = requests / (last finish - first arrival), W = mean of finish - arrival.")
    if verdict:
        return Verdict(True, "L = lambda x W equals the time-averaged count of requests in the system, "
                             f"counted event by event, on {len(traces)} random traces.")
    return verdict


def _littles_law_solution():
    def mean_in_system(arrival, finish):
        arrival, finish = np.asarray(arrival), np.asarray(finish)
        rate = len(arrival) / (finish.max() - arrival.min())
        return rate * (finish - arrival).mean()
    return mean_in_system


def _littles_law_wrong():
    def mean_latency_only(arrival, finish):
        return float(np.mean(np.asarray(finish) - np.asarray(arrival)))

    def rate_over_last_arrival(arrival, finish):  # the span ends at the last arrival, not the last finish
        a, f = np.asarray(arrival), np.asarray(finish)
        return len(a) / (a.max() - a.min()) * (f - a).mean()
    return [mean_latency_only, rate_over_last_arrival]


EXERCISES = [
    Exercise("decode_bytes", check_decode_bytes, lambda: decode_bytes_per_token, _decode_bytes_wrong),
    Exercise("static_idle", check_static_idle, lambda: static_idle_fraction,
             lambda: [lambda lengths: 1 - min(lengths) / max(lengths), lambda lengths: sum(lengths) / max(lengths)]),
    Exercise("littles_law", check_littles_law, _littles_law_solution, _littles_law_wrong),
]
