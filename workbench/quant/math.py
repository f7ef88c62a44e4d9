"""Uniform affine quantization: the formulas, for any bit width 2..8 and any granularity.

Symmetric (signed integers, zero-point fixed at 0), b bits:
    qmin = -2^(b-1),  qmax = 2^(b-1) - 1              (int8: -128..127, int4: -8..7)
    scale = amax / qmax,  amax = max(|lo|, |hi|) of the (clipped) range
    q = clamp(round(x / scale), qmin, qmax)           x_hat = q * scale
Asymmetric (unsigned integers with a zero-point), b bits:
    qmin = 0,  qmax = 2^b - 1                         (uint8: 0..255, uint4: 0..15)
    the range [lo, hi] is widened to contain 0, so that 0.0 is exactly representable
    scale = (hi - lo) / (qmax - qmin)
    zero_point = clamp(round(qmin - lo / scale), qmin, qmax)
    q = clamp(round(x / scale) + zero_point, qmin, qmax)     x_hat = (q - zero_point) * scale

Rounding is round-half-to-even, and x / scale is computed as x * (1 / scale): the same arithmetic as
PyTorch's `fake_quantize_per_tensor_affine`, so 8-bit results match it exactly. A group whose range
is all zeros gets scale 1 (every value quantizes to the zero-point and back to 0).

Granularity decides which values share one (scale, zero_point):
    "tensor"   one pair for the whole tensor
    "channel"  one pair per output channel (row of a Linear weight, dim 0)
    "group"    one pair per `group_size` consecutive values along the last (input) dimension
The range [lo, hi] of each group comes from an observer (`observers.py`): min/max by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidParameterError

GRANULARITIES = ("tensor", "channel", "group")


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid."""
    check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def check_bits(bits: int):
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise InvalidParameterError(f"bits must be an integer from 2 to 8, got {bits!r}")


def group_view(x: torch.Tensor, granularity: str, group_size: int | None = None) -> torch.Tensor:
    """View `x` as (rows, groups, values per group) so that each [r, g, :] shares one scale."""
    if granularity not in GRANULARITIES:
        raise InvalidParameterError(f"unknown granularity {granularity!r} (accepted: {', '.join(GRANULARITIES)})")
    if granularity == "tensor":
        return x.reshape(1, 1, -1)
    if granularity == "channel":
        return x.reshape(x.shape[0], 1, -1)
    columns = x.shape[-1]
    if not isinstance(group_size, int) or group_size < 1:
        raise InvalidParameterError(f"per-group quantization needs a positive group size, got {group_size!r}")
    if columns % group_size:
        raise InvalidParameterError(f"group size {group_size} does not divide the input dimension {columns} "
                                    f"(divisors up to 256: {[g for g in range(1, 257) if columns % g == 0][-6:]})")
    return x.reshape(-1, columns // group_size, group_size)


@dataclass
class QuantParams:
    """Scales and zero-points for a tensor, shaped (rows, groups, 1) to broadcast over `group_view`."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    bits: int
    symmetric: bool
    granularity: str
    group_size: int | None = None

    @property
    def qmin(self) -> int:
        return quant_range(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return quant_range(self.bits, self.symmetric)[1]


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, granularity: str,
                       group_size: int | None = None) -> QuantParams:
    """Scale and zero-point for ranges [lo, hi] (float32 tensors of one shape), as in the module docstring."""
    qmin, qmax = quant_range(bits, symmetric)
    lo, hi = lo.float(), hi.float()
    if symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = amax / qmax
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
        zero_point = None
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if zero_point is None:
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return QuantParams(scale, zero_point, bits, symmetric, granularity, group_size)


def calc_qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = True, granularity: str = "channel",
                 group_size: int | None = None, observer="minmax") -> QuantParams:
    """Choose scales/zero-points for `x` with an observer ("minmax", "percentile", "mse" or an instance)."""
    from .observers import get_observer

    groups = group_view(x.detach().float(), granularity, group_size)
    lo, hi = get_observer(observer).range(groups, bits, symmetric)
    return qparams_from_range(lo, hi, bits, symmetric, granularity, group_size)


def quantize(x: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """Float tensor -> integers (int32, same shape as x) on the grid of `qp`."""
    groups = group_view(x.float(), qp.granularity, qp.group_size)
    inv_scale = 1.0 / qp.scale
    q = torch.round(groups * inv_scale) + qp.zero_point
    return q.clamp(qp.qmin, qp.qmax).to(torch.int32).reshape(x.shape)


def dequantize(q: torch.Tensor, qp: QuantParams) -> torch.Tensor:
    """Integers -> float32 values (q - zero_point) * scale, same shape as q."""
    groups = group_view(q, qp.granularity, qp.group_size)
    return ((groups - qp.zero_point).float() * qp.scale).reshape(q.shape)


def fake_quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, granularity: str = "channel",
                  group_size: int | None = None, observer="minmax") -> torch.Tensor:
    """quantize -> dequantize in float: the values a quantized model actually computes with."""
    qp = calc_qparams(x, bits, symmetric, granularity, group_size, observer)
    return dequantize(quantize(x, qp), qp).to(x.dtype)


def quantization_error(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """MSE, max |error| and signal-to-quantization-noise ratio (dB) of a reconstruction."""
    x, err = x.float(), (x.float() - x_hat.float())
    mse = err.pow(2).mean().item()
    signal = x.pow(2).mean().item()
    sqnr = 10 * torch.log10(torch.tensor(signal / mse)).item() if mse > 0 else float("inf")
    return {"mse": mse, "max_abs_error": err.abs().max().item(), "sqnr_db": sqnr}


def moments(values: torch.Tensor) -> tuple[float, float, float]:
    """(mean, std, excess kurtosis) in float32, population moments, one centred copy."""
    x = values.detach().float().flatten()
    mean = x.mean()
    sq = (x - mean).square_()
    var = sq.mean()
    m4 = sq.square_().mean()
    kurtosis = float(m4 / var.square()) - 3.0 if var > 0 else float("nan")  # constant: undefined
    return float(mean), float(var.sqrt()), kurtosis


def excess_kurtosis(values: torch.Tensor) -> float:
    """E[z^4] - 3 of the standardised values: 0 for a Gaussian, -1.2 for a uniform, large for heavy tails."""
    return moments(values)[2]
