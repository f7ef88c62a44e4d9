"""Batching policies: when may waiting requests start?

All four run on the same engine (paged cache, one forward pass per step over every running
sequence); they differ only in admission, which is what separates them in practice:

- sequential: one request at a time, start to finish.
- static: a fixed batch of `batch_size` requests; the next batch starts when the slowest member of
  this one has finished (a partial batch only once no more requests will come).
- dynamic: like static, but a batch also starts when its oldest request has waited `max_wait_s`.
- continuous: iteration-level; any step admits requests while the sequence limit and free KV
  blocks allow, and finished sequences leave at once.

A sequence preempted by the scheduler (its blocks were needed) is always readmitted first,
whatever the policy: it had already been admitted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidParameterError

POLICIES = ("sequential", "static", "dynamic", "continuous")


@dataclass(frozen=True)
class Policy:
    name: str = "continuous"
    batch_size: int = 8        # static and dynamic: requests per batch
    max_wait_s: float = 0.05   # dynamic: start a partial batch once its oldest request waited this long

    def __post_init__(self):
        if self.name not in POLICIES:
            raise InvalidParameterError(f"unknown batching policy {self.name!r}; choose one of {', '.join(POLICIES)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidParameterError(f"batch_size must be an integer >= 1, got {self.batch_size}")
        if self.max_wait_s < 0:
            raise InvalidParameterError(f"max_wait_s must be >= 0, got {self.max_wait_s}")

    def admissions(self, running: int, waiting: int, oldest_wait_s: float, drain: bool) -> int:
        """How many new requests may start now (memory and token budgets are checked after).

        running: sequences in flight; waiting: requests queued; oldest_wait_s: how long the oldest
        has waited; drain: no more requests will arrive (a partial batch need not wait).
        """
        if self.name == "continuous":
            return waiting
        if running:  # a batch in flight: wait for its slowest member
            return 0
        size = 1 if self.name == "sequential" else self.batch_size
        full = waiting >= size or drain or (self.name == "dynamic" and oldest_wait_s >= self.max_wait_s)
        return min(size, waiting) if full else 0
