import math

import pytest
import torch

from workbench.errors import EmptyTextError, InvalidParameterError
from workbench.corpus import builtin_text
from workbench.eval import perplexity


def test_corpus_parts_are_disjoint_and_cover_everything():
    ev, cal, full = builtin_text("evaluation"), builtin_text("calibration"), builtin_text("all")
    assert full == ev + "\n\n" + cal
    assert len(ev) > 100_000 and len(cal) > 100_000
    assert builtin_text("train") == cal  # distillation trains on text evaluation never sees
    with pytest.raises(InvalidParameterError, match="evaluation"):
        builtin_text("test")


def test_window_method_counts_and_matches_direct_nll():
    from workbench import load_model

    model, _ = load_model("tiny-random")
    ids = list(range(100, 150))
    r = perplexity(model, ids, window=16)
    assert r.predictions == 50 - math.ceil(50 / 16)
    # direct computation for the non-overlapping windows
    nll, n = 0.0, 0
    with torch.inference_mode():
        for s in range(0, 50, 16):
            w = torch.tensor([ids[s:s + 16]])
            logp = model(w).log_softmax(-1)[0, :-1]
            nll -= logp.gather(-1, w[0, 1:, None]).sum().item()
            n += w.shape[1] - 1
    assert r.predictions == n and r.ppl == pytest.approx(math.exp(nll / n), rel=1e-5)
    overlapping = perplexity(model, ids, window=16, stride=8)
    assert overlapping.predictions == 49  # every token after the first, scored once
    batched = perplexity(model, ids, window=16, batch_size=3)
    assert batched.ppl == pytest.approx(r.ppl, rel=1e-5)
    for chunk in (1, 5):  # through the KV cache a few tokens at a time: the same predictions
        decoded = perplexity(model, ids, window=16, batch_size=2, chunk_tokens=chunk)
        assert decoded.predictions == n and decoded.ppl == pytest.approx(r.ppl, rel=1e-4)


def test_real_model_perplexity_on_builtin_text(model_and_tokenizer):
    model, tok = model_and_tokenizer
    r = perplexity(model, builtin_text(), tok, window=1024, max_tokens=2048)
    assert r.tokens == 2048 and r.predictions == 2046
    assert 8 < r.ppl < 20  # 13.38 measured; a broken model scores in the thousands


def test_bad_perplexity_input(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(EmptyTextError):
        perplexity(model, "", tok)
    with pytest.raises(InvalidParameterError):
        perplexity(model, "some text here", tok, window=8, stride=9)
    with pytest.raises(InvalidParameterError):
        perplexity(model, "some text here", tok, window=100_000)
    with pytest.raises(InvalidParameterError, match="chunk_tokens"):
        perplexity(model, "some text here", tok, chunk_tokens=0)
