"""Evaluation: the built-in corpus and perplexity."""

from .corpus import builtin_text, load_text
from .perplexity import PerplexityResult, perplexity

__all__ = ["builtin_text", "load_text", "perplexity", "PerplexityResult"]
