"""Magnitude pruning: remove the weights of smallest |w|, the data-free baseline.

`scope="layer"` gives every matrix its own threshold (each loses the same fraction: the mask is
`torch.nn.utils.prune.l1_unstructured`'s); `scope="global"` ranks all chosen matrices together, so
matrices with small weights lose more. `nm=(N, M)` keeps the N largest of every M consecutive inputs.
"""

from __future__ import annotations

import torch

from ..errors import PruningError
from .masks import apply_mask_, check_sparsity, decoder_linears, mask_for

SCOPES = ("layer", "global")


@torch.no_grad()
def magnitude_prune_(model, sparsity: float = 0.5, *, scope: str = "layer", nm: tuple[int, int] | None = None,
                     layers=None):
    """Zero the smallest-magnitude weights of the decoder matrices in place; returns the model."""
    if scope not in SCOPES:
        raise PruningError(f"unknown magnitude scope {scope!r} (accepted: {', '.join(SCOPES)})")
    linears = decoder_linears(model, layers)
    if nm is None:
        sparsity = check_sparsity(sparsity)
    if scope == "global" and nm is None:
        # One threshold over every chosen weight: the k-th smallest |w| of them all.
        magnitudes = torch.cat([m.weight.detach().abs().float().reshape(-1).cpu() for m in linears.values()])
        k = round(sparsity * magnitudes.numel())
        if k == 0:
            return model
        threshold = torch.kthvalue(magnitudes, k).values
        for linear in linears.values():
            apply_mask_(linear, linear.weight.abs().float() > threshold.to(linear.weight.device))
        return model
    for linear in linears.values():
        apply_mask_(linear, mask_for(linear.weight.detach().abs().float(), sparsity, nm))
    return model
