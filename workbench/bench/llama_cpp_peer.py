"""llama.cpp as a same-run peer: greedy generation of a batch of prompts through llama-cpp-python's
low-level API, timed like our engine.

One llama.cpp context per batch size, with one sequence id per prompt (`n_seq_max` = the batch).
Every call clears the context's memory first, so the prompt is evaluated afresh each time (the
high-level `Llama.generate` keeps the KV cache of an identical earlier prompt and would skip the
prefill). Prefill: every prompt's tokens in `llama_batch`es of up to `n_batch` tokens, the logits of
each prompt's last token only; decode: one `llama_decode` per step holding one new token of every
sequence. Greedy = argmax of the logits (numpy), as ours. prefill_s = start of the call to the first
sampled tokens, decode_s = first to last sampled tokens (`workbench.bench.decode.METHOD`).

llama-cpp-python is an optional peer (`pip install .[peers]`); `available()` says whether it is here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

from .timing import now

METHOD = (
    "llama.cpp through llama-cpp-python's low-level API (workbench.bench.llama_cpp_peer): a GGUF written by "
    "workbench.checkpoints.gguf_export from the same weights; one context per batch size with n_seq_max = batch, "
    "n_ctx = batch x (prompt + new + 16), n_batch = n_ubatch = 512, n_threads = n_threads_batch = threads, "
    "llama.cpp's default attention (flash attention: auto); its memory (KV cache) cleared before every run, so "
    "the prompt is evaluated afresh each round; prefill = all prompts' tokens in batches of up to 512 with one "
    "sequence id per prompt; decode = one llama_decode per step with one token of every sequence; greedy = argmax "
    "of the logits; prefill = call to the first sampled tokens, decode = first to last sampled tokens."
)


def available() -> bool:
    """Whether llama-cpp-python is importable here."""
    return importlib.util.find_spec("llama_cpp") is not None


def version() -> str | None:
    if not available():
        return None
    import llama_cpp

    return llama_cpp.__version__


class LlamaCppBatchRunner:
    """A GGUF model loaded once in llama.cpp, and a context for each batch size asked for."""

    def __init__(self, path: str | Path, *, threads: int, context_per_sequence: int, n_batch: int = 512):
        import llama_cpp

        self.lib, self.path = llama_cpp, Path(path)
        self.threads, self.context_per_sequence, self.n_batch = threads, context_per_sequence, n_batch
        llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_quiet_logger(), None)
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), llama_cpp.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {self.path.name}")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.contexts: dict[int, object] = {}
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def context(self, sequences: int):
        if sequences not in self.contexts:
            params = self.lib.llama_context_default_params()
            params.n_ctx = sequences * self.context_per_sequence
            params.n_batch = params.n_ubatch = self.n_batch
            params.n_seq_max = sequences
            params.n_threads = params.n_threads_batch = self.threads
            params.no_perf = True
            ctx = self.lib.llama_init_from_model(self.model, params)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context for {sequences} sequences")
            self.contexts[sequences] = ctx
        return self.contexts[sequences]

    def _decode(self, ctx, entries: list[tuple[int, int, int, bool]]):
        """One llama_decode of (token, position, sequence id, wants logits) entries; the greedy
        token of each entry that wants logits, in order."""
        import numpy as np

        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, out) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, out
            b.seq_id[i][0] = seq
        if (code := self.lib.llama_decode(ctx, b)) != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        outputs = sum(e[3] for e in entries)
        if not outputs:
            return []
        logits = np.ctypeslib.as_array(self.lib.llama_get_logits(ctx), shape=(outputs * self.n_vocab,))
        return logits.reshape(outputs, self.n_vocab).argmax(axis=1).tolist()

    def generate(self, prompts: list[list[int]], new_tokens: int, clock: Callable[[], float] = now):
        """(prefill seconds, decode seconds, new tokens per prompt) of one greedy run, on a fresh KV cache."""
        ctx = self.context(len(prompts))
        self.lib.llama_memory_clear(self.lib.llama_get_memory(ctx), True)
        if any(len(p) + new_tokens > self.context_per_sequence for p in prompts):
            raise ValueError(f"prompt + {new_tokens} new tokens exceed the context of {self.context_per_sequence}")
        start = clock()
        entries = [(token, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, token in enumerate(p)]
        first = []
        for i in range(0, len(entries), self.n_batch):
            first += self._decode(ctx, entries[i:i + self.n_batch])
        out = [[t] for t in first]
        first_s = clock()
        for step in range(new_tokens - 1):
            nxt = self._decode(ctx, [(row[-1], len(p) + step, seq, True) for seq, (p, row) in enumerate(zip(prompts, out))])
            for row, token in zip(out, nxt):
                row.append(token)
        last_s = clock() if new_tokens > 1 else first_s
        return first_s - start, last_s - first_s, out

    def close(self):
        for ctx in self.contexts.values():
            self.lib.llama_free(ctx)
        self.contexts = {}
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_logger = []  # llama.cpp keeps the callback's pointer: it must outlive every model


def _quiet_logger():
    """A log callback that drops llama.cpp's messages (it logs every load and context to stderr)."""
    if not _logger:
        import llama_cpp

        _logger.append(llama_cpp.llama_log_callback(lambda level, text, user_data: None))
    return _logger[0]
