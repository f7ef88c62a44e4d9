"""Decode speed of one process against tensor and pipeline parallelism on 2 ranks of this machine.

Method: one `launch` of `world` ranks, 1 thread each. Every rank builds a tensor-parallel shard and a
pipeline stage of the model; rank 0 also holds the whole model. Each round runs, in this order:
one process with `world` threads (rank 0 alone, the others wait at a barrier), one process with 1
thread, tensor parallelism (batch `batch`), then one process with `world` threads and pipeline
parallelism at `world` sequences in `world` micro-batches, so all peers see the same machine noise;
the order is rotated round by round. Decode tokens/s = sequences x (new_tokens - 1) / time from
the first to the last sampled token (`time_parallel_generation`), greedy, stop tokens ignored;
medians over the rounds after one warm-up round. Also measured: the time of one all-reduce of a
hidden-state row and of the logits all-gather, which with the one-process time feed the
performance model's prediction for tensor parallelism here (`cost.py`).
"""

from __future__ import annotations

import statistics
import time

import torch

from ..bench.decode import benchmark_prompts
from .comm import Comm
from .plan import even_split
from .runs import build, load_for_rank
from .timing import time_parallel_generation

METHOD = __doc__


def _collective_s(comm: Comm, config, repeats: int = 200) -> dict:
    """Median seconds of one hidden-row all-reduce and one logits all-gather (float32)."""
    row = torch.randn(1, 1, config.hidden_size)
    sizes = [b - a for a, b in even_split(config.vocab_size, comm.world)]
    shard = torch.randn(1, 1, sizes[comm.rank])
    out = {}
    for name, op in (("all_reduce_s", lambda: comm.all_reduce(row.clone())),
                     ("all_gather_s", lambda: comm.all_gather_last(shard, sizes))):
        times = []
        for _ in range(repeats):
            comm.barrier()
            t = time.perf_counter()
            op()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


def rank_bench(comm: Comm, model_name: str, rounds: int, prompt_tokens: int, new_tokens: int, batch: int = 1,
               kernels: bool = True) -> dict:
    """Run on every rank by `launch`; rank 0's result holds the per-round times of every peer."""
    from .. import kernels as cpu_kernels

    cpu_kernels.set_enabled(kernels)
    torch.set_num_threads(1)
    whole = load_for_rank(model_name)[0] if comm.rank == 0 else None
    if whole is not None and kernels:
        cpu_kernels.enable(whole)
    model, tokenizer = load_for_rank(model_name)
    tp = build(comm, model, "tp", kernels=kernels)
    pp = build(comm, load_for_rank(model_name)[0], "pp", kernels=kernels)
    prompts = benchmark_prompts(tokenizer, max(batch, comm.world), prompt_tokens)
    single_prompts, pp_prompts = prompts[:batch], prompts[:comm.world]

    def alone(threads, these):
        if comm.rank == 0:
            torch.set_num_threads(threads)
            r = time_parallel_generation(whole, "single", these, new_tokens)
            torch.set_num_threads(1)
        comm.barrier()
        return r if comm.rank == 0 else None

    peers = {
        f"single_{comm.world}_threads": lambda: alone(comm.world, single_prompts),
        "single_1_thread": lambda: alone(1, single_prompts),
        f"tp{comm.world}": lambda: time_parallel_generation(tp, "tp", single_prompts, new_tokens),
        f"single_{comm.world}_threads_batch{comm.world}": lambda: alone(comm.world, pp_prompts),
        f"pp{comm.world}_batch{comm.world}": lambda: time_parallel_generation(
            pp, "pp", pp_prompts, new_tokens, micro_batches=comm.world),
    }
    names = list(peers)
    times = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms up
        for n in names[r % len(names):] + names[:r % len(names)]:
            comm.barrier()
            out = peers[n]()
            if r > 0:
                times[n].append(out)
    # The pipeline's tokens appear on the last stage: its times are the ones that count.
    pp_name = names[-1]
    last = comm.world - 1
    if comm.world > 1:
        buf = torch.tensor(times[pp_name] if comm.rank == last else [(0.0, 0.0)] * rounds, dtype=torch.float64)
        comm.broadcast(buf, last)
        times[pp_name] = [tuple(x) for x in buf.tolist()]
    collectives = _collective_s(comm, tp.config)
    comm.reset_traffic()
    time_parallel_generation(tp, "tp", single_prompts[:1], 2)
    tp_step = dict(comm.traffic)
    return {"rank": comm.rank, "times": times if comm.rank == 0 else None, "collectives": collectives,
            "tp_traffic_prefill_and_one_step": tp_step, "weight_bytes": {"tp": tp.weight_bytes(), "pp": pp.weight_bytes()},
            "whole_weight_bytes": whole.weight_bytes() if whole is not None else None,
            "peers": names, "pp_sequences": len(pp_prompts), "single_sequences": len(single_prompts)}
