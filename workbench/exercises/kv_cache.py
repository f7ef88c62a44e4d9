"""Checks for notebook 06 (the KV cache): its size by hand, what fits in a pool, blocks with prefix
sharing, and a KV cache of your own that the model runs through."""

from __future__ import annotations

from functools import cache

import torch

from ..checkpoints import random_model
from ..checkpoints.gguf_file import GGUFCheckpoint
from ..checkpoints.registry import bundled_path
from ..config import ModelConfig
from ..engine.kv_cache import bytes_per_token
from ..engine.paged import BlockManager, BlockTable
from .checking import Exercise, Verdict, expect_close, expect_equal, not_answered

POOL_BYTES = 512 * 2**20      # exercise 2: a 512 MiB pool of bfloat16 keys and values
SEQUENCE_LENGTH = 2048        # ... for sequences of this many positions
BLOCK_SIZE = 16               # exercise 3
SYSTEM_TOKENS = 45            # exercise 3: a system prompt every request starts with
QUESTION_TOKENS = (12, 20, 7)  # exercise 3: then each request's own question


@cache
def bundled_config() -> ModelConfig:
    """The bundled model's configuration, read from its file (no weights loaded)."""
    return GGUFCheckpoint(bundled_path("smollm2-135m")).config


# -- 1. bytes per position -------------------------------------------------------------------------

def check_bytes_per_position(answer, config: ModelConfig | None = None) -> Verdict:
    """`answer`: KV-cache bytes one position of the bundled model (or of `config`) costs in bfloat16."""
    if (verdict := not_answered(answer)) is not None:
        return verdict
    return expect_close(answer, bytes_per_token(config or bundled_config(), torch.bfloat16), "bytes per position",
                        rel=0, unit="B", hint="2 (K and V) x layers x KV heads (not query heads) x head_dim x "
                                              "2 bytes per bfloat16 value.")


def _bytes_per_position_solution():
    c = bundled_config()
    return 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2


def _bytes_per_position_wrong():
    c = bundled_config()
    return [2 * c.num_hidden_layers * c.num_attention_heads * c.head_dim * 2,   # query heads
            c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2,       # keys only
            2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4]   # float32


# -- 2. sequences that fit ---------------------------------------------------------------------------

def sequences_that_fit(pool_bytes: int = POOL_BYTES, length: int = SEQUENCE_LENGTH,
                       config: ModelConfig | None = None) -> int:
    return pool_bytes // (length * bytes_per_token(config or bundled_config(), torch.bfloat16))


def check_sequences_that_fit(answer, config: ModelConfig | None = None) -> Verdict:
    """`answer`: how many whole sequences of SEQUENCE_LENGTH positions fit in POOL_BYTES of bfloat16 KV."""
    if (verdict := not_answered(answer)) is not None:
        return verdict
    if isinstance(answer, float) and not answer.is_integer():
        return Verdict(False, f"{answer} is not a whole number: a sequence that does not fit whole cannot "
                              "run; round down.")
    return expect_equal(answer, sequences_that_fit(config=config), "sequences that fit",
                        hint=f"pool bytes // ({SEQUENCE_LENGTH} positions x bytes per position).")


# -- 3. blocks with and without prefix sharing --------------------------------------------------------

def exercise_prompts() -> list[list[int]]:
    """The prompts of exercise 3: a shared system prompt, then each request's own tokens."""
    system = list(range(1000, 1000 + SYSTEM_TOKENS))
    return [system + list(range(2000 + 100 * i, 2000 + 100 * i + n)) for i, n in enumerate(QUESTION_TOKENS)]


def blocks_in_use(prompts: list[list[int]], block_size: int = BLOCK_SIZE, prefix_caching: bool = True) -> int:
    """Blocks the engine's block manager holds once every prompt is computed, admitted one after another."""
    manager = BlockManager(4 * sum(map(len, prompts)), block_size, enable_prefix_caching=prefix_caching)
    for tokens in prompts:
        table = BlockTable()
        manager.reuse_prefix(table, tokens)
        manager.grow(table, len(tokens))
        manager.computed(table, tokens, len(tokens))
    return manager.num_blocks - manager.num_free


def check_blocks_with_sharing(answer) -> Verdict:
    """`answer`: (blocks without prefix sharing, blocks with it) for the three prompts of exercise 3."""
    if (verdict := not_answered(answer)) is not None:
        return verdict
    prompts = exercise_prompts()
    expected = (blocks_in_use(prompts, prefix_caching=False), blocks_in_use(prompts))
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        return Verdict(False, "answer with a pair: (blocks without sharing, blocks with sharing).")
    without, shared = answer
    if without != expected[0]:
        return Verdict(False, f"without sharing you said {without}, the block manager holds {expected[0]}. "
                              "Hint: each request needs ceil(its tokens / block size) blocks.")
    if shared != expected[1]:
        return Verdict(False, f"with sharing you said {shared}, the block manager holds {expected[1]}. Hint: "
                              "only *full* blocks that hold nothing but the common prefix are shared; the block "
                              "where the system prompt ends and a question begins differs per request.")
    return Verdict(True, f"{without} blocks without sharing, {shared} with it: the system prompt's full "
                         "blocks are stored once.")


def _blocks_wrong():
    import math

    lengths = [SYSTEM_TOKENS + n for n in QUESTION_TOKENS]
    without = sum(math.ceil(n / BLOCK_SIZE) for n in lengths)
    partial_shared = math.ceil(SYSTEM_TOKENS / BLOCK_SIZE)  # counts the partly filled block as shared
    return [(without, without),
            (without, partial_shared + sum(math.ceil(n / BLOCK_SIZE) - partial_shared for n in lengths)),
            (sum(lengths) // BLOCK_SIZE, blocks_in_use(exercise_prompts()))]


# -- 4. a KV cache of your own -------------------------------------------------------------------------

class ConcatKVCache:
    """The reference answer: every layer's keys and values in tensors that grow by concatenation."""

    def __init__(self, config):
        self.k = [None] * config.num_hidden_layers
        self.v = [None] * config.num_hidden_layers
        self.length, self.new = 0, 0

    def prepare(self, input_ids):
        batch, new = input_ids.shape
        self.new = new
        return torch.arange(self.length, self.length + new).expand(batch, new)

    def attend(self, layer, q, k, v, attention_fn):
        if self.k[layer] is not None:
            k = torch.cat([self.k[layer], k], dim=2)
            v = torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return attention_fn(q, k, v, None)   # None: causal for the prompt, every key for one new token

    def advance(self):
        self.length += self.new

    def last(self, x):
        return x[:, -1:]


class _ForgetsThePast(ConcatKVCache):
    def attend(self, layer, q, k, v, attention_fn):
        return attention_fn(q, k, v, None)


class _PositionsFromZero(ConcatKVCache):
    def prepare(self, input_ids):
        batch, new = input_ids.shape
        self.new = new
        return torch.arange(new).expand(batch, new)


@cache
def _tiny_model():
    """A two-layer model of the same class with random weights: runs a check in milliseconds."""
    return random_model(ModelConfig.tiny(vocab_size=256), seed=0)


def check_kv_cache(cache_class, prompt_tokens: int = 7, new_tokens: int = 6) -> Verdict:
    """`cache_class(config)` must make a cache the model can run through (`prepare`, `attend`,
    `advance`, `last`, see `workbench.model.KVCache`): greedy decoding with it must give, at every
    step, the logits of running the whole sequence without a cache."""
    if (verdict := not_answered(cache_class)) is not None:
        return verdict
    model = _tiny_model()
    ids = torch.arange(3, 3 + prompt_tokens)[None]
    try:
        positions = cache_class(model.config).prepare(ids)
    except Exception as exc:
        return Verdict(False, f"your cache raised {type(exc).__name__}: {exc}")
    if positions is None:
        return Verdict(False, "no answer yet: `prepare` returns nothing (it must return the positions (B, T) "
                              "of the new tokens).")
    try:
        with torch.inference_mode():
            cache_ = cache_class(model.config)
            logits = model(ids, cache=cache_, last_only=True)[:, -1]
            for step in range(new_tokens + 1):
                expected = model(ids)[:, -1]
                gap = (logits - expected).abs().max().item()
                if not gap < 1e-4:
                    where = ("the prompt's logits" if step == 0 else f"decode step {step}'s logits")
                    hint = ("for the prompt, attention must be causal over the new keys (mask None does that)"
                            if step == 0 else "are the new keys and values appended to the cached ones (dim 2 "
                            "is the position axis), and do positions continue after the cached length?")
                    return Verdict(False, f"{where} differ from running the whole sequence without a cache "
                                          f"(max |difference| {gap:.3g}). Hint: {hint}")
                if step == new_tokens:
                    break
                token = logits.argmax(-1, keepdim=True)
                ids = torch.cat([ids, token], dim=1)
                logits = model(token, cache=cache_, last_only=True)[:, -1]
    except Exception as exc:
        return Verdict(False, f"the model could not run through your cache: {type(exc).__name__}: {exc}")
    return Verdict(True, f"a {prompt_tokens}-token prompt and {new_tokens} decoded tokens give, at every step, "
                         "the logits of recomputing the whole sequence.")


EXERCISES = [
    Exercise("bytes_per_position", check_bytes_per_position, _bytes_per_position_solution, _bytes_per_position_wrong),
    Exercise("sequences_that_fit", check_sequences_that_fit, sequences_that_fit,
             lambda: [sequences_that_fit() + 1, POOL_BYTES / (SEQUENCE_LENGTH * _bytes_per_position_solution()),
                     sequences_that_fit() // 2]),
    Exercise("blocks_with_sharing", check_blocks_with_sharing,
             lambda: (blocks_in_use(exercise_prompts(), prefix_caching=False), blocks_in_use(exercise_prompts())),
             _blocks_wrong),
    Exercise("kv_cache", check_kv_cache, lambda: ConcatKVCache, lambda: [_ForgetsThePast, _PositionsFromZero]),
]
