"""`Engine`: requests in, tokens out, many sequences per forward pass over a paged KV cache.

    engine = Engine(model, tokenizer, EngineConfig(policy="continuous"))
    engine.add_request("Hello", SamplingParams(max_tokens=32))
    while engine.has_unfinished():
        for out in engine.step():          # every request that got a token this step
            print(out.request_id, out.delta_text, out.finished)

`step()` is synchronous: an asyncio server calls it from one worker thread and hands each
`RequestOutput` to its request's queue. `add_request` and `abort` may be called from any thread at
any time: they only validate and queue, so they never wait for a step to finish.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..errors import ContextLengthError, InvalidParameterError
from ..settings import now as clock
from .batching import Policy
from .generate import _prompt_ids, _TextTracker
from .paged import BlockManager, BlockPool, PagedKVCache, pool_too_small
from .sampling import Sampler, SamplingParams
from .scheduler import Scheduler, Sequence


@dataclass
class EngineConfig:
    """How the engine lays out memory and batches work.

    - block_size: positions per KV block. num_blocks: blocks in the pool (None: as many as
      `kv_cache_bytes` holds). kv_dtype: "auto" (the model's dtype) or "int8".
    - max_num_seqs: sequences per step at most. max_num_batched_tokens: tokens per step at most
      (None: max_model_len, so a whole prompt always fits; set it lower with chunked_prefill).
    - max_model_len: prompt + output positions per sequence (None: the model's context).
    - enable_prefix_caching: share full blocks between sequences with a common prefix.
    - policy, batch_size, max_wait_s: see `batching.py`.
    """
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_bytes: int = 256 * 2**20
    kv_dtype: str = "auto"
    max_num_seqs: int = 16
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    chunked_prefill: bool = False
    policy: str = "continuous"
    batch_size: int = 8
    max_wait_s: float = 0.05

    def __post_init__(self):
        for name in ("block_size", "max_num_seqs"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidParameterError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("num_blocks", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InvalidParameterError(f"{name} must be None or an integer >= 1, got {value!r}")
        self.batching = Policy(self.policy, self.batch_size, self.max_wait_s)  # validates those three


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None
    first_token_time: float | None
    last_token_time: float | None
    finish_time: float | None
    num_preemptions: int
    cached_prompt_tokens: int


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]          # every output token so far
    new_token_ids: list[int]      # those added by this step
    text: str                     # "" without a tokenizer
    delta_text: str               # text safe to show that was not shown before
    finished: bool
    finish_reason: str | None     # "stop", "length" or "abort"
    metrics: RequestMetrics


@dataclass
class EngineStats:
    steps: int = 0
    tokens_computed: int = 0
    prefix_hit_tokens: int = 0
    allocated_slot_steps: int = 0     # sum over steps of slots in blocks held by running sequences
    used_slot_steps: int = 0          # ... of those that hold a computed position
    contiguous_slot_steps: int = 0    # ... a max_model_len preallocation per running sequence would hold
    peak_blocks: int = 0              # blocks in use at the busiest step
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def paged_waste(self) -> float:
        return 1 - self.used_slot_steps / max(self.allocated_slot_steps, 1)

    @property
    def contiguous_waste(self) -> float:
        return 1 - self.used_slot_steps / max(self.contiguous_slot_steps, 1)


class Engine:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, **overrides):
        if config is not None and overrides:
            raise InvalidParameterError("pass an EngineConfig or keyword settings, not both")
        self.config = config = config or EngineConfig(**overrides)
        self.model, self.tokenizer = model, tokenizer
        self.max_model_len = config.max_model_len or model.config.max_position_embeddings
        if self.max_model_len > model.config.max_position_embeddings:
            raise ContextLengthError(f"max_model_len {self.max_model_len} exceeds the model's context of "
                                     f"{model.config.max_position_embeddings}")
        self.pool = BlockPool(model.config, self._num_blocks(model), config.block_size, model.dtype, model.device,
                              config.kv_dtype)
        self.block_manager = BlockManager(self.pool.num_blocks, config.block_size, config.enable_prefix_caching)
        budget = config.max_num_batched_tokens or self.max_model_len
        self.scheduler = Scheduler(self.block_manager, config.batching, config.max_num_seqs, budget, config.chunked_prefill)
        if tokenizer is not None:
            self.stop_token_ids = set(tokenizer.stop_token_ids)
        else:
            self.stop_token_ids = {model.config.eos_token_id} - {None}
        self.stats = EngineStats()
        self._ids = itertools.count()
        self._live: dict[str, Sequence] = {}   # every request not yet finished
        self._live_lock = threading.Lock()     # guards _live and the id counter (held briefly)
        self._step_lock = threading.Lock()     # one step at a time
        self._inbox: deque[Sequence] = deque()  # added, not yet seen by the scheduler
        self._aborts: deque[str] = deque()
        self.last_schedule: list[tuple[str, int]] = []  # (request id, tokens run) of the latest step

    def _num_blocks(self, model) -> int:
        if self.config.num_blocks is not None:
            return self.config.num_blocks
        per_block = self.config.block_size * model.config.kv_bytes_per_token(model.dtype.itemsize)
        if self.config.kv_dtype == "int8":
            from .kv_quant import int8_bytes_per_token

            per_block = self.config.block_size * int8_bytes_per_token(model.config)
        return max(1, self.config.kv_cache_bytes // per_block)

    # ---- requests ------------------------------------------------------------------------------
    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    arrival_time: float | None = None) -> str:
        """Queue a prompt (text, chat messages or token ids); returns its request id.

        Bad input raises here (InvalidParameterError, ContextLengthError, CapacityError) and leaves
        the engine and every other request as they were.
        """
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidParameterError(f"params must be a SamplingParams, got {type(params).__name__}")
        if self.tokenizer is None and not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            raise InvalidParameterError("an engine without a tokenizer takes prompts as lists of token ids")
        ids = _prompt_ids(self.tokenizer, prompt)
        vocab = self.model.config.vocab_size
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise InvalidParameterError(f"a prompt needs at least one token id, each in [0, {vocab})")
        needed = len(ids) + params.max_tokens
        if needed > self.max_model_len:
            raise ContextLengthError(f"prompt of {len(ids)} tokens + max_tokens {params.max_tokens} exceeds the "
                                     f"engine's context of {self.max_model_len} tokens")
        if self.block_manager.blocks_for(needed) > self.block_manager.num_blocks:
            raise pool_too_small(self.block_manager.num_blocks, self.config.block_size, needed)
        if not self.config.chunked_prefill and needed > self.scheduler.max_num_batched_tokens:
            # a preempted request is recomputed in one step: its prompt and output must fit the budget
            raise InvalidParameterError(f"prompt of {len(ids)} tokens + max_tokens {params.max_tokens} exceeds "
                                        f"max_num_batched_tokens {self.scheduler.max_num_batched_tokens}; "
                                        f"raise it or enable chunked_prefill")
        sampler = Sampler(params, [ids], vocab, self.model.device)
        with self._live_lock:
            request_id = str(next(self._ids)) if request_id is None else str(request_id)
            if request_id in self._live:
                raise InvalidParameterError(f"request id {request_id!r} is already in use")
            seq = Sequence(request_id, ids, params, sampler, clock() if arrival_time is None else arrival_time)
            if self.tokenizer is not None:
                seq.tracker = _TextTracker(self.tokenizer, params.stop)
            self._live[request_id] = seq
        self._inbox.append(seq)
        return request_id

    def abort(self, request_id: str) -> bool:
        """Stop a request at the next step and free its blocks; False if it is unknown or finished."""
        with self._live_lock:
            known = str(request_id) in self._live
        if known:
            self._aborts.append(str(request_id))
        return known

    def has_unfinished(self) -> bool:
        return bool(self._live)

    def _take_inbox(self):
        while self._inbox:
            self.scheduler.add(self._inbox.popleft())
        while self._aborts:
            with self._live_lock:
                seq = self._live.pop(self._aborts.popleft(), None)
            if seq is not None:
                seq.finish_reason, seq.finish_time = "abort", clock()
                self.scheduler.finish(seq)

    # ---- one step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, drain: bool = True) -> list[RequestOutput]:
        """Run one forward pass over the scheduled sequences; outputs for those that got a token.

        `drain=False` tells static/dynamic batching that more requests may still arrive (so a
        partial batch waits); an empty list then may just mean "waiting".
        """
        with self._step_lock:
            self._take_inbox()
            now = clock()
            batch = self.scheduler.schedule(now, drain)
            self.last_schedule = [(seq.request_id, n) for seq, n in batch]
            if not batch:
                return []
            in_use = self.block_manager.num_blocks - self.block_manager.num_free
            self.stats.peak_blocks = max(self.stats.peak_blocks, in_use)
            ids, segments = [], []
            for seq, n in batch:
                start = seq.table.num_computed
                ids.extend(seq.token_ids[start:start + n])
                segments.append((seq.table.block_ids, start, n))
            device = self.model.device
            view = PagedKVCache(self.pool, segments, device)
            logits = self.model(torch.tensor([ids], device=device), view, last_only=True)[:, -1]
            for seq, n in batch:
                self.block_manager.computed(seq.table, seq.token_ids, seq.table.num_computed + n)
            ready = [i for i, (seq, _) in enumerate(batch) if seq.remaining == 0]
            tokens = self._sample(logits, [batch[i][0] for i in ready], ready)
            now = clock()
            outputs = [self._append(batch[i][0], t, now) for i, t in zip(ready, tokens)]
            self._account(batch)
            return outputs

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], rows: list[int]) -> list[int]:
        """Greedy rows without penalties in one argmax; the rest through each request's Sampler."""
        out: list[int | None] = [None] * len(seqs)
        plain = [j for j, s in enumerate(seqs) if s.params.greedy and s.params.repetition_penalty == 1.0]
        if plain:
            picked = logits[[rows[j] for j in plain]].argmax(-1).tolist()
            for j, t in zip(plain, picked):
                out[j] = t
        for j, s in enumerate(seqs):
            if out[j] is None:
                out[j] = int(s.sampler(logits[rows[j]:rows[j] + 1])[0])
        return out

    def _append(self, seq: Sequence, token: int, now: float) -> RequestOutput:
        p = seq.params
        new = []
        if token in self.stop_token_ids and not p.ignore_eos:
            seq.finish_reason = "stop"
        else:
            seq.token_ids.append(token)
            new = [token]
            if seq.tracker is not None:
                seq.tracker.add(token)
                if seq.tracker.stopped:
                    seq.finish_reason = "stop"
        if seq.finish_reason is None and (len(seq.output_ids) >= p.max_tokens
                                          or len(seq.token_ids) >= self.max_model_len):
            seq.finish_reason = "length"
        seq.first_token_time = seq.first_token_time or now
        seq.last_token_time = now
        if seq.finish_reason is not None:
            seq.finish_time = now
            self.scheduler.finish(seq)
            with self._live_lock:
                self._live.pop(seq.request_id, None)
        return self._output(seq, new)

    def _output(self, seq: Sequence, new: list[int]) -> RequestOutput:
        text, delta = "", ""
        if seq.tracker is not None:
            if seq.finish_reason is not None:
                seq.tracker.stopped = True  # flush what was held back for a possible stop string
            delta, text = seq.tracker.ready(), seq.tracker.text
        metrics = RequestMetrics(seq.arrival_time, seq.first_scheduled_time, seq.first_token_time,
                                 seq.last_token_time, seq.finish_time, seq.num_preemptions, seq.cached_prompt_tokens)
        return RequestOutput(seq.request_id, seq.prompt_ids, seq.output_ids, new, text, delta,
                             seq.finish_reason is not None, seq.finish_reason, metrics)

    def _account(self, batch):
        s = self.stats
        s.steps += 1
        s.tokens_computed += sum(n for _, n in batch)
        s.batch_sizes.append(len(batch))
        tables = [seq.table for seq in self.scheduler.running]
        allocated, used = self.block_manager.usage(tables)
        s.allocated_slot_steps += allocated
        s.used_slot_steps += used
        s.contiguous_slot_steps += len(tables) * self.max_model_len

    # ---- driving it --------------------------------------------------------------------------
    def run(self) -> list[RequestOutput]:
        """Step until every request has finished; their final outputs in finishing order."""
        done = []
        while self.has_unfinished():
            done += [o for o in self.step() if o.finished]
        return done

    def generate(self, prompts: list, params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Run `prompts` to completion together; final outputs in the order of `prompts`."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp) for p, sp in zip(prompts, params_list)]
        final = {o.request_id: o for o in self.run()}
        return [final[i] for i in ids]

    def stream(self, prompt, params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield one request's outputs as its tokens come (other queued requests advance too)."""
        request_id = self.add_request(prompt, params)
        while True:
            mine = [o for o in self.step() if o.request_id == request_id]
            yield from mine
            if (mine and mine[-1].finished) or not self.has_unfinished():
                return
