"""Evaluation in process: perplexity of a model on a text (the texts themselves live in `workbench.corpus`)."""

from .perplexity import PerplexityResult, perplexity, weight_only_perplexity

__all__ = ["perplexity", "weight_only_perplexity", "PerplexityResult"]
