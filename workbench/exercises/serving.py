"""Checks for notebook 08 (serving): time to first token and inter-token latency from a stream's
timestamps, and Little's law run backwards to predict latency from throughput."""

from __future__ import annotations

import numpy as np

from ..engine.engine import RequestMetrics, RequestOutput
from ..engine.metrics import request_metrics
from .batching import _calls, _compare
from .checking import Exercise, Verdict, not_answered


# -- 1. TTFT and inter-token latency from a trace -----------------------------------------------------

def _stream_traces(seed: int = 1):
    """(sent, token times) of a few streams: a queue and prefill wait, then uneven decode steps."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (2, 5, 17, 40):
        sent = float(rng.uniform(0, 5))
        first = sent + float(rng.uniform(0.05, 1.5))
        out.append((sent, (first + np.concatenate([[0], rng.uniform(0.01, 0.2, n - 1).cumsum()])).tolist()))
    return out


def engine_ttft_and_tpot(sent: float, token_times: list[float]) -> tuple[float, float]:
    """What the engine's own metrics (`workbench.engine.request_metrics`) report for such a request."""
    n = len(token_times)
    metrics = RequestMetrics(arrival_time=sent, first_scheduled_time=sent, first_token_time=token_times[0],
                             last_token_time=token_times[-1], finish_time=token_times[-1], num_preemptions=0,
                             cached_prompt_tokens=0)
    out = RequestOutput("0", [1], list(range(n)), [], "", "", True, "length", metrics)
    row = request_metrics([out]).iloc[0]
    return float(row["ttft_s"]), float(row["tpot_s"])


def check_ttft_and_itl(fn) -> Verdict:
    """`fn(sent, token_times)` -> (TTFT, mean inter-token latency) in seconds, for one streamed request
    sent at `sent` whose tokens arrived at `token_times`."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    traces = _stream_traces()
    got, error = _calls(fn, traces, "your function")
    if error:
        return error
    for (sent, times), answer in zip(traces, got):
        if answer is None:
            return Verdict(False, "no answer yet: your function returns nothing.")
        if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
            return Verdict(False, f"return a pair (ttft, inter-token latency), got {answer!r}.")
        ttft, itl = engine_ttft_and_tpot(sent, times)
        for name, g, e, hint in (("TTFT", answer[0], ttft, "from sending to the first token"),
                                 ("inter-token latency", answer[1], itl, "the gaps between consecutive tokens: "
                                  f"a stream of n tokens has n - 1 gaps, and the wait for the first "
                                  "token is not one of them")):
            if not abs(float(g) - e) <= 1e-6 * max(abs(e), 1e-9):
                return Verdict(False, f"for a stream of {len(times)} tokens your {name} is {float(g):.6g} s, "
                                      f"the engine's metrics say {e:.6g} s. Hint: {hint}.")
    return Verdict(True, f"TTFT and inter-token latency match the engine's metrics (TTFT, TPOT) on "
                         f"{len(traces)} streams.")


def _ttft_solution():
    def ttft_and_itl(sent, token_times):
        gaps = np.diff(token_times)
        return token_times[0] - sent, float(gaps.mean())
    return ttft_and_itl


def _ttft_wrong():
    return [lambda sent, t: (t[0] - sent, (t[-1] - sent) / len(t)),     # the first wait counted as a gap
            lambda sent, t: (t[0] - sent, (t[-1] - t[0]) / len(t)),     # n gaps for n tokens
            lambda sent, t: (t[0], float(np.diff(t).mean()))]           # a timestamp, not a duration


# -- 2. Little's law backwards ------------------------------------------------------------------------

def predicted_mean_latency(clients: int, throughput_tok_s: float, tokens_per_request: float) -> float:
    """Closed loop: every client always has one request in flight, so L = clients, lambda = requests/s."""
    return clients / (throughput_tok_s / tokens_per_request)


LATENCY_CASES = [(1, 20.0, 24.0), (4, 55.0, 24.0), (16, 90.0, 48.0), (8, 120.0, 12.0)]


def check_predicted_latency(fn) -> Verdict:
    """`fn(clients, throughput_tok_s, tokens_per_request)`: the mean latency Little's law predicts."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    got, error = _calls(fn, LATENCY_CASES, "your function")
    if error:
        return error
    return _compare(got, [predicted_mean_latency(*c) for c in LATENCY_CASES], LATENCY_CASES,
                    "(clients, tok/s, tokens per request)", 1e-6,
                    "W = L / lambda, with L the clients and lambda the requests finished per second "
                    "(output tokens/s / tokens per request).")


EXERCISES = [
    Exercise("ttft_and_itl", check_ttft_and_itl, _ttft_solution, _ttft_wrong),
    Exercise("predicted_latency", check_predicted_latency, lambda: predicted_mean_latency,
             lambda: [lambda c, x, n: c * x / n, lambda c, x, n: n / x, lambda c, x, n: c / x]),
]
