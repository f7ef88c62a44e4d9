"""What the routes share: the loaded model and its engine loop, the admission count behind 429,
and turning prompts into token ids the way the engine would."""

from __future__ import annotations

import threading
import time
from typing import Callable

from jinja2 import TemplateError

from ..errors import WorkbenchError
from .errors import APIError
from .metrics import ServerMetrics
from .options import ServerConfig


class ServerState:
    def __init__(self, config: ServerConfig, load: Callable[[], tuple]):
        self.config, self._load = config, load
        self.loop = None               # the EngineLoop, once the model is loaded
        self.tokenizer = None
        self.engine = None
        self.load_error: Exception | None = None
        self.loaded = threading.Event()
        self.created = int(time.time())
        self.in_flight = 0             # sequences admitted and not yet finished (touched on the event loop only)
        self.metrics = ServerMetrics(config.model_name, self.stats, self.batch_sizes)

    # ---- loading ---------------------------------------------------------------------------------
    def load(self):
        """Load the model and start the engine loop (runs in its own thread while /health says 503)."""
        try:
            from ..engine import Engine, EngineConfig
            from ..engine.loop import EngineLoop

            model, tokenizer = self._load()
            engine = Engine(model, tokenizer, EngineConfig(**self.config.engine))
            self.engine, self.tokenizer = engine, tokenizer
            self.loop = EngineLoop(engine)
        except Exception as e:  # reported by the server, which then exits
            self.load_error = e
        finally:
            self.loaded.set()

    def shutdown(self):
        if self.loop is not None:
            self.loop.shutdown()

    def stats(self) -> dict | None:
        return None if self.loop is None else self.loop.stats()

    def batch_sizes(self) -> dict | None:
        """Batch size -> engine steps that ran that many sequences (copied while the engine may step)."""
        counts = getattr(getattr(self.engine, "stats", None), "batch_size_counts", None)
        for _ in range(3):
            try:
                return None if counts is None else dict(counts)
            except RuntimeError:  # a new size was added during the copy: copy again
                continue
        return None

    def require_ready(self):
        if self.loop is None:
            raise APIError(503, "the model is still loading" if self.load_error is None
                           else f"the model failed to load: {self.load_error}")
        if self.loop.error is not None:  # a bug stopped the engine thread: say so, do not hang
            raise APIError(503, f"the engine loop stopped: {type(self.loop.error).__name__}: {self.loop.error}")

    @property
    def max_model_len(self) -> int:
        """Prompt + completion tokens one request may have: the context, capped by what the KV cache
        and (without chunked prefill) one step's token budget can hold."""
        e = self.engine
        limit = min(e.max_model_len, e.block_manager.num_blocks * e.config.block_size)
        if not e.config.chunked_prefill:
            limit = min(limit, e.scheduler.max_num_batched_tokens)
        return limit

    # ---- requests --------------------------------------------------------------------------------
    def check_model(self, name: str | None):
        if name is not None and name != self.config.model_name:
            raise APIError(404, f"The model `{name}` does not exist. This server serves `{self.config.model_name}`.",
                           "model", "model_not_found")

    def admit(self, sequences: int) -> Callable[[], None]:
        """Count `sequences` in, or refuse (429 when the queue is full); returns the release callback."""
        capacity = self.config.engine["max_num_seqs"] + self.config.max_queued_requests
        if sequences > capacity:
            raise APIError(400, f"this request needs {sequences} sequences (prompts x n) but the server holds "
                                f"{capacity} at once", "n")
        if self.in_flight + sequences > capacity:
            raise APIError(429, f"the server is at capacity ({self.in_flight} sequences running or queued, "
                                f"--max-queued-requests {self.config.max_queued_requests}); retry later",
                           None, "queue_full")
        self.in_flight += sequences
        released = False

        def release():
            nonlocal released
            if not released:
                released = True
                self.in_flight -= sequences
        return release

    def text_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def chat_ids(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The chat template's rendering, tokenized (as the engine does for chat prompts)."""
        try:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        except (WorkbenchError, ValueError) as e:
            raise APIError(400, f"messages: {e}", "messages") from None
        except TemplateError as e:  # the model's template failed on these messages
            raise APIError(400, f"messages: the chat template failed: {e}", "messages") from None
        return self.tokenizer.encode(text)

    def max_tokens(self, requested: int | None, prompt_len: int, param: str) -> int:
        """`requested`, checked against the context; None: the rest of the context."""
        limit = self.max_model_len
        if requested is None:
            if prompt_len >= limit:
                raise APIError(400, f"This model's maximum context length is {limit} tokens, and the prompt has "
                                    f"{prompt_len}.", param, "context_length_exceeded")
            return limit - prompt_len
        if prompt_len + requested > limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                                f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
                                f"completion).", param, "context_length_exceeded")
        return requested
