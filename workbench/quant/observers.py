"""Observers choose the clipping range [lo, hi] that each quantization group maps onto its grid.

Clipping trades two errors: a wide range keeps outliers but makes every step coarse (rounding
error), a narrow range makes steps fine but saturates the outliers (clipping error).
    minmax       lo, hi = min, max of the group: no clipping at all
    percentile   lo, hi = the (1-p) and p quantiles of the group: ignores the rarest extremes
    mse          shrink the min/max range by the factor in a grid that minimises the group's
                 mean squared reconstruction error (searched per group)
All take `groups` shaped (rows, groups, values) and return lo, hi shaped (rows, groups, 1).
"""

from __future__ import annotations

import torch

from ..errors import InvalidParameterError


class MinMaxObserver:
    name = "minmax"

    def range(self, groups: torch.Tensor, bits: int, symmetric: bool):
        return groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)


class PercentileObserver:
    name = "percentile"

    def __init__(self, percentile: float = 99.9):
        if not 50 < percentile <= 100:
            raise InvalidParameterError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self, groups: torch.Tensor, bits: int, symmetric: bool):
        n = groups.shape[-1]
        k_hi = max(1, min(n, round(n * self.percentile / 100)))
        k_lo = max(1, n - k_hi + 1)
        # kthvalue works on any size (torch.quantile refuses inputs above 16M values)
        hi = groups.kthvalue(k_hi, dim=-1, keepdim=True).values
        lo = groups.kthvalue(k_lo, dim=-1, keepdim=True).values
        return lo, hi


class MSEObserver:
    name = "mse"

    def __init__(self, grid: int = 50, min_shrink: float = 0.3):
        self.shrinks = torch.linspace(1.0, min_shrink, grid)

    def range(self, groups: torch.Tensor, bits: int, symmetric: bool):
        from .math import qparams_from_range, quant_range

        qmin, qmax = quant_range(bits, symmetric)
        lo0, hi0 = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        best_lo, best_hi = lo0.clone(), hi0.clone()
        best_err = torch.full_like(lo0, float("inf"))
        for s in self.shrinks:
            lo, hi = lo0 * s, hi0 * s
            qp = qparams_from_range(lo, hi, bits, symmetric, "group")
            q = (torch.round(groups * (1.0 / qp.scale)) + qp.zero_point).clamp(qmin, qmax)
            err = ((q - qp.zero_point) * qp.scale - groups).pow(2).mean(-1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return best_lo, best_hi


OBSERVERS = {"minmax": MinMaxObserver, "percentile": PercentileObserver, "mse": MSEObserver}


def get_observer(observer):
    if isinstance(observer, str):
        if observer not in OBSERVERS:
            raise InvalidParameterError(f"unknown observer {observer!r} (accepted: {', '.join(OBSERVERS)})")
        return OBSERVERS[observer]()
    if not hasattr(observer, "range"):
        raise InvalidParameterError("an observer is a name or an object with a .range(groups, bits, symmetric) method")
    return observer
