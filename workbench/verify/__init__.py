"""Our engine checked against a reference implementation (transformers' LlamaForCausalLM)."""

from .reference import DEFAULT_PROMPTS, load_reference, reference_greedy, verify

__all__ = ["DEFAULT_PROMPTS", "load_reference", "reference_greedy", "verify"]
