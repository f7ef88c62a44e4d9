"""Clip search for int4 group ranges (workbench.quant.clip) and its use inside GPTQ."""

import pytest
import torch

from workbench.errors import InvalidParameterError
from workbench.quant import config_from_spec
from workbench.quant.clip import ClipConfig, clipped_int4_linear, quantize_with_params, search_clip
from workbench.quant.gptq import GPTQConfig, LayerRunner, _group_qparams, gptq_quantize_weight, hessian
from workbench.quant.linear import Int4WeightOnlyLinear


@pytest.fixture(scope="module")
def real_layer(model_and_tokenizer):
    """The bundled model's layer-0 q_proj weight and the Hessian of its inputs on 256 built-in tokens."""
    from workbench.corpus import calibration_token_ids

    model, tok = model_and_tokenizer
    ids = torch.tensor(calibration_token_ids("builtin", tok, default_tokens=256)).reshape(1, -1)
    layer = model.model.layers[0]
    x = LayerRunner(model, ids).capture(layer, ["self_attn.q_proj"])["self_attn.q_proj"]
    return layer.self_attn.q_proj.weight.detach().float(), x, hessian(x, torch.float32)


def _output_error(x, w, w_hat):
    return (x @ (w - w_hat).T).pow(2).sum().item()


def test_clip_search_beats_round_to_nearest_on_a_real_layer(real_layer):
    w, x, H = real_layer
    rtn = Int4WeightOnlyLinear(w, 128).dequantized_weight()
    clipped = clipped_int4_linear(w, H, 128).dequantized_weight()
    unweighted = clipped_int4_linear(w, None, 128).dequantized_weight()
    # its own objective, the layer's output error on the calibration inputs: clearly lower
    assert _output_error(x, w, clipped) < 0.9 * _output_error(x, w, rtn)
    # without the Hessian it minimises the plain weight error instead
    assert (w - unweighted).pow(2).sum() < (w - rtn).pow(2).sum()


def test_clip_search_with_one_grid_point_is_min_max(real_layer):
    w, _, H = real_layer
    scale, zero = search_clip(w, H, 128, grid=1)
    rtn = Int4WeightOnlyLinear(w, 128)
    assert torch.equal(scale, rtn.scale) and torch.equal(zero.to(torch.uint8), rtn.zero_point)
    assert torch.equal(clipped_int4_linear(w, H, 128, grid=1).packed, rtn.packed)


def test_clip_search_ragged_group_and_grid_bounds():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 200, generator=g)              # a group of 128 and a ragged one of 72
    x = torch.randn(256, 200, generator=g)
    scale, zero = search_clip(w, hessian(x, torch.float32), 128)
    assert scale.shape == zero.shape == (8, 2)
    q = quantize_with_params(w, scale, zero, 128)
    assert q.min() >= 0 and q.max() <= 15
    lo = (0 - zero) * scale                           # the chosen range lies inside min/max, at least half of it
    ref = _group_qparams(w[:, :128])[0].reshape(-1)
    assert torch.all(scale[:, 0] <= ref + 1e-7) and torch.all(scale[:, 0] >= 0.5 * ref - 1e-7)
    assert torch.all(lo <= 1e-6)


@pytest.mark.parametrize("kwargs", [dict(grid=0), dict(grid=2.5), dict(min_shrink=0), dict(min_shrink=1.5),
                                    dict(min_shrink="half")])
def test_bad_clip_options_raise(kwargs):
    with pytest.raises(InvalidParameterError, match="clip"):
        ClipConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(damp=0), "damp"), (dict(damp=2.0), "damp"),
                                           (dict(block_size=0), "block size")])
def test_bad_gptq_options_raise(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        GPTQConfig(**kwargs)


def test_clip_specs():
    assert isinstance(config_from_spec("int4-g128-clip"), ClipConfig)
    c = config_from_spec("int4-g128-gptq-actorder-clip")
    assert c.clip and c.act_order
    assert config_from_spec("int4-g128-gptq-clip").clip and not config_from_spec("int4-g128-gptq").clip


def test_gptq_static_groups_and_clip_take_their_group_parameters(real_layer):
    w, _, H = real_layer
    H64 = H.double()
    _, scale, zero = gptq_quantize_weight(w, H64, 128, static_groups=True)
    ref = torch.cat([_group_qparams(w[:, g:g + 128])[0] for g in range(0, w.shape[1], 128)], dim=1)
    assert torch.equal(scale, ref)                     # static: min/max of the float weights
    _, scale, zero = gptq_quantize_weight(w, H64, 128, act_order=True, clip=True)
    assert torch.equal(scale, search_clip(w, H64, 128)[0])   # static and clipped: the search on the float weights
    q, scale, zero = gptq_quantize_weight(w, H64, 128, clip=True)      # dynamic groups, each searched
    assert q.min() >= 0 and q.max() <= 15 and scale.shape == (w.shape[0], -(-w.shape[1] // 128))
