"""The scheduler: which sequences run in the next step, and how many of their tokens.

Each step, running sequences come first (one token each when decoding, the next piece of their
prompt otherwise); then waiting requests are admitted, as the batching policy allows, while the
sequence limit, the step's token budget and the free blocks allow. When a running sequence needs a
block and none is free, the most recently admitted sequence is preempted: its blocks are freed and
it goes back to the front of the queue, to be recomputed from its tokens (prompt + output so far)
when memory allows. With chunked prefill a prompt may be split across steps to fit the budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .batching import Policy
from .paged import BlockManager, BlockTable
from .sampling import Sampler, SamplingParams


@dataclass(eq=False)  # compared by identity
class Sequence:
    """One request inside the engine: its tokens, its blocks and its timeline."""
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    sampler: Sampler
    arrival_time: float
    token_ids: list[int] = field(default_factory=list)  # prompt + output so far
    table: BlockTable = field(default_factory=BlockTable)
    preempted: bool = False
    num_preemptions: int = 0
    cached_prompt_tokens: int = 0   # prompt positions found in the prefix cache at first admission
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    tracker: object = None          # text and stop strings, when the engine has a tokenizer
    index: int = 0                  # choice index within its request (n > 1)
    siblings: list = field(default_factory=list)  # choices 1..n-1, admitted once this one's prompt is computed
    stop_ids: frozenset = frozenset()   # tokens that end this sequence (EOS unless ignore_eos, stop_token_ids)
    on_output: object = None        # called with each RequestOutput, in the thread that steps
    stop_reason: int | str | None = None  # the stop token id or stop string that ended it (None for EOS)
    error: str | None = None        # why it failed (finish_reason "error")

    def __post_init__(self):
        self.token_ids = list(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids):]

    @property
    def remaining(self) -> int:
        """Tokens not yet run through the model (the whole prompt at first, then one per step)."""
        return len(self.token_ids) - self.table.num_computed


class Scheduler:
    def __init__(self, block_manager: BlockManager, policy: Policy, max_num_seqs: int, max_num_batched_tokens: int,
                 chunked_prefill: bool):
        self.block_manager, self.policy = block_manager, policy
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        # counted once per sequence, at its first admission
        self.prompt_tokens_total = 0      # prompt tokens of requests (choice 0 only: siblings share the prompt)
        self.prefix_queried_tokens = 0    # prompt tokens looked up in the prefix cache
        self.prefix_hit_tokens = 0        # ... of those found there (not computed)

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self, now: float, drain: bool = True) -> list[tuple[Sequence, int]]:
        """(sequence, number of its next tokens to run) for the next step; blocks are reserved."""
        budget, scheduled, kept = self.max_num_batched_tokens, [], []
        queue = deque(self.running)
        while queue:
            seq = queue.popleft()
            n = min(seq.remaining, budget)
            if n == 0:  # the budget is spent: this one waits a step (only with chunked prefill)
                kept.append(seq)
                continue
            while not self.block_manager.can_grow(seq.table, seq.table.num_computed + n):
                victim = queue.pop() if queue else seq
                self._preempt(victim)
                if victim is seq:
                    break
            else:
                self.block_manager.grow(seq.table, seq.table.num_computed + n)
                scheduled.append((seq, n))
                kept.append(seq)
                budget -= n
        self.running = kept

        fresh = sum(not s.preempted for s in self.waiting)
        oldest = now - self.waiting[0].arrival_time if self.waiting else 0.0
        allowed = self.policy.admissions(len(self.running), fresh, oldest, drain)
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            if not seq.preempted and allowed == 0:
                break
            self.block_manager.reuse_prefix(seq.table, seq.token_ids)
            n = seq.remaining
            if n > budget and not self.chunked_prefill:
                n = 0
            n = min(n, budget)
            if n == 0 or not self.block_manager.can_grow(seq.table, seq.table.num_computed + n):
                self.block_manager.release(seq.table)  # give the shared prefix back; try again next step
                break
            self.block_manager.grow(seq.table, seq.table.num_computed + n)
            self.waiting.popleft()
            if seq.first_scheduled_time is None:
                seq.first_scheduled_time = now
                seq.cached_prompt_tokens = seq.table.num_computed
                self.prefix_queried_tokens += len(seq.prompt_ids)
                self.prefix_hit_tokens += seq.table.num_computed
                self.prompt_tokens_total += len(seq.prompt_ids) if seq.index == 0 else 0
            allowed -= not seq.preempted
            seq.preempted = False
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n
        return scheduled

    def _preempt(self, seq: Sequence):
        self.block_manager.release(seq.table)
        seq.preempted = True
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence):
        """Take a finished, aborted or failed sequence out and free its blocks (a failed one's
        blocks leave the prefix cache)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.release(seq.table, uncache=seq.finish_reason == "error")
