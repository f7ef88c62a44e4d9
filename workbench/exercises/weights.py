"""Exercises of notebook 01 (weights): the parameter count of any config, a Q4_1 block decoded by
hand, and the decode ceiling of an all-Q8_0 model at the measured bandwidth."""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import torch

from ..config import ModelConfig
from ..formats.gguf_blocks import dequantize_raw, quantize_raw
from .checking import Exercise, Verdict, bundled_config, call_answer, expect_close, expect_equal, expect_tensor_close


def _configs() -> dict[str, ModelConfig]:
    base = bundled_config()
    return {"the bundled model": base,
            "an untied head": dataclasses.replace(base, tie_word_embeddings=False),
            "no grouped-query attention (kv heads = heads)": dataclasses.replace(base, num_key_value_heads=9),
            "head_dim 128 with 4 query and 2 KV heads": ModelConfig(vocab_size=32000, hidden_size=512,
                                                                   intermediate_size=1376, num_hidden_layers=4,
                                                                   num_attention_heads=4, num_key_value_heads=2,
                                                                   head_dim=128, tie_word_embeddings=False)}


def check_count_parameters(fn) -> Verdict:
    """`fn(cfg)` -> the number of parameters of a model with `ModelConfig` cfg (a tied head counts once)."""
    for label, cfg in _configs().items():
        got, verdict = call_answer(fn, cfg)
        if verdict is not None:
            return verdict
        v = expect_equal(got, cfg.num_parameters(), f"parameters of {label}",
                         hint="embedding V*d; per layer W_q, W_k, W_v, W_o (use q_dim = heads*head_dim and "
                              "kv_dim = kv heads*head_dim), three MLP matrices and two norms; a final norm; "
                              "an untied head adds V*d.")
        if not v:
            return v
    return Verdict(True, f"your count matches `ModelConfig.num_parameters()` on {len(_configs())} configs.")


def _q4_1_blocks() -> np.ndarray:
    g = torch.Generator().manual_seed(1)
    rows = torch.cat([torch.randn(3, 64, generator=g) * 0.05, torch.rand(1, 64, generator=g) + 0.2])  # one all-positive
    return quantize_raw(rows, "Q4_1").numpy().reshape(-1, 20)


def check_q4_1_block(fn) -> Verdict:
    """`fn(block)`: 20 raw bytes (uint8) of one Q4_1 block -> its 32 float32 weights."""
    for i, block in enumerate(_q4_1_blocks()):
        got, verdict = call_answer(fn, block.copy())
        if verdict is not None:
            return verdict
        expected = dequantize_raw(block[None, :], "Q4_1", (1, 32))[0]
        v = expect_tensor_close(got, expected, f"block {i}", rtol=1e-6, atol=0,
                                hint="bytes 0-1: d (float16), 2-3: m (float16); byte j of the 16 that follow holds "
                                     "weight j in its low nibble and weight j+16 in its high nibble; w = d*q + m.")
        if not v:
            return v
    return Verdict(True, "your decoder matches the loader's `dequantize_raw` on every test block, bit for bit.")


def q8_0_bytes(cfg: ModelConfig) -> int:
    """Bytes of a model whose matrices are all Q8_0 (34 bytes per 32 weights) and norms float32."""
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    return (cfg.num_parameters() - norms) * 34 // 32 + 4 * norms


def check_q8_0_ceiling(answer, bandwidth_gb_s: float) -> Verdict:
    """Batch-1 decode tokens/s ceiling of the bundled model stored all-Q8_0, at `bandwidth_gb_s`."""
    return expect_close(answer, bandwidth_gb_s * 1e9 / q8_0_bytes(bundled_config()), "Q8_0 decode ceiling",
                        rel=0.01, unit="tokens/s",
                        hint="Q8_0 spends 34 bytes on 32 weights (a float16 scale per block); norms stay float32; "
                             "tied, the embedding is read once per token, as the output head.")


EXAMPLE_BANDWIDTH_GB_S = 20.0


def _count(cfg, *, tied_aware=True, kv_heads=True, norms=True):
    d = cfg.hidden_size
    kv = cfg.kv_dim if kv_heads else cfg.q_dim
    layer = 2 * d * cfg.q_dim + 2 * d * kv + 3 * d * cfg.intermediate_size + (2 * d if norms else 0)
    head = 0 if (tied_aware and cfg.tie_word_embeddings) else cfg.vocab_size * d
    return cfg.vocab_size * d + cfg.num_hidden_layers * layer + d + head


def _decode_q4_1(block, interleaved=False, with_min=True):
    d = block[0:2].view(np.float16).astype(np.float32)[0]
    m = block[2:4].view(np.float16).astype(np.float32)[0]
    nib = block[4:20]
    q = (np.stack([nib & 0x0F, nib >> 4], 1).reshape(-1) if interleaved
         else np.concatenate([nib & 0x0F, nib >> 4])).astype(np.float32)
    return d * q + (m if with_min else np.float32(0))


EXERCISES = [
    Exercise("count_parameters", check_count_parameters, solution=lambda: _count,
             wrong_answers=lambda: [partial(_count, tied_aware=False), partial(_count, kv_heads=False),
                                    partial(_count, norms=False), lambda cfg: 134_515_008]),
    Exercise("q4_1_block", check_q4_1_block, solution=lambda: _decode_q4_1,
             wrong_answers=lambda: [partial(_decode_q4_1, interleaved=True), partial(_decode_q4_1, with_min=False),
                                    lambda block: _decode_q4_1(block)[:16]]),
    Exercise("q8_0_ceiling", partial(check_q8_0_ceiling, bandwidth_gb_s=EXAMPLE_BANDWIDTH_GB_S),
             solution=lambda: EXAMPLE_BANDWIDTH_GB_S * 1e9 / q8_0_bytes(bundled_config()),
             wrong_answers=lambda: [EXAMPLE_BANDWIDTH_GB_S * 1e9 / bundled_config().num_parameters(),   # 1 byte/weight
                                    EXAMPLE_BANDWIDTH_GB_S * 1e9 / (4 * bundled_config().num_parameters()),
                                    EXAMPLE_BANDWIDTH_GB_S * 1e9 / (bundled_config().num_parameters() * 34 // 32
                                                                    + 28_311_552 * 34 // 32)]),
]
