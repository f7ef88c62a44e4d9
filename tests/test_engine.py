"""The Engine: batched, paged, preempted, chunked and prefix-cached greedy outputs equal one-at-a-time
decoding; bad requests fail alone; every block comes back."""

from __future__ import annotations

import pytest
import torch

from workbench import load_model
from workbench.engine import Engine, EngineConfig, SamplingParams, generate, generate_ids
from workbench.errors import CapacityError, ContextLengthError, InvalidParameterError


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def greedy(n):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def alone(model, prompt, n):
    return [step[0] for step in generate_ids(model, [prompt], greedy(n))]


def prompts_of(lengths, seed=0, prefix=()):
    gen = torch.Generator().manual_seed(seed)
    return [list(prefix) + torch.randint(3, 1000, (n,), generator=gen).tolist() for n in lengths]


CONFIGS = {
    "roomy": dict(block_size=4, num_blocks=200),
    "preempting": dict(block_size=4, num_blocks=24, max_num_seqs=8),
    "chunked": dict(block_size=4, num_blocks=200, chunked_prefill=True, max_num_batched_tokens=7),
    "one-slot-blocks": dict(block_size=1, num_blocks=300),
    "no-prefix-cache": dict(block_size=4, num_blocks=200, enable_prefix_caching=False),
    "static": dict(block_size=4, num_blocks=200, policy="static", batch_size=3),
    "sequential": dict(block_size=4, num_blocks=200, policy="sequential"),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_engine_equals_one_at_a_time(tiny, name):
    model, _ = tiny
    prompts = prompts_of([5, 17, 33, 1, 40, 12], prefix=[9] * 8)  # a common 8-token "system prompt"
    engine = Engine(model, config=EngineConfig(**CONFIGS[name]))
    outs = engine.generate(prompts, greedy(14))
    assert [o.token_ids for o in outs] == [alone(model, p, 14) for p in prompts]
    assert all(o.finished and o.finish_reason == "length" for o in outs)
    assert engine.block_manager.num_free == engine.block_manager.num_blocks
    if name == "preempting":
        assert engine.scheduler.num_preemptions > 0
    if name == "chunked":
        assert max(engine.stats.batch_sizes) > 1 and engine.stats.tokens_computed > 0


def test_prefix_cache_shares_a_system_prompt_and_collisions_stay_exact(tiny):
    model, _ = tiny
    prompts = prompts_of([6, 9, 11], seed=1, prefix=list(range(100, 124)))  # 24 shared tokens = 6 blocks
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=100))
    first = engine.generate(prompts[:1], greedy(5))
    rest = engine.generate(prompts[1:], greedy(5))
    assert [o.metrics.cached_prompt_tokens for o in first + rest] == [0, 24, 24]
    assert [o.token_ids for o in first + rest] == [alone(model, p, 5) for p in prompts]

    colliding = Engine(model, config=EngineConfig(block_size=4, num_blocks=100))
    colliding.block_manager.prefix.hash_fn = lambda prev, tokens: 0  # every block has the same hash
    other = prompts_of([30], seed=2)
    outs = colliding.generate([other[0], prompts[0]], greedy(5))
    assert [o.token_ids for o in outs] == [alone(model, other[0], 5), alone(model, prompts[0], 5)]
    assert colliding.block_manager.num_free == colliding.block_manager.num_blocks


def test_bundled_model_batched_and_paged_equal_one_at_a_time(model_and_tokenizer):
    model, tok = model_and_tokenizer
    texts = ["The capital of France is", "def add(a, b):", "Once upon a time, in a small village by the sea,"]
    prompts = [tok.encode(t) for t in texts]
    engine = Engine(model, tok, EngineConfig(block_size=8, num_blocks=64))
    outs = engine.generate(prompts, greedy(8))
    assert [o.token_ids for o in outs] == [alone(model, p, 8) for p in prompts]
    assert outs[1].text == tok.decode(outs[1].token_ids, skip_special_tokens=True)


def test_stream_text_and_stop_strings_match_generate(model_and_tokenizer):
    model, tok = model_and_tokenizer
    params = SamplingParams(max_tokens=12, stop=["\n"])
    prompt = "List three colours: red,"
    engine = Engine(model, tok, EngineConfig(block_size=8, num_blocks=32))
    pieces = list(engine.stream(prompt, params))
    expected = generate(model, tok, prompt, params)
    assert "".join(p.delta_text for p in pieces) == pieces[-1].text == expected.text
    assert pieces[-1].finished and pieces[-1].finish_reason == expected.finish_reason


def test_seeded_sampling_is_reproducible(tiny):
    model, _ = tiny
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=10, seed=3, ignore_eos=True)
    runs = [Engine(model, config=EngineConfig(block_size=4, num_blocks=50)).generate(prompts_of([7, 3]), params)
            for _ in range(2)]
    assert [o.token_ids for o in runs[0]] == [o.token_ids for o in runs[1]]


def test_bad_requests_fail_alone(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=10))  # 40 positions
    good = engine.add_request(prompts_of([5])[0], greedy(6))
    context = model.config.max_position_embeddings
    with pytest.raises(ContextLengthError, match="context"):
        engine.add_request([5] * context, greedy(1))
    with pytest.raises(CapacityError, match="blocks"):
        engine.add_request([5] * 30, greedy(20))                  # 50 positions > 40
    with pytest.raises(InvalidParameterError):
        engine.add_request([5, 6], SamplingParams(temperature=-1))
    with pytest.raises(InvalidParameterError):
        engine.add_request([5, model.config.vocab_size], greedy(2))
    with pytest.raises(InvalidParameterError):
        engine.add_request([], greedy(2))
    with pytest.raises(InvalidParameterError):
        engine.add_request("text needs a tokenizer", greedy(2))
    with pytest.raises(InvalidParameterError):
        engine.add_request([5], greedy(2), request_id=good)
    with pytest.raises(InvalidParameterError, match="policy"):
        EngineConfig(policy="round-robin")
    (out,) = engine.run()
    assert out.request_id == good and out.token_ids == alone(model, prompts_of([5])[0], 6)
    assert engine.block_manager.num_free == engine.block_manager.num_blocks


def test_abort_frees_blocks_and_others_finish(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=50))
    a, b = (engine.add_request(p, greedy(10)) for p in prompts_of([6, 8]))
    engine.step()
    assert engine.abort(a) and not engine.abort("nope")
    done = engine.run()
    assert [o.request_id for o in done] == [b]
    assert engine.block_manager.num_free == engine.block_manager.num_blocks


def test_static_batches_wait_for_the_slowest(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=100, policy="static", batch_size=2))
    for p, n in zip(prompts_of([4, 4, 4]), (2, 6, 2)):
        engine.add_request(p, greedy(n))
    engine.run()
    # batch 1 = requests 0 and 1 (6 steps, the second alone after step 2); then request 2 (2 steps)
    assert list(engine.stats.batch_sizes) == [2, 2, 1, 1, 1, 1, 1, 1]


def test_token_budget_without_chunking_is_checked_up_front(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=50, max_num_batched_tokens=16))
    with pytest.raises(InvalidParameterError, match="chunked_prefill"):
        engine.add_request(list(range(3, 15)), greedy(8))          # 20 positions > 16
    chunked = Engine(model, config=EngineConfig(block_size=4, num_blocks=50, max_num_batched_tokens=16,
                                                chunked_prefill=True))
    (out,) = chunked.generate([list(range(3, 15))], greedy(8))
    assert out.token_ids == alone(model, list(range(3, 15)), 8)
