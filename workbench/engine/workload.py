"""Seeded workloads (Poisson arrivals, prompt and output lengths) and replaying them on an engine.

Prompts are slices of the built-in evaluation text, so they are real text of the asked length;
outputs are exactly `max_tokens` long (`ignore_eos=True`), so every policy does the same work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..corpus import builtin_text
from ..errors import InvalidParameterError
from .sampling import SamplingParams


@dataclass(frozen=True)
class Request:
    arrival_s: float        # seconds after the workload starts
    prompt_ids: list[int]
    max_tokens: int

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(temperature=0.0, max_tokens=self.max_tokens, ignore_eos=True)


def poisson_workload(tokenizer, requests: int, rate: float, seed: int = 0, prompt_tokens=(16, 128),
                     output_tokens=(16, 256), shared_prefix: int = 0) -> list[Request]:
    """`requests` requests arriving as a Poisson process of `rate` per second (inf: all at t=0).

    Prompt and output lengths are drawn uniformly from the inclusive ranges; `shared_prefix` tokens
    (a common system prompt) start every prompt. Same arguments, same workload.
    """
    if requests < 1:
        raise InvalidParameterError(f"a workload needs at least one request, got {requests}")
    if not rate > 0:
        raise InvalidParameterError(f"rate must be > 0 requests/s (inf: all at once), got {rate}")
    for name, (lo, hi) in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens)):
        if not 1 <= lo <= hi:
            raise InvalidParameterError(f"{name} must be a range 1 <= low <= high, got {(lo, hi)}")
    text = tokenizer.encode(builtin_text("evaluation"), add_special_tokens=False)
    rng = np.random.default_rng(seed)
    gaps = np.zeros(requests) if np.isinf(rate) else rng.exponential(1 / rate, requests)
    arrivals = np.cumsum(gaps) - gaps[0]  # the first request arrives at t=0
    prefix = text[:shared_prefix]
    out = []
    for arrival in arrivals:
        n = int(rng.integers(prompt_tokens[0], prompt_tokens[1] + 1))
        start = int(rng.integers(shared_prefix, len(text) - n))
        out.append(Request(float(arrival), prefix + text[start:start + n],
                           int(rng.integers(output_tokens[0], output_tokens[1] + 1))))
    return out


def replay(engine, workload: list[Request], on_output=None) -> list:
    """Feed the requests to `engine` at their arrival times (real time) and step until all finish.

    Returns the final `RequestOutput`s in workload order (request ids are the indices). Arrival
    times recorded are the scheduled ones, so a late step does not hide queueing delay.
    """
    start = time.perf_counter()
    pending = sorted(range(len(workload)), key=lambda i: workload[i].arrival_s)
    final = {}
    while pending or engine.has_unfinished():
        now = time.perf_counter() - start
        while pending and workload[pending[0]].arrival_s <= now:
            i = pending.pop(0)
            engine.add_request(workload[i].prompt_ids, workload[i].params, request_id=str(i),
                               arrival_time=start + workload[i].arrival_s)
        outputs = engine.step(drain=not pending)
        for o in outputs:
            if on_output is not None:
                on_output(o)
            if o.finished:
                final[o.request_id] = o
        if not outputs:  # nothing runnable: wait for the next arrival (or a dynamic batch's timeout)
            wait = workload[pending[0]].arrival_s - (time.perf_counter() - start) if pending else 0
            time.sleep(min(max(wait, 0.0), 0.005))
    return [final[str(i)] for i in range(len(workload))]
