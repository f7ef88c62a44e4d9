"""Structured pruning: remove whole MLP channels or whole attention head groups, so matrices shrink.

Unlike zeros in a dense tensor, a removed channel is gone from every matrix that touches it, and
the model does less work. To keep the model a normal workbench model (one `ModelConfig`, one KV
cache shape, `save_pretrained`/`load_model`, `quantize_`), every layer loses the same number:

- MLP channel j of a layer is row j of `gate_proj` and `up_proj` and column j of `down_proj`;
  `intermediate_size` shrinks to the channels kept (rounded to a multiple of `multiple_of`).
- Attention heads go as whole KV groups: KV head g, the query heads that read it
  (g*G .. g*G+G-1 with G = heads / kv heads), and the matching columns of `o_proj`. Removing query
  heads alone would leave groups of unequal size, which grouped-query attention cannot express.
  `head_dim` stays explicit in the config (hidden_size / heads no longer gives it).

Which channels or groups go is decided per layer by a score (larger = keep):
- "activation" (needs calibration text): the output energy a channel or head group sends into the
  residual stream, rms(input of the output matrix)_c x ||column c of the output matrix||, squared
  and summed over a group's channels. The Wanda score, aggregated over a structure.
- "magnitude" (no data): the product of the weight norms the channel passes through.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import PruningError
from .masks import check_sparsity, decoder_linears

CALIBRATION_TOKENS = 2048


def _criterion(criterion, tokenizer) -> str:
    criterion = criterion or ("activation" if tokenizer is not None else "magnitude")
    if criterion not in ("activation", "magnitude"):
        raise PruningError(f"unknown structured criterion {criterion!r} (accepted: activation, magnitude)")
    if criterion == "activation" and tokenizer is None:
        raise PruningError("the activation criterion needs calibration text: pass tokenizer=... "
                           "(and optionally calibration_text=...)")
    return criterion


def _output_input_rms(model, tokenizer, pattern, calibration_text, calibration_tokens) -> list[torch.Tensor]:
    """Per layer: rms of every input channel of the output matrix named by `pattern`."""
    from ..quant.calibration import collect_activations

    stats = collect_activations(model, tokenizer, calibration_text, max_tokens=calibration_tokens,
                                layers=pattern, sample_tokens=1)
    return [s.rms for s in stats.values()]  # model order, one per layer


def _linear(old: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    """A bias-free linear around `weight` (a slice of `old`'s), trainable if `old` was, and of `old`'s
    kind (a `KernelLinear` stays one, so the smaller model decodes on the same kernels)."""
    with torch.device("meta"):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = nn.Parameter(weight.contiguous().clone(), requires_grad=old.weight.requires_grad)
    return type(old).from_linear(linear) if hasattr(type(old), "from_linear") else linear


@torch.no_grad()
def mlp_channel_scores(model, *, tokenizer=None, calibration_text=None, calibration_tokens=CALIBRATION_TOKENS,
                       criterion=None) -> list[torch.Tensor]:
    """Per layer, a score for each intermediate channel (larger = more important)."""
    criterion = _criterion(criterion, tokenizer)
    decoder_linears(model)  # float nn.Linear everywhere, or a clear error
    layers = model.model.layers
    if criterion == "activation":
        rms = _output_input_rms(model, tokenizer, "model.layers.*.mlp.down_proj", calibration_text,
                                calibration_tokens)
        return [(r.to(layer.mlp.down_proj.weight.device) * layer.mlp.down_proj.weight.float().norm(dim=0)) ** 2
                for r, layer in zip(rms, layers)]
    return [layer.mlp.gate_proj.weight.float().norm(dim=1) * layer.mlp.up_proj.weight.float().norm(dim=1)
            * layer.mlp.down_proj.weight.float().norm(dim=0) for layer in layers]


@torch.no_grad()
def prune_mlp(model, fraction: float, *, tokenizer=None, calibration_text=None,
              calibration_tokens: int = CALIBRATION_TOKENS, criterion: str | None = None, multiple_of: int = 32):
    """Remove `fraction` of every layer's MLP channels in place; returns the model (config updated).

    The number kept is rounded to a multiple of `multiple_of` (default 32: GGUF blocks and int4 groups
    stay whole), so the removed fraction can differ slightly from `fraction`; read
    `model.config.intermediate_size`. `criterion`: "activation" (default with a tokenizer; calibration
    text defaults to the built-in calibration part) or "magnitude" (default without).
    """
    fraction = check_sparsity(fraction, "MLP fraction")
    if not isinstance(multiple_of, int) or multiple_of < 1:
        raise PruningError(f"multiple_of must be a positive integer, got {multiple_of!r}")
    width = model.config.intermediate_size
    keep = round((width - fraction * width) / multiple_of) * multiple_of
    keep = min(keep, width)
    if keep <= 0:
        raise PruningError(f"removing {fraction:.0%} of {width} MLP channels (kept in multiples of {multiple_of}) "
                           "would remove every channel of a layer; use a smaller fraction or multiple_of")
    if keep == width:
        return model
    scores = mlp_channel_scores(model, tokenizer=tokenizer, calibration_text=calibration_text,
                                calibration_tokens=calibration_tokens, criterion=criterion)
    for layer, score in zip(model.model.layers, scores):
        idx = torch.topk(score, keep).indices.sort().values.to(layer.mlp.down_proj.weight.device)
        mlp = layer.mlp
        mlp.gate_proj = _linear(mlp.gate_proj, mlp.gate_proj.weight[idx])
        mlp.up_proj = _linear(mlp.up_proj, mlp.up_proj.weight[idx])
        mlp.down_proj = _linear(mlp.down_proj, mlp.down_proj.weight[:, idx])
    model.config = dataclasses.replace(model.config, intermediate_size=keep)
    return model


@torch.no_grad()
def head_group_scores(model, *, tokenizer=None, calibration_text=None, calibration_tokens=CALIBRATION_TOKENS,
                      criterion=None) -> list[torch.Tensor]:
    """Per layer, a score for each KV group (a KV head with its query heads)."""
    criterion = _criterion(criterion, tokenizer)
    decoder_linears(model)
    cfg = model.config
    per_group = cfg.num_attention_heads // cfg.num_key_value_heads * cfg.head_dim  # o_proj inputs per group
    layers = model.model.layers
    if criterion == "activation":
        rms = _output_input_rms(model, tokenizer, "model.layers.*.self_attn.o_proj", calibration_text,
                                calibration_tokens)
        channel = [(r.to(layer.self_attn.o_proj.weight.device) * layer.self_attn.o_proj.weight.float().norm(dim=0)) ** 2
                   for r, layer in zip(rms, layers)]
        return [c.reshape(cfg.num_key_value_heads, per_group).sum(1) for c in channel]
    scores = []
    for layer in layers:
        attn = layer.self_attn
        o = attn.o_proj.weight.float().reshape(-1, cfg.num_key_value_heads, per_group).pow(2).sum((0, 2))
        v = attn.v_proj.weight.float().reshape(cfg.num_key_value_heads, -1).pow(2).sum(1)
        scores.append((o * v).sqrt())
    return scores


@torch.no_grad()
def prune_heads(model, fraction: float, *, tokenizer=None, calibration_text=None,
                calibration_tokens: int = CALIBRATION_TOKENS, criterion: str | None = None):
    """Remove `fraction` of every layer's KV groups (each with its query heads) in place; returns the model.

    The number of groups removed is `fraction` x KV heads rounded to nearest (the bundled model has
    3 KV heads of 3 query heads each: 0.25 and 0.33 remove one group, 0.5 and 0.6 two). Removing every
    group of a layer is an error. `criterion` as in `prune_mlp`.
    """
    fraction = check_sparsity(fraction, "head fraction")
    cfg = model.config
    groups = cfg.num_key_value_heads
    remove = int(fraction * groups + 0.5)
    if remove >= groups:
        raise PruningError(f"removing {fraction:.0%} of {groups} KV head groups rounds to {remove}: that would "
                           f"remove every attention head of a layer (at most {groups - 1} of {groups} can go, "
                           f"a fraction below {(groups - 0.5) / groups:.2f})")
    if remove == 0:
        return model
    scores = head_group_scores(model, tokenizer=tokenizer, calibration_text=calibration_text,
                               calibration_tokens=calibration_tokens, criterion=criterion)
    q_per_group = cfg.num_attention_heads // groups
    hd = cfg.head_dim
    keep_groups = groups - remove
    for layer, score in zip(model.model.layers, scores):
        attn = layer.self_attn
        kept = torch.topk(score, keep_groups).indices.sort().values.tolist()
        kv_rows = torch.tensor([g * hd + d for g in kept for d in range(hd)], device=attn.k_proj.weight.device)
        q_rows = torch.tensor([(g * q_per_group + h) * hd + d for g in kept for h in range(q_per_group)
                               for d in range(hd)], device=attn.q_proj.weight.device)
        attn.q_proj = _linear(attn.q_proj, attn.q_proj.weight[q_rows])
        attn.k_proj = _linear(attn.k_proj, attn.k_proj.weight[kv_rows])
        attn.v_proj = _linear(attn.v_proj, attn.v_proj.weight[kv_rows])
        attn.o_proj = _linear(attn.o_proj, attn.o_proj.weight[:, q_rows])
        attn.n_heads, attn.n_kv_heads = keep_groups * q_per_group, keep_groups
    model.config = dataclasses.replace(cfg, num_attention_heads=keep_groups * q_per_group,
                                       num_key_value_heads=keep_groups, head_dim=hd)
    return model
