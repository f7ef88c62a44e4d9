"""Checks for notebook 11 (parallelism): how tensor parallelism splits KV heads, the bytes one rank
hands to collectives per token, and the link latency at which tensor parallelism stops paying."""

from __future__ import annotations

from ..config import ModelConfig
from ..parallel.cost import LINKS, PAPER_CONFIGS, Link, predict_decode_tok_s, tensor_parallel_payload
from ..parallel.plan import tensor_shards
from .checking import Exercise, Verdict, call_answer, expect_close, not_answered

BANDWIDTH = 2e12            # one GPU's memory bandwidth in the notebook's performance model (bytes/s)
HEAD_CASES = [(3, 2), (8, 8), (8, 3), (12, 5), (1, 1), (32, 4)]   # (KV heads, ranks)


# -- 1. KV heads per rank ----------------------------------------------------------------------------------

def kv_heads_per_rank(num_kv_heads: int, world: int) -> list[int]:
    config = ModelConfig.tiny(num_key_value_heads=num_kv_heads, num_attention_heads=2 * num_kv_heads,
                              hidden_size=64 * num_kv_heads)
    return [s.num_kv_heads for s in tensor_shards(config, world)]


def check_kv_heads_per_rank(fn) -> Verdict:
    """`fn(num_kv_heads, world)`: how many KV heads each rank holds, rank 0 first (every rank whole
    heads, as even as possible, the larger shares first)."""
    if (verdict := not_answered(fn)) is not None:
        return verdict
    for case in HEAD_CASES:
        expected = kv_heads_per_rank(*case)
        got, verdict = call_answer(fn, *case)
        if verdict is not None:
            return verdict
        if list(got) != expected:
            return Verdict(False, f"{case[0]} KV heads on {case[1]} ranks: you give {list(got)}, "
                                  f"workbench.parallel.tensor_shards gives {expected}. Hint: divmod(heads, ranks); "
                                  "the first `remainder` ranks take one more.")
    return Verdict(True, f"your split equals tensor_shards' on {len(HEAD_CASES)} cases.")


def _heads_wrong():
    return [lambda h, w: [h // w] * w, lambda h, w: [-(-h // w)] * w,
            lambda h, w: [h // w] * (w - 1) + [h - h // w * (w - 1)]]   # the remainder on the last rank


# -- 2. bytes to collectives per token -----------------------------------------------------------------------

def tp_payload_per_token(config=PAPER_CONFIGS["70B"], world: int = 4, value_bytes: int = 2) -> int:
    p = tensor_parallel_payload(config, world, value_bytes=value_bytes)
    return p["all_reduce_bytes"] + p["all_gather_bytes"]


def check_tp_payload(answer) -> Verdict:
    """`answer`: bytes one rank hands to collectives per decoded token, Llama-2 70B on 4 ranks, bfloat16."""
    return expect_close(answer, tp_payload_per_token(), "payload per token", rel=0, unit="B",
                        hint="(2 x layers + 1) all-reduces of hidden_size values, plus one all-gather of this "
                             "rank's quarter of the vocabulary's logits; 2 bytes a value.")


def _payload_wrong():
    c = PAPER_CONFIGS["70B"]
    return [2 * c.num_hidden_layers * c.hidden_size * 2 + c.vocab_size // 4 * 2,        # forgets the embedding's
            (2 * c.num_hidden_layers + 1) * c.hidden_size * 2 + c.vocab_size * 2,       # the whole vocabulary
            tp_payload_per_token(value_bytes=4)]                                          # float32


# -- 3. where tensor parallelism stops paying ---------------------------------------------------------------

def break_even_latency(config=PAPER_CONFIGS["7B"], world: int = 8, bandwidth: float = LINKS[0].bandwidth) -> float:
    """The per-message latency at which tp{world} decodes no faster than one device (bisection)."""
    single = predict_decode_tok_s(config, "single", world, LINKS[0], memory_bandwidth=BANDWIDTH)

    def faster(latency):
        return predict_decode_tok_s(config, "tp", world, Link("probe", bandwidth, latency),
                                    memory_bandwidth=BANDWIDTH) > single
    low, high = 0.0, 1e-3
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if faster(mid) else (low, mid)
    return high


def check_break_even_latency(answer) -> Verdict:
    """`answer`: seconds of latency per message at which tp8 of Llama-2 7B stops beating one device
    (NVLink's bandwidth, the notebook's 2 TB/s memory), within 25%."""
    return expect_close(answer, break_even_latency(), "break-even latency", rel=0.25, unit="s",
                        hint="raise Link(..., latency) until predict_decode_tok_s(..., 'tp', 8, ...) is no "
                             "more than 'single' (answer in seconds, not microseconds).")


EXERCISES = [
    Exercise("kv_heads_per_rank", check_kv_heads_per_rank,
             lambda: (lambda h, w: [h // w + (r < h % w) for r in range(w)]), _heads_wrong),
    Exercise("tp_payload", check_tp_payload, tp_payload_per_token, _payload_wrong),
    Exercise("break_even_latency", check_break_even_latency, break_even_latency,
             lambda: [break_even_latency() * 1e6, break_even_latency() * 2, break_even_latency() / 2]),
]
