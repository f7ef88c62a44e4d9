"""Prefill and decode throughput of the engine, with achieved memory bandwidth."""

from __future__ import annotations

import torch

from .. import kernels
from ..corpus import builtin_text
from ..engine import SamplingParams, generate_ids
from ..errors import InvalidParameterError
from .timing import median, now, peak_rss_mb

METHOD = (
    "Greedy generation through the engine (workbench.engine.generate_ids), stop tokens ignored. "
    "Prompts: `batch` different slices of `prompt_tokens` tokens from the built-in evaluation text. "
    "prefill_tok_s = batch*prompt_tokens / time to the first sampled token; decode_tok_s = "
    "batch*(new_tokens-1) / time from the first to the last sampled token. gb_s = weight bytes "
    "streamed per decode step (every matrix incl. the output head; an untied embedding table counts "
    "only its looked-up rows, i.e. nothing) x decode steps per second; KV-cache reads are excluded. "
    "Medians over `repeats` runs after `warmup` runs; peak_rss_mb is the process's peak resident memory."
)


def decode_bytes_per_step(model) -> int:
    """Weight bytes one decode step must read: every weight except an untied embedding table."""
    total = model.weight_bytes()
    if not model.config.tie_word_embeddings:
        emb = model.model.embed_tokens.weight
        total -= emb.numel() * emb.element_size()
    return total


def decode_bytes_by_part(model) -> dict:
    """`decode_bytes_per_step` split into attention, mlp, head (the output head: the tied embedding
    matrix when tied) and other (norms), in whatever format each part is stored."""
    from ..model import weight_bytes

    layers = model.model.layers
    parts = {"attention": sum(weight_bytes(layer.self_attn) for layer in layers),
             "mlp": sum(weight_bytes(layer.mlp) for layer in layers), "head": weight_bytes(model.lm_head)}
    parts["other"] = decode_bytes_per_step(model) - sum(parts.values())
    return parts


def benchmark_prompts(tokenizer, batch: int, prompt_tokens: int) -> list[list[int]]:
    ids = tokenizer.encode(builtin_text("evaluation"), add_special_tokens=False)
    if batch * prompt_tokens > len(ids):
        ids = ids * (batch * prompt_tokens // len(ids) + 1)
    return [ids[i * prompt_tokens:(i + 1) * prompt_tokens] for i in range(batch)]


def time_generation(model, prompts, new_tokens: int, clock=now) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation run."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    start = clock()
    first = last = None
    for _ in generate_ids(model, prompts, params):
        last = clock()
        first = first or last
    return first - start, last - first


def bench_decode(model, tokenizer, *, batch: int = 1, prompt_tokens: int = 512, new_tokens: int = 128,
                 repeats: int = 3, warmup: int = 1, clock=now) -> dict:
    """Measure prefill and decode speed; see `METHOD` for exactly what is timed. `clock=time.process_time`
    counts the CPU seconds of the process instead of wall time (with one thread: what the run takes on
    an idle core, for comparisons on a crowded machine)."""
    if new_tokens < 2:
        raise InvalidParameterError("new_tokens must be at least 2 (decode speed is timed between tokens)")
    prompts = benchmark_prompts(tokenizer, batch, prompt_tokens)
    runs = []
    for i in range(warmup + repeats):
        prefill_s, decode_s = time_generation(model, prompts, new_tokens, clock)
        if i >= warmup:
            runs.append((prefill_s, decode_s))
    prefill_s = median(r[0] for r in runs)
    decode_s = median(r[1] for r in runs)
    steps_per_s = (new_tokens - 1) / decode_s
    step_bytes = decode_bytes_per_step(model)
    backend = kernels.in_use(model)
    return {
        "engine": "workbench",
        "kernels": backend or "off",  # our CPU kernels' instruction set, or PyTorch's operators
        "quantized_activations": kernels.quantized_activations() if backend else None,  # quantized layers only
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "prefill_tok_s": batch * prompt_tokens / prefill_s,
        "decode_tok_s": batch * steps_per_s,
        "gb_s": step_bytes * steps_per_s / 1e9,
        "model_bytes": model.weight_bytes(),
        "bytes_per_step": step_bytes,
        "kv_cache_bytes": model.config.kv_bytes_per_token(model.dtype.itemsize) * batch * (prompt_tokens + new_tokens),
        "peak_rss_mb": peak_rss_mb(),
        "repeats": repeats,
        "runs_s": [{"prefill_s": p, "decode_s": d} for p, d in runs],
        "method": METHOD,
    }
