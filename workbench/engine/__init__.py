"""Inference engine: sampling and KV-cached generation."""

from .generate import Completion, generate, generate_ids, stream
from .sampling import Sampler, SamplingParams

__all__ = ["Completion", "generate", "generate_ids", "stream", "Sampler", "SamplingParams"]
