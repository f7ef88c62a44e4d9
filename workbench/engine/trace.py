"""What the scheduler did, step by step: a record per `Engine.step` for tables, plots and tests.

Each record holds which requests ran (and how many of their tokens), who is queued, who finished,
the free blocks, the preemptions so far, every running sequence's block table and every block's
reference count, all taken right after the step, so a notebook can print the schedule and draw the
pool without reaching into the engine.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepRecord:
    step: int
    ran: tuple[tuple[str, int], ...]         # (request id, tokens run through the model)
    queued: tuple[str, ...]
    finished: tuple[str, ...]
    free_blocks: int
    preemptions: int                          # in the engine so far
    preempted_now: int                        # in this step
    tables: dict[str, tuple[int, ...]]        # running request id -> its block ids, in order
    ref_counts: tuple[int, ...]               # per physical block

    def row(self) -> dict:
        """The record as one table row of short strings ("-" for none)."""
        return {"step": self.step, "ran (request: tokens)": " ".join(f"{r}:{n}" for r, n in self.ran) or "-",
                "queued": " ".join(self.queued) or "-", "finished": " ".join(self.finished) or "-",
                "free blocks": self.free_blocks, "preemptions so far": self.preemptions}


def record_step(engine, step: int) -> StepRecord:
    """Step `engine` once and record what happened (`step` numbers the record)."""
    before = engine.scheduler.num_preemptions
    outputs = engine.step()
    manager = engine.block_manager
    return StepRecord(
        step=step, ran=tuple(engine.last_schedule),
        queued=tuple(s.request_id for s in engine.scheduler.waiting),
        finished=tuple(o.request_id for o in outputs if o.finished),
        free_blocks=manager.num_free, preemptions=engine.scheduler.num_preemptions,
        preempted_now=engine.scheduler.num_preemptions - before,
        tables={s.request_id: tuple(s.table.block_ids) for s in engine.scheduler.running},
        ref_counts=tuple(b.ref_count for b in manager.kv_blocks))


def trace_steps(engine, max_steps: int = 100_000) -> list[StepRecord]:
    """Step `engine` until every request has finished, recording each step."""
    records = []
    while engine.has_unfinished():
        if len(records) >= max_steps:
            raise RuntimeError(f"the engine still had unfinished requests after {max_steps} steps")
        records.append(record_step(engine, len(records) + 1))
    return records
