"""Tensor parallelism, Megatron-style: every layer split across the ranks, two all-reduces per layer.

In each decoder layer, q/k/v and gate/up are split by output rows (column parallel: each rank
computes its own heads and MLP channels from the whole input, no communication), o_proj and
down_proj by input columns (row parallel: each rank's partial product, then one all-reduce sums
them). The embedding and the tied output head are split by vocabulary rows: a rank looks up only its
own tokens (zeros elsewhere, summed by an all-reduce) and computes the logits of its own rows, which
an all-gather joins. The KV cache is sharded with the heads: each rank caches only its KV heads.

Packed int8/int4 layers are split the same way, by slicing their integers and scales (quantize
first, then shard: each rank holds exactly its rows or columns of the single-process layer, so the
sharded model computes what the whole one does). An int4 layer split by columns needs the cut on a
group boundary; int8 keeps its per-row scales whole. Other formats are refused.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import ParallelError
from ..model import KVCache, LlamaModel
from ..quant.linear import Int4WeightOnlyLinear, Int8WeightOnlyLinear, QuantizedEmbedding, QuantizedLinear
from .comm import Comm
from .plan import TensorShard, tensor_shards


# ---- slicing one layer -------------------------------------------------------------------------
def _float_linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight.contiguous().clone(), requires_grad=False)
    return layer


def slice_rows(layer: nn.Module, start: int, stop: int) -> nn.Module:
    """Output rows [start, stop) of a linear layer (float or packed) as a new, smaller layer."""
    if isinstance(layer, nn.Linear):
        return _float_linear(layer.weight.detach()[start:stop])
    if type(layer) is Int8WeightOnlyLinear:
        out = Int8WeightOnlyLinear.empty(layer.in_features, stop - start)
        out.qweight, out.scale = layer.qweight[start:stop].clone(), layer.scale[start:stop].clone()
        return out
    if type(layer) is Int4WeightOnlyLinear:
        out = Int4WeightOnlyLinear.empty(layer.in_features, stop - start, group_size=layer.group_size)
        for name in ("packed", "scale", "zero_point"):
            setattr(out, name, getattr(layer, name)[start:stop].clone())
        return out
    raise _unsupported(layer)


def slice_cols(layer: nn.Module, start: int, stop: int) -> nn.Module:
    """Input columns [start, stop) of a linear layer (float or packed) as a new, smaller layer."""
    if isinstance(layer, nn.Linear):
        return _float_linear(layer.weight.detach()[:, start:stop])
    if type(layer) is Int8WeightOnlyLinear:  # per-row scales apply to every column: keep them whole
        out = Int8WeightOnlyLinear.empty(stop - start, layer.out_features)
        out.qweight, out.scale = layer.qweight[:, start:stop].contiguous(), layer.scale.clone()
        return out
    if type(layer) is Int4WeightOnlyLinear:
        g = layer.group_size
        if start % g or (stop % g and stop != layer.in_features):
            raise ParallelError(f"int4-g{g} layer of {layer.in_features} inputs cannot be cut at columns "
                                f"[{start}, {stop}) without splitting a group; use a group size dividing "
                                f"{start or stop} or another --tp")
        padded_stop = -(-stop // g) * g
        out = Int4WeightOnlyLinear.empty(stop - start, layer.out_features, group_size=g)
        out.packed = layer.packed[:, start // 2:padded_stop // 2].contiguous()
        out.scale = layer.scale[:, start // g:padded_stop // g].contiguous()
        out.zero_point = layer.zero_point[:, start // g:padded_stop // g].contiguous()
        return out
    raise _unsupported(layer)


def _unsupported(layer) -> ParallelError:
    fmt = getattr(layer, "format", type(layer).__name__)
    return ParallelError(f"tensor parallelism splits float, int8 and int4 layers; this model has {fmt} layers")


# ---- the parallel modules ----------------------------------------------------------------------
class RowParallelLinear(nn.Module):
    """A layer holding some input columns: each rank's partial product, summed over the ranks."""

    def __init__(self, inner: nn.Module, comm: Comm):
        super().__init__()
        self.inner, self.comm = inner, comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.inner(x))


class VocabParallelHead(nn.Module):
    """The output head's rows for this rank's vocabulary slice; logits of all slices gathered."""

    def __init__(self, inner: nn.Module, sizes: list[int], comm: Comm):
        super().__init__()
        self.inner, self.sizes, self.comm = inner, sizes, comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_gather_last(self.inner(x), self.sizes)


class VocabParallelEmbedding(nn.Module):
    """Token rows [start, stop) of the embedding: ids outside look up zeros; an all-reduce fills them in."""

    def __init__(self, table: nn.Module, start: int, stop: int, comm: Comm):
        super().__init__()
        self.table, self.start, self.stop, self.comm = table, start, stop, comm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        mine = (local >= 0) & (local < self.stop - self.start)
        rows = self.table(local.clamp(0, self.stop - self.start - 1))
        return self.comm.all_reduce(rows * mine.unsqueeze(-1).to(rows.dtype))


class TensorParallelModel(nn.Module):
    """One rank's shard of a `LlamaModel`: the same `forward(input_ids, cache, last_only)` returning
    the full logits on every rank, and `new_cache` holding this rank's KV heads only."""

    def __init__(self, model: LlamaModel, shard: TensorShard, comm: Comm):
        super().__init__()
        self.model, self.shard, self.comm = model, shard, comm
        self.config = model.config
        self.local_config = dataclasses.replace(model.config, num_attention_heads=shard.num_q_heads,
                                                num_key_value_heads=shard.num_kv_heads)

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.device

    def forward(self, input_ids, cache=None, last_only: bool = False):
        return self.model(input_ids, cache, last_only)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        return KVCache(self.local_config, batch_size, max_len or self.config.max_position_embeddings,
                       self.dtype, self.device)

    def weight_bytes(self) -> int:
        return self.model.weight_bytes()


def shard_tensor_parallel(model: LlamaModel, comm: Comm) -> TensorParallelModel:
    """Cut `model` (float, or quantized to int8/int4 as a whole) down to rank `comm.rank`'s shard, in
    place, and wrap it. Every rank must call this on the same model."""
    shards = tensor_shards(model.config, comm.world)
    shard = shards[comm.rank]
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = slice_rows(attn.q_proj, *shard.q_cols)
        attn.k_proj = slice_rows(attn.k_proj, *shard.kv_cols)
        attn.v_proj = slice_rows(attn.v_proj, *shard.kv_cols)
        attn.o_proj = RowParallelLinear(slice_cols(attn.o_proj, *shard.q_cols), comm)
        attn.n_heads, attn.n_kv_heads = shard.num_q_heads, shard.num_kv_heads
        mlp.gate_proj = slice_rows(mlp.gate_proj, *shard.mlp)
        mlp.up_proj = slice_rows(mlp.up_proj, *shard.mlp)
        mlp.down_proj = RowParallelLinear(slice_cols(mlp.down_proj, *shard.mlp), comm)
    v0, v1 = shard.vocab
    sizes = [s.vocab[1] - s.vocab[0] for s in shards]
    tied = model.config.tie_word_embeddings
    head = slice_rows(model.lm_head, v0, v1)
    embed = model.model.embed_tokens
    if tied and isinstance(head, QuantizedLinear):
        table = QuantizedEmbedding(head)  # one packed copy serves both, as in the whole model
    elif tied:
        table = nn.Embedding(v1 - v0, model.config.hidden_size, _weight=head.weight)
    elif isinstance(embed, nn.Embedding):
        table = nn.Embedding(v1 - v0, model.config.hidden_size, _weight=embed.weight.detach()[v0:v1].clone())
    else:
        raise ParallelError(f"cannot split an embedding of type {type(embed).__name__}")
    model.lm_head = VocabParallelHead(head, sizes, comm)
    model.model.embed_tokens = VocabParallelEmbedding(table, v0, v1, comm)
    return TensorParallelModel(model, shard, comm)
