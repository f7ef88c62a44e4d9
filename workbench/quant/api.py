"""`quantize_(model, config)`: replace a model's `nn.Linear` layers in place, torchao-style.

Specs name the configs on the command line (`--quant SPEC`); `workbench quant list` prints them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from ..errors import InvalidParameterError
from .linear import (GGUFBlockLinear, Int4WeightOnlyLinear, Int8WeightOnlyLinear, QuantizedEmbedding,
                     QuantizedLinear, W8A8Linear)


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """int8 weights, symmetric per output channel; activations stay float."""

    observer: str = "minmax"
    include_head: bool = True

    def make(self, weight):
        return Int8WeightOnlyLinear(weight, self.observer)

    def bits_per_weight(self, in_features: int) -> float:
        return 8 + 32 / in_features  # a float32 scale per row


@dataclass(frozen=True)
class Int4WeightOnlyConfig:
    """4-bit weights, asymmetric per group of `group_size` inputs, packed two per byte (round to nearest)."""

    group_size: int = 128
    observer: str = "minmax"
    include_head: bool = True

    def make(self, weight):
        return Int4WeightOnlyLinear(weight, self.group_size, self.observer)

    def bits_per_weight(self, in_features: int) -> float:
        return 4 + (32 + 8) / self.group_size  # a float32 scale and a uint8 zero-point per group


@dataclass(frozen=True)
class W8A8Config:
    """int8 weights per output channel and int8 activations per token (dynamic), int32 accumulation."""

    observer: str = "minmax"
    include_head: bool = True

    def make(self, weight):
        return W8A8Linear(weight, self.observer)

    def bits_per_weight(self, in_features: int) -> float:
        return 8 + 32 / in_features


@dataclass(frozen=True)
class GGUFBlockConfig:
    """llama.cpp block formats: Q8_0, Q4_0 or Q4_1 (32 weights per block)."""

    type_name: str = "Q8_0"
    include_head: bool = True

    def make(self, weight):
        return GGUFBlockLinear(weight, self.type_name)

    def bits_per_weight(self, in_features: int) -> float:
        from ..formats.gguf_blocks import BLOCK_BYTES

        return BLOCK_BYTES[self.type_name] * 8 / 32


# Calibrated methods (they need `quantize_(..., tokenizer=...)`): defined next to their algorithms.
from .awq import AWQConfig  # noqa: E402
from .clip import ClipConfig  # noqa: E402
from .gptq import GPTQConfig  # noqa: E402
from .smoothquant import SmoothQuantConfig  # noqa: E402

# spec -> (config, one-line description)
SPECS = {
    "int8": (Int8WeightOnlyConfig(), "int8 weight-only, symmetric per output channel"),
    "int4-g32": (Int4WeightOnlyConfig(32), "int4 weight-only, asymmetric, groups of 32 inputs, round-to-nearest"),
    "int4-g64": (Int4WeightOnlyConfig(64), "int4 weight-only, asymmetric, groups of 64, round-to-nearest"),
    "int4-g128": (Int4WeightOnlyConfig(128), "int4 weight-only, asymmetric, groups of 128, round-to-nearest"),
    "w8a8": (W8A8Config(), "int8 weights per channel x int8 activations per token (dynamic)"),
    "int4-g128-gptq": (GPTQConfig(128), "int4-g128 format, integers by GPTQ (calibrated: 2048 tokens)"),
    "int4-g128-gptq-actorder": (GPTQConfig(128, act_order=True),
                                "int4-g128 format, GPTQ with act_order + static groups (calibrated)"),
    "int4-g128-awq": (AWQConfig(128), "int4-g128 format, AWQ activation-aware scales then RTN (calibrated)"),
    "w8a8-smoothquant": (SmoothQuantConfig(), "w8a8 after SmoothQuant scale migration, alpha 0.5 (calibrated)"),
    "q8_0": (GGUFBlockConfig("Q8_0"), "GGUF Q8_0: 32 int8 + a float16 scale per block"),
    "q4_0": (GGUFBlockConfig("Q4_0"), "GGUF Q4_0: 32 x 4-bit + a float16 scale per block"),
    "q4_1": (GGUFBlockConfig("Q4_1"), "GGUF Q4_1: 32 x 4-bit + a float16 scale and minimum per block"),
    # The clip methods calibrate on 4,096 tokens by default: their gain on text of another domain than
    # the calibration set's needs them (benchmarks/README.md, cross_domain).
    "int4-g128-clip": (ClipConfig(128, calibration_tokens=4096),
                       "int4-g128 format, round to nearest on ranges clipped per group to the least output error "
                       "(calibrated: 4096 tokens)"),
    "int4-g128-gptq-clip": (GPTQConfig(128, clip=True, calibration_tokens=4096),
                            "int4-g128 format, GPTQ with clip-searched group ranges (calibrated: 4096 tokens)"),
    "int4-g128-gptq-actorder-clip": (GPTQConfig(128, act_order=True, clip=True, calibration_tokens=4096),
                                     "int4-g128 format, GPTQ act_order, static groups clip-searched "
                                     "(calibrated: 4096 tokens)"),
}


def config_from_spec(spec: str):
    if spec not in SPECS:
        raise InvalidParameterError(f"unknown quantization spec {spec!r} (accepted: {', '.join(SPECS)}; "
                                    "see `workbench quant list`)")
    return SPECS[spec][0]


def quantize_(model, config, filter_fn=None, *, tokenizer=None, calibration_text=None, calib=None):
    """Replace every `nn.Linear` of `model` (for which `filter_fn(name, module)` is true) in place.

    Calibrated methods (configs with `needs_calibration`: GPTQ, AWQ, SmoothQuant, clip search) first run
    calibration text through the model: `tokenizer` is then required, and `calibration_text` (a
    string or token ids) defaults to the calibration half of the built-in corpus. `calib` names a
    calibration set instead (`workbench.corpus.calibration`: e.g. "licenses", "generated:2048",
    "builtin:1024+file:notes.txt:1024"); its parts without a count share the config's
    `calibration_tokens`. Other configs ignore all three.

    With tied embeddings and a quantized head, the token embedding reads its rows from the same
    quantized matrix, so the largest tensor is stored once, quantized. Returns the model.
    """
    spec = config if isinstance(config, str) else type(config).__name__
    if isinstance(config, str):
        config = config_from_spec(config)
    if any(isinstance(m, QuantizedLinear) for m in model.modules()):
        raise InvalidParameterError("this model is already quantized; quantize a float model (load it again)")
    if getattr(config, "needs_calibration", False):
        if calib is not None:
            if calibration_text is not None:
                raise InvalidParameterError("pass calibration_text or calib, not both")
            from ..corpus import calibration_token_ids

            calibration_text = calibration_token_ids(calib, tokenizer, model=model,
                                                     default_tokens=config.calibration_tokens)
            config = dataclasses.replace(config, calibration_tokens=len(calibration_text))
        # GPTQ replaces decoder Linears itself; AWQ/SmoothQuant fold scales, and the loop below quantizes.
        config.calibrate(model, tokenizer=tokenizer, calibration_text=calibration_text, filter_fn=filter_fn)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if not isinstance(child, nn.Linear) or (full == "lm_head" and not config.include_head):
                continue
            if filter_fn is not None and not filter_fn(full, child):
                continue
            make = getattr(config, "make_head", config.make) if full == "lm_head" else config.make
            layer = make(child.weight.detach())
            setattr(parent, name, layer.to(child.weight.device))
    if model.config.tie_word_embeddings and isinstance(model.lm_head, QuantizedLinear):
        model.model.embed_tokens = QuantizedEmbedding(model.lm_head)
    model.quant_spec = spec  # recorded when the model is saved
    return model
