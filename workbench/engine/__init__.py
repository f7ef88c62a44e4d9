"""Inference engine: sampling, KV-cached generation, and the batching `Engine` over a paged KV cache."""

from .batching import POLICIES, Policy
from .engine import Engine, EngineConfig, RequestOutput
from .generate import Completion, generate, generate_ids, stream
from .loop import EngineLoop, RequestHandle
from .metrics import request_metrics, summarize
from .sampling import Sampler, SamplingParams, TokenLogprob
from .speculative import SpeculativeStats, check_draft, expected_speedup, expected_tokens, speculative_ids
from .workload import poisson_workload, replay

__all__ = ["Completion", "generate", "generate_ids", "stream", "Sampler", "SamplingParams", "TokenLogprob",
           "Engine", "EngineConfig", "EngineLoop", "RequestHandle", "RequestOutput", "Policy", "POLICIES",
           "poisson_workload", "replay", "request_metrics", "summarize",
           "SpeculativeStats", "check_draft", "expected_speedup", "expected_tokens", "speculative_ids"]
