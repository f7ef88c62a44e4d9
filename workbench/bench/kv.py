"""KV cache modes side by side: tokens/s and KV bytes of one greedy generation, and int8's perplexity cost."""

from __future__ import annotations

from functools import partial

import torch

from ..engine.kv_cache import MODES, generate_with
from ..engine.kv_quant import Int8KVModel
from ..engine.sampling import SamplingParams
from ..corpus import builtin_text
from ..eval import perplexity
from .decode import benchmark_prompts
from .timing import alternate, loadavg, now

METHOD = (
    "One prompt of `prompt_tokens` tokens of the built-in evaluation text, `new_tokens` greedy tokens "
    "(end-of-sequence ignored), batch 1, per mode: none (the whole sequence recomputed every step), "
    "contiguous (preallocated KVCache via generate_ids), paged (the Engine's block pool, block_size "
    "positions per block) and paged-int8 (int8 keys/values, a float16 scale per token and head). "
    "tok_s = new_tokens / wall time of the whole call (prefill included). Modes are alternated, one call "
    "each per round, in `repeats` rounds (workbench.bench.timing.alternate) after one short (4-token) "
    "warm-up per mode; tok_s from the median seconds, speedup_vs_none = the median of the per-round "
    "ratios (no-cache seconds / this mode's seconds). kv_bytes = KV memory "
    "held at the end: positions (rounded up to whole blocks when paged) x 2 x layers x kv_heads x "
    "head_dim x bytes per value (int8: + 2 bytes of scale per head); 0 without a cache. "
    "matches_contiguous: the same token ids as the contiguous cache."
)


def bench_kv(model, tokenizer, *, new_tokens: int = 256, prompt_tokens: int = 128, modes=MODES,
             repeats: int = 1, block_size: int = 16) -> dict:
    prompt = benchmark_prompts(tokenizer, 1, prompt_tokens)[0]
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    for mode in modes:  # a short warm-up is enough for first-call allocations and kernel selection
        generate_with(model, prompt, SamplingParams(max_tokens=4, ignore_eos=True), mode, block_size)
    tokens, kv_bytes = {}, {}

    def run(mode):
        start = now()
        tokens[mode], kv_bytes[mode] = generate_with(model, prompt, params, mode, block_size)
        return now() - start

    load_start = loadavg()
    rounds = alternate({mode: partial(run, mode) for mode in modes}, rounds=repeats, warmup=0)
    reference = tokens.get("contiguous")
    result = {mode: {"tok_s": new_tokens / rounds.median(mode), "kv_bytes": kv_bytes[mode],
                     "seconds": rounds.series(mode),
                     "matches_contiguous": None if reference is None else tokens[mode] == reference}
              for mode in modes}
    speedup = {m: rounds.ratio("none", m) for m in modes if "none" in result and m != "none"}  # seconds: none / m
    return {"modes": result, "speedup_vs_none": speedup, "new_tokens": new_tokens, "prompt_tokens": prompt_tokens,
            "block_size": block_size, "repeats": repeats, "dtype": str(model.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "loadavg_start": load_start, "loadavg_end": loadavg(),
            "method": METHOD}


def int8_kv_perplexity(model, tokenizer, *, max_tokens: int = 4096, window: int = 1024) -> dict:
    """Perplexity on the built-in evaluation text with float and with int8 keys/values (same windows)."""
    text = builtin_text("evaluation")
    base = perplexity(model, text, tokenizer, window=window, max_tokens=max_tokens)
    int8 = perplexity(Int8KVModel(model), text, tokenizer, window=window, max_tokens=max_tokens)
    return {"ppl": base.ppl, "ppl_int8_kv": int8.ppl, "relative_increase": int8.ppl / base.ppl - 1,
            "predictions": base.predictions, "window": window}
