"""Pruning: unstructured (magnitude, Wanda, SparseGPT), N:M, structured (MLP channels, head groups),
sensitivity analysis and recovery fine-tuning."""

from .structured import prune_heads, prune_mlp

__all__ = ["prune_mlp", "prune_heads"]
