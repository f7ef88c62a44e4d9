"""LoRA: a frozen linear layer plus a trainable low-rank update, y = W x + (alpha / r) * B A x.

`add_lora` wraps the chosen projections of a model through its linear seam (every weight matrix is an
`nn.Linear`, or a `workbench.quant` layer after quantization), in place. A is (r, in) and starts
random (Kaiming-uniform, as PEFT does), B is (out, r) and starts at zero, so an untrained adapter
changes nothing. Module names follow PEFT's (`base_layer`, `lora_A`, `lora_B`), which is what lets
the PEFT file layout (`peft_layout.py`) name our tensors. `merge_lora` folds B A into W and gives back
a plain model that saves, quantizes and serves like any other.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import AdapterError
from ..quant.linear import QuantizedLinear, W8A8Linear

# The projections of a Llama-family layer, by the names PEFT's target_modules use.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every projection (never the output head)
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class LoraConfig:
    """Rank `r`, scale `alpha` (the update is multiplied by alpha / r, or alpha / sqrt(r) with
    `use_rslora`), `dropout` on the adapter's input while training, the projections it wraps
    (`target_modules`, PEFT's names) and optionally only some decoder layers (`layers`)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    layers: tuple[int, ...] | None = None
    use_rslora: bool = False

    def __post_init__(self):
        if not (isinstance(self.r, int) and not isinstance(self.r, bool) and self.r >= 1):
            raise AdapterError(f"LoRA rank r must be an integer >= 1, got {self.r!r}")
        if not self.alpha > 0:
            raise AdapterError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
        if targets == (ALL_LINEAR,):
            targets = PROJECTIONS
        unknown = [t for t in targets if t not in PROJECTIONS]
        if not targets or unknown:
            raise AdapterError(f"unknown LoRA target module(s) {unknown or 'none given'} (accepted: "
                               f"{', '.join(PROJECTIONS)} or {ALL_LINEAR})")
        object.__setattr__(self, "target_modules", tuple(dict.fromkeys(targets)))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def targets(self, name: str) -> bool:
        """Whether module `name` (e.g. "model.layers.3.self_attn.q_proj") is one this adapter wraps."""
        if name.rsplit(".", 1)[-1] not in self.target_modules:
            return False
        index = _LAYER_INDEX.search(f".{name}")
        return self.layers is None or (index is not None and int(index.group(1)) in self.layers)


def parse_lora_spec(spec: str, targets: str = "q_proj,v_proj") -> LoraConfig:
    """`r=8,alpha=16[,dropout=0.05][,rslora=1]` and `q_proj,v_proj` (or `all-linear`) -> LoraConfig."""
    kinds = {"r": int, "alpha": float, "dropout": float, "rslora": lambda v: v.lower() in ("1", "true", "yes")}
    values = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in kinds:
            raise AdapterError(f"bad LoRA setting {item!r} in {spec!r} (accepted: r=INT, alpha=FLOAT, "
                               "dropout=FLOAT, rslora=0|1; e.g. r=8,alpha=16)")
        try:
            values[key.strip()] = kinds[key.strip()](value.strip())
        except ValueError:
            raise AdapterError(f"bad LoRA setting {item!r}: {value.strip()!r} is not a number") from None
    rslora = values.pop("rslora", False)
    names = tuple(t.strip() for t in targets.split(",") if t.strip())
    return LoraConfig(**values, target_modules=names, use_rslora=rslora)


class LoRALinear(nn.Module):
    """A frozen `base_layer` (float `nn.Linear` or a weight-only quantized layer) plus scaling * B A.

    The adapter keeps its own dtype (float32 by default) whatever the base computes in: x is cast to
    it, and the update back to the base's output dtype (PEFT does the same)."""

    def __init__(self, base_layer: nn.Module, r: int, scaling: float, dropout: float = 0.0, *,
                 dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None):
        super().__init__()
        if isinstance(base_layer, W8A8Linear):
            raise AdapterError("LoRA cannot train through a w8a8 layer (its activations are rounded to int8, so "
                               "no gradient passes); use a weight-only spec (int8, int4-g128) for the base")
        if not isinstance(base_layer, (nn.Linear, QuantizedLinear)) or getattr(base_layer, "bias", None) is not None:
            raise AdapterError(f"LoRA wraps bias-free linear layers, got {type(base_layer).__name__}")
        self.base_layer = base_layer.requires_grad_(False)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        device = next(iter(base_layer.buffers() if isinstance(base_layer, QuantizedLinear)
                           else base_layer.parameters())).device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=device, dtype=dtype)
        with torch.no_grad():  # PEFT's initialisation: A as nn.Linear's default, B zero (the identity)
            bound = 1 / math.sqrt(self.in_features)  # kaiming_uniform_(a=sqrt(5)) on an (r, in) matrix
            self.lora_A.weight.copy_(torch.rand(r, self.in_features, generator=generator) * 2 * bound - bound)
            self.lora_B.weight.zero_()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling

    @property
    def r(self) -> int:
        return self.lora_A.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        update = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))
        return y + (update * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        """scaling * B A: the (out, in) matrix the adapter adds to the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def base_weight(self) -> torch.Tensor:
        base = self.base_layer
        return base.dequantized_weight() if isinstance(base, QuantizedLinear) else base.weight

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` computing W + scaling * B A (a quantized base is dequantized first; the
        result is float32, to be quantized again like any float model)."""
        weight = self.base_weight()
        dtype = torch.float32 if isinstance(self.base_layer, QuantizedLinear) else weight.dtype
        layer = nn.Linear(self.in_features, self.out_features, bias=False, device=weight.device, dtype=dtype)
        with torch.no_grad():
            layer.weight.copy_((weight.float() + self.delta_weight().float()).to(dtype))
        return layer

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Name -> LoRALinear of every wrapped projection of `model`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def add_lora(model: nn.Module, config: LoraConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Wrap every projection `config` targets in a `LoRALinear`, in place; freeze everything else.

    Afterwards only the adapters' A and B matrices require gradients, so any optimizer over
    `trainable_parameters(model)` trains the adapter alone. Returns the model.
    """
    if lora_layers(model):
        raise AdapterError("this model already carries a LoRA adapter; merge it (merge_lora) or load the base again")
    generator = torch.Generator().manual_seed(seed)
    wrapped = []
    model.requires_grad_(False)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if config.targets(full):
                setattr(parent, name, LoRALinear(child, config.r, config.scaling, config.dropout,
                                                 dtype=dtype, generator=generator))
                wrapped.append(full)
    if not wrapped:
        raise AdapterError(f"LoRA targets {list(config.target_modules)}"
                           f"{f' in layers {list(config.layers)}' if config.layers is not None else ''} "
                           f"match no module of this model")
    model.lora_config = config
    return model


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, in place: the model is plain again (trainable, with
    `nn.Linear` projections) and computes what the adapted one did, within float rounding."""
    layers = lora_layers(model)
    if not layers:
        raise AdapterError("this model carries no LoRA adapter to merge")
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.merged())
    del model.lora_config
    return model.requires_grad_(True)


def unload_lora(model: nn.Module) -> nn.Module:
    """Drop every adapter, in place: the base model as it was, before `add_lora`."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base_layer)
    model.__dict__.pop("lora_config", None)
    return model.requires_grad_(True)
