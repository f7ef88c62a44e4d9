"""EngineLoop: one thread steps, many threads and asyncio tasks submit; outputs equal one-at-a-time
decoding; n > 1 shares the prompt; failures, aborts and shutdown end the right handles."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from workbench import load_model
from workbench.engine import Engine, EngineConfig, EngineLoop, SamplingParams, generate_ids
from workbench.errors import (
    CapacityError,
    ContextLengthError,
    EngineClosedError,
    InvalidParameterError,
    RequestFailedError,
)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def greedy(n, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def alone(model, prompt, n):
    return [step[0] for step in generate_ids(model, [prompt], greedy(n))]


def prompts_of(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in lengths]


@pytest.fixture
def make_loop():
    loops = []

    def make(model, tokenizer=None, **config):
        loop = EngineLoop(Engine(model, tokenizer, EngineConfig(**{"block_size": 4, "num_blocks": 200, **config})))
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.shutdown()


def tokens_of(handle):
    return [t for out in handle for t in out.new_token_ids]


def test_eight_threads_get_exactly_their_tokens(model_and_tokenizer, make_loop):
    model, tok = model_and_tokenizer
    texts = ["The capital of France is", "def add(a, b):", "Once upon a time,", "1, 2, 3,", "Water boils at",
             "The best way to learn is", "import numpy as np", "My favourite colour is"]
    prompts = [tok.encode(t) for t in texts]
    loop = make_loop(model, tok, block_size=8, num_blocks=128)
    results, errors, start = {}, [], threading.Barrier(len(prompts))

    def client(i):
        try:
            start.wait()
            handle = loop.submit(prompts[i], greedy(8))
            results[i] = tokens_of(handle)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert [results[i] for i in range(len(prompts))] == [alone(model, p, 8) for p in prompts]
    assert max(loop.engine.stats.batch_sizes) > 1  # they really ran together
    stats = loop.stats()
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"] and loop.num_unfinished == 0
    assert stats["generation_tokens_total"] == 64 and stats["prompt_tokens_total"] == sum(map(len, prompts))


def test_asyncio_readers_never_block_the_event_loop(tiny, make_loop):
    model, _ = tiny
    loop = make_loop(model)
    prompts = prompts_of([5, 9, 3, 14])
    ticks = []

    async def ticker():
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.001)

    async def read(prompt):
        return [t async for out in loop.submit(prompt, greedy(10)).aiter() for t in out.new_token_ids]

    async def main():
        tick = asyncio.create_task(ticker())
        got = await asyncio.gather(*(read(p) for p in prompts))
        tick.cancel()
        return got

    assert asyncio.run(main()) == [alone(model, p, 10) for p in prompts]
    assert len(ticks) > 5  # the event loop kept running while the engine worked


def test_n_choices_share_one_prefill(tiny, make_loop):
    model, _ = tiny
    loop = make_loop(model)
    prompt = prompts_of([22])[0]  # 21 tokens looked up -> 5 full blocks of 4 shared
    handle = loop.submit(prompt, SamplingParams(max_tokens=6, ignore_eos=True, n=3))
    outs = list(handle)
    final = handle.result()
    assert [o.index for o in final] == [0, 1, 2] and {o.index for o in outs} == {0, 1, 2}
    assert [o.token_ids for o in final] == [alone(model, prompt, 6)] * 3
    assert [o.metrics.cached_prompt_tokens for o in final] == [0, 20, 20]
    stats = loop.stats()
    assert stats["prefix_cache_hit_tokens"] == 40 and stats["prompt_tokens_total"] == 22
    # computed: the prompt once, 2 tokens per sibling (22 - 20), then 5 decode steps per choice
    assert loop.engine.stats.tokens_computed == 22 + 2 * 2 + 3 * 5
    assert stats["generation_tokens_total"] == 18 and stats["kv_blocks_free"] == stats["kv_blocks_total"]


def test_seeded_choice_i_samples_with_seed_plus_i(tiny, make_loop):
    model, _ = tiny
    loop = make_loop(model)
    prompt = prompts_of([6])[0]
    sampled = dict(temperature=1.0, max_tokens=12, ignore_eos=True)
    choices = loop.submit(prompt, SamplingParams(n=3, seed=7, **sampled)).result()
    singles = [loop.submit(prompt, SamplingParams(seed=7 + i, **sampled)).result()[0] for i in range(3)]
    assert [c.token_ids for c in choices] == [s.token_ids for s in singles]
    assert len({tuple(c.token_ids) for c in choices}) == 3


class Poisoned:
    """The real model; the logits of request `victim` turn to NaN after `after` of its tokens."""

    def __init__(self, model, engine_ref, victim, after):
        self._model, self._engine, self._victim, self._after, self._seen = model, engine_ref, victim, after, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        logits = self._model(*args, **kwargs)
        for row, (rid, _) in enumerate(self._engine[0].last_schedule):
            if rid == self._victim:
                if self._seen >= self._after:
                    logits[row] = float("nan")
                self._seen += 1
        return logits


def test_a_failed_request_raises_after_its_outputs_and_the_others_run_on(tiny):
    model, _ = tiny
    ref = []
    engine = Engine(Poisoned(model, ref, "victim", after=3), None, EngineConfig(block_size=4, num_blocks=100))
    ref.append(engine)
    with EngineLoop(engine) as loop:
        victim = loop.submit(prompts_of([5])[0], greedy(10), request_id="victim")
        other = loop.submit(prompts_of([7], seed=1)[0], greedy(10))
        seen = []
        with pytest.raises(RequestFailedError, match="NaN"):
            for out in victim:
                seen.append(out)
        assert len(seen) == 3 and not any(o.finished for o in seen)
        with pytest.raises(RequestFailedError):
            victim.result()
        assert tokens_of(other) == alone(model, prompts_of([7], seed=1)[0], 10)
        stats = loop.stats()
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"] and loop.num_unfinished == 0


def test_abort_is_idempotent_and_frees_blocks(tiny, make_loop):
    model, _ = tiny
    loop = make_loop(model)
    handle = loop.submit(prompts_of([9])[0], greedy(200))
    first = next(iter(handle))
    assert first.new_token_ids and loop.num_unfinished == 1
    handle.abort()
    handle.abort()
    rest = list(handle)
    assert rest[-1].finished and rest[-1].finish_reason == "abort"
    stats = loop.stats()
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"] and loop.num_unfinished == 0
    handle.abort()  # after the end: still harmless
    assert tokens_of(loop.submit(prompts_of([4])[0], greedy(3))) == alone(model, prompts_of([4])[0], 3)


def test_bad_input_raises_at_submit_and_queues_nothing(tiny, make_loop):
    model, tok = tiny
    loop = make_loop(model, tok, num_blocks=10)
    context = model.config.max_position_embeddings
    with pytest.raises(ContextLengthError):
        loop.submit([5] * context, greedy(4))
    with pytest.raises(CapacityError):
        loop.submit([5] * 30, greedy(20))
    with pytest.raises(InvalidParameterError, match="vocabulary"):
        loop.submit("hello", SamplingParams(logit_bias={10**7: 1.0}))
    with pytest.raises(InvalidParameterError):
        loop.submit([], greedy(2))
    assert loop.num_unfinished == 0 and loop.stats()["num_waiting"] == 0 and not loop.engine.has_unfinished()
    chat = loop.submit([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=3)).result()
    assert chat[0].prompt_token_ids == tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}]))


def test_the_loop_sleeps_when_idle(tiny, make_loop):
    model, _ = tiny
    loop = make_loop(model)
    steps = []
    real_step = loop.engine.step
    loop.engine.step = lambda *a, **kw: steps.append(1) or real_step(*a, **kw)
    loop.submit(prompts_of([4])[0], greedy(3)).result()
    busy = len(steps)
    time.sleep(0.3)
    assert busy >= 3 and len(steps) == busy  # no step while nothing is unfinished


def test_shutdown_aborts_running_requests_and_joins(tiny):
    model, _ = tiny
    loop = EngineLoop(Engine(model, None, EngineConfig(block_size=4, num_blocks=200)))
    handle = loop.submit(prompts_of([6])[0], greedy(200))
    next(iter(handle))
    loop.shutdown()
    assert not loop._thread.is_alive()
    assert handle.result()[0].finish_reason == "abort"
    with pytest.raises(EngineClosedError):
        loop.submit([5, 6], greedy(2))
    assert loop.engine.block_manager.num_free == loop.engine.block_manager.num_blocks


def test_a_reader_that_stops_early_aborts_its_request(tiny, make_loop):
    model, _ = tiny
    loop = make_loop(model)
    for out in loop.submit(prompts_of([8])[0], greedy(200)):
        break  # a client that went away
    blocking = loop.engine.block_manager

    async def cancelled():
        handle = loop.submit(prompts_of([5])[0], greedy(200))

        async def read():
            async for _ in handle.aiter():
                pass
        task = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return handle

    handle = asyncio.run(cancelled())
    deadline = time.time() + 10
    while loop.num_unfinished and time.time() < deadline:
        time.sleep(0.01)
    assert loop.num_unfinished == 0 and handle.final[0].finish_reason == "abort"
    assert blocking.num_free == blocking.num_blocks


def test_a_broken_engine_fails_every_request_instead_of_hanging(tiny):
    model, _ = tiny
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=100))
    engine.scheduler.schedule = lambda *a, **kw: 1 / 0  # a bug in the engine itself, not in one request
    loop = EngineLoop(engine)
    handle = loop.submit([5, 6, 7], greedy(4))
    with pytest.raises(RequestFailedError, match="ZeroDivisionError"):
        handle.result()
    assert isinstance(loop.error, ZeroDivisionError)
    with pytest.raises(EngineClosedError):
        loop.submit([5, 6], greedy(2))
    loop.shutdown()
