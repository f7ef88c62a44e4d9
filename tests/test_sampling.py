"""Sampling options against plain PyTorch formulas (penalties as OpenAI/vLLM define them, min_p,
logit bias, min_tokens), their validation, logprobs, and batched outputs against one-at-a-time decoding."""

from __future__ import annotations

import pytest
import torch

from workbench import load_model
from workbench.engine import Engine, EngineConfig, Sampler, SamplingParams, generate_ids
from workbench.engine.sampling import token_logprobs
from workbench.errors import InvalidParameterError

V = 50


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def reference_process(logits, prompt, output, p: SamplingParams, stop_ids=()):
    """vLLM's logits processing written out: bias, min_tokens, repetition (prompt + output),
    frequency (count times) and presence (once) over output tokens."""
    x = logits.clone().float()
    for token, bias in (p.logit_bias or {}).items():
        x[token] += bias
    if len(output) < p.min_tokens:
        for t in stop_ids:
            x[t] = float("-inf")
    for t in set(prompt) | set(output):
        if p.repetition_penalty != 1.0:
            x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    for t in set(output):
        x[t] -= p.frequency_penalty * output.count(t) + p.presence_penalty
    return x


@pytest.mark.parametrize("kwargs", [
    dict(presence_penalty=0.7), dict(frequency_penalty=1.3), dict(presence_penalty=-0.5, frequency_penalty=0.4),
    dict(logit_bias={3: 5.0, 7: -100.0, 11: 0.5}), dict(repetition_penalty=1.4, frequency_penalty=0.3),
    dict(min_tokens=4, logit_bias={2: 3.0}),
    dict(repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=0.5, logit_bias={1: 2.0}, min_tokens=2),
])
def test_processed_logits_equal_the_reference_formula(kwargs):
    gen = torch.Generator().manual_seed(0)
    prompt, stops = [4, 5, 5, 9], [2, 17]
    params = SamplingParams(temperature=0.0, max_tokens=10, **kwargs)
    sampler = Sampler(params, [prompt], V, "cpu", stop_ids=stops)
    output: list[int] = []
    for token in [5, 5, 8, 2, 5, 8, 13]:  # repeats, so counts grow; 2 is a stop token
        logits = torch.randn(1, V, generator=gen) * 3
        expected = reference_process(logits[0], prompt, output, params, stops)
        assert torch.allclose(sampler.process(logits)[0], expected, atol=1e-5)
        sampler.record(torch.tensor([token]))  # as if `token` had been sampled
        output.append(token)
    logits = torch.randn(1, V, generator=gen)
    picked = int(sampler(logits)[0])  # greedy: the argmax of the processed logits, then recorded
    assert picked == int(reference_process(logits[0], prompt, output, params, stops).argmax())
    after = reference_process(logits[0], prompt, output + [picked], params, stops)
    assert torch.allclose(sampler.process(logits)[0], after)


def test_min_p_keeps_tokens_above_a_fraction_of_the_best():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    for min_p, kept in [(0.0, {0, 1, 2, 3, 4}), (0.15, {0, 1, 2}), (0.5, {0, 1}), (0.7, {0}), (1.0, {0})]:
        s = Sampler(SamplingParams(temperature=1.0, min_p=min_p, seed=0), [[0]], 5, "cpu")
        truncated = s.truncate(logits)
        probs = logits.softmax(-1)
        assert set(torch.nonzero(probs[0] >= min_p * probs.max()).flatten().tolist()) == kept
        assert set(torch.isfinite(truncated[0]).nonzero().flatten().tolist()) == kept
        assert {int(s(logits)) for _ in range(200)} == kept if min_p < 1 else {0}


def test_min_p_follows_the_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    hot = Sampler(SamplingParams(temperature=2.0, min_p=0.7, seed=0), [[0]], 3, "cpu")
    # at temperature 2 the probabilities flatten to ~[0.41, 0.32, 0.26]: 0.32 >= 0.7 * 0.41 survives
    assert set(torch.isfinite(hot.truncate(logits / 2.0)[0]).nonzero().flatten().tolist()) == {0, 1}


def test_logprobs_are_log_softmax_of_the_raw_logits():
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(1))
    got = token_logprobs(logits, [7, 3], [3, 0])
    ref = torch.log_softmax(logits, -1)
    assert got[0].token_id == 7 and got[0].logprob == pytest.approx(float(ref[0, 7]), abs=1e-6)
    assert [t for t, _ in got[0].top] == ref[0].topk(3).indices.tolist()
    assert [lp for _, lp in got[0].top] == pytest.approx(ref[0].topk(3).values.tolist(), abs=1e-6)
    assert got[1].top == [] and got[1].logprob == pytest.approx(float(ref[1, 3]), abs=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(n=0), dict(n=1.5), dict(min_p=-0.1), dict(min_p=1.2), dict(presence_penalty=2.5),
    dict(frequency_penalty=-3), dict(logit_bias={5: 101}), dict(logit_bias={5: float("nan")}),
    dict(logit_bias={-1: 1.0}), dict(logit_bias=[1, 2]), dict(stop_token_ids=[-4]), dict(stop_token_ids="x"),
    dict(min_tokens=-1), dict(min_tokens=200, max_tokens=100), dict(logprobs=21), dict(logprobs=-1),
    dict(temperature=float("inf")), dict(top_p=float("nan")), dict(seed=1.5), dict(max_tokens=True),
])
def test_bad_new_params_are_refused_with_a_clear_message(kwargs):
    with pytest.raises(InvalidParameterError, match=next(iter(kwargs)).split("_")[0]):
        SamplingParams(**kwargs)


def test_json_style_logit_bias_keys_are_accepted():
    assert SamplingParams(logit_bias={"42": 1.5}).logit_bias == {42: 1.5}


def test_token_ids_outside_the_vocabulary_are_refused_at_add_request(tiny):
    model, _ = tiny
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=20))
    vocab = model.config.vocab_size
    for params in (SamplingParams(logit_bias={vocab: 1.0}), SamplingParams(stop_token_ids=[vocab + 3])):
        with pytest.raises(InvalidParameterError, match="vocabulary"):
            engine.add_request([5, 6], params)
    assert not engine.has_unfinished()


def test_batched_engine_with_every_option_equals_one_at_a_time(tiny):
    model, _ = tiny
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 1000, (n,), generator=gen).tolist() for n in (5, 12, 8, 3)]
    params = [
        SamplingParams(max_tokens=12, ignore_eos=True, presence_penalty=1.5, frequency_penalty=0.5),
        SamplingParams(max_tokens=12, ignore_eos=True, logit_bias={7: 3.0, 9: -2.0}, repetition_penalty=1.3),
        SamplingParams(max_tokens=12, min_tokens=6, frequency_penalty=2.0),
        SamplingParams(max_tokens=12, ignore_eos=True, temperature=0.8, min_p=0.1, top_k=50, seed=11,
                       presence_penalty=0.3),
    ]
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=100))
    outs = engine.generate(prompts, params)
    eos = {model.config.eos_token_id}
    for out, prompt, sp in zip(outs, prompts, params):
        alone = [s[0] for s in generate_ids(model, [prompt], sp, eos)]
        if alone[-1] in eos and not sp.ignore_eos:
            alone = alone[:-1]
        assert out.token_ids == alone
    assert len(outs[2].token_ids) >= 6


def test_logprobs_through_the_engine(tiny):
    model, _ = tiny
    prompt = [5, 17, 300, 42]
    engine = Engine(model, config=EngineConfig(block_size=4, num_blocks=20))
    outs = list(engine.stream(prompt, SamplingParams(max_tokens=3, ignore_eos=True, logprobs=2)))
    with torch.inference_mode():
        seq = list(prompt)
        for out in outs:
            (lp,) = out.new_logprobs
            ref = torch.log_softmax(model(torch.tensor([seq]))[0, -1].float(), -1)
            assert lp.token_id == out.new_token_ids[0] == int(ref.argmax())
            assert lp.logprob == pytest.approx(float(ref.max()), abs=1e-4)
            assert [t for t, _ in lp.top] == ref.topk(2).indices.tolist()
            seq.append(lp.token_id)
    (plain,) = engine.generate([prompt], SamplingParams(max_tokens=2, ignore_eos=True))
    assert plain.new_logprobs is None


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("where", [0, 777, 999])
def test_a_nan_anywhere_in_a_row_is_an_error(temperature, where):
    from workbench.engine.sampling import SamplingError

    logits = torch.randn(3, 1000)
    logits[1, where] = float("nan")
    sampler = Sampler(SamplingParams(temperature=temperature, seed=0), [[0], [0], [0]], 1000, "cpu")
    with pytest.raises(SamplingError, match="NaN"):
        sampler(logits)
    logits[1, where] = 0.0
    assert sampler(logits).shape == (3,)
