"""AWQ: activation-aware scaling of weight columns before round-to-nearest int4.

Follows Lin, Tang, Tang, Yang, Dang, Gan, Han, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration" (2023, arXiv:2306.00978), section 3 and its reference code (llm-awq).

The weights that matter are those that multiply large activations. Scaling input column j of W up by
s_j > 1 (and the activation down by s_j, folded into the previous module: function-preserving)
shrinks that weight's *relative* rounding error. Per group of Linears sharing one input x:
    s_x      = mean |x_j| over calibration tokens, per input channel j (the paper's "average magnitude")
    s(alpha) = s_x^alpha, normalised by sqrt(max s * min s)          alpha on a grid of 20 points in [0, 1)
    loss     = || x W^T - (x / s) Q(W * s)^T ||^2 summed over the group's Linears
               (Q = the deployed format: asymmetric int4, groups of 128, round-to-nearest)
    keep the alpha of least loss (alpha = 0 is plain RTN, so the search never does worse on calibration),
    fold 1/s into the previous module and s into the Linears' columns.
Groups per decoder layer (`smoothquant.smoothing_groups`):
    q/k/v  after input_layernorm (1/s into its weight),  gate/up after post_attention_layernorm,
    down_proj with 1/s into up_proj's rows, o_proj with 1/s into v_proj's rows only without GQA
    (with grouped-query attention a V row feeds several o_proj columns: skipped, as llm-awq does).
Layers are processed in order; the inputs of layer i come from layers < i already scaled (in float).
Finally every Linear is quantized round-to-nearest int4 by `quantize_` (`Int4WeightOnlyLinear`); the
output head is plain RTN (its input, the final norm, is shared with nothing to fold into).
Not implemented: AWQ's second step, the search for a clipping range per weight group.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .gptq import LayerRunner, calibration_ids
from .linear import Int4WeightOnlyLinear
from .math import fake_quantize
from .smoothquant import fold_scale, smoothing_groups


def fake_quant_int4(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """What Int4WeightOnlyLinear(weight, group_size) computes with, without packing (ragged last group padded)."""
    cols = weight.shape[1]
    padded = F.pad(weight.float(), (0, -cols % group_size))
    return fake_quantize(padded, 4, False, "group", group_size)[:, :cols]


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: list[torch.Tensor], group_size: int = 128, n_grid: int = 20):
    """Best AWQ scale s (in_features,) for Linears `weights` reading x (tokens, in). Returns (s, alpha, losses)."""
    x = x.float()
    s_x = x.abs().mean(0).clamp(min=1e-4)
    W = torch.cat([w.detach().float() for w in weights], dim=0)   # the group's rows together
    reference = x @ W.T
    best, losses = (None, None, float("inf")), []
    for i in range(n_grid):
        alpha = i / n_grid
        s = s_x.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()                         # keep scales centred around 1
        w_hat = fake_quant_int4(W * s, group_size) / s
        loss = (reference - x @ w_hat.T).pow(2).mean().item()
        losses.append(loss)
        if loss < best[2]:
            best = (s, alpha, loss)
    return best[0], best[1], losses


@torch.no_grad()
def awq_scale_model(model, ids: torch.Tensor, group_size: int = 128, n_grid: int = 20, filter_fn=None,
                    verbose: bool = False) -> dict:
    """Search and fold AWQ scales into every decoder layer (float, function-preserving). Returns chosen alphas."""
    runner = LayerRunner(model, ids)
    chosen = {}
    for index, layer in enumerate(model.model.layers):
        start = time.perf_counter()
        groups = []
        for prev, names in smoothing_groups(layer, model.config, include_down=True, include_o=True):
            full = [f"model.layers.{index}.{n}" for n in names]
            if filter_fn is None or all(filter_fn(f, layer.get_submodule(n)) for f, n in zip(full, names)):
                groups.append((prev, names))
        inputs = runner.capture(layer, [names[0] for _, names in groups])
        for prev, names in groups:
            linears = [layer.get_submodule(n) for n in names]
            # Inputs were captured before this layer's earlier folds; those folds preserve the function,
            # and each group's own input is only rescaled by its own s, so the capture stays valid.
            s, alpha, _ = search_scale(inputs[names[0]], [m.weight for m in linears], group_size, n_grid)
            fold_scale(prev, linears, s)
            chosen[f"model.layers.{index}.{names[0]}"] = alpha
        runner.advance(layer)
        if verbose:
            print(f"awq layer {index}: {time.perf_counter() - start:.1f}s")
    return chosen


@dataclass(frozen=True)
class AWQConfig:
    """AWQ scale search (20-point grid) folded into the float model, then int4 round-to-nearest per group.

    Needs calibration data (`quantize_(model, config, tokenizer=tok)`): the first
    `calibration_tokens` tokens of the calibration text (default: built-in corpus, calibration half),
    in windows of `window` tokens.
    """

    group_size: int = 128
    n_grid: int = 20
    calibration_tokens: int = 2048
    window: int = 512
    include_head: bool = True
    needs_calibration = True

    def make(self, weight):
        return Int4WeightOnlyLinear(weight, self.group_size)

    def bits_per_weight(self, in_features: int) -> float:
        return 4 + (32 + 8) / self.group_size

    def calibrate(self, model, tokenizer=None, calibration_text=None, filter_fn=None, verbose=False):
        """Fold the AWQ scales; quantize_ then swaps every Linear for Int4WeightOnlyLinear."""
        ids = calibration_ids(model, tokenizer, calibration_text, self.calibration_tokens, self.window)
        awq_scale_model(model, ids, self.group_size, self.n_grid, filter_fn, verbose)
        return model
