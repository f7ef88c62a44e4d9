"""Saving and loading quantized models with their packed integers, not dequantized floats.

A quantized model directory has the Hugging Face shape (config.json, model.safetensors, tokenizer
files), but its safetensors hold each quantized Linear's buffers as the layer keeps them in memory
(int8 rows, int4 pairs per byte, GGUF blocks, scales, zero-points), plus `quantization.json`: for
every quantized Linear its class, shapes and constructor arguments. `load_model(dir)` sees that
file and rebuilds the same layers before filling them, so a model quantized once (GPTQ takes
minutes) loads in seconds at its quantized size. transformers cannot read this format; the
`quantization_config` in config.json says so instead of letting it load wrong weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..errors import CheckpointError, InvalidParameterError, UnsupportedTensorTypeError
from .gptq import set_submodule
from .linear import (GGUFBlockLinear, Int4WeightOnlyLinear, Int8WeightOnlyLinear, QuantizedEmbedding,
                     QuantizedLinear, W8A8Linear)

MANIFEST = "quantization.json"
FORMAT_VERSION = 1
LAYER_CLASSES = {cls.__name__: cls for cls in (Int8WeightOnlyLinear, Int4WeightOnlyLinear, W8A8Linear, GGUFBlockLinear)}
HF_QUANTIZATION_CONFIG = {"quant_method": "workbench", "note": "packed workbench layers: load with "
                          "workbench.load_model (see quantization.json); transformers cannot read them"}


def quantization_manifest(model: nn.Module) -> dict | None:
    """Class, shapes and arguments of every quantized Linear of `model`; None for a float model."""
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantizedLinear):
            continue
        if type(module).__name__ not in LAYER_CLASSES:
            raise InvalidParameterError(f"cannot save layer {name} of class {type(module).__name__} "
                                        f"(savable: {', '.join(LAYER_CLASSES)})")
        layers[name] = {"class": type(module).__name__, "in_features": module.in_features,
                        "out_features": module.out_features, "args": module.layer_args()}
    if not layers:
        return None
    return {"format_version": FORMAT_VERSION, "spec": getattr(model, "quant_spec", None), "layers": layers}


def read_manifest(path: str | Path) -> dict:
    path = Path(path) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), dict):
        raise CheckpointError(f"{path}: malformed (expected an object with a 'layers' mapping)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {manifest.get('format_version')!r} is not supported "
                              f"(this workbench reads version {FORMAT_VERSION})")
    return manifest


def install_quantized_layers(model: nn.Module, manifest: dict, source: str = "checkpoint") -> nn.Module:
    """Swap the Linears named in `manifest` for empty quantized layers of the recorded kind, in place,
    so that `load_state_dict` can then fill their buffers."""
    for name, entry in manifest["layers"].items():
        cls = LAYER_CLASSES.get(entry.get("class"))
        if cls is None:
            raise UnsupportedTensorTypeError(f"{source}: layer {name} has unknown quantized class "
                                             f"{entry.get('class')!r} (known: {', '.join(LAYER_CLASSES)})")
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        shape = (entry.get("out_features"), entry.get("in_features"))
        if not isinstance(linear, nn.Linear) or tuple(linear.weight.shape) != shape:
            raise CheckpointError(f"{source}: quantization.json names {name} with shape {shape}, "
                                  "which is not a Linear of that shape in this config")
        try:
            layer = cls.empty(entry["in_features"], entry["out_features"], **entry.get("args", {}))
        except (TypeError, InvalidParameterError) as e:
            raise CheckpointError(f"{source}: cannot rebuild {name} as {cls.__name__} ({e})") from None
        set_submodule(model, name, layer)
    if model.config.tie_word_embeddings and isinstance(model.lm_head, QuantizedLinear):
        model.model.embed_tokens = QuantizedEmbedding(model.lm_head)
    model.quant_spec = manifest.get("spec")
    return model
