"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

Follows Xiao, Lin, Seznec, Wu, Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training
Quantization for Large Language Models" (2022, arXiv:2211.10438).

A few input channels of a Linear carry activations far larger than the rest, and per-token int8
activations spend their whole range on them. For a Linear y = x W^T, any positive vector s gives
    y = (x / s) (W * s)^T         (W * s: column j of W scaled by s_j)
and x / s can be folded into whatever produced x, so the model computes the same function. With
    s_j = max|X_j|^a / max|W_j|^(1-a)     (a = migration strength, 0.5 by default;
                                           max|X_j| over calibration tokens, max|W_j| over the rows
                                           of every Linear that reads x)
activations and weights share the difficulty. Where 1/s is folded, per decoder layer:
    q/k/v_proj  read input_layernorm(x)          -> input_layernorm.weight /= s
    gate/up     read post_attention_layernorm(x) -> post_attention_layernorm.weight /= s
    down_proj   reads silu(gate) * up            -> rows of up_proj /= s (the product is linear in up)
o_proj is left alone (its input comes from attention, with no per-channel weight to fold into
without changing V's per-head layout). Every Linear then becomes `W8A8Linear` (int8 weights per
output channel x dynamic int8 activations per token); the output head follows `include_head`.

The folding helpers (`fold_scale`, `smoothing_groups`) are shared with `awq.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .gptq import calibration_ids
from .linear import QuantizedLinear, W8A8Linear


def smoothing_groups(layer, config, include_down: bool = True, include_o: bool = False):
    """(previous module, [linear names], description) of one decoder layer whose input scale can be folded.

    `previous` is an RMSNorm (scale its weight) or a Linear (scale its output rows). o_proj is
    offered (include_o) only without grouped-query attention, when v_proj's rows map one-to-one
    onto o_proj's input columns.
    """
    groups = [(layer.input_layernorm, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
              (layer.post_attention_layernorm, ["mlp.gate_proj", "mlp.up_proj"])]
    if include_o and config.num_attention_heads == config.num_key_value_heads:
        groups.append((layer.self_attn.v_proj, ["self_attn.o_proj"]))
    if include_down:
        groups.append((layer.mlp.up_proj, ["mlp.down_proj"]))
    return [(prev, names) for prev, names in groups
            if not isinstance(prev, QuantizedLinear)
            and all(isinstance(layer.get_submodule(n), nn.Linear) for n in names)]


@torch.no_grad()
def fold_scale(previous: nn.Module, linears: list[nn.Linear], s: torch.Tensor):
    """x -> x / s at the output of `previous`, W -> W * s on the input columns of `linears`: same function."""
    s = s.to(linears[0].weight.dtype)
    if isinstance(previous, nn.Linear):
        previous.weight.div_(s.view(-1, 1))      # output rows of the previous Linear
    else:
        previous.weight.div_(s)                  # RMSNorm's per-channel gain
    for linear in linears:
        linear.weight.mul_(s.view(1, -1))


@torch.no_grad()
def activation_absmax(model, ids: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """max |x| per input channel of the named modules over the calibration windows (one batch forward)."""
    stats, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(_module, args, name=name):
            m = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(0).float()
            stats[name] = torch.maximum(stats[name], m) if name in stats else m
        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        for row in ids:                          # one window at a time: bounded memory
            model(row.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return stats


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), guarded against zeros."""
    w_absmax = torch.stack([w.detach().abs().amax(0).float() for w in weights]).amax(0)
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth_model(model, ids: torch.Tensor, alpha: float = 0.5, include_down: bool = True, filter_fn=None):
    """Fold SmoothQuant scales into every decoder layer, in float (function-preserving). Returns the scales.

    All statistics are measured on the unmodified model, and all scales computed from the original
    weights before any is applied, so the order of folding does not matter.
    """
    plan = []
    for index, layer in enumerate(model.model.layers):
        for prev, names in smoothing_groups(layer, model.config, include_down):
            full = [f"model.layers.{index}.{n}" for n in names]
            if filter_fn is not None and not all(filter_fn(f, layer.get_submodule(n)) for f, n in zip(full, names)):
                continue
            plan.append((prev, [layer.get_submodule(n) for n in names], full[0]))
    stats = activation_absmax(model, ids, [p[2] for p in plan])
    scales = {}
    for prev, linears, key in plan:
        scales[key] = smooth_scales(stats[key], [m.weight for m in linears], alpha)
    for prev, linears, key in plan:
        fold_scale(prev, linears, scales[key])
    return scales


@dataclass(frozen=True)
class SmoothQuantConfig:
    """SmoothQuant (migration strength `alpha`) then W8A8 (int8 weights per channel x int8 activations per token).

    Needs calibration data (`quantize_(model, config, tokenizer=tok)`): max |x| per channel over the
    first `calibration_tokens` tokens of the calibration text (default: built-in corpus, calibration
    half), in windows of `window` tokens.
    """

    alpha: float = 0.5
    include_down: bool = True
    calibration_tokens: int = 2048
    window: int = 512
    include_head: bool = True
    needs_calibration = True

    def make(self, weight):
        return W8A8Linear(weight)

    def bits_per_weight(self, in_features: int) -> float:
        return 8 + 32 / in_features

    def calibrate(self, model, tokenizer=None, calibration_text=None, filter_fn=None, verbose=False):
        """Fold the smoothing scales; quantize_ then swaps every Linear for W8A8Linear."""
        ids = calibration_ids(model, tokenizer, calibration_text, self.calibration_tokens, self.window)
        smooth_model(model, ids, self.alpha, self.include_down, filter_fn)
        return model
