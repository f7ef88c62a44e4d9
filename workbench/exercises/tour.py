"""Exercises of notebook 00 (the tour): perplexity from logits, KV-cache bytes, the decode ceiling."""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from .checking import Exercise, Verdict, bundled_config, call_answer, expect_close


def _logit_cases():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(t, v, generator=g) * s, torch.randint(0, v, (t,), generator=g))
            for t, v, s in ((7, 11, 1.0), (32, 50, 3.0), (1, 5, 0.5))]


def check_perplexity(fn) -> Verdict:
    """`fn(logits, targets)`: logits (tokens, vocab) of next-token scores, targets (tokens,) the ids that
    came next; returns the perplexity exp(mean negative log-likelihood) as a number."""
    for logits, targets in _logit_cases():
        got, verdict = call_answer(fn, logits.clone(), targets.clone())
        if verdict is not None:
            return verdict
        expected = math.exp(F.cross_entropy(logits, targets).item())
        v = expect_close(got, expected, f"perplexity of {logits.shape[0]} tokens over a vocabulary of {logits.shape[1]}",
                         rel=1e-4, hint="log_softmax over the vocabulary, pick each target's log-probability, "
                                        "average over tokens, negate, then exp.")
        if not v:
            return v
    return Verdict(True, "your perplexity matches exp(cross-entropy) on every test case.")


def check_kv_bytes_per_position(answer) -> Verdict:
    """Bytes the float32 KV cache holds per position (one token of one sequence)."""
    cfg = bundled_config()
    return expect_close(answer, cfg.kv_bytes_per_token(4), "KV-cache bytes per position", rel=0, unit="B",
                        hint="keys and values, every layer, the KV heads (not the query heads), head_dim numbers "
                             "of 4 bytes each.")


def check_decode_ceiling(answer, bandwidth_gb_s: float, bytes_per_token: float) -> Verdict:
    """Batch-1 decode tokens/s ceiling when every token must read `bytes_per_token` at `bandwidth_gb_s`."""
    return expect_close(answer, bandwidth_gb_s * 1e9 / bytes_per_token, "decode ceiling", rel=0.01, unit="tokens/s",
                        hint="GB/s means 1e9 bytes per second; divide by the bytes one token reads.")


EXAMPLE_BANDWIDTH_GB_S, FP32_BYTES = 20.0, 538_060_032   # what the tests check the ceiling with

EXERCISES = [
    Exercise("perplexity", check_perplexity,
             solution=lambda: lambda logits, targets: torch.exp(F.cross_entropy(logits, targets)).item(),
             wrong_answers=lambda: [
                 lambda logits, targets: F.cross_entropy(logits, targets).item(),               # forgot exp
                 lambda logits, targets: torch.exp(F.cross_entropy(logits, targets, reduction="sum")).item(),
                 lambda logits, targets: torch.exp(-torch.softmax(logits, -1)[range(len(targets)), targets].mean()).item(),
                 lambda logits, targets: None,
                 "12.3"]),
    Exercise("kv_bytes_per_position", check_kv_bytes_per_position,
             solution=lambda: 2 * 30 * 3 * 64 * 4,
             wrong_answers=lambda: [2 * 30 * 9 * 64 * 4, 30 * 3 * 64 * 4, 2 * 30 * 576 * 4, "46 KB"]),
    Exercise("decode_ceiling",
             partial(check_decode_ceiling, bandwidth_gb_s=EXAMPLE_BANDWIDTH_GB_S, bytes_per_token=FP32_BYTES),
             solution=lambda: EXAMPLE_BANDWIDTH_GB_S * 1e9 / FP32_BYTES,
             wrong_answers=lambda: [EXAMPLE_BANDWIDTH_GB_S / FP32_BYTES, EXAMPLE_BANDWIDTH_GB_S * 1e9 / 134_515_008,
                                    EXAMPLE_BANDWIDTH_GB_S * 2**30 / FP32_BYTES]),
]
