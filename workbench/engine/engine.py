"""`Engine`: requests in, tokens out, many sequences per forward pass over a paged KV cache.

    engine = Engine(model, tokenizer, EngineConfig(policy="continuous"))
    engine.add_request("Hello", SamplingParams(max_tokens=32))
    while engine.has_unfinished():
        for out in engine.step():          # every request that got a token this step
            print(out.request_id, out.delta_text, out.finished)

Threads: `add_request` and `abort` may be called from any thread at any time; they validate and
queue under a short lock, so they never wait for a step. `step()` runs one step at a time. Every
output also goes to the request's `on_output` callback, in whichever thread stepped, so a request's
owner gets all its outputs even when another thread steps. A server drives the engine through
`EngineLoop` (`loop.py`): one thread steps, any thread or asyncio task submits and reads.
`generate()` and `stream()` are for single-threaded (notebook) use, and stay correct when called
from several threads at once.

Failures stay with their request: a step whose sampling or detokenizing raises for one sequence
(NaN logits, a tokenizer error) finishes that sequence with `finish_reason="error"` and `error`
set, frees its blocks, and the others carry on; a forward pass that raises fails the sequences
of that batch alone.

Choices (`SamplingParams.n > 1`): the first choice runs the prompt; the others are admitted after
its prompt is computed and take its full KV blocks from the prefix cache, so each recomputes only
the prompt's tokens after its last full block (1 to block_size tokens; the whole prompt if prefix
caching is off). Choice i samples with seed + i when a seed is given.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import ContextLengthError, InvalidParameterError
from ..settings import now as clock
from .batching import Policy
from .detokenizer import Detokenizer
from .generate import _prompt_ids
from .paged import BlockManager, BlockPool, PagedKVCache, pool_too_small
from .sampling import Sampler, SamplingError, SamplingParams, TokenLogprob, nan_rows, token_logprobs
from .scheduler import Scheduler, Sequence

BATCH_HISTORY = 4096  # steps whose batch size `EngineStats.batch_sizes` keeps


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
    finish_reason: str | None     # "stop", "length", "abort" or "error"
    metrics: RequestMetrics
    index: int = 0                # choice index within a request with n > 1
    new_logprobs: list[TokenLogprob] | None = None  # one per new token when params.logprobs is not None
    error: str | None = None      # why the request failed (finish_reason "error")
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it (None: EOS)


@dataclass
class EngineStats:
    steps: int = 0
    tokens_computed: int = 0
    prefix_hit_tokens: int = 0
    allocated_slot_steps: int = 0     # sum over steps of slots in blocks held by running sequences
    used_slot_steps: int = 0          # ... of those that hold a computed position
    contiguous_slot_steps: int = 0    # ... a max_model_len preallocation per running sequence would hold
    peak_blocks: int = 0              # blocks in use at the busiest step
    batch_sizes: deque = field(default_factory=lambda: deque(maxlen=BATCH_HISTORY))  # the latest steps'
    batch_size_counts: Counter = field(default_factory=Counter)  # batch size -> steps, over all steps
    generation_tokens_total: int = 0  # output tokens of every choice

    @property
    def mean_batch_size(self) -> float:
        steps = sum(self.batch_size_counts.values())
        return sum(size * n for size, n in self.batch_size_counts.items()) / max(steps, 1)

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
        # _live_lock guards _live, _inbox, _aborts and the id counter; held briefly, never during compute
        self._live_lock = threading.Lock()
        self._live: dict[str, list[Sequence]] = {}  # request id -> its unfinished choices
        self._inbox: list[Sequence] = []            # added, not yet seen by the scheduler
        self._aborts: list[Sequence] = []           # the sequences (not ids: an id may be reused) to abort
        self._step_lock = threading.Lock()          # one step at a time
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
                    arrival_time: float | None = None,
                    on_output: Callable[[RequestOutput], None] | None = None) -> str:
        """Queue a prompt (text, chat messages or token ids); returns its request id.

        Bad input raises here (InvalidParameterError, ContextLengthError, CapacityError) and leaves
        the engine and every other request as they were. `on_output` gets every output of the
        request (all its choices), in the thread that steps; it must be quick and must not raise.
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
        params.check_vocabulary(vocab)
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
        arrival = clock() if arrival_time is None else arrival_time
        choices = [self._sequence(ids, params, i, arrival, on_output) for i in range(params.n)]
        choices[0].siblings = choices[1:]
        with self._live_lock:
            request_id = str(next(self._ids)) if request_id is None else str(request_id)
            if request_id in self._live:
                raise InvalidParameterError(f"request id {request_id!r} is already in use")
            for seq in choices:
                seq.request_id = request_id
            self._live[request_id] = choices
            self._inbox.append(choices[0])  # under the lock: an abort after this returns sees it queued
        return request_id

    def _sequence(self, ids, params, index, arrival, on_output) -> Sequence:
        stop_ids = (set() if params.ignore_eos else self.stop_token_ids) | set(params.stop_token_ids)
        seed = None if params.seed is None else params.seed + index
        sampler = Sampler(params, [ids], self.model.config.vocab_size, self.model.device, stop_ids, seed)
        seq = Sequence("", ids, params, sampler, arrival, index=index, stop_ids=frozenset(stop_ids),
                       on_output=on_output)
        if self.tokenizer is not None:
            seq.tracker = Detokenizer(self.tokenizer, params.stop, params.include_stop_str_in_output)
        return seq

    def abort(self, request_id: str) -> bool:
        """Stop a request (every choice) at the next step and free its blocks; False if it is unknown
        or finished. Each choice then gets a final output with finish_reason "abort"."""
        with self._live_lock:
            choices = self._live.get(str(request_id))
            if choices:
                self._aborts.extend(choices)
        return bool(choices)

    def has_unfinished(self) -> bool:
        return bool(self._live)

    @property
    def num_unfinished(self) -> int:
        """Requests added and not yet finished."""
        return len(self._live)

    def _take_inbox(self) -> list[RequestOutput]:
        with self._live_lock:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        for seq in inbox:
            self.scheduler.add(seq)
        outputs = []
        for seq in aborts:
            if seq.finish_reason is None:  # it may have finished since the abort was asked for
                seq.finish_reason = "abort"
                outputs.append(self._finish(seq, clock()))
        return outputs

    # ---- one step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, drain: bool = True) -> list[RequestOutput]:
        """Run one forward pass over the scheduled sequences; outputs for those that got a token,
        finished with an error, or were aborted.

        `drain=False` tells static/dynamic batching that more requests may still arrive (so a
        partial batch waits); an empty list then may just mean "waiting".
        """
        with self._step_lock:
            outputs = self._take_inbox()
            batch = self.scheduler.schedule(clock(), drain)
            self.last_schedule = [(seq.request_id, n) for seq, n in batch]
            if batch:
                outputs += self._run_batch(batch)
                self._account(batch)
            for out, seq in outputs:
                if seq.on_output is not None:
                    seq.on_output(out)
            return [out for out, _ in outputs]

    def _run_batch(self, batch) -> list[tuple[RequestOutput, Sequence]]:
        in_use = self.block_manager.num_blocks - self.block_manager.num_free
        self.stats.peak_blocks = max(self.stats.peak_blocks, in_use)
        ids, segments = [], []
        for seq, n in batch:
            start = seq.table.num_computed
            ids.extend(seq.token_ids[start:start + n])
            segments.append((seq.table.block_ids, start, n))
        device = self.model.device
        try:
            view = PagedKVCache(self.pool, segments, device)
            logits = self.model(torch.tensor([ids], device=device), view, last_only=True)[:, -1]
        except Exception as e:  # nothing was computed: each sequence of this batch fails, the rest go on
            message = f"forward pass failed: {_describe(e)}"
            return [out for seq, _ in batch for out in self._fail(seq, message)]
        for seq, n in batch:
            self.block_manager.computed(seq.table, seq.token_ids, seq.table.num_computed + n)
        ready = [(i, seq) for i, (seq, _) in enumerate(batch) if seq.remaining == 0]
        for _, seq in ready:
            self._admit_siblings(seq)
        return self._sample(logits, ready)

    def _admit_siblings(self, seq: Sequence):
        """The first choice's prompt is computed (its full blocks are in the prefix cache): the
        other choices may start."""
        for sibling in seq.siblings:
            if sibling.finish_reason is None:
                self.scheduler.add(sibling)
        seq.siblings = []

    def _sample(self, logits: torch.Tensor, ready: list[tuple[int, Sequence]]) -> list:
        """Plain greedy rows in one argmax; the rest through each request's Sampler. A row that
        cannot be sampled fails its request alone."""
        if not ready:
            return []
        rows = logits[[i for i, _ in ready]]
        top = rows.argmax(-1)
        nan = nan_rows(rows, top).tolist()
        top = top.tolist()
        picked = {j: top[j] for j, (_, s) in enumerate(ready) if s.params.greedy and not s.params.processes_logits
                  and not nan[j]}
        now, outputs = clock(), []
        for j, (_, seq) in enumerate(ready):
            try:
                if nan[j]:
                    raise SamplingError("the model produced NaN logits")
                token = picked[j] if j in picked else int(seq.sampler(rows[j:j + 1])[0])
                k = seq.params.logprobs
                logprob = None if k is None else token_logprobs(rows[j:j + 1], [token], [k])[0]
                outputs.append(self._append(seq, token, now, logprob))
            except Exception as e:
                outputs += self._fail(seq, _describe(e))
        return outputs

    def _append(self, seq: Sequence, token: int, now: float, logprob: TokenLogprob | None):
        p = seq.params
        new = []
        if token in seq.stop_ids:
            seq.finish_reason = "stop"
            seq.stop_reason = token if token in p.stop_token_ids else None
        else:
            seq.token_ids.append(token)
            new = [token]
            self.stats.generation_tokens_total += 1
            if seq.tracker is not None:
                seq.tracker.add(token, check_stop=len(seq.token_ids) - len(seq.prompt_ids) >= p.min_tokens)
                if seq.tracker.stopped:
                    seq.finish_reason, seq.stop_reason = "stop", seq.tracker.stop_str
        if seq.finish_reason is None and (len(seq.token_ids) - len(seq.prompt_ids) >= p.max_tokens
                                          or len(seq.token_ids) >= self.max_model_len):
            seq.finish_reason = "length"
        seq.first_token_time = seq.first_token_time or now
        seq.last_token_time = now
        logprobs = None if p.logprobs is None else ([logprob] if new else [])
        if seq.finish_reason is not None:
            return self._finish(seq, now, new, logprobs)
        return self._output(seq, new, logprobs), seq

    def _fail(self, seq: Sequence, message: str) -> list:
        """Finish a sequence, and the choices still waiting on its prompt, with an error; frees
        their blocks. Their final outputs."""
        outputs = []
        for s in [seq] + [c for c in seq.siblings if c.finish_reason is None]:
            s.finish_reason, s.error, s.siblings = "error", message, []
            outputs.append(self._finish(s, clock(), [], [] if s.params.logprobs is not None else None))
        return outputs

    def _finish(self, seq: Sequence, now: float, new: list[int] = (), logprobs=None):
        """Take a finished choice out (blocks freed); its final output."""
        seq.finish_time = now
        self.scheduler.finish(seq)
        if seq.tracker is not None and seq.finish_reason in ("stop", "length"):
            seq.tracker.finish()
        with self._live_lock:
            choices = self._live.get(seq.request_id)
            if choices is not None and any(c is seq for c in choices):
                choices.remove(seq)
                if not choices:
                    del self._live[seq.request_id]
        return self._output(seq, list(new), logprobs), seq

    def _output(self, seq: Sequence, new: list[int], logprobs) -> RequestOutput:
        text, delta = "", ""
        if seq.tracker is not None:
            text = seq.tracker.text
            delta = "" if seq.finish_reason == "error" else seq.tracker.ready()  # a failed tracker may be broken
        metrics = RequestMetrics(seq.arrival_time, seq.first_scheduled_time, seq.first_token_time,
                                 seq.last_token_time, seq.finish_time, seq.num_preemptions, seq.cached_prompt_tokens)
        return RequestOutput(seq.request_id, seq.prompt_ids, seq.output_ids, new, text, delta,
                             seq.finish_reason is not None, seq.finish_reason, metrics, seq.index, logprobs,
                             seq.error, seq.stop_reason)

    def _account(self, batch):
        s = self.stats
        s.steps += 1
        s.tokens_computed += sum(n for _, n in batch)
        s.batch_sizes.append(len(batch))
        s.batch_size_counts[len(batch)] += 1
        s.prefix_hit_tokens = self.scheduler.prefix_hit_tokens
        tables = [seq.table for seq in self.scheduler.running]
        allocated, used = self.block_manager.usage(tables)
        s.allocated_slot_steps += allocated
        s.used_slot_steps += used
        s.contiguous_slot_steps += len(tables) * self.max_model_len

    def counters(self) -> dict:
        """What a server exports as metrics (safe to read from any thread; values may be one step old)."""
        bm, sched = self.block_manager, self.scheduler
        return {
            "num_running": len(sched.running), "num_waiting": len(sched.waiting) + len(self._inbox),
            "kv_blocks_total": bm.num_blocks, "kv_blocks_free": bm.num_free,
            "prefix_cache_queried_tokens": sched.prefix_queried_tokens,
            "prefix_cache_hit_tokens": sched.prefix_hit_tokens,
            "prompt_tokens_total": sched.prompt_tokens_total,
            "generation_tokens_total": self.stats.generation_tokens_total,
        }

    # ---- driving it --------------------------------------------------------------------------
    def run(self) -> list[RequestOutput]:
        """Step until every request has finished; their final outputs in finishing order (aborted
        requests left out). For the thread that alone drives the engine."""
        done = []
        while self.has_unfinished():
            done += [o for o in self.step() if o.finished and o.finish_reason != "abort"]
        return done

    def generate(self, prompts: list, params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[RequestOutput]:
        """Run `prompts` to completion together; final outputs in the order of `prompts` (with n > 1,
        the n choices of each prompt in turn)."""
        params_list = params if isinstance(params, list) else [params] * len(prompts)
        params_list = [sp or SamplingParams() for sp in params_list]
        outbox: deque[RequestOutput] = deque()
        ids = []
        final = {}
        try:
            for p, sp in zip(prompts, params_list):
                ids.append(self.add_request(p, sp, on_output=outbox.append))
            wanted = sum(sp.n for sp in params_list)
            while len(final) < wanted:
                if not outbox:
                    self.step()
                while outbox:
                    o = outbox.popleft()
                    if o.finished:
                        final[o.request_id, o.index] = o
        finally:
            for rid in ids:
                self.abort(rid)  # a no-op once finished; frees them if we stopped early
        return [final[rid, i] for rid, sp in zip(ids, params_list) for i in range(sp.n)]

    def stream(self, prompt, params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield one request's outputs as its tokens come (other queued requests advance too).
        Stopping early (break, close) aborts the request: its blocks are free after the next step."""
        params = params or SamplingParams()
        outbox: deque[RequestOutput] = deque()
        request_id = self.add_request(prompt, params, on_output=outbox.append)
        left = params.n
        try:
            while left:
                if not outbox:
                    self.step()
                while outbox:
                    o = outbox.popleft()
                    left -= o.finished
                    yield o
        finally:
            if left:
                self.abort(request_id)


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
