"""Prefix cache: full KV blocks found again by the tokens they hold, so a common prefix is computed once.

A full block's key is a hash of its tokens chained with the previous block's key, so equal keys mean
(barring collisions) equal tokens from position 0 on: a block is reusable only after the same
whole prefix. Every hit is still checked token for token against what the block holds, so a hash
collision costs a recomputation, never a wrong answer.
"""

from __future__ import annotations


def chain_hash(prev: int | None, tokens: tuple[int, ...]) -> int:
    """Key of a block: its tokens and the key of the block before it (None for the first)."""
    return hash((prev, tokens))  # ints and tuples of ints hash the same in every process


class PrefixCache:
    """hash -> id of the block holding that prefix. Blocks stay findable after their last user
    frees them, until the block manager hands them out again (`forget`)."""

    def __init__(self, hash_fn=None):
        self.hash_fn = hash_fn or chain_hash
        self.table: dict[int, int] = {}
        self.queried_blocks = 0
        self.hit_blocks = 0

    def lookup(self, token_ids: list[int], blocks, block_size: int) -> list[tuple[int, int]]:
        """(block id, hash) of the cached full blocks that `token_ids` begins with, in order."""
        found, prev = [], None
        for i in range(len(token_ids) // block_size):
            end = (i + 1) * block_size
            h = self.hash_fn(prev, tuple(token_ids[end - block_size:end]))
            block_id = self.table.get(h)
            self.queried_blocks += 1
            if block_id is None or blocks[block_id].token_ids != tuple(token_ids[:end]):
                break  # a miss, or a collision: a different prefix under the same hash
            self.hit_blocks += 1
            found.append((block_id, h))
            prev = h
        return found

    def register(self, block, prev: int | None, prefix: tuple[int, ...], block_size: int) -> int:
        """Offer a block that just filled up (holding the end of `prefix`); returns its chained hash.

        A hash already taken (the same prefix computed by another sequence, or a collision) keeps
        its first block; this one stays private.
        """
        h = self.hash_fn(prev, prefix[-block_size:])
        if h not in self.table:
            self.table[h] = block.id
            block.hash, block.token_ids = h, prefix
        return h

    def forget(self, block):
        if self.table.get(block.hash) == block.id:
            del self.table[block.hash]
