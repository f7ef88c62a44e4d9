"""Clip search: per group, the int4 range whose rounding hurts the layer's output least.

Min/max ranges waste most of the 16 levels on a group's one or two extreme weights. Shrinking the
range [lo, hi] of group g by a factor c (lo*c, hi*c: the extremes saturate, every other step gets
finer) trades clipping error for rounding error. Here c is chosen per group, on a grid of `grid`
factors from 1 down to `min_shrink` (AWQ's clip search and llama.cpp's quantizers make the same
trade), to minimise the group's contribution to the layer's squared output error:
    loss_g(c) = e_g^T H_gg e_g,   e_g = w_g - dequant(quant(w_g; c))   per row, summed over rows
with H = 2 X^T X / N the Hessian of the calibration inputs X (`gptq.hessian`) and H_gg its block on
the group's columns; without H the loss is the plain squared weight error (data-free). c = 1 is on
the grid, so the search never does worse than min/max on its own loss.
Used by round to nearest (`ClipConfig`, spec "int4-g128-clip") and inside GPTQ (`GPTQConfig(clip=True)`:
the group parameters GPTQ would take from min/max come from this search instead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidParameterError
from .math import qparams_from_range

GRID = 20
MIN_SHRINK = 0.5   # AWQ's max_shrink: never clip a group to less than half its range


def check_clip_options(grid, min_shrink):
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise InvalidParameterError(f"clip grid must be a positive integer, got {grid!r}")
    if not isinstance(min_shrink, (int, float)) or isinstance(min_shrink, bool) or not 0 < min_shrink <= 1:
        raise InvalidParameterError(f"clip min_shrink must be in (0, 1], got {min_shrink!r}")


@torch.no_grad()
def search_clip(weight: torch.Tensor, H: torch.Tensor | None = None, group_size: int = 128, grid: int = GRID,
                min_shrink: float = MIN_SHRINK):
    """Asymmetric int4 (scale, zero_point), each (rows, groups), of `weight` (rows, cols) in groups of
    `group_size` consecutive columns (last one ragged), the range of each group shrunk by the factor
    of least loss (module docstring). `H` (cols, cols) weights the error; None: plain squared error."""
    check_clip_options(grid, min_shrink)
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise InvalidParameterError(f"int4 group size must be an even integer >= 2, got {group_size!r}")
    rows, cols = weight.shape
    if H is not None and H.shape != (cols, cols):
        raise InvalidParameterError(f"clip search: Hessian shape {tuple(H.shape)} does not match {cols} columns")
    pad = -cols % group_size
    # Zero padding: a padded column quantizes to exactly 0 (asymmetric ranges contain 0), no error.
    w = F.pad(weight.detach().float(), (0, pad)).reshape(rows, -1, group_size)
    blocks = None
    if H is not None:
        Hp = F.pad(H.detach().float(), (0, pad, 0, pad))
        n = w.shape[1]
        blocks = torch.stack([Hp[g * group_size:(g + 1) * group_size, g * group_size:(g + 1) * group_size]
                              for g in range(n)])                      # (groups, gs, gs)
    lo0, hi0 = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    best_scale = best_zero = None
    best_loss = torch.full(lo0.shape, float("inf"))
    for c in torch.linspace(1.0, min_shrink, grid) if grid > 1 else torch.ones(1):
        qp = qparams_from_range(lo0 * c, hi0 * c, 4, False, "group")
        q = (torch.round(w * (1.0 / qp.scale)) + qp.zero_point).clamp(0, 15)
        e = (q - qp.zero_point) * qp.scale - w                                  # (rows, groups, gs)
        if blocks is None:
            loss = e.pow(2).sum(-1, keepdim=True)
        else:
            loss = (torch.einsum("rgi,gij->rgj", e, blocks) * e).sum(-1, keepdim=True)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_scale = qp.scale if best_scale is None else torch.where(better, qp.scale, best_scale)
        best_zero = qp.zero_point if best_zero is None else torch.where(better, qp.zero_point, best_zero)
    return best_scale.reshape(rows, -1), best_zero.reshape(rows, -1)


def quantize_with_params(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int):
    """Integers (rows, cols) 0..15 of `weight` on the given per-group grid (round(w * 1/s) + z, clamped)."""
    rows, cols = weight.shape
    col_group = torch.arange(cols, device=weight.device) // group_size
    s, z = scale[:, col_group], zero_point[:, col_group].float()
    return (torch.round(weight.float() * (1.0 / s)) + z).clamp(0, 15).to(torch.int32)


def clipped_int4_linear(weight: torch.Tensor, H: torch.Tensor | None, group_size: int = 128, grid: int = GRID,
                        min_shrink: float = MIN_SHRINK):
    """An `Int4WeightOnlyLinear` of `weight` rounded to nearest on the clip-searched grid."""
    from .gptq import int4_linear_from_integers

    scale, zero_point = search_clip(weight, H, group_size, grid, min_shrink)
    q = quantize_with_params(weight, scale, zero_point, group_size)
    return int4_linear_from_integers(q, scale, zero_point, group_size).to(weight.device)


@dataclass(frozen=True)
class ClipConfig:
    """int4 weight-only (Int4WeightOnlyLinear format), round to nearest on per-group ranges chosen by
    the clip search, weighted by the calibration inputs' Hessian (`search_clip`).

    Needs calibration data like GPTQ (`quantize_(model, config, tokenizer=tok)`); layers go in GPTQ's
    sequential order, each layer's inputs computed by the layers already quantized. The output head
    too (its inputs: the final-norm outputs), unless `include_head=False`.
    """

    group_size: int = 128
    grid: int = GRID
    min_shrink: float = MIN_SHRINK
    calibration_tokens: int = 2048
    window: int = 512
    include_head: bool = True
    needs_calibration = True

    def __post_init__(self):
        check_clip_options(self.grid, self.min_shrink)

    def make(self, weight):
        """Data-free fallback (a Linear outside the decoder): the same search, unweighted."""
        return clipped_int4_linear(weight, None, self.group_size, self.grid, self.min_shrink)

    def bits_per_weight(self, in_features: int) -> float:
        return 4 + (32 + 8) / self.group_size

    def calibrate(self, model, tokenizer=None, calibration_text=None, filter_fn=None, verbose=False):
        from torch import nn

        from .gptq import calibration_ids, hessian, sequential_hessian_pass, set_submodule

        ids = calibration_ids(model, tokenizer, calibration_text, self.calibration_tokens, self.window)
        start = time.perf_counter()

        def quantize(layer, names, H):
            for name in names:
                linear = layer.get_submodule(name)
                set_submodule(layer, name, clipped_int4_linear(linear.weight, H, self.group_size, self.grid,
                                                               self.min_shrink))

        def quantize_head(hidden):
            head = model.lm_head
            if self.include_head and isinstance(head, nn.Linear) and (filter_fn is None or filter_fn("lm_head", head)):
                x = model.model.norm(hidden).reshape(-1, head.in_features).float()
                model.lm_head = clipped_int4_linear(head.weight, hessian(x, torch.float32), self.group_size,
                                                    self.grid, self.min_shrink)

        sequential_hessian_pass(model, ids, quantize, filter_fn, verbose, label="clip", dtype=torch.float32,
                                final=quantize_head)
        if verbose:
            print(f"clip search: {time.perf_counter() - start:.1f}s")
        return model


__all__ = ["search_clip", "clipped_int4_linear", "quantize_with_params", "ClipConfig", "GRID", "MIN_SHRINK"]
