"""Decode speed per weight format and batch size, with and without our CPU kernels: the speed half
of the quantization study.

Method: the float32 model is loaded once; each spec gets its own copy (`quantized_copy`: "float32"
and "bfloat16" are plain dtype copies), whose float linear layers are put on our kernels
(`workbench.kernels.enable`; packed layers call them on their own). For every batch size, one
untimed round, then `repeats` rounds of one `bench_decode` run per mode (kernels on, then off
through `workbench.kernels.disabled()`; `workbench.bench.timing.alternate`), so both modes see the
same machine noise; medians over the rounds, speed-up = median of the per-round on / off ratios.
GB/s = weight bytes per decode step x steps/s; `ceiling_tok_s` = batch x bandwidth / bytes per step
(weights only, KV cache and activations ignored), where the bandwidth is measured in the same rounds
(one more contender per round: our streaming read kernel over a 512 MiB buffer,
`workbench.bench.timing.read_bandwidth_gb_s`; the median over the rounds), unless `bandwidth_gb_s`
gives a figure.
"""

from __future__ import annotations

import os
from functools import partial

import torch

from .. import kernels as cpu_kernels
from ..settings import pick
from .timing import CLOCKS, alternate, read_bandwidth_gb_s
from .decode import bench_decode
from .quality import quantized_copy

METHOD = __doc__
BANDWIDTH_MIB = 512


def decode_speed_table(model="smollm2-135m", specs=("float32", "bfloat16", "int8", "int4-g32", "q4_1"),
                       batch_sizes=(1,), *, kernels="both", prompt_tokens: int | None = None,
                       new_tokens: int | None = None, repeats: int | None = None, threads: int | None = None,
                       bandwidth_gb_s: float | None = None, clock: str = "wall", progress: bool = True):
    """A DataFrame, one row per (spec, batch, kernels): decode_tok_s, prefill_tok_s, gb_s,
    bytes_per_step, bandwidth_gb_s (measured in the same rounds unless given), ceiling_tok_s,
    ceiling_fraction (gb_s / bandwidth) and, with kernels="both",
    speedup (kernels on / off, same rounds). `model` is a name or path; `kernels`: True, False or
    "both"; `clock="cpu"` times CPU seconds instead of wall seconds (use with threads=1 on a crowded
    machine). Quick mode (WORKBENCH_QUICK=1) shortens prompts, generations and repeats."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..checkpoints import load_model

    from ..errors import InvalidParameterError

    if kernels not in (True, False, "both"):
        raise InvalidParameterError(f"kernels must be True, False or 'both', got {kernels!r}")
    if clock not in CLOCKS:
        raise InvalidParameterError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    modes = [True, False] if kernels == "both" else [bool(kernels)]
    prompt_tokens = prompt_tokens or pick(32, 512)
    new_tokens = new_tokens or pick(8, 128)
    repeats = repeats or pick(1, 3)
    if threads:
        torch.set_num_threads(threads)
    base, tokenizer = load_model(model)
    rows = []
    for spec in tqdm(list(specs), desc="decode speed", disable=not progress):
        variant = cpu_kernels.enable(quantized_copy(base, spec, tokenizer))
        for batch in batch_sizes:
            sizes = dict(batch=batch, prompt_tokens=prompt_tokens, new_tokens=new_tokens, clock=CLOCKS[clock])
            contenders = {mode: partial(_decode_once, variant, tokenizer, mode, **sizes) for mode in modes}
            if bandwidth_gb_s is None:
                contenders["bandwidth"] = lambda: read_bandwidth_gb_s(BANDWIDTH_MIB, 1)["median"]
            rounds = alternate(contenders, rounds=repeats, warmup=1)
            bandwidth = bandwidth_gb_s or rounds.median("bandwidth")
            for mode in modes:
                last = rounds.values[mode][-1]
                row = {"spec": spec, "batch": batch, "kernels": last["kernels"],
                       **{k: rounds.median(mode, k) for k in ("decode_tok_s", "prefill_tok_s", "gb_s")},
                       "bytes_per_step": last["bytes_per_step"],
                       "bandwidth_gb_s": bandwidth, "ceiling_tok_s": batch * bandwidth * 1e9 / last["bytes_per_step"]}
                row["ceiling_fraction"] = row["gb_s"] / bandwidth
                if len(modes) == 2:
                    row["speedup"] = rounds.ratio(True, False, "decode_tok_s") if mode else 1.0
                rows.append(row)
        del variant
    table = pd.DataFrame(rows)
    table.attrs.update(method=METHOD, clock=clock, threads=torch.get_num_threads(), prompt_tokens=prompt_tokens,
                       new_tokens=new_tokens, repeats=repeats, loadavg=list(os.getloadavg()))
    return table


def _decode_once(model, tokenizer, kernels_on: bool, **sizes) -> dict:
    from contextlib import nullcontext

    with nullcontext() if kernels_on else cpu_kernels.disabled():
        return bench_decode(model, tokenizer, repeats=1, warmup=0, **sizes)
