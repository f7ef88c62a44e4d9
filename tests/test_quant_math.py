"""Quantization math against PyTorch's own fake-quantize ops, and the properties the formulas promise."""

import pytest
import torch

from workbench.errors import InvalidParameterError
from workbench.quant.math import group_view
from workbench.quant import calc_qparams, dequantize, fake_quantize, quant_range, quantization_error, quantize


@pytest.fixture
def w():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g)
    x[3, 17] = 9.0  # an outlier, as real weights have
    return x


def test_ranges():
    assert quant_range(8, True) == (-128, 127) and quant_range(8, False) == (0, 255)
    assert quant_range(4, True) == (-8, 7) and quant_range(2, False) == (0, 3)
    for bad in (1, 9, 0, 4.0):
        with pytest.raises(InvalidParameterError, match="2 to 8"):
            quant_range(bad, True)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_tensor_8bit_equals_torch(w, symmetric):
    qp = calc_qparams(w, 8, symmetric, "tensor")
    ours = dequantize(quantize(w, qp), qp)
    ref = torch.fake_quantize_per_tensor_affine(w, qp.scale.item(), int(qp.zero_point.item()), qp.qmin, qp.qmax)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_channel_8bit_equals_torch(w, symmetric):
    qp = calc_qparams(w, 8, symmetric, "channel")
    ours = dequantize(quantize(w, qp), qp)
    ref = torch.fake_quantize_per_channel_affine(w, qp.scale.flatten(), qp.zero_point.flatten(), 0, qp.qmin, qp.qmax)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity, group", [("tensor", None), ("channel", None), ("group", 32), ("group", 128)])
def test_grid_and_error_bound(w, bits, symmetric, granularity, group):
    qp = calc_qparams(w, bits, symmetric, granularity, group)
    q = quantize(w, qp)
    assert q.min() >= qp.qmin and q.max() <= qp.qmax
    err = group_view(dequantize(q, qp) - w, granularity, group).abs()
    # min/max ranges never clip: every value is within half a step of its reconstruction
    assert (err <= qp.scale / 2 + 1e-6).all()


def test_error_falls_with_bits_and_finer_granularity(w):
    errs = [quantization_error(w, fake_quantize(w, b, True, "channel"))["mse"] for b in (2, 3, 4, 6, 8)]
    assert errs == sorted(errs, reverse=True)
    coarse = quantization_error(w, fake_quantize(w, 4, True, "tensor"))["mse"]
    channel = quantization_error(w, fake_quantize(w, 4, True, "channel"))["mse"]
    group = quantization_error(w, fake_quantize(w, 4, True, "group", 32))["mse"]
    assert coarse > channel > group  # the outlier inflates only its own row / group


def test_zero_is_exact_and_zero_groups_are_safe():
    x = torch.tensor([[0.0, 0.3, 1.7, -0.2], [0.0, 0.0, 0.0, 0.0]])
    for symmetric in (True, False):
        x_hat = fake_quantize(x, 4, symmetric, "channel")
        assert x_hat[0, 0] == 0 and torch.equal(x_hat[1], torch.zeros(4))


def test_mse_observer_never_worse_than_minmax_and_percentile_clips():
    torch.manual_seed(1)
    x = torch.distributions.StudentT(4.0).sample((8, 4096))  # heavy tails, like activations
    minmax = quantization_error(x, fake_quantize(x, 4, True, "channel", observer="minmax"))["mse"]
    mse = quantization_error(x, fake_quantize(x, 4, True, "channel", observer="mse"))["mse"]
    assert mse < minmax  # the search includes the min/max range itself, and finds better on heavy tails
    pct = calc_qparams(x, 4, True, "channel", observer="percentile")
    assert (pct.scale < calc_qparams(x, 4, True, "channel").scale).all()  # a narrower, clipped range


def test_bad_granularity_and_group_size(w):
    with pytest.raises(InvalidParameterError, match="does not divide"):
        calc_qparams(w, 4, True, "group", 100)
    with pytest.raises(InvalidParameterError, match="granularity"):
        calc_qparams(w, 4, True, "row")
    with pytest.raises(InvalidParameterError, match="observer"):
        calc_qparams(w, 4, True, "channel", observer="magic")
