"""Paged KV cache: block bookkeeping, prefix sharing (collisions included), memory by formula, attention."""

from __future__ import annotations

import pytest
import torch

from workbench import load_model
from workbench.engine.paged import BlockManager, BlockPool, BlockTable, PagedKVCache
from workbench.errors import CapacityError


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def test_blocks_are_counted_shared_and_all_freed():
    m = BlockManager(num_blocks=8, block_size=4)
    a, b = BlockTable(), BlockTable()
    tokens = list(range(100, 110))                      # 10 tokens: blocks of 4, 4 and 2
    m.grow(a, len(tokens))
    assert len(a.block_ids) == 3 and m.num_free == 5
    m.computed(a, tokens, len(tokens))                  # two full blocks enter the prefix cache
    m.reuse_prefix(b, tokens[:9] + [7])                 # same first 8 tokens: shares both full blocks
    assert b.block_ids == a.block_ids[:2] and b.num_computed == 8
    assert [m.kv_blocks[i].ref_count for i in a.block_ids] == [2, 2, 1]
    m.release(a)
    assert m.num_free == 6                              # the shared blocks are still held by b
    m.release(b)
    assert m.num_free == 8 and all(blk.ref_count == 0 for blk in m.kv_blocks)


def test_freed_prefix_is_found_again_until_evicted():
    m = BlockManager(num_blocks=3, block_size=4)
    a = BlockTable()
    tokens = list(range(9))
    m.grow(a, 9)
    m.computed(a, tokens, 9)
    m.release(a)
    b = BlockTable()
    m.reuse_prefix(b, tokens)                           # freed, but still cached
    assert b.num_computed == 8
    m.release(b)
    c = BlockTable()
    m.grow(c, 12)                                       # takes every block: the cached prefix is evicted
    m.release(c)
    d = BlockTable()
    m.reuse_prefix(d, tokens)
    assert d.block_ids == [] and d.num_computed == 0


def test_hash_collisions_never_share_different_tokens():
    m = BlockManager(num_blocks=8, block_size=2, hash_fn=lambda prev, tokens: 0)  # every block collides
    a, b = BlockTable(), BlockTable()
    m.grow(a, 4)
    m.computed(a, [1, 2, 3, 4], 4)
    m.reuse_prefix(b, [1, 2, 9, 9, 5])                  # the first block matches, the second does not
    assert b.block_ids == a.block_ids[:1]                     # never the block holding [3, 4]
    m.release(b)
    c = BlockTable()
    m.reuse_prefix(c, [5, 6, 7])                        # hash 0 is taken by [1, 2]: a collision, a miss
    assert c.block_ids == []


def test_grow_refuses_more_blocks_than_free():
    m = BlockManager(num_blocks=2, block_size=4)
    t = BlockTable()
    assert m.can_grow(t, 8) and not m.can_grow(t, 9)
    with pytest.raises(CapacityError):
        BlockManager(num_blocks=0, block_size=4)


@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
def test_pool_bytes_equal_the_formula(tiny, kv_dtype):
    model, _ = tiny
    cfg = model.config
    pool = BlockPool(cfg, num_blocks=5, block_size=16, dtype=torch.float32, kv_dtype=kv_dtype)
    per_value = 1 if kv_dtype == "int8" else 4
    per_head_extra = 2 if kv_dtype == "int8" else 0     # the float16 scale of each (token, head)
    formula = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.head_dim * per_value + per_head_extra)
    assert pool.bytes_per_token == formula
    assert pool.nbytes == 5 * 16 * formula
    assert model.new_cache(1, 80).nbytes == 80 * cfg.kv_bytes_per_token(4)


@torch.inference_mode()
def test_paged_attention_equals_contiguous_for_mixed_segments(tiny):
    """One forward over a decode token, a fresh prompt and a continued chunk gives each sequence's
    logits as if it ran alone with the contiguous cache."""
    model, _ = tiny
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (7, 5, 9)]
    bs = 4
    pool = BlockPool(model.config, num_blocks=16, block_size=bs, dtype=model.dtype)
    blocks = BlockManager(16, bs)
    tables = [BlockTable() for _ in seqs]
    # before: seq 0 has 6 tokens cached, seq 2 has 4; seq 1 is new
    before = [6, 0, 4]
    segments = []
    for seq, table, done in zip(seqs, tables, before):
        blocks.grow(table, len(seq))
        if done:
            prefill = [(table.block_ids, 0, done)]
            model(torch.tensor([seq[:done]]), PagedKVCache(pool, prefill, "cpu"))
        segments.append((table.block_ids, done, len(seq) - done))
    ids = [t for seq, done in zip(seqs, before) for t in seq[done:]]
    paged = model(torch.tensor([ids]), PagedKVCache(pool, segments, "cpu"), last_only=True)[:, -1]
    alone = torch.cat([model(torch.tensor([s]), last_only=True)[:, -1] for s in seqs])
    torch.testing.assert_close(paged, alone, atol=1e-5, rtol=1e-5)
