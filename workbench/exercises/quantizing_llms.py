"""Exercises of notebook 03 (quantizing the real model): int4-g128 bytes by hand, the GPTQ Hessian,
and the int8 decode speed-up predicted from bytes."""

from __future__ import annotations


import torch

from ..config import ModelConfig
from ..quant.gptq import hessian
from .checking import Exercise, Verdict, bundled_config, call_answer, expect_close, expect_tensor_close


def _matrix_shapes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(out, in) of every Linear: 7 per layer, then the output head (stored once when tied)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    layer = [(cfg.q_dim, d), (cfg.kv_dim, d), (cfg.kv_dim, d), (d, cfg.q_dim), (f, d), (f, d), (d, f)]
    return layer * cfg.num_hidden_layers + [(cfg.vocab_size, d)]


def _float_bytes(cfg: ModelConfig) -> int:
    """float32 bytes outside the Linears: norms, and an untied embedding table."""
    norms = (2 * cfg.num_hidden_layers + 1) * cfg.hidden_size
    return 4 * (norms + (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size))


def int4_bytes(cfg: ModelConfig, group_size: int = 128, *, pad: bool = True) -> int:
    """Stored bytes of `int4-g<group_size>`: per Linear, rows padded to a multiple of the group, two codes
    per byte, a float32 scale and a uint8 zero-point per group."""
    total = 0
    for out, inp in _matrix_shapes(cfg):
        padded = -(-inp // group_size) * group_size if pad else inp
        total += out * padded // 2 + out * -(-padded // group_size) * (4 + 1)
    return total + _float_bytes(cfg)


def int8_bytes(cfg: ModelConfig) -> int:
    """Stored bytes of `int8`: one byte per weight and a float32 scale per output row."""
    return sum(out * inp + 4 * out for out, inp in _matrix_shapes(cfg)) + _float_bytes(cfg)


def check_int4_g128_bytes(answer) -> Verdict:
    """Bytes of the bundled model quantized with `int4-g128` (as `weight_bytes()` counts them)."""
    return expect_close(answer, int4_bytes(bundled_config(), 128), "int4-g128 bytes", rel=0.001, unit="B",
                        hint="groups of 128 do not divide 576: such rows are padded to 640 values; count half a "
                             "byte per (padded) weight, 4 + 1 bytes per group, the tied head once, norms in float32.")


def _hessian_cases():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(40, 6, generator=g), torch.randn(9, 16, generator=g) * 3, torch.randn(1, 4, generator=g)]


def check_gptq_hessian(fn) -> Verdict:
    """`fn(X)`: calibration inputs X (N tokens, d_in) -> GPTQ's Hessian H (d_in, d_in) = 2 X^T X / N."""
    for x in _hessian_cases():
        got, verdict = call_answer(fn, x.clone())
        if verdict is not None:
            return verdict
        v = expect_tensor_close(got, hessian(x), f"H for X of shape {tuple(x.shape)}", rtol=1e-4, atol=1e-5,
                                hint="H is d_in x d_in (one row and column per input): X^T X, times 2, over N tokens.")
        if not v:
            return v
    return Verdict(True, "your Hessian matches `workbench.quant.gptq.hessian` on every test case.")


def check_int8_speedup(answer) -> Verdict:
    """Batch-1 decode speed-up of `int8` over float32 predicted from the bytes one token reads."""
    cfg = bundled_config()
    return expect_close(answer, 4 * cfg.num_parameters() / int8_bytes(cfg), "predicted int8 speed-up", rel=0.002,
                        unit="x", hint="time per token = bytes / bandwidth: divide float32's bytes by int8's, "
                                       "scales and float32 norms included.")


EXERCISES = [
    Exercise("int4_g128_bytes", check_int4_g128_bytes, solution=lambda: int4_bytes(bundled_config(), 128),
             wrong_answers=lambda: [bundled_config().num_parameters() // 2,
                                    int4_bytes(bundled_config(), 128, pad=False),
                                    int4_bytes(bundled_config(), 64),
                                    int4_bytes(bundled_config(), 128) + 4 * bundled_config().vocab_size * 576]),
    Exercise("gptq_hessian", check_gptq_hessian, solution=lambda: lambda x: 2 * x.T @ x / x.shape[0],
             wrong_answers=lambda: [lambda x: 2 * x @ x.T / x.shape[0], lambda x: x.T @ x / x.shape[0],
                                    lambda x: 2 * x.T @ x, lambda x: torch.cov(x.T)]),
    Exercise("int8_speedup", check_int8_speedup,
             solution=lambda: 4 * bundled_config().num_parameters() / int8_bytes(bundled_config()),
             wrong_answers=lambda: [4.0, 2.0, 0.25]),
]
