"""The ways to keep keys and values between decoding steps, side by side, and what each one costs.

- "none": no cache; every step runs the whole sequence again (quadratic work, for comparison).
- "contiguous": `model.KVCache`, preallocated for prompt + max_tokens positions (`generate_ids`).
- "paged": the engine's block pool (`paged.py`); "paged-int8": the same with int8 keys/values.

Memory per position, by formula: 2 (K and V) x layers x kv_heads x head_dim x bytes per value
(int8: head_dim one-byte values plus a 2-byte scale per head).
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..errors import InvalidParameterError
from .engine import Engine, EngineConfig
from .generate import generate_ids
from .kv_quant import int8_bytes_per_token
from .sampling import Sampler, SamplingParams

MODES = ("none", "contiguous", "paged", "paged-int8")


def bytes_per_token(config, dtype: torch.dtype | str = torch.float32) -> int:
    """KV bytes one position costs: 2 x layers x kv_heads x head_dim x bytes (or the int8 layout)."""
    if dtype in ("int8", torch.int8):
        return int8_bytes_per_token(config)
    return config.kv_bytes_per_token(torch.empty(0, dtype=dtype).element_size())


@torch.inference_mode()
def recompute_ids(model, prompt: list[int], params: SamplingParams) -> Iterator[int]:
    """Generate without a cache: each new token runs the model over the whole sequence so far."""
    sampler = Sampler(params, [prompt], model.config.vocab_size, model.device)
    seq = torch.tensor([prompt], device=model.device)
    for _ in range(params.max_tokens):
        token = sampler(model(seq, last_only=True)[:, -1])
        yield int(token)
        seq = torch.cat([seq, token[:, None]], dim=1)


def generate_with(model, prompt: list[int], params: SamplingParams, mode: str,
                  block_size: int = 16) -> tuple[list[int], int]:
    """(token ids, KV bytes held at the end) of one prompt generated with the cache `mode`.

    Stop tokens are not checked here: use `ignore_eos=True` or compare lengths accordingly.
    """
    if mode not in MODES:
        raise InvalidParameterError(f"unknown KV cache mode {mode!r}; choose one of {', '.join(MODES)}")
    positions = len(prompt) + params.max_tokens
    if mode == "none":
        return list(recompute_ids(model, prompt, params)), 0
    if mode == "contiguous":
        tokens = [step[0] for step in generate_ids(model, [prompt], params)]
        return tokens, positions * bytes_per_token(model.config, model.dtype)
    int8 = mode == "paged-int8"
    blocks = -(-positions // block_size)
    engine = Engine(model, config=EngineConfig(block_size=block_size, num_blocks=blocks,
                                               kv_dtype="int8" if int8 else "auto", max_num_seqs=1))
    (out,) = engine.generate([prompt], params)
    per_token = bytes_per_token(model.config, "int8" if int8 else model.dtype)
    return out.token_ids, engine.stats.peak_blocks * block_size * per_token
