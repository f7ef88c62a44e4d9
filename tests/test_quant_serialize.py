"""Quantized models saved with their packed integers and loaded back into the same layers."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from workbench import load_model
from workbench.checkpoints import save_pretrained
from workbench.errors import CheckpointError, UnsupportedTensorTypeError
from workbench.quant import quantize_
from workbench.quant.linear import QuantizedEmbedding, QuantizedLinear

IDS = torch.tensor([[1, 17, 400, 9, 2048, 5, 77, 310]])


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


@pytest.mark.parametrize("spec", ["int8", "int4-g32", "int4-g128", "w8a8", "q8_0", "q4_0", "q4_1"])
def test_round_trip_keeps_packed_layers_and_logits(tiny, tmp_path, spec):
    model, tok = tiny
    quantized = quantize_(copy.deepcopy(model), spec)
    save_pretrained(quantized, tmp_path, tok)
    loaded, _ = load_model(tmp_path)
    kinds = {name: type(m) for name, m in quantized.named_modules() if isinstance(m, QuantizedLinear)}
    assert kinds == {name: type(m) for name, m in loaded.named_modules() if isinstance(m, QuantizedLinear)}
    assert isinstance(loaded.model.embed_tokens, QuantizedEmbedding)  # tied head stored once, quantized
    assert loaded.weight_bytes() == quantized.weight_bytes() < model.weight_bytes() / 2.5
    assert loaded.quant_spec == spec
    assert torch.equal(loaded(IDS), quantized(IDS))


def test_partly_quantized_bfloat16_model(tiny, tmp_path):
    model, tok = tiny
    quantized = quantize_(copy.deepcopy(model).to(torch.bfloat16), "int4-g32", lambda name, m: "mlp" in name)
    save_pretrained(quantized, tmp_path, tok)
    loaded, _ = load_model(tmp_path, dtype="bfloat16")
    assert isinstance(loaded.lm_head, torch.nn.Linear) and loaded.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.layers[0].mlp.up_proj.scale.dtype == torch.float32  # buffers keep their saved dtype
    assert torch.equal(loaded(IDS), quantized(IDS))


def test_float_model_saved_over_a_quantized_one_loads_as_float(tiny, tmp_path):
    model, tok = tiny
    save_pretrained(quantize_(copy.deepcopy(model), "int8"), tmp_path, tok)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["quant_method"] == "workbench"
    save_pretrained(model, tmp_path, tok)
    assert not (tmp_path / "quantization.json").exists()
    assert not any(isinstance(m, QuantizedLinear) for m in load_model(tmp_path)[0].modules())


def test_bad_manifests_are_clear_errors(tiny, tmp_path):
    model, tok = tiny
    save_pretrained(quantize_(copy.deepcopy(model), "int8"), tmp_path, tok)
    manifest_file = tmp_path / "quantization.json"
    manifest = json.loads(manifest_file.read_text())
    layer = next(iter(manifest["layers"]))

    manifest["layers"][layer]["class"] = "Int3Linear"
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(UnsupportedTensorTypeError, match="Int3Linear"):
        load_model(tmp_path)

    manifest["layers"][layer].update({"class": "Int8WeightOnlyLinear", "in_features": 7})
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a Linear of that shape"):
        load_model(tmp_path)

    manifest_file.write_text(json.dumps({"format_version": 99, "layers": {}}))
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(tmp_path)

    manifest_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)


def test_bundled_model_int4_directory_is_a_quarter_of_float(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    quantized = quantize_(copy.deepcopy(model), "int4-g64")
    save_pretrained(quantized, tmp_path, tok)
    on_disk = (tmp_path / "model.safetensors").stat().st_size
    assert on_disk < model.weight_bytes() / 6  # 4.6 bits per weight vs 32, tied head stored once
    loaded, _ = load_model(tmp_path)
    ids = tok.encode("The quick brown fox jumps over", add_special_tokens=False)
    ids = torch.tensor([ids])
    assert torch.equal(loaded(ids), quantized(ids))
