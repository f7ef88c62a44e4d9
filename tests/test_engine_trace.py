"""The step trace records what the scheduler did, and the pool drawing reads it right."""

import matplotlib

matplotlib.use("Agg")

from workbench.checkpoints import random_model
from workbench.config import ModelConfig
from workbench.engine import Engine, EngineConfig, SamplingParams
from workbench.engine.trace import record_step, trace_steps
from workbench.lab.blocks import FREE, draw_block_pool, pool_grid


def tiny_engine(**config):
    return Engine(random_model(ModelConfig.tiny(vocab_size=256)), None, EngineConfig(**config))


def test_trace_shows_a_preemption_and_every_block_back():
    engine = tiny_engine(block_size=4, num_blocks=6, max_num_seqs=3)
    for i in range(3):
        engine.add_request(list(range(10 + i, 17 + i)), SamplingParams(max_tokens=8, ignore_eos=True))
    trace = trace_steps(engine)
    assert sum(r.preempted_now for r in trace) == trace[-1].preemptions == engine.scheduler.num_preemptions > 0
    assert sorted(f for r in trace for f in r.finished) == ["0", "1", "2"]
    assert trace[-1].free_blocks == 6 and not trace[-1].tables
    assert all(len(r.ran) <= 3 for r in trace)
    assert trace[0].ran and all(n == 7 for _, n in trace[0].ran)           # whole prompts at admission
    preempting = next(r for r in trace if r.preempted_now)
    assert preempting.queued                                                 # the victim waits again
    assert preempting.row()["preemptions so far"] >= 1


def test_shared_prefix_blocks_are_drawn_as_shared():
    engine = tiny_engine(block_size=4, num_blocks=16)
    params = SamplingParams(max_tokens=3, ignore_eos=True)
    prefix = list(range(20, 32))                                             # three full blocks
    engine.add_request(prefix + [40, 41], params)
    record_step(engine, 1)
    engine.add_request(prefix + [50], params)
    record = record_step(engine, 2)
    grid = pool_grid(record)
    first, second = record.tables.values()
    assert list(first[:3]) == list(second[:3])                               # the prefix is stored once
    assert all(grid[b] == 2 and record.ref_counts[b] == 2 for b in first[:3])
    assert grid[first[3]] == 0 and grid[second[3]] == 1
    assert (grid == FREE).sum() == record.free_blocks
    ax = draw_block_pool(record)
    assert "request 0 blue, 1 orange" in ax.get_title()
