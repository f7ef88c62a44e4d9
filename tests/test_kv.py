"""KV cache modes give the same tokens; int8 keys/values stay within their rounding bound; memory by formula."""

from __future__ import annotations

import pytest
import torch

from workbench import load_model
from workbench.engine import SamplingParams
from workbench.engine.kv_cache import MODES, bytes_per_token, generate_with, recompute_ids
from workbench.engine.kv_quant import Int8KVCache, Int8KVModel, dequantize_kv, quantize_kv
from workbench.errors import InvalidParameterError
from workbench.eval import perplexity


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def test_every_mode_gives_the_same_greedy_tokens(tiny):
    model, _ = tiny
    prompt = torch.randint(3, 1000, (11,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    got = {mode: generate_with(model, prompt, params, mode, block_size=4) for mode in MODES}
    assert got["none"][0] == got["contiguous"][0] == got["paged"][0]
    assert len(got["paged-int8"][0]) == 20
    per_token = model.config.kv_bytes_per_token(4)
    assert got["none"][1] == 0
    assert got["contiguous"][1] == 31 * per_token
    assert got["paged"][1] == 32 * per_token                  # 31 positions in 8 blocks of 4
    assert got["paged-int8"][1] == 32 * bytes_per_token(model.config, "int8")
    with pytest.raises(InvalidParameterError, match="mode"):
        generate_with(model, prompt, params, "compressed")


def test_recompute_equals_model_argmax_loop(tiny):
    model, _ = tiny
    prompt = [5, 17, 300]
    seq = list(prompt)
    for _ in range(6):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert list(recompute_ids(model, prompt, SamplingParams(max_tokens=6))) == seq[3:]


def test_int8_rounding_error_is_at_most_half_a_step():
    x = torch.randn(4, 3, 7, 64) * torch.logspace(-3, 2, 7)[None, None, :, None]
    q, scale = quantize_kv(x)
    assert q.dtype == torch.int8 and scale.shape == (4, 3, 7, 1)
    err = (dequantize_kv(q, scale, torch.float32) - x).abs()
    assert (err <= scale.float() / 2 + 1e-6 * x.abs()).all()
    assert (q.abs().amax(-1) == 127).all()                   # the largest value of each head uses the full range


@torch.inference_mode()
def test_int8_cache_is_close_to_float_and_four_times_smaller(model_and_tokenizer):
    model, tok = model_and_tokenizer
    ids = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog because it was")])
    full = model(ids)
    cache = Int8KVCache(model.config, 1, ids.shape[1], model.dtype)
    int8 = model(ids, cache)
    assert (int8.argmax(-1) == full.argmax(-1)).float().mean() >= 0.9
    assert (int8 - full).abs().max() < 0.05 * full.abs().max()
    assert model.new_cache(1, ids.shape[1]).nbytes / cache.nbytes > 3.5
    text = "Python is a programming language that lets you work quickly and integrate systems more effectively."
    base = perplexity(model, text, tok, window=32)
    q = perplexity(Int8KVModel(model), text, tok, window=32)
    assert q.predictions == base.predictions and abs(q.ppl / base.ppl - 1) < 0.05
