"""Exercises of notebook 02 (quantization math): int4 scales and zero-point by hand, a fake-quantizer
of your own, and the 6 dB-per-bit prediction."""

from __future__ import annotations

import math
from functools import partial

import torch

from ..quant import calc_qparams, fake_quantize
from .checking import Exercise, Verdict, call_answer, expect_close, expect_equal, expect_tensor_close, not_answered

# The vector of the first exercise: mostly positive, a small negative tail.
VECTOR = [0.9, -0.35, 2.6, 0.05, 1.45, -0.6, 3.1, 0.4]


def check_int4_qparams(answer) -> Verdict:
    """`answer = (symmetric_scale, asymmetric_scale, asymmetric_zero_point)` of VECTOR at 4 bits, per
    tensor, min/max range."""
    if (verdict := not_answered(answer)) is not None:
        return verdict
    try:
        sym_scale, asym_scale, zero_point = answer
    except (TypeError, ValueError):
        return Verdict(False, "the answer should be three numbers: (symmetric scale, asymmetric scale, zero-point).")
    x = torch.tensor([VECTOR])
    sym, asym = calc_qparams(x, 4, True, "tensor"), calc_qparams(x, 4, False, "tensor")
    for v in (expect_close(sym_scale, sym.scale.item(), "symmetric scale", rel=1e-4,
                           hint="the grid is -8..7 and the largest |x| must land on the top code 7."),
              expect_close(asym_scale, asym.scale.item(), "asymmetric scale", rel=1e-4,
                           hint="the grid is 0..15: 15 steps span [min(x, 0), max(x, 0)]."),
              expect_equal(zero_point, int(asym.zero_point.item()), "zero-point",
                           hint="z = round(0 - lo / s), an integer, so that 0.0 comes back exactly.")):
        if not v:
            return v
    return Verdict(True, f"symmetric s = {sym.scale.item():.5f}; asymmetric s = {asym.scale.item():.5f}, "
                         f"z = {int(asym.zero_point.item())}.")


def _fake_quant_cases():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 16, generator=g), 4, True), (torch.randn(4, 16, generator=g), 4, False),
            (torch.rand(3, 10, generator=g) * 2 - 0.3, 3, False), (torch.randn(2, 32, generator=g) * 5, 8, True)]


def check_fake_quantize(fn) -> Verdict:
    """`fn(x, bits, symmetric)` -> x quantized per tensor with a min/max range and dequantized (same shape)."""
    for x, bits, symmetric in _fake_quant_cases():
        got, verdict = call_answer(fn, x.clone(), bits, symmetric)
        if verdict is not None:
            return verdict
        expected = fake_quantize(x, bits, symmetric, "tensor", None, "minmax")
        kind = "symmetric" if symmetric else "asymmetric"
        v = expect_tensor_close(got, expected, f"{bits}-bit {kind} on a {tuple(x.shape)} tensor", rtol=1e-5, atol=1e-6,
                                hint="symmetric: s = max|x| / (2^(b-1) - 1), clamp to -2^(b-1)..2^(b-1)-1; "
                                     "asymmetric: widen [lo, hi] to contain 0, s = (hi - lo) / (2^b - 1), "
                                     "z = round(-lo / s), clamp q to 0..2^b-1, x_hat = s (q - z).")
        if not v:
            return v
    return Verdict(True, "your quantizer matches `workbench.quant.fake_quantize` on every test case.")


DB_PER_BIT = 20 * math.log10(2)   # one more bit halves the step: MSE / 4, 6.02 dB


def check_sqnr_prediction(answer, sqnr_4bit_db: float, sqnr_8bit_db: float | None = None) -> Verdict:
    """The 8-bit SQNR predicted from the measured 4-bit one by the uniform-error model; with the
    measured 8-bit SQNR, the verdict also says how close the model came."""
    v = expect_close(answer, sqnr_4bit_db + 4 * DB_PER_BIT, "predicted 8-bit SQNR", rel=0.005, unit="dB",
                     hint="each bit halves the step s, so the MSE s^2/12 drops 4x: 10 log10(4) dB per bit.")
    if v and sqnr_8bit_db is not None:
        return Verdict(True, v.message + f" Measured: {sqnr_8bit_db:.2f} dB ({float(answer) - sqnr_8bit_db:+.2f} dB off).")
    return v


EXAMPLE_SQNR_4BIT_DB = 19.5


def _fake_quant(x, bits, symmetric, zero_point_rounding=True, levels=None):
    if symmetric:
        qmax = 2 ** (bits - 1) - 1 if levels is None else levels
        s = x.abs().max() / qmax
        return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s
    lo, hi = min(x.min(), 0), max(x.max(), 0)
    s = (hi - lo) / (2 ** bits - 1)
    z = torch.round(-lo / s) if zero_point_rounding else -lo / s
    return (torch.clamp(torch.round(x / s) + z, 0, 2 ** bits - 1) - z) * s


EXERCISES = [
    Exercise("int4_qparams", check_int4_qparams,
             solution=lambda: (3.1 / 7, 3.7 / 15, round(0.6 / (3.7 / 15))),
             wrong_answers=lambda: [(3.1 / 8, 3.7 / 15, 2), (3.1 / 7, 3.7 / 16, 2), (3.1 / 7, 3.7 / 15, 2.43),
                                    (3.1 / 7, 3.1 / 15, 2), 0.44]),
    Exercise("fake_quantize", check_fake_quantize, solution=lambda: _fake_quant,
             wrong_answers=lambda: [partial(_fake_quant, levels=8), partial(_fake_quant, zero_point_rounding=False),
                                    lambda x, bits, symmetric: torch.round(x * 2 ** bits) / 2 ** bits,
                                    lambda x, bits, symmetric: _fake_quant(x, bits, symmetric).flatten()]),
    Exercise("sqnr_prediction", partial(check_sqnr_prediction, sqnr_4bit_db=EXAMPLE_SQNR_4BIT_DB),
             solution=lambda: EXAMPLE_SQNR_4BIT_DB + 4 * 6.0206,
             wrong_answers=lambda: [EXAMPLE_SQNR_4BIT_DB * 2, EXAMPLE_SQNR_4BIT_DB + 4 * 3.01, EXAMPLE_SQNR_4BIT_DB + 6.02]),
]
