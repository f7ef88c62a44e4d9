"""Exercises of notebook 12: the KV bytes an exported decode step takes in, LoRA's trainable parameters, and the
draft length that speculative decoding should use."""

from __future__ import annotations

import math

from .checking import Exercise, Verdict, bundled_config, call_answer, expect_close, expect_equal


# --- ONNX export: a decode step's graph takes the whole KV cache as inputs -----------------------------

def kv_input_bytes_solution(past: int = 512, batch: int = 1, dtype_bytes: int = 4) -> int:
    """Bytes of past keys and values one decode step hands to the graph: every layer's keys and values."""
    c = bundled_config()
    return 2 * c.num_hidden_layers * batch * c.num_key_value_heads * past * c.head_dim * dtype_bytes


def check_kv_input_bytes(answer) -> Verdict:
    """Bytes of `past_key_*`/`past_value_*` inputs of one float32 decode step at batch 1, 512 positions."""
    c = bundled_config()
    return expect_close(answer, kv_input_bytes_solution(), "past key/value bytes per step", rel=0.001,
                        unit="bytes", hint=f"{c.num_hidden_layers} layers, each with keys and values of shape "
                                           "(batch, kv heads, past, head dim); grouped-query attention has "
                                           "fewer kv heads than query heads.")


# --- LoRA: trainable parameters of rank-r adapters ------------------------------------------------------

def projection_shapes() -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each projection of one layer."""
    c = bundled_config()
    h, i = c.hidden_size, c.intermediate_size
    return {"q_proj": (h, c.q_dim), "k_proj": (h, c.kv_dim), "v_proj": (h, c.kv_dim), "o_proj": (c.q_dim, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def lora_parameters_solution(rank: int = 16, targets: tuple[str, ...] | None = None) -> int:
    """Trainable parameters of rank-`rank` LoRA on `targets` (None: all seven projections) of every layer."""
    shapes = projection_shapes()
    per_layer = sum(rank * (n_in + n_out) for name, (n_in, n_out) in shapes.items()
                    if targets is None or name in targets)  # A: r x in, B: out x r
    return bundled_config().num_hidden_layers * per_layer


def check_lora_parameters(answer) -> Verdict:
    """Trainable parameters of LoRA with r=16 on all seven projections of every layer."""
    return expect_equal(answer, lora_parameters_solution(), "trainable LoRA parameters (r=16, all projections)",
                        hint="A is r x in_features and B is out_features x r, for each of the seven projections "
                             "(q, k, v, o, gate, up, down) of every layer; k and v are narrower than q.")


# --- Speculative decoding: tokens per verify step, and the best draft length ---------------------------

def expected_tokens_solution(alpha: float, k: int) -> float:
    """Tokens one verify step yields when each draft token is accepted with probability alpha: the
    accepted prefix plus the target's own next token."""
    return float(k + 1) if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


CASES = [(0.0, 4), (0.5, 1), (0.6, 3), (0.8, 5), (0.9, 8), (1.0, 4)]


def check_expected_tokens(fn) -> Verdict:
    """`fn(alpha, k)`: the expected number of tokens one verify step yields."""
    for alpha, k in CASES:
        got, verdict = call_answer(fn, alpha, k)
        if verdict is not None:
            return verdict
        want = expected_tokens_solution(alpha, k)
        if not math.isclose(float(got), want, rel_tol=1e-6):
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
    Exercise("kv_input_bytes", check_kv_input_bytes, kv_input_bytes_solution,
             lambda: [kv_input_bytes_solution() // 2, kv_input_bytes_solution() * 3]),  # keys only; q heads
    Exercise("lora_parameters", check_lora_parameters, lora_parameters_solution,
             lambda: [lora_parameters_solution(8), lora_parameters_solution(targets=("q_proj", "v_proj"))]),
    Exercise("expected_tokens", check_expected_tokens, lambda: expected_tokens_solution,
             lambda: [lambda a, k: 1 + a * k, lambda a, k: (1 - a ** k) / (1 - a), "not a function"]),
    Exercise("best_draft_length", check_best_draft_length, best_draft_length_solution,
             lambda: [1, 8, best_draft_length_solution(0.9, 0.2)]),
]
