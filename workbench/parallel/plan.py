"""Which rank holds what: the pure arithmetic of splitting a model (no processes, no tensors).

Tensor parallelism splits every layer across the ranks. Attention is split by whole KV heads, each
with the query heads that read it (grouped-query attention keeps a group on one rank, so attention
needs no communication); the MLP by its intermediate channels; the vocabulary by rows. Counts that
do not divide by the ranks are split unevenly, the first ranks taking one more (9 query / 3 KV heads
on 2 ranks: 6 + 3 query heads, 2 + 1 KV heads). Fewer KV heads than ranks is refused: a rank would
hold no attention at all (Megatron would replicate KV heads; we keep every KV head on one rank).

Pipeline parallelism gives each rank a contiguous run of layers: the first stage also embeds, the
last also holds the final norm and the output head.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParallelError


def even_split(total: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of `parts` contiguous pieces of `total`, sizes differing by at most one (largest first)."""
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + base + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass(frozen=True)
class TensorShard:
    """What rank `rank` of `world` holds under tensor parallelism (all ranges [start, stop))."""

    rank: int
    world: int
    kv_heads: tuple[int, int]
    q_heads: tuple[int, int]
    q_cols: tuple[int, int]   # output rows of q_proj = input columns of o_proj
    kv_cols: tuple[int, int]  # output rows of k_proj and v_proj
    mlp: tuple[int, int]      # output rows of gate/up = input columns of down_proj
    vocab: tuple[int, int]    # rows of the embedding and of the output head

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def num_q_heads(self) -> int:
        return self.q_heads[1] - self.q_heads[0]


def tensor_shards(config, world: int) -> list[TensorShard]:
    """Every rank's `TensorShard`; raises `ParallelError` when the model cannot be split `world` ways."""
    if not isinstance(world, int) or world < 1:
        raise ParallelError(f"tensor parallel size must be a positive integer, got {world!r}")
    kv = config.num_key_value_heads
    if world > kv:
        raise ParallelError(f"tensor parallel size {world} exceeds the model's {kv} KV heads: every rank "
                            f"needs at least one KV head (use --tp <= {kv}, or --pp)")
    group, hd = config.num_attention_heads // kv, config.head_dim
    mlp = even_split(config.intermediate_size, world)
    vocab = even_split(config.vocab_size, world)
    shards = []
    for rank, (k0, k1) in enumerate(even_split(kv, world)):
        shards.append(TensorShard(rank, world, (k0, k1), (k0 * group, k1 * group),
                                  (k0 * group * hd, k1 * group * hd), (k0 * hd, k1 * hd), mlp[rank], vocab[rank]))
    return shards


@dataclass(frozen=True)
class PipelineStage:
    """Rank `rank` of `world` runs layers [layers[0], layers[1]) under pipeline parallelism."""

    rank: int
    world: int
    layers: tuple[int, int]

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.world - 1


def pipeline_stages(config, world: int) -> list[PipelineStage]:
    if not isinstance(world, int) or world < 1:
        raise ParallelError(f"pipeline parallel size must be a positive integer, got {world!r}")
    n = config.num_hidden_layers
    if world > n:
        raise ParallelError(f"pipeline parallel size {world} exceeds the model's {n} layers: every stage "
                            f"needs at least one layer (use --pp <= {n})")
    return [PipelineStage(r, world, b) for r, b in enumerate(even_split(n, world))]
