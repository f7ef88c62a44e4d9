"""Batching policies on one seeded workload: throughput, TTFT, latency, and exactness of the outputs."""

from __future__ import annotations

import torch

from ..engine import Engine, EngineConfig, generate_ids, poisson_workload, replay, request_metrics, summarize
from .timing import loadavg

METHOD = (
    "`requests` requests with Poisson arrivals at `rate`/s (seeded), prompts of prompt_tokens (uniform, "
    "inclusive) tokens sliced from the built-in evaluation text, exactly output_tokens (uniform) greedy "
    "tokens each (end-of-sequence ignored), replayed in real time on the Engine (paged KV cache, "
    "block_size positions per block, max_num_seqs sequences per step) under the policy: sequential "
    "(one at a time), static (batches of batch_size, next batch after the slowest finishes), dynamic "
    "(a batch starts at batch_size requests or after max_wait_s), continuous (admission every step). "
    "TTFT = arrival -> first token; latency = arrival -> last token; throughput = output tokens / "
    "(last token - first arrival). outputs_match_reference: every request's tokens equal greedy "
    "one-at-a-time decoding with the contiguous cache (generate_ids). kv waste = 1 - slots holding a "
    "computed position / slots allocated, summed over steps (paged: blocks held; contiguous: "
    "max_model_len per running sequence)."
)


def reference_outputs(model, workload) -> list[list[int]]:
    """Each request decoded alone with the contiguous cache (the exactness reference)."""
    return [[step[0] for step in generate_ids(model, [r.prompt_ids], r.params)] for r in workload]


def bench_batching(model, tokenizer, *, policy: str = "continuous", requests: int = 32, rate: float = 4.0,
                   seed: int = 0, prompt_tokens=(16, 128), output_tokens=(16, 256), batch_size: int = 16,
                   max_num_seqs: int = 16, max_wait_s: float = 0.5, block_size: int = 16,
                   num_blocks: int | None = None, chunked_prefill: bool = False, reference=None,
                   workload=None) -> tuple[dict, object]:
    """Replay the workload under `policy`; returns (summary dict, per-request DataFrame).

    `reference`: token lists from `reference_outputs` (computed here when None; pass them to
    compare several policies against one reference run).
    """
    workload = workload or poisson_workload(tokenizer, requests, rate, seed, prompt_tokens, output_tokens)
    longest = max(len(r.prompt_ids) + r.max_tokens for r in workload)
    if num_blocks is None:  # room for max_num_seqs of the longest request: no preemption needed
        num_blocks = max_num_seqs * -(-longest // block_size)
    config = EngineConfig(policy=policy, batch_size=batch_size, max_num_seqs=max_num_seqs, max_wait_s=max_wait_s,
                          block_size=block_size, num_blocks=num_blocks, chunked_prefill=chunked_prefill,
                          max_num_batched_tokens=256 if chunked_prefill else None, max_model_len=longest)
    engine = Engine(model, None, config)
    load_start = loadavg()
    outputs = replay(engine, workload)
    df = request_metrics(outputs)
    df.insert(0, "policy", policy)
    if reference is None:
        reference = reference_outputs(model, workload)
    summary = summarize(df)
    summary.update(
        policy=policy, outputs_match_reference=all(o.token_ids == ref for o, ref in zip(outputs, reference)),
        all_blocks_free=engine.block_manager.num_free == engine.block_manager.num_blocks, num_blocks=num_blocks,
        block_size=block_size, peak_blocks=engine.stats.peak_blocks, preemptions=engine.scheduler.num_preemptions,
        kv_waste_paged=engine.stats.paged_waste, kv_waste_contiguous=engine.stats.contiguous_waste,
        mean_batch=engine.stats.mean_batch_size, steps=engine.stats.steps,
        requests=len(workload), rate=rate, seed=seed, prompt_tokens=list(prompt_tokens),
        output_tokens=list(output_tokens), batch_size=batch_size, max_num_seqs=max_num_seqs, max_wait_s=max_wait_s,
        chunked_prefill=chunked_prefill, threads=torch.get_num_threads(), dtype=str(model.dtype).removeprefix("torch."),
        loadavg_start=load_start, loadavg_end=loadavg(), method=METHOD)
    return summary, df
