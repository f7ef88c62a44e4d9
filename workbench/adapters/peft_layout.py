"""LoRA adapters on disk in PEFT's layout: `adapter_config.json` + `adapter_model.safetensors`.

Tensor names are PEFT's for a causal LM, `base_model.model.<module>.lora_A.weight` (and `lora_B`),
where <module> is the Hugging Face module name, which is ours too. So `peft.PeftModel.from_pretrained`
puts an adapter saved here onto transformers' model, and `load_adapter` puts one PEFT saved onto
ours. What PEFT can express and our layers cannot (DoRA, biases, extra trainable modules, per-layer
ranks or alphas, embedding adapters) is refused by name, never silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import AdapterError
from ..io import atomic_write_bytes, atomic_write_json
from .lora import ALL_LINEAR, LoraConfig, add_lora, lora_layers

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
# adapter_config.json fields whose non-default values our LoRA layers do not implement
_UNSUPPORTED = {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
                "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "use_qalora": False,
                "lora_bias": False, "trainable_token_indices": None, "target_parameters": None}


def adapter_config_dict(config: LoraConfig, base_model: str | None = None) -> dict:
    """The adapter_config.json PEFT writes for this adapter (the fields that matter; PEFT fills the rest)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout,
            "target_modules": list(config.target_modules),
            "layers_to_transform": list(config.layers) if config.layers is not None else None,
            "use_rslora": config.use_rslora, "init_lora_weights": True, "inference_mode": True,
            "bias": "none", "fan_in_fan_out": False, "use_dora": False, "modules_to_save": None,
            "rank_pattern": {}, "alpha_pattern": {}}


def save_adapter(model, path: str | Path, base_model: str | None = None) -> Path:
    """Write the adapter `model` carries to directory `path` (atomically, file by file); returns `path`."""
    from safetensors.torch import save

    layers = lora_layers(model)
    if not layers:
        raise AdapterError("this model carries no LoRA adapter to save (add_lora or load_adapter first)")
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach().cpu().contiguous()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / WEIGHTS_FILE, save(tensors, metadata={"format": "pt"}))
    atomic_write_json(path / CONFIG_FILE, adapter_config_dict(model.lora_config, base_model))
    return path


def read_adapter_config(path: str | Path) -> tuple[LoraConfig, dict]:
    """(our LoraConfig, the raw JSON) of the adapter directory `path`, refusing what we cannot run."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise AdapterError(f"{path}: not an adapter directory (no {CONFIG_FILE}; an adapter holds "
                           f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        kind = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise AdapterError(f"{file}: peft_type {kind!r}; only LORA adapters load here")
    unsupported = {k: raw[k] for k, default in _UNSUPPORTED.items() if raw.get(k) not in (default, None, [], {})}
    if unsupported:
        raise AdapterError(f"{file}: settings our LoRA layers do not implement: {unsupported}")
    targets = raw.get("target_modules")
    if isinstance(targets, str) and targets != ALL_LINEAR:
        raise AdapterError(f"{file}: target_modules is the pattern {targets!r}; give the module names as a list")
    layers = raw.get("layers_to_transform")
    layers = [layers] if isinstance(layers, int) else layers
    try:
        config = LoraConfig(r=raw["r"], alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout") or 0.0,
                            target_modules=targets or (), layers=layers, use_rslora=bool(raw.get("use_rslora")))
    except KeyError as e:
        raise AdapterError(f"{file}: missing field {e}") from None
    except AdapterError as e:
        raise AdapterError(f"{file}: {e}") from None
    return config, raw


def read_adapter_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise AdapterError(f"{path}: no {WEIGHTS_FILE} next to {CONFIG_FILE}")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{file}: not a readable safetensors file ({e})") from None


def load_adapter(model, path: str | Path):
    """Wrap `model`'s projections as the adapter in `path` says and load its A and B matrices, in place.

    Every tensor must name a projection of this model with the shapes its base weight implies, and
    every projection the config targets must have its tensors: otherwise an `AdapterError` names
    what differs (module, layer count, expected and found shapes). Returns the model.
    """
    config, _ = read_adapter_config(path)
    tensors = read_adapter_weights(path)
    source = Path(path) / WEIGHTS_FILE
    ours = {name: module for name, module in model.named_modules() if config.targets(name)}
    expected = {}
    for name, module in ours.items():
        expected[f"{PREFIX}{name}.lora_A.weight"] = (config.r, module.in_features)
        expected[f"{PREFIX}{name}.lora_B.weight"] = (module.out_features, config.r)
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise AdapterError(f"{source}: {len(unknown)} tensor(s) name no {'/'.join(config.target_modules)} "
                           f"projection of this model ({model.config.num_hidden_layers} layers), e.g. "
                           f"{unknown[0]!r}; the adapter was made for another model or other targets")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise AdapterError(f"{source}: lacks {len(missing)} tensor(s) its targets {list(config.target_modules)} "
                           f"imply on this model ({model.config.num_hidden_layers} layers), e.g. {missing[0]!r}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise AdapterError(f"{source}: {key} has shape {tuple(tensors[key].shape)}, this model's "
                               f"{key[len(PREFIX):].rsplit('.', 2)[0]} (r={config.r}) needs {shape}: the adapter "
                               f"was trained on a base of other shapes")
    add_lora(model, config)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            layer.lora_A.weight.copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])
            layer.lora_B.weight.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])
    return model
