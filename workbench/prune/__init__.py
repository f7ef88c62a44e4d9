"""Pruning: unstructured (magnitude, Wanda, SparseGPT), N:M, structured (MLP channels, head groups),
sensitivity analysis and recovery fine-tuning. `prune_(model, "wanda:0.5", tokenizer=tok)`."""

from .api import SPECS, PruneSpec, parse_spec, prune_
from .magnitude import magnitude_prune_
from .masks import nm_mask, row_mask, sparsity_report, tensor_mask
from .sparsegpt import sparsegpt_prune_, sparsegpt_prune_weight
from .structured import prune_heads, prune_mlp
from .wanda import wanda_prune_

__all__ = ["prune_", "parse_spec", "PruneSpec", "SPECS", "magnitude_prune_", "wanda_prune_", "sparsegpt_prune_",
           "sparsegpt_prune_weight", "prune_mlp", "prune_heads", "tensor_mask", "row_mask", "nm_mask",
           "sparsity_report"]
