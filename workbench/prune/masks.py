"""Masks: which weights a pruning criterion removes, given its scores (larger score = keep).

Three patterns, each over a score tensor of a weight's shape (out_features, in_features):
- per tensor: the `round(sparsity * numel)` lowest scores of the whole tensor go (as
  `torch.nn.utils.prune.l1_unstructured` does with |W| as the score);
- per output row: each row loses its own `round(sparsity * in_features)` lowest (Wanda's comparison group);
- N:M: in every run of M consecutive inputs of a row, the N highest scores stay (2:4, 4:8).
A mask is a bool tensor, True = keep. Pruned weights stay in the dense tensor as zeros.
"""

from __future__ import annotations

import fnmatch

import pandas as pd
import torch
from torch import nn

from ..errors import PruningError

# The matrices of a decoder layer that unstructured and N:M pruning act on (as the papers do: the
# embedding and the tied output head stay dense).
DECODER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def check_sparsity(sparsity, what: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise PruningError(f"{what} must be a number in [0, 1) (the fraction removed), got {sparsity!r}")
    return float(sparsity)


def check_nm(n, m) -> tuple[int, int]:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, m)) or not 0 < n <= m:
        raise PruningError(f"N:M pattern needs integers 0 < N <= M (N weights kept in every M), got {n}:{m}")
    return n, m


def tensor_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the `round(sparsity * numel)` lowest scores of the whole tensor."""
    k = round(check_sparsity(sparsity) * scores.numel())
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.view(-1)[torch.topk(scores.reshape(-1), k, largest=False).indices] = False
    return mask


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the `round(sparsity * in_features)` lowest scores of every output row."""
    k = round(check_sparsity(sparsity) * scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return mask


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores in every group of M consecutive inputs of each row."""
    n, m = check_nm(n, m)
    rows, cols = scores.shape
    if cols % m:
        raise PruningError(f"N:M pruning needs in_features divisible by M: {cols} is not a multiple of {m}")
    groups = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.topk(groups, n, dim=2).indices, True)
    return mask.reshape(rows, cols)


def mask_for(scores: torch.Tensor, sparsity: float | None = None, nm: tuple[int, int] | None = None,
             per_row: bool = False) -> torch.Tensor:
    """The mask of one pattern: N:M when `nm` is given, else per row or per tensor at `sparsity`."""
    if nm is not None:
        return nm_mask(scores, *nm)
    return row_mask(scores, sparsity) if per_row else tensor_mask(scores, sparsity)


def decoder_linears(model, layers=None) -> dict[str, nn.Linear]:
    """{name: nn.Linear} of the decoder layers' matrices, optionally filtered by names or glob patterns
    such as ``"model.layers.3.*"`` or ``["*.mlp.*"]``; a pattern that matches nothing is an error."""
    linears = {}
    for i, layer in enumerate(model.model.layers):
        for name in DECODER_LINEARS:
            module = layer.get_submodule(name)
            if not isinstance(module, nn.Linear):
                raise PruningError(f"model.layers.{i}.{name} is {type(module).__name__}, not a float nn.Linear: "
                                   "prune before quantizing (`--prune` runs before `--quant`)")
            linears[f"model.layers.{i}.{name}"] = module
    if layers is None:
        return linears
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = set()
    for pattern in patterns:
        matched = [n for n in linears if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise PruningError(f"no prunable layer matches {pattern!r} (prunable: the decoder matrices "
                               f"{', '.join(DECODER_LINEARS)} of model.layers.0..{len(model.model.layers) - 1}, "
                               "e.g. 'model.layers.3.*' or '*.mlp.*')")
        chosen.update(matched)
    return {n: m for n, m in linears.items() if n in chosen}


@torch.no_grad()
def apply_mask_(linear: nn.Linear, mask: torch.Tensor):
    linear.weight.mul_(mask.to(linear.weight.device, linear.weight.dtype))


def sparsity_report(model, layers=None) -> pd.DataFrame:
    """One row per decoder matrix: shape, weights, zeros and the fraction that is zero."""
    rows = []
    for name, linear in decoder_linears(model, layers).items():
        w = linear.weight
        zeros = int((w == 0).sum())
        rows.append({"name": name, "shape": tuple(w.shape), "numel": w.numel(), "zeros": zeros,
                     "sparsity": zeros / w.numel()})
    return pd.DataFrame(rows)
