"""The Engine driven the way a server drives it: aborts racing additions, reused ids, several threads
stepping, a request failing inside a step, a stream stopped early, bounded bookkeeping."""

from __future__ import annotations

import threading
import time
from collections import deque

import pytest
import torch

from workbench import load_model
from workbench.engine import Engine, EngineConfig, SamplingParams, generate_ids
from workbench.engine import engine as engine_module


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


class Hooked:
    """The real model with a hook run on each forward pass's logits (everything else delegated)."""

    def __init__(self, model, hook):
        self._model, self._hook = model, hook

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        logits = self._model(*args, **kwargs)
        self._hook(logits)
        return logits


class HookedLock:
    """A lock that runs `hook` once, right after a chosen release (to replay a thread interleaving)."""

    def __init__(self):
        self._lock, self.hook = threading.Lock(), None

    def __enter__(self):
        self._lock.acquire()

    def __exit__(self, *exc):
        self._lock.release()
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()


def all_free(engine):
    return engine.block_manager.num_free == engine.block_manager.num_blocks


def test_an_abort_right_after_add_request_is_never_computed(tiny):
    # Another thread aborts (and steps) the moment add_request lets go of the lock: the request must
    # not be computed afterwards, and nothing may stay queued or hold blocks.
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=50))
    engine._live_lock = lock = HookedLock()
    verdict, outputs = {}, []

    def other_thread():
        verdict["abort"] = engine.abort("a")
        outputs.extend(engine.step())

    lock.hook = other_thread
    engine.add_request(prompts_of([6])[0], greedy(5), request_id="a")
    assert verdict["abort"] is True
    for _ in range(4):
        outputs.extend(engine.step())
    assert engine.stats.tokens_computed == 0  # never run through the model
    assert [(o.request_id, o.finish_reason, o.token_ids) for o in outputs] == [("a", "abort", [])]
    assert not engine.has_unfinished() and engine.scheduler.waiting == deque() and engine.scheduler.running == []
    assert all_free(engine)


def test_a_queued_abort_does_not_kill_a_later_request_with_the_same_id(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=50))
    asked = []

    def abort_during_the_step(logits):  # the abort arrives while "x" takes its last step
        if not asked:
            asked.append(engine.abort("x"))

    engine.model = Hooked(model, abort_during_the_step)
    engine.add_request(prompts_of([5])[0], greedy(1), request_id="x")
    (first,) = engine.step()
    assert asked == [True] and first.finished and first.finish_reason == "length"
    prompt = prompts_of([7], seed=1)[0]
    engine.add_request(prompt, greedy(4), request_id="x")  # the id is free again: reused
    done = engine.run()
    assert [(o.request_id, o.finish_reason, o.token_ids) for o in done] == [("x", "length", alone(model, prompt, 4))]
    assert all_free(engine)


def test_generate_from_two_threads_gets_every_output(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=100))
    engine.model = Hooked(model, lambda logits: time.sleep(0.01))  # let the threads interleave
    prompts = {name: prompts_of([5, 9], seed=seed) for seed, name in enumerate("ab")}
    results, errors = {}, []

    def run(name):
        try:
            results[name] = [o.token_ids for o in engine.generate(prompts[name], greedy(6))]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(name,)) for name in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == {name: [alone(model, p, 6) for p in ps] for name, ps in prompts.items()}
    assert all_free(engine) and not engine.has_unfinished()


@pytest.mark.parametrize("victim_params", [greedy(8), SamplingParams(temperature=0.9, max_tokens=8, seed=1)],
                         ids=["greedy", "sampled"])
def test_nan_logits_fail_that_request_alone(tiny, victim_params):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=60))

    def poison(logits):
        for row, (rid, _) in enumerate(engine.last_schedule):
            if rid == "victim" and engine_steps[0] >= 2:  # after two good tokens
                logits[row] = float("nan")
        engine_steps[0] += 1

    engine_steps = [0]
    engine.model = Hooked(model, poison)
    good = prompts_of([5, 9])
    engine.add_request(good[0], greedy(8), request_id="g0")
    engine.add_request(prompts_of([6], seed=3)[0], victim_params, request_id="victim")
    engine.add_request(good[1], greedy(8), request_id="g1")
    done = {o.request_id: o for o in engine.run()}
    bad = done["victim"]
    assert bad.finished and bad.finish_reason == "error" and "NaN" in bad.error and len(bad.token_ids) == 2
    assert [done["g0"].token_ids, done["g1"].token_ids] == [alone(model, p, 8) for p in good]
    assert all_free(engine) and not engine.has_unfinished()


def test_a_detokenizer_error_fails_that_request_alone(tiny):
    model, tok = tiny
    cursed = tok.encode(" banana")[0]

    class Fussy:  # the real tokenizer, failing on one token id
        def __getattr__(self, name):
            return getattr(tok, name)

        def decode(self, ids, **kw):
            if cursed in list(ids):
                raise UnicodeDecodeError("utf-8", b"", 0, 1, "cannot decode this token")
            return tok.decode(ids, **kw)

    engine = Engine(model, Fussy(), EngineConfig(block_size=4, num_blocks=60))
    engine.add_request([5, 6, 7], greedy(6, logit_bias={cursed: 100.0}), request_id="victim")  # always picks it
    engine.add_request([8, 9, 10, 11], greedy(6), request_id="ok")
    done = {o.request_id: o for o in engine.run()}
    assert done["victim"].finish_reason == "error" and "cannot decode" in done["victim"].error
    assert done["ok"].finish_reason == "length" and done["ok"].token_ids == alone(model, [8, 9, 10, 11], 6)
    assert all_free(engine)


def test_a_failing_forward_pass_fails_its_batch_and_later_requests_run(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=60))
    calls = [0]

    def explode(logits):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("device lost")

    engine.model = Hooked(model, explode)
    a = engine.add_request(prompts_of([5])[0], greedy(4))
    engine.step()
    failed = engine.step()
    assert [(o.request_id, o.finish_reason) for o in failed] == [(a, "error")] and "device lost" in failed[0].error
    assert all_free(engine)
    prompt = prompts_of([6], seed=2)[0]
    (out,) = engine.generate([prompt], greedy(4))
    assert out.token_ids == alone(model, prompt, 4)


def test_a_stream_stopped_early_frees_its_blocks(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=60))
    stream = engine.stream(prompts_of([9])[0], greedy(20))
    next(stream), next(stream)
    assert engine.block_manager.num_free < engine.block_manager.num_blocks
    stream.close()  # the consumer stops reading
    engine.step()
    assert all_free(engine) and not engine.has_unfinished()


def test_batch_size_history_is_bounded(tiny, monkeypatch):
    model, _ = tiny
    monkeypatch.setattr(engine_module, "BATCH_HISTORY", 5)
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=60))
    engine.generate(prompts_of([4, 4]), [greedy(3), greedy(12)])
    assert engine.stats.steps == 12 and list(engine.stats.batch_sizes) == [1] * 5
    assert engine.stats.batch_size_counts == {2: 3, 1: 9} and engine.stats.mean_batch_size == 15 / 12


def test_a_failed_request_leaves_nothing_in_the_prefix_cache(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=60))
    engine.model = Hooked(model, lambda logits: logits.fill_(float("nan")))  # say its keys/values are garbage too
    prompt = prompts_of([13])[0]
    (failed,) = engine.generate([prompt], greedy(3))
    assert failed.finish_reason == "error" and engine.block_manager.prefix.table == {}
    engine.model = model
    (out,) = engine.generate([prompt], greedy(3))
    assert out.metrics.cached_prompt_tokens == 0 and out.token_ids == alone(model, prompt, 3)
