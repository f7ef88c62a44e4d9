"""Quantized layers store packed integers, compute what their math says, and swap in via quantize_."""

import copy

import pytest
import torch
from torch import nn

from workbench import kernels, load_model
from workbench.errors import InvalidParameterError
from workbench.quant import SPECS, fake_quantize, quantize_
from workbench.quant.linear import GGUFBlockLinear, Int4WeightOnlyLinear, Int8WeightOnlyLinear, W8A8Linear, int8_matmul
from workbench.settings import pick


@pytest.fixture
def weight():
    return torch.randn(96, 576, generator=torch.Generator().manual_seed(0))


def test_int8_weight_only_equals_fake_quant(weight):
    layer = Int8WeightOnlyLinear(weight)
    assert layer.qweight.dtype == torch.int8
    assert torch.equal(layer.dequantized_weight(), fake_quantize(weight, 8, True, "channel"))


def test_int4_packs_two_per_byte_and_handles_ragged_groups(weight):
    layer = Int4WeightOnlyLinear(weight, 64)
    assert layer.packed.dtype == torch.uint8 and layer.packed.shape == (96, 288)
    assert torch.equal(layer.dequantized_weight(), fake_quantize(weight, 4, False, "group", 64))
    ragged = Int4WeightOnlyLinear(weight, 128)  # 576 = 4 x 128 + 64: the last group is shorter
    w_hat = ragged.dequantized_weight()
    assert w_hat.shape == weight.shape
    assert torch.equal(w_hat[:, 512:], fake_quantize(weight[:, 512:], 4, False, "group", 64))
    with pytest.raises(InvalidParameterError):
        Int4WeightOnlyLinear(weight, 3)


def test_w8a8_matches_its_formula(weight):
    layer = W8A8Linear(weight)
    x = torch.randn(2, 3, 576)
    x_hat = fake_quantize(x.reshape(-1, 576), 8, True, "channel").reshape(x.shape)  # per token = per row
    expected = x_hat @ layer.dequantized_weight().t()
    assert torch.allclose(layer(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_block_layer_equals_gguf(weight, type_name):
    import gguf
    import numpy as np

    layer = GGUFBlockLinear(weight, type_name)
    kind = gguf.GGMLQuantizationType[type_name]
    ref = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy(), kind), kind)
    assert np.array_equal(layer.dequantized_weight().numpy(), ref)


@pytest.mark.parametrize("spec", list(SPECS))
def test_quantize_model_in_place(spec):
    model, tok = load_model("tiny-random")
    reference = copy.deepcopy(model)
    before = model.weight_bytes()
    x = torch.randint(0, 1000, (1, 12))
    quantize_(model, spec, tokenizer=tok, calib=pick("builtin:512", None))  # calibrated specs: fewer tokens in quick mode
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.weight_bytes() < before / 2.5  # int8 and 4-bit formats really shrink the bytes
    # the float model given each layer's dequantized weight computes the same logits
    quantized = dict(model.named_modules())
    for name, module in reference.named_modules():
        if isinstance(module, nn.Linear):
            module.weight = nn.Parameter(quantized[name].dequantized_weight())
    reference.model.embed_tokens.weight = reference.lm_head.weight
    with torch.no_grad():  # AWQ and SmoothQuant fold scales into the norms: carry those over too
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                reference.get_parameter(name).copy_(param)
    # int4 kernels may round activations to int8 (tested in test_kernels.py); here: the weights alone
    with torch.inference_mode(), kernels.using_quantized_activations("float"):
        out, expected = model(x), reference(x)
    tolerance = 0.05 * expected.abs().max() if spec.startswith("w8a8") else 1e-5  # w8a8 also rounds activations
    assert (out - expected).abs().max() <= tolerance
    with pytest.raises(InvalidParameterError, match="already quantized"):
        quantize_(model, spec, tokenizer=tok)


def test_int8_keeps_real_model_perplexity(model_and_tokenizer):
    from workbench.corpus import builtin_text
    from workbench.eval import perplexity

    model, tok = model_and_tokenizer
    text = builtin_text()
    base = perplexity(model, text, tok, window=512, max_tokens=1024).ppl
    quantized = quantize_(copy.deepcopy(model), "int8")
    assert perplexity(quantized, text, tok, window=512, max_tokens=1024).ppl < base * 1.01


def test_unknown_spec_lists_valid_ones():
    model, _ = load_model("tiny-random")
    with pytest.raises(InvalidParameterError, match="int4-g128"):
        quantize_(model, "int3")


@pytest.mark.parametrize("k", [1, 576, 1536, 4096])
def test_int8_matmul_is_exact(k):
    a = torch.randint(-128, 128, (5, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (k, 7), dtype=torch.int8)
    a[0], b[:, 0] = -128, -128          # the largest sum: every product +2**14
    assert torch.equal(int8_matmul(a, b), (a.long() @ b.long()).int())   # integer arithmetic throughout
    assert int8_matmul(a, b)[0, 0].item() == k * 2 ** 14
