"""Generation: KV-cached decoding equals recomputation, batches equal one-at-a-time, sampling rules hold."""

from __future__ import annotations

import pytest
import torch

from workbench import ModelConfig, load_model
from workbench.engine import SamplingParams, generate, generate_ids, stream
from workbench.errors import ContextLengthError, InvalidParameterError


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def greedy(n, **kw):
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def ids_of(model, prompts, params):
    steps = list(generate_ids(model, prompts, params))
    return [[s[i] for s in steps if s[i] is not None] for i in range(len(prompts))]


@torch.inference_mode()
def test_cached_decoding_equals_full_recompute(tiny):
    model, _ = tiny
    prompt = [5, 17, 300, 42, 7]
    cached = ids_of(model, [prompt], greedy(12))[0]
    seq = list(prompt)
    for _ in range(12):  # no cache: run the whole sequence every step
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert cached == seq[len(prompt):]


@torch.inference_mode()
def test_cache_logits_match_no_cache(tiny):
    model, _ = tiny
    x = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    full = model(x)
    cache = model.new_cache(2, 16)
    parts = [model(x[:, :4], cache), model(x[:, 4:7], cache), model(x[:, 7:8], cache), model(x[:, 8:], cache)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_batched_unequal_prompts_equal_one_at_a_time(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = [tok.encode(p) for p in ("The capital of France is", "def add(a, b):",
                                        "Once upon a time, in a small village by the sea, there lived")]
    batched = ids_of(model, prompts, greedy(16))
    alone = [ids_of(model, [p], greedy(16))[0] for p in prompts]
    assert batched == alone


def test_stop_token_ends_only_that_sequence(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = tok.encode("One, two, three, four, five,")
    free = ids_of(model, [prompt], greedy(10))[0]
    i = next(i for i in range(2, 10) if free[i] not in free[:i])  # first token not seen before
    steps = list(generate_ids(model, [prompt, tok.encode("Hello")], SamplingParams(max_tokens=10), {free[i]}))
    first = [s[0] for s in steps]
    assert first[:i + 1] == free[:i + 1] and all(t is None for t in first[i + 1:])
    assert len(steps) == 10  # the other sequence keeps going


def test_generate_stops_at_eos_and_respects_max_tokens(model_and_tokenizer):
    model, tok = model_and_tokenizer
    c = generate(model, tok, [{"role": "user", "content": "Say hello."}], SamplingParams(max_tokens=64))
    assert c.finish_reason == "stop" and 0 < len(c.token_ids) < 64
    assert "<|im_end|>" not in c.text
    c = generate(model, tok, "The history of the Roman Empire", SamplingParams(max_tokens=5))
    assert c.finish_reason == "length" and len(c.token_ids) == 5


def test_stop_strings_and_streaming_agree(model_and_tokenizer):
    model, tok = model_and_tokenizer
    params = SamplingParams(max_tokens=40)
    full = generate(model, tok, "List three colors: red,", params).text
    word = full.strip().split()[1]
    stopped = generate(model, tok, "List three colors: red,", SamplingParams(max_tokens=40, stop=[word]))
    assert stopped.finish_reason == "stop" and word not in stopped.text and full.startswith(stopped.text)
    streamed = "".join(stream(model, tok, "List three colors: red,", SamplingParams(max_tokens=40, stop=[word])))
    assert streamed == stopped.text
    assert "".join(stream(model, tok, "List three colors: red,", params)) == full


def test_seeded_sampling_is_reproducible_and_varies(tiny):
    model, _ = tiny
    p = [5, 17, 300]
    a = ids_of(model, [p], SamplingParams(temperature=1.0, max_tokens=20, seed=1, ignore_eos=True))
    b = ids_of(model, [p], SamplingParams(temperature=1.0, max_tokens=20, seed=1, ignore_eos=True))
    c = ids_of(model, [p], SamplingParams(temperature=1.0, max_tokens=20, seed=2, ignore_eos=True))
    assert a == b and a != c


def test_top_k_one_is_greedy_and_top_p_keeps_the_head():
    from workbench.engine import Sampler

    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5]])
    topk = Sampler(SamplingParams(temperature=1.0, top_k=1, seed=0), [[0]], 4, "cpu")
    assert all(topk(logits).item() == 1 for _ in range(20))
    # probabilities ~ [0.09, 0.63, 0.23, 0.05]: top_p 0.6 keeps only token 1, 0.8 keeps tokens 1 and 2
    only = Sampler(SamplingParams(temperature=1.0, top_p=0.6, seed=0), [[0]], 4, "cpu")
    assert {only(logits).item() for _ in range(50)} == {1}
    two = Sampler(SamplingParams(temperature=1.0, top_p=0.8, seed=0), [[0]], 4, "cpu")
    assert {two(logits).item() for _ in range(200)} == {1, 2}


def test_repetition_penalty_demotes_seen_tokens():
    from workbench.engine import Sampler

    logits = torch.tensor([[2.0, 1.9, -1.0]])
    s = Sampler(SamplingParams(repetition_penalty=1.5), [[0]], 3, "cpu")  # token 0 is in the prompt
    assert s(logits).item() == 1  # 2.0 / 1.5 < 1.9
    assert s(logits).item() == 0  # now token 1 was seen too: 1.9/1.5 < 2/1.5


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                    dict(max_tokens=0), dict(repetition_penalty=0), dict(stop=[""])])
def test_bad_sampling_params(kwargs):
    with pytest.raises(InvalidParameterError):
        SamplingParams(**kwargs)


def test_prompt_past_the_context_is_refused():
    model, tok = load_model(ModelConfig.tiny(max_position_embeddings=32))
    with pytest.raises(ContextLengthError, match="context window of 32"):
        generate(model, tok, list(range(1, 30)), SamplingParams(max_tokens=8))


def test_preallocated_cache_is_not_reallocated(tiny):
    model, _ = tiny
    cache = model.new_cache(1, 32)
    k_ptr = cache.k.data_ptr()
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), cache)
        for t in range(5):
            model(torch.tensor([[t]]), cache)
    assert cache.k.data_ptr() == k_ptr and cache.length == 8
