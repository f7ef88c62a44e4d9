"""Exercises of notebook 12: the KV inputs of an exported graph, LoRA's trainable parameters, and the
draft length that speculative decoding should use."""

from __future__ import annotations

import math
from functools import lru_cache

from ..checkpoints.gguf_file import GGUFCheckpoint
from ..checkpoints.registry import DEFAULT_MODEL, bundled_path
from ..config import ModelConfig
from .checking import Exercise, Verdict, expect_close, expect_equal, not_answered


@lru_cache(maxsize=1)
def bundled_config() -> ModelConfig:
    """The bundled model's shape, read from its GGUF header (no weights loaded)."""
    return GGUFCheckpoint(bundled_path(DEFAULT_MODEL)).config


# --- ONNX export: a decode step's graph takes the whole KV cache as inputs -----------------------------

def kv_cache_inputs_solution() -> int:
    return 2 * bundled_config().num_hidden_layers  # one key and one value tensor per layer


def check_kv_cache_inputs(answer) -> Verdict:
    """How many past key/value tensors does the exported decode graph take as inputs?"""
    return expect_equal(answer, kv_cache_inputs_solution(), "past key/value inputs",
                        hint="every layer keeps its own keys and its own values.")


# --- LoRA: trainable parameters of rank-r adapters on the query and value projections -----------------

def lora_parameters_solution(rank: int = 8) -> int:
    c = bundled_config()
    per_layer = rank * (c.hidden_size + c.q_dim) + rank * (c.hidden_size + c.kv_dim)  # A: r x in, B: out x r
    return c.num_hidden_layers * per_layer


def check_lora_parameters(answer) -> Verdict:
    """Trainable parameters of LoRA with r=8 on q_proj and v_proj of every layer."""
    c = bundled_config()
    return expect_equal(answer, lora_parameters_solution(), "trainable LoRA parameters (r=8, q_proj+v_proj)",
                        hint=f"A is r x in_features and B is out_features x r; v_proj maps {c.hidden_size} to "
                             f"{c.kv_dim} (grouped-query attention), q_proj {c.hidden_size} to {c.q_dim}.")


# --- Speculative decoding: tokens per verify step, and the best draft length ---------------------------

def expected_tokens_solution(alpha: float, k: int) -> float:
    """Tokens one verify step yields when each draft token is accepted with probability alpha: the
    accepted prefix plus the target's own next token."""
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


CASES = [(0.0, 4), (0.5, 1), (0.6, 3), (0.8, 5), (0.9, 8), (1.0, 4)]


def check_expected_tokens(fn) -> Verdict:
    """`fn(alpha, k)`: the expected number of tokens one verify step yields."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    if not callable(fn):
        return Verdict(False, "pass a function of (alpha, k), e.g. `def f(alpha, k): ...`.")
    for alpha, k in CASES:
        try:
            got = fn(alpha, k)
        except Exception as e:  # the learner's code: report, do not raise
            return Verdict(False, f"fn({alpha}, {k}) raised {type(e).__name__}: {e}")
        want = expected_tokens_solution(alpha, k)
        if got is None or not math.isclose(float(got), want, rel_tol=1e-6):
            return Verdict(False, f"fn({alpha}, {k}) = {got!r}, expected {want:.4f}. Hint: the first draft "
                                  "token is accepted with probability alpha, the first two with alpha**2, ... and "
                                  "the target always adds one token of its own.")
    return Verdict(True, f"your formula matches on {len(CASES)} cases, alpha = 1 included.")


def best_draft_length_solution(alpha: float = 0.7, cost_ratio: float = 0.2, k_max: int = 8) -> int:
    """The k in 1..k_max with the largest speed-up E(alpha, k) / (k * cost_ratio + 1), where a draft
    step costs `cost_ratio` of a target step and the verify pass costs one target step."""
    return max(range(1, k_max + 1), key=lambda k: expected_tokens_solution(alpha, k) / (k * cost_ratio + 1))


def check_best_draft_length(answer) -> Verdict:
    """The best k for alpha = 0.7 and a draft that costs 0.2 of a target step (k from 1 to 8)."""
    best = best_draft_length_solution()
    verdict = expect_equal(answer, best, "best draft length k",
                           hint="compute the speed-up E(alpha, k) / (k * 0.2 + 1) for k = 1..8 and take the largest.")
    if not verdict and isinstance(answer, int) and 1 <= answer <= 8:
        speed = expected_tokens_solution(0.7, answer) / (answer * 0.2 + 1)
        top = expected_tokens_solution(0.7, best) / (best * 0.2 + 1)
        return Verdict(False, f"k = {answer} gives a speed-up of {speed:.3f}x; another k gives {top:.3f}x.")
    return verdict


EXERCISES = [
    Exercise("kv_cache_inputs", check_kv_cache_inputs, kv_cache_inputs_solution,
             lambda: [bundled_config().num_hidden_layers, 4 * bundled_config().num_hidden_layers]),
    Exercise("lora_parameters", check_lora_parameters, lora_parameters_solution,
             lambda: [2 * bundled_config().num_hidden_layers * 8 * 2 * bundled_config().hidden_size,  # v_proj as square
                      lora_parameters_solution(16)]),
    Exercise("expected_tokens", check_expected_tokens, lambda: expected_tokens_solution,
             lambda: [lambda a, k: 1 + a * k, lambda a, k: (1 - a ** k) / (1 - a), "not a function"]),
    Exercise("best_draft_length", check_best_draft_length, best_draft_length_solution,
             lambda: [1, 8, best_draft_length_solution(0.9, 0.2)]),
]
