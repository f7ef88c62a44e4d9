"""Timing one generation run on every rank, tensor-parallel or pipelined (the same cut as `bench.decode`)."""

from __future__ import annotations

from ..engine import SamplingParams, generate_ids
from ..settings import now
from .pipeline import pipeline_generate_ids


def time_parallel_generation(part, scheme: str, prompts, new_tokens: int, *, micro_batches: int = 1,
                             clock=now) -> tuple[float, float]:
    """(seconds to the first sampled token, seconds from the first to the last) of one greedy run.
    All ranks run it together; under "pp" the last stage's clock is the one that sees the tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    steps = (generate_ids(part, prompts, params) if scheme in ("tp", "single") else
             pipeline_generate_ids(part, prompts, params, micro_batches))
    start = clock()
    first = last = None
    for _ in steps:
        last = clock()
        first = first or last
    return first - start, last - first
