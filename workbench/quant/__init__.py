"""Quantization: the math (schemes, granularity, observers), calibration, and quantized layers."""

from .api import (SPECS, GGUFBlockConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, W8A8Config,
                  config_from_spec, quantize_)
from .calibration import collect_activations
from .math import (QuantParams, calc_qparams, dequantize, fake_quantize, quant_range, quantization_error,
                   quantize)
from .observers import MinMaxObserver, MSEObserver, PercentileObserver

__all__ = ["QuantParams", "calc_qparams", "quantize", "dequantize", "fake_quantize", "quant_range",
           "quantization_error", "MinMaxObserver", "PercentileObserver", "MSEObserver", "collect_activations",
           "quantize_", "config_from_spec", "SPECS", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig",
           "W8A8Config", "GGUFBlockConfig"]
