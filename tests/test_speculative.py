"""Speculative decoding: greedy output equals the target's own, sampled output follows the target's
distribution (the accept/resample rule, checked by formula and by a chi-square test on a tiny model
with a five-token vocabulary), rejected drafts leave both caches as if they never ran, and bad drafts
fail with the difference named."""

from __future__ import annotations

import itertools

import pytest
import torch

from workbench.checkpoints import random_model
from workbench.config import ModelConfig
from workbench.distill.students import evenly_spaced, keep_layers
from workbench.engine import (SamplingParams, SpeculativeStats, check_draft, expected_speedup, expected_tokens,
                              generate, generate_ids, speculative_ids)
from workbench.engine.speculative import accept_rule, residual
from workbench.errors import DraftModelError, InvalidParameterError

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]


@pytest.fixture(scope="module")
def drafts(model_and_tokenizer):
    """Three drafts for the bundled model: itself (every draft accepted), 24 of its 30 layers (some
    accepted), 8 of them (almost none): every path of the check runs."""
    model, _ = model_and_tokenizer
    layers = model.config.num_hidden_layers
    return {"self": model, "layers:24": keep_layers(model, evenly_spaced(layers, 24)),
            "layers:8": keep_layers(model, evenly_spaced(layers, 8))}


def test_greedy_output_is_the_targets_own_token_for_token(model_and_tokenizer, drafts):
    model, tokenizer = model_and_tokenizer
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    rates = {}
    for text in PROMPTS:
        prompt = tokenizer.encode(text)
        reference = [step[0] for step in generate_ids(model, [prompt], params)]
        for name, k in (("self", 4), ("layers:24", 1), ("layers:24", 3), ("layers:24", 7), ("layers:8", 2)):
            draft, stats = drafts[name], SpeculativeStats()
            assert list(speculative_ids(model, draft, prompt, params, k, stats=stats)) == reference, (text, name, k)
            rates.setdefault(name, []).append(stats.acceptance_rate)
            assert stats.accepted + stats.rounds == len(reference)  # each round: its accepted drafts + one token
    assert min(rates["self"]) == 1.0
    assert min(rates["layers:24"]) < 1  # rejections seen (the 24-layer draft also has some accepted: alpha ~0.34)


def test_generate_with_a_draft_stops_as_without(model_and_tokenizer, drafts):
    model, tokenizer = model_and_tokenizer
    for params in (SamplingParams(max_tokens=12), SamplingParams(max_tokens=12, stop=["."])):
        plain = generate(model, tokenizer, PROMPTS[0], params)
        stats = SpeculativeStats()
        fast = generate(model, tokenizer, PROMPTS[0], params, draft=drafts["layers:24"], draft_tokens=4, stats=stats)
        assert (fast.text, fast.token_ids, fast.finish_reason) == (plain.text, plain.token_ids, plain.finish_reason)
        assert stats.rounds >= 1


def test_a_rolled_back_cache_continues_like_a_fresh_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor([tokenizer.encode(PROMPTS[1])])
    cache = model.new_cache(1, 64)
    with torch.inference_mode():
        model(ids[:, :4], cache)
        model(torch.tensor([[7, 8, 9]]), cache)  # three drafts, then rejected
        cache.truncate(4)
        rolled = model(ids[:, 4:], cache)
        fresh = model(ids)[:, 4:]
    assert torch.allclose(rolled, fresh, atol=1e-4)
    with pytest.raises(ValueError):
        cache.truncate(cache.length + 1)


# ---- the accept/resample rule ----------------------------------------------------------------------

def test_the_residual_and_the_rule_give_p_by_formula():
    """P(first token = x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p(y), q(y))) residual(x) = p(x)."""
    torch.manual_seed(0)
    for _ in range(20):
        p, q = torch.rand(7).softmax(0), (3 * torch.rand(7)).softmax(0)
        by_hand = (p - q).clamp(min=0) / (p - q).clamp(min=0).sum()
        assert torch.allclose(residual(p, q), by_hand)
        kept = q * (p / q).clamp(max=1)
        assert torch.allclose(kept + (1 - kept.sum()) * residual(p, q), p, atol=1e-6)
    same = torch.tensor([0.25, 0.75])
    assert torch.equal(residual(same, same), same)  # nothing to correct: p itself


def test_the_rule_accepts_by_the_ratio_and_resamples_from_the_residual():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]])
    q = torch.tensor([[0.2, 0.6, 0.1, 0.1]])
    generator = torch.Generator().manual_seed(0)
    n, accepted, outputs = 20000, 0, torch.zeros(4)
    for _ in range(n):
        a, token = accept_rule(p, q, [1], generator)  # draft token 1: kept with probability 0.3 / 0.6
        accepted += a
        if a == 0:
            outputs[token] += 1
    assert abs(accepted / n - 0.5) < 0.015
    rejected = outputs / outputs.sum()  # residual: max(0, p - q) = [0.3, 0, 0.1, 0] -> [0.75, 0, 0.25, 0]
    assert abs(rejected[0] - 0.75) < 0.02 and rejected[1] == 0 and rejected[3] == 0


def _tiny(seed: int, layers: int) -> torch.nn.Module:
    config = ModelConfig.tiny(vocab_size=5, num_hidden_layers=layers, tie_word_embeddings=False,
                              max_position_embeddings=16)
    model = random_model(config, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked, unlike each other: many rejections, a sharp test
    return model


def _exact(model, prompt: list[int], params: SamplingParams, steps: int) -> dict[tuple, float]:
    """The model's own probability of every continuation of `steps` tokens, by enumeration."""
    from workbench.engine import Sampler
    from workbench.engine.speculative import distribution

    sampler = Sampler(params, [prompt], model.config.vocab_size, model.device)
    out = {}
    with torch.inference_mode():
        for tail in itertools.product(range(model.config.vocab_size), repeat=steps):
            probs = distribution(sampler, model(torch.tensor([prompt + list(tail)]))[0])
            out[tail] = float(torch.prod(torch.stack([probs[len(prompt) - 1 + i, t] for i, t in enumerate(tail)])))
    return out


@pytest.mark.parametrize("k, params", [
    (2, SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True)),
    (1, SamplingParams(temperature=0.7, top_k=3, max_tokens=3, ignore_eos=True)),
], ids=["k2-t1", "k1-t0.7-topk3"])
def test_sampled_output_follows_the_targets_distribution(k, params):
    """Three tokens sampled speculatively, many times: their joint distribution is the target's
    (chi-square, fixed seeds), and clearly not the draft's (the test can fail)."""
    from scipy.stats import chisquare

    target, draft, prompt, n = _tiny(0, 2), _tiny(1, 1), [1, 3], 2000
    counts, stats = {}, SpeculativeStats()
    for i in range(n):
        sample = tuple(speculative_ids(target, draft, prompt, SamplingParams(**{**vars(params), "seed": i}), k,
                                       stats=stats))
        counts[sample] = counts.get(sample, 0) + 1
    assert 0.05 < stats.acceptance_rate < 0.95  # both branches of the rule ran many times

    def p_value(exact):
        cells = sorted(exact, key=exact.get, reverse=True)
        big = [c for c in cells if exact[c] * n >= 5]  # cells expected under 5 times pooled into one
        observed = [counts.get(c, 0) for c in big] + [n - sum(counts.get(c, 0) for c in big)]
        expected = [exact[c] * n for c in big] + [n - sum(exact[c] * n for c in big)]
        if expected[-1] < 1e-6 * n:
            observed, expected = observed[:-1], expected[:-1]
        expected = [e * sum(observed) / sum(expected) for e in expected]
        return chisquare(observed, expected).pvalue

    assert p_value(_exact(target, prompt, params, 3)) > 1e-3
    assert p_value(_exact(draft, prompt, params, 3)) < 1e-6


# ---- the formula and bad input ---------------------------------------------------------------------

def test_expected_tokens_and_speedup():
    assert expected_tokens(0.0, 5) == 1 and expected_tokens(1.0, 5) == 6
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert expected_speedup(0.8, 4, 0.1, 1.2) == pytest.approx(expected_tokens(0.8, 4) / 1.6)


def test_a_draft_with_another_vocabulary_is_refused_naming_both(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    other = random_model(ModelConfig.tiny(vocab_size=512))
    with pytest.raises(DraftModelError, match="512 tokens, the target's 49152"):
        list(speculative_ids(model, other, [1, 2], SamplingParams(max_tokens=2)))
    with pytest.raises(DraftModelError, match="512 tokens"):
        generate(model, tokenizer, "hi", SamplingParams(max_tokens=2), draft=other)


def test_a_draft_whose_tokenizer_differs_is_refused_naming_the_token(model_and_tokenizer):
    import copy

    model, tokenizer = model_and_tokenizer
    check_draft(model, model, tokenizer, tokenizer)
    other = copy.deepcopy(tokenizer)
    other.backend.add_tokens(["<|draft-only|>"])
    with pytest.raises(DraftModelError, match="token id 49152.*draft-only"):
        check_draft(model, model, tokenizer, other)


@pytest.mark.parametrize("params, k, word", [
    (SamplingParams(repetition_penalty=1.2), 4, "repetition_penalty"),
    (SamplingParams(min_tokens=2), 4, "min_tokens"),
    (SamplingParams(), 0, "draft_tokens"),
])
def test_settings_speculative_decoding_cannot_honour_are_refused(model_and_tokenizer, params, k, word):
    model, _ = model_and_tokenizer
    with pytest.raises(InvalidParameterError, match=word):
        list(speculative_ids(model, model, [1, 2], params, k))


def test_one_prompt_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(InvalidParameterError, match="one prompt"):
        generate(model, tokenizer, ["a", "b"], SamplingParams(max_tokens=2), draft=model)
