"""What each scheme moves between ranks, by formula, and a small model of what that costs.

Payloads are what one rank hands to a collective (the tensor's bytes), the quantity `Comm` counts at
run time. *Wire* bytes are what the usual algorithms then send per rank: a ring all-reduce of P
bytes sends 2(w-1)/w x P, a ring all-gather of a shard S sends (w-1) x S, a point-to-point send its
payload.

Tensor parallelism, per token: 2 all-reduces per layer (after o_proj and down_proj) and one for
the embedding, each of hidden_size values, plus one all-gather of the logits (a vocabulary shard).
Pipeline parallelism, per token: one activation of hidden_size values per stage boundary, a
one-number header with it, and the new token back from the last stage to the first.

The performance model (alpha-beta): a decode step of a memory-bound model takes weight bytes /
memory bandwidth, split across the ranks for tensor parallelism, plus for each message its latency
(alpha) and bytes / link bandwidth (beta).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig
from .plan import even_split

HEADER_BYTES = 8  # the int64 "still running" flag ahead of each pipeline activation
TOKEN_BYTES = 8   # an int64 token id


def tensor_parallel_payload(config: ModelConfig, world: int, tokens: int = 1, logit_rows: int = 1,
                            value_bytes: int = 4) -> dict:
    """Calls and payload bytes per rank of one forward pass over `tokens` positions that computes
    logits for `logit_rows` of them (a decode step: 1 and 1 per sequence)."""
    if world == 1:
        return {"all_reduce_calls": 0, "all_reduce_bytes": 0, "all_gather_calls": 0, "all_gather_bytes": 0}
    shard = max(b - a for a, b in even_split(config.vocab_size, world))
    calls = 2 * config.num_hidden_layers + 1
    return {"all_reduce_calls": calls, "all_reduce_bytes": calls * tokens * config.hidden_size * value_bytes,
            "all_gather_calls": 1, "all_gather_bytes": logit_rows * shard * value_bytes}


def tensor_parallel_wire_bytes(config: ModelConfig, world: int, value_bytes: int = 4) -> float:
    """Bytes one rank sends per decoded token with ring all-reduce and all-gather."""
    p = tensor_parallel_payload(config, world, value_bytes=value_bytes)
    return 2 * (world - 1) / world * p["all_reduce_bytes"] + (world - 1) * p["all_gather_bytes"]


def pipeline_sends(config: ModelConfig, world: int, rank: int, group_sizes: list[int], prompt_len: int,
                   steps: int, value_bytes: int = 4) -> dict:
    """Send calls and bytes of rank `rank` over a whole `pipeline_generate_ids` run where every
    micro-batch (of `group_sizes` sequences) runs all `steps` steps (stop tokens ignored)."""
    if world == 1:
        return {"send_calls": 0, "send_bytes": 0}
    if rank == world - 1:  # the new tokens, back to the first stage
        return {"send_calls": steps * len(group_sizes), "send_bytes": steps * sum(group_sizes) * TOKEN_BYTES}
    positions = prompt_len + steps - 1  # the whole prompt at step 0, then one per step
    act = positions * sum(group_sizes) * config.hidden_size * value_bytes
    return {"send_calls": 2 * steps * len(group_sizes), "send_bytes": act + steps * len(group_sizes) * HEADER_BYTES}


def pipeline_bytes_per_token(config: ModelConfig, world: int, value_bytes: int = 4) -> int:
    """Bytes sent by all ranks together per decoded token of one sequence."""
    if world == 1:
        return 0
    return (world - 1) * (config.hidden_size * value_bytes + HEADER_BYTES) + TOKEN_BYTES


def bytes_per_token_table(configs: dict, worlds=(2, 4, 8), value_bytes: int = 2) -> list[dict]:
    """Per decoded token, for each config and rank count: tensor parallelism's payload and ring wire
    bytes per rank and collectives, pipeline parallelism's bytes over all ranks and messages."""
    rows = []
    for name, config in configs.items():
        for w in worlds:
            if w > config.num_key_value_heads:
                continue
            p = tensor_parallel_payload(config, w, value_bytes=value_bytes)
            rows.append({"model": name, "ranks": w, "value_bytes": value_bytes,
                         "tp_payload_per_rank": p["all_reduce_bytes"] + p["all_gather_bytes"],
                         "tp_wire_per_rank": tensor_parallel_wire_bytes(config, w, value_bytes),
                         "tp_collectives": p["all_reduce_calls"] + p["all_gather_calls"],
                         "pp_bytes_all_ranks": pipeline_bytes_per_token(config, w, value_bytes),
                         "pp_messages": 2 * (w - 1) + 1})
    return rows


# ---- configurations on paper ------------------------------------------------------------------
PAPER_CONFIGS = {  # Llama-2 7B and Llama-2 70B (grouped-query attention, 8 KV heads)
    "7B": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      tie_word_embeddings=False),
    "70B": ModelConfig(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=4096,
                       tie_word_embeddings=False),
}


@dataclass(frozen=True)
class Link:
    """A connection between ranks: bandwidth per direction (bytes/s) and latency per message (s)."""

    name: str
    bandwidth: float
    latency: float


# Round, nominal figures for the picture, not measurements.
LINKS = (Link("NVLink (450 GB/s, 3 us)", 450e9, 3e-6), Link("PCIe 4 x16 (25 GB/s, 10 us)", 25e9, 10e-6),
         Link("100 Gb Ethernet (12.5 GB/s, 30 us)", 12.5e9, 30e-6),
         Link("10 Gb Ethernet (1.25 GB/s, 50 us)", 1.25e9, 50e-6))


def decode_weight_bytes(config: ModelConfig, bytes_per_weight: float) -> float:
    """Weight bytes a decode step reads: every matrix (an untied embedding table only its one row)."""
    embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return (config.num_parameters() - embedding) * bytes_per_weight


def all_reduce_s(payload: float, world: int, link: Link) -> float:
    """Ring all-reduce: 2(w-1) steps, each one latency and payload/w bytes."""
    return 2 * (world - 1) * (link.latency + payload / world / link.bandwidth)


def all_gather_s(shard: float, world: int, link: Link) -> float:
    return (world - 1) * (link.latency + shard / link.bandwidth)


def predict_decode_tok_s(config: ModelConfig, scheme: str, world: int, link: Link, *, memory_bandwidth: float,
                         bytes_per_weight: float = 2.0, value_bytes: int = 2, batch: int = 1,
                         step_overhead_s: float = 0.0) -> float:
    """Predicted decode tokens/s (all sequences together) for "single", "tp" or "pp" on `world` ranks.

    `memory_bandwidth` is one rank's (bytes/s); `step_overhead_s` is per-step time that does not shrink
    with the ranks (framework dispatch). Pipeline: `world` micro-batches of `batch` sequences in flight,
    so `world x batch` tokens per step, each stage reading its share of the weights once per micro-batch.
    """
    weights = decode_weight_bytes(config, bytes_per_weight)
    if scheme == "single" or world == 1:
        return batch / (weights / memory_bandwidth + step_overhead_s)
    if scheme == "tp":
        p = tensor_parallel_payload(config, world, tokens=batch, logit_rows=batch, value_bytes=value_bytes)
        comm = p["all_reduce_calls"] * all_reduce_s(p["all_reduce_bytes"] / p["all_reduce_calls"], world, link)
        comm += all_gather_s(p["all_gather_bytes"], world, link)
        return batch / (weights / world / memory_bandwidth + step_overhead_s + comm)
    if scheme == "pp":
        hop = link.latency + batch * (config.hidden_size * value_bytes + HEADER_BYTES) / link.bandwidth
        stage = weights / world / memory_bandwidth + step_overhead_s / world
        # A step: each micro-batch goes round all `world` stages and `world` hops (the last carries the
        # token back); with `world` micro-batches in flight every stage is busy all that time.
        return world * batch / (world * (stage + hop))
    raise ValueError(f"unknown scheme {scheme!r}: single, tp or pp")
