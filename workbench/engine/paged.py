"""Paged KV cache: a pool of fixed-size blocks, per-sequence block tables, a free list, reference counts.

Memory (`BlockPool`): keys and values of every layer live in `num_blocks * block_size` slots; slot
`b * block_size + i` holds position i of block b. A sequence owns a *block table* (its block ids in
order), so position p of a sequence lives in slot `table[p // block_size] * block_size + p % block_size`.
Bookkeeping (`BlockManager`): which blocks are free, how many sequences share each, and the prefix
cache (`prefix_cache.py`) that lets sequences with a common prefix share full blocks.
`PagedKVCache` is one forward pass's view: it writes the new tokens' keys/values to their slots and
gathers each sequence's context back through its block table for attention.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..errors import CapacityError, InvalidParameterError
from ..model import attention
from .kv_quant import SCALE_DTYPE, dequantize_kv, int8_bytes_per_token, quantize_kv
from .prefix_cache import PrefixCache

KV_DTYPES = ("auto", "int8")


class BlockPool:
    """The K/V tensors: (layers, slots, kv_heads, head_dim), in the model's dtype or int8 + scales."""

    def __init__(self, config, num_blocks: int, block_size: int, dtype: torch.dtype, device="cpu",
                 kv_dtype: str = "auto"):
        if kv_dtype not in KV_DTYPES:
            from ..errors import InvalidParameterError

            raise InvalidParameterError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")
        self.num_blocks, self.block_size, self.dtype, self.kv_dtype = num_blocks, block_size, dtype, kv_dtype
        shape = (config.num_hidden_layers, num_blocks * block_size, config.num_key_value_heads, config.head_dim)
        store = torch.int8 if kv_dtype == "int8" else dtype
        self.k = torch.zeros(shape, dtype=store, device=device)
        self.v = torch.zeros(shape, dtype=store, device=device)
        self.k_scale = self.v_scale = None
        if kv_dtype == "int8":
            self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=SCALE_DTYPE, device=device)
            self.v_scale = torch.zeros_like(self.k_scale)
        self.bytes_per_token = (int8_bytes_per_token(config) if kv_dtype == "int8"
                                else config.kv_bytes_per_token(dtype.itemsize))

    @property
    def nbytes(self) -> int:
        """Bytes the pool's tensors hold (what the allocator gave us)."""
        tensors = [self.k, self.v] + ([self.k_scale, self.v_scale] if self.k_scale is not None else [])
        return sum(t.untyped_storage().nbytes() for t in tensors)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """k, v: (N, kv_heads, head_dim) for the N slots."""
        if self.k_scale is None:
            self.k[layer].index_copy_(0, slots, k.to(self.dtype))
            self.v[layer].index_copy_(0, slots, v.to(self.dtype))
            return
        for store, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, scale = quantize_kv(x)
            store[layer].index_copy_(0, slots, q)
            scales[layer].index_copy_(0, slots, scale)

    def read(self, layer: int, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of whole blocks: block_ids (..., nb) -> (..., nb * block_size, kv_heads, head_dim).

        Whole blocks are copied (block_size * kv_heads * head_dim contiguous values each), which is
        much faster than gathering position by position; attention masks the unused tail.
        """
        def gather(store):
            blocks = store[layer].view(self.num_blocks, -1)[block_ids.reshape(-1)]
            return blocks.view(*block_ids.shape[:-1], -1, *store.shape[-2:])
        if self.k_scale is None:
            return gather(self.k), gather(self.v)
        return (dequantize_kv(gather(self.k), gather(self.k_scale), self.dtype),
                dequantize_kv(gather(self.v), gather(self.v_scale), self.dtype))


@dataclass
class KVBlock:
    id: int
    ref_count: int = 0
    hash: int | None = None           # set once the block is full and registered in the prefix cache
    token_ids: tuple[int, ...] = ()   # every token from position 0 to its end: a hash hit must match them


@dataclass
class BlockTable:
    """One sequence's blocks, and how many of its leading positions hold computed keys/values."""
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_hashed: int = 0               # positions of the leading full blocks already offered to the prefix cache
    last_hash: int | None = None      # hash of the last of those blocks (the next one chains from it)


class BlockManager:
    """Hands out blocks from the free list, counts references, frees, and shares prefixes.

    Free blocks sit in `free` in the order they were freed: allocation takes the oldest, so a freed
    block that still holds a cached prefix survives as long as possible (LRU eviction).
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, hash_fn=None):
        if num_blocks < 1 or block_size < 1:
            raise CapacityError(f"a block pool needs at least one block of at least one slot, got "
                                f"{num_blocks} blocks of {block_size}")
        self.block_size = block_size
        self.kv_blocks = [KVBlock(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.prefix = PrefixCache(hash_fn) if enable_prefix_caching else None

    @property
    def num_blocks(self) -> int:
        return len(self.kv_blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _take(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.kv_blocks[block_id]
        if self.prefix is not None and block.hash is not None:
            self.prefix.forget(block)     # evicted: its old contents are about to be overwritten
        block.ref_count, block.hash, block.token_ids = 1, None, ()
        return block_id

    def _share(self, block_id: int):
        block = self.kv_blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def reuse_prefix(self, table: BlockTable, token_ids: list[int]):
        """For a sequence about to start: share the cached full blocks its tokens begin with.

        The last token is never taken from the cache: it must run through the model to give logits.
        """
        if self.prefix is None or table.block_ids:
            return
        for block_id, h in self.prefix.lookup(token_ids[:-1], self.kv_blocks, self.block_size):
            self._share(block_id)
            table.block_ids.append(block_id)
            table.last_hash = h
        table.num_computed = table.num_hashed = len(table.block_ids) * self.block_size

    def can_grow(self, table: BlockTable, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(table.block_ids) <= self.num_free

    def grow(self, table: BlockTable, num_tokens: int):
        """Give `table` blocks for its first `num_tokens` positions (check `can_grow` first)."""
        for _ in range(self.blocks_for(num_tokens) - len(table.block_ids)):
            table.block_ids.append(self._take())

    def computed(self, table: BlockTable, token_ids: list[int], num_computed: int):
        """Record that positions < num_computed hold keys/values; register newly full blocks."""
        table.num_computed = num_computed
        if self.prefix is None:
            return
        bs = self.block_size
        while (table.num_hashed + bs) <= num_computed:
            block = self.kv_blocks[table.block_ids[table.num_hashed // bs]]
            table.num_hashed += bs
            table.last_hash = self.prefix.register(block, table.last_hash, tuple(token_ids[:table.num_hashed]), bs)

    def release(self, table: BlockTable, uncache: bool = False):
        """Drop the sequence's references; blocks nobody uses go back to the free list.

        `uncache`: their contents are suspect (the sequence failed): blocks nobody else uses leave
        the prefix cache, so no later request reuses them.
        """
        for block_id in reversed(table.block_ids):  # the tail first: evicted before the shared prefix
            block = self.kv_blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if uncache and self.prefix is not None and block.hash is not None:
                    self.prefix.forget(block)
                    block.hash, block.token_ids = None, ()
                self.free[block_id] = None
        table.block_ids, table.num_computed, table.num_hashed, table.last_hash = [], 0, 0, None

    def usage(self, tables) -> tuple[int, int]:
        """(slots allocated, slots holding a computed position) over the blocks the tables use;
        a shared block counts once."""
        filled: dict[int, int] = {}
        bs = self.block_size
        for t in tables:
            for i, block_id in enumerate(t.block_ids):
                filled[block_id] = max(filled.get(block_id, 0), min(bs, max(0, t.num_computed - i * bs)))
        return len(filled) * bs, sum(filled.values())


class PagedKVCache:
    """One forward pass over several sequences at different positions, tokens laid out flat.

    `segments` lists, per sequence, (its block table, start, n): the n new tokens sit at positions
    start..start+n-1 and are consecutive in `input_ids` (1, N); the table covers positions up to
    start+n-1. Sequences adding one token (decoding) are attended together, their block tables
    padded to the longest with a mask; each longer segment (a prompt or a chunk of one) is attended
    alone, causally.
    """

    def __init__(self, pool: BlockPool, segments: list[tuple[list[int], int, int]], device):
        self.pool = pool
        bs = pool.block_size
        offsets, positions, new_slots, offset = [], [], [], 0
        for blocks, start, n in segments:
            offsets.append(offset)
            positions.extend(range(start, start + n))
            new_slots.extend(blocks[p // bs] * bs + p % bs for p in range(start, start + n))
            offset += n
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        self.positions = as_long(positions)[None]
        self.new_slots = as_long(new_slots)
        self.last_rows = as_long([o + n - 1 for o, (_, _, n) in zip(offsets, segments)])
        single = [i for i, (_, _, n) in enumerate(segments) if n == 1]
        self.single_rows = as_long([offsets[i] for i in single])
        self.single_blocks = self.single_mask = None
        if single:
            widest = max(len(segments[i][0]) for i in single)
            self.single_blocks = as_long([segments[i][0] + [0] * (widest - len(segments[i][0])) for i in single])
            lengths = as_long([segments[i][1] + 1 for i in single])
            self.single_mask = (torch.arange(widest * bs, device=device) < lengths[:, None])[:, None, None, :]
        self.chunks = []  # (offset, n, block ids, mask)
        for i, (blocks, start, n) in enumerate(segments):
            if n > 1:  # query t (position start+t) sees keys 0..start+t
                keys = torch.arange(len(blocks) * bs, device=device)
                mask = keys[None, :] <= torch.arange(start, start + n, device=device)[:, None]
                self.chunks.append((offsets[i], n, as_long(blocks), mask))

    def prepare(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape != self.positions.shape:
            raise InvalidParameterError(f"input_ids of shape {tuple(input_ids.shape)} do not match the "
                             f"{self.positions.shape[1]} scheduled tokens")
        return self.positions

    def attend(self, layer: int, q, k, v, attention_fn=attention) -> torch.Tensor:
        """q (1, heads, N, hd), k/v (1, kv_heads, N, hd) -> (1, N, heads*hd)."""
        _, heads, N, hd = q.shape
        self.pool.write(layer, self.new_slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
        out = q.new_empty(N, heads * hd)
        if self.single_blocks is not None:
            keys, values = self.pool.read(layer, self.single_blocks)         # (B, S, kv_heads, hd)
            queries = q[0, :, self.single_rows].transpose(0, 1)[:, :, None]  # (B, heads, 1, hd)
            got = attention_fn(queries, keys.transpose(1, 2), values.transpose(1, 2), self.single_mask)
            out[self.single_rows] = got[:, 0]
        for offset, n, blocks, mask in self.chunks:
            keys, values = self.pool.read(layer, blocks)                     # (S, kv_heads, hd)
            got = attention_fn(q[:, :, offset:offset + n], keys.transpose(0, 1)[None], values.transpose(0, 1)[None],
                            mask)
            out[offset:offset + n] = got[0]
        return out[None]

    def advance(self):
        pass  # the block tables are the engine's: it records what was computed

    def last(self, x: torch.Tensor) -> torch.Tensor:
        """(1, N, D) -> (sequences, 1, D): each sequence's last new token."""
        return x[0, self.last_rows][:, None]


def pool_too_small(num_blocks: int, block_size: int, needed_tokens: int) -> CapacityError:
    return CapacityError(f"a request needing {needed_tokens} KV positions ({-(-needed_tokens // block_size)} "
                         f"blocks of {block_size}) cannot fit in a pool of {num_blocks} blocks; "
                         f"give the engine more blocks or ask for fewer tokens")
