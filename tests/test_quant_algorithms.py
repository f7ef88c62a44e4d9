"""Calibrated quantization: GPTQ, AWQ and SmoothQuant (fast checks on synthetic data and tiny-random)."""

import copy

import pytest
import torch

from workbench import load_model
from workbench.errors import InvalidParameterError
from workbench.quant import quantize_
from workbench.quant.awq import awq_scale_model, fake_quant_int4, search_scale
from workbench.quant.gptq import (GPTQConfig, calibration_ids, gptq_quantize_weight, hessian,
                                  int4_linear_from_integers)
from workbench.quant.linear import Int4WeightOnlyLinear, W8A8Linear
from workbench.quant.smoothquant import activation_absmax, smooth_model


@pytest.fixture(scope="module")
def correlated():
    """Inputs with correlated channels and a few loud ones (what real activations look like), and a weight."""
    g = torch.Generator().manual_seed(0)
    cols = 320  # 2 full groups of 128 + a ragged group of 64
    mix = torch.eye(cols) + 2 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    x = torch.randn(1024, cols, generator=g) @ mix
    x[:, :4] *= 8
    w = torch.randn(48, cols, generator=g) * 0.05
    return x, w


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def _calib(model, n=512):
    return torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(1)).tolist()


def _rel_err(x, w, w_hat):
    return ((x @ w.T - x @ w_hat.T).norm() / (x @ w.T).norm()).item()


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_in_the_same_format(correlated, act_order):
    x, w = correlated
    q, scale, zp = gptq_quantize_weight(w, hessian(x), group_size=128, act_order=act_order)
    assert q.shape == w.shape and scale.shape == zp.shape == (48, 3)
    assert 0 <= q.min() and q.max() <= 15 and 0 <= zp.min() and zp.max() <= 15  # on the 4-bit grid
    layer = int4_linear_from_integers(q, scale, zp, 128)
    assert isinstance(layer, Int4WeightOnlyLinear) and layer.packed.shape == (48, 192)
    # the stored integers are the GPTQ ones: unpacking gives back q
    unpacked = torch.stack([layer.packed & 15, layer.packed >> 4], -1).reshape(48, -1)[:, :320]
    assert torch.equal(unpacked.int(), q)
    gptq_err = _rel_err(x, w, layer.dequantized_weight())
    rtn_err = _rel_err(x, w, Int4WeightOnlyLinear(w, 128).dequantized_weight())
    assert gptq_err < 0.75 * rtn_err


def test_gptq_block_size_only_changes_when_updates_are_applied(correlated):
    """Lazy block updates are exact, even when a group starts inside a block and runs past it."""
    x, w = correlated
    reference = gptq_quantize_weight(w, hessian(x), group_size=128, block_size=128)
    for block_size in (96, 320):
        q, scale, zp = gptq_quantize_weight(w, hessian(x), group_size=128, block_size=block_size)
        assert (q != reference[0]).float().mean() < 0.002  # float summation order may flip a rare tie
        assert torch.allclose(scale, reference[1], rtol=1e-4)


def test_gptq_with_uncorrelated_inputs_is_rtn(correlated):
    """With H proportional to I no error can be compensated: GPTQ must reproduce RTN's integers exactly."""
    _, w = correlated
    q, scale, zp = gptq_quantize_weight(w, torch.eye(w.shape[1]) * 3.0, group_size=128)
    rtn = Int4WeightOnlyLinear(w, 128)
    ours = int4_linear_from_integers(q, scale, zp, 128)
    assert torch.equal(ours.packed, rtn.packed) and torch.equal(ours.zero_point, rtn.zero_point)
    assert torch.equal(ours.scale, rtn.scale)


def test_gptq_model_replaces_decoder_linears(tiny):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    x = torch.randint(0, 1000, (1, 16))
    quantize_(model, GPTQConfig(calibration_tokens=512, window=128), tokenizer=tok)
    layer = model.model.layers[0]
    for m in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj, model.lm_head):
        assert isinstance(m, Int4WeightOnlyLinear)
    with torch.inference_mode():
        assert torch.isfinite(model(x)).all()


def test_gptq_head_beats_rtn_head_on_its_inputs(tiny):
    from workbench.quant.gptq import LayerRunner
    from workbench.quant.linear import QuantizedEmbedding

    model, tok = tiny
    ids = calibration_ids(model, tok, _calib(model), 512, 128)
    heads = {}
    for method in ("gptq", "rtn"):
        quantized = quantize_(copy.deepcopy(model), GPTQConfig(calibration_tokens=512, window=128, head_method=method),
                              tokenizer=tok, calibration_text=_calib(model))
        heads[method] = quantized.lm_head
        assert isinstance(quantized.model.embed_tokens, QuantizedEmbedding)  # tied: one quantized copy
        assert torch.equal(quantized.model.embed_tokens(ids[:1, :3])[0],
                           quantized.lm_head.dequantized_weight()[ids[0, :3]])
    gptq_only = quantize_(copy.deepcopy(model), GPTQConfig(calibration_tokens=512, window=128, include_head=False),
                          tokenizer=tok, calibration_text=_calib(model))
    runner = LayerRunner(gptq_only, ids)
    for layer in gptq_only.model.layers:
        runner.advance(layer)
    x = gptq_only.model.norm(runner.hidden).reshape(-1, model.config.hidden_size)
    w = model.lm_head.weight.detach()
    errors = {m: _rel_err(x, w, head.dequantized_weight()) for m, head in heads.items()}
    assert errors["gptq"] < errors["rtn"]
    with pytest.raises(InvalidParameterError, match="head_method"):
        GPTQConfig(head_method="awq")


def test_awq_scaling_preserves_the_float_model(tiny):
    model = copy.deepcopy(tiny[0])
    x = torch.randint(0, 1000, (2, 24))
    with torch.inference_mode():
        before = model(x)
    alphas = awq_scale_model(model, calibration_ids(model, None, _calib(model), 512, 128))
    assert len(alphas) == 3 * model.config.num_hidden_layers  # qkv, gate/up, down (o_proj skipped: GQA)
    assert any(a > 0 for a in alphas.values())  # scaling was actually chosen somewhere
    with torch.inference_mode():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-4)


def test_awq_search_never_worse_than_rtn_on_its_data(correlated):
    x, w = correlated
    s, alpha, losses = search_scale(x, [w], 128)
    assert len(losses) == 20 and min(losses) <= losses[0]  # alpha = 0 is plain RTN
    w_hat = fake_quant_int4(w * s, 128) / s
    assert _rel_err(x, w, w_hat) <= _rel_err(x, w, fake_quant_int4(w, 128)) + 1e-7
    assert torch.allclose(fake_quant_int4(w, 128), Int4WeightOnlyLinear(w, 128).dequantized_weight())


def test_smoothquant_preserves_the_model_and_flattens_outliers(tiny):
    model = copy.deepcopy(tiny[0])
    # give the q/k/v input a few loud channels, as trained LLMs have
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[:3] *= 30
    ids = calibration_ids(model, None, _calib(model), 512, 128)
    x = torch.randint(0, 1000, (2, 24))
    name = "model.layers.0.self_attn.q_proj"
    before_stats = activation_absmax(model, ids, [name])[name]
    with torch.inference_mode():
        before = model(x)
    smooth_model(model, ids, alpha=0.5)
    after_stats = activation_absmax(model, ids, [name])[name]
    with torch.inference_mode():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-4)
    ratio = lambda a: (a.max() / a.median()).item()  # noqa: E731
    assert ratio(after_stats) < ratio(before_stats) / 2


def test_smoothquant_spec_gives_w8a8_layers(tiny):
    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    quantize_(model, "w8a8-smoothquant", tokenizer=tok, calibration_text=_calib(model))
    assert isinstance(model.model.layers[1].mlp.down_proj, W8A8Linear) and isinstance(model.lm_head, W8A8Linear)


@pytest.mark.parametrize("spec", ["int4-g128-gptq", "int4-g128-awq", "w8a8-smoothquant"])
def test_calibrated_specs_need_calibration_data(tiny, spec):
    model = copy.deepcopy(tiny[0])
    with pytest.raises(InvalidParameterError, match="tokenizer"):
        quantize_(model, spec)
    with pytest.raises(InvalidParameterError, match="calibration text has 5 tokens"):
        quantize_(model, spec, tokenizer=tiny[1], calibration_text=[1, 2, 3, 4, 5])
    assert all(type(m).__name__ == "Linear" for n, m in model.named_modules() if n.endswith("proj"))  # untouched
