"""Wanda: prune by |weight| x input-activation norm, compared within each output row.

Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models" (2023,
arXiv:2306.11695). For a Linear with weight W (out x in) and calibration inputs X (tokens x in):

    score[i, j] = |W[i, j]| * ||X[:, j]||_2

A weight that is small but multiplies a loud input channel matters more than its magnitude says (LLM
activations have a few channels far larger than the rest). Each output row loses its own lowest
scores (every output keeps the same number of inputs), or with N:M, every M consecutive inputs keep
their N best. No weight update, one calibration pass: the activations are collected with
`workbench.quant.calibration.collect_activations` on the dense model (its per-channel rms is
||X[:, j]|| / sqrt(tokens), the same ranking).
"""

from __future__ import annotations

import torch

from .masks import apply_mask_, check_sparsity, decoder_linears, mask_for

CALIBRATION_TOKENS = 2048


def wanda_scores(weight: torch.Tensor, input_rms: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float() * input_rms.to(weight.device).float().unsqueeze(0)


@torch.no_grad()
def wanda_prune_(model, tokenizer, sparsity: float = 0.5, *, nm: tuple[int, int] | None = None, layers=None,
                 calibration_text=None, calibration_tokens: int = CALIBRATION_TOKENS, window: int = 512):
    """Prune the decoder matrices in place by Wanda's score; returns the model.

    `calibration_text` defaults to the built-in calibration part (first `calibration_tokens` tokens)."""
    from ..quant.calibration import collect_activations

    if nm is None:
        sparsity = check_sparsity(sparsity)
    linears = decoder_linears(model, layers)
    stats = collect_activations(model, tokenizer, calibration_text, max_tokens=calibration_tokens,
                                window=window, layers=list(linears), sample_tokens=1)
    for name, linear in linears.items():
        apply_mask_(linear, mask_for(wanda_scores(linear.weight, stats[name].rms), sparsity, nm, per_row=True))
    return model
