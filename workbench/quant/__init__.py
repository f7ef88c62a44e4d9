"""Quantization: the math (schemes, granularity, observers) and, built on it, quantized layers."""

from .math import (QuantParams, calc_qparams, dequantize, fake_quantize, quant_range, quantization_error,
                   quantize)
from .observers import MinMaxObserver, MSEObserver, PercentileObserver

__all__ = ["QuantParams", "calc_qparams", "quantize", "dequantize", "fake_quantize", "quant_range",
           "quantization_error", "MinMaxObserver", "PercentileObserver", "MSEObserver"]

from .api import (SPECS, GGUFBlockConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, W8A8Config,  # noqa: E402
                  config_from_spec, quantize_)

__all__ += ["quantize_", "config_from_spec", "SPECS", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig",
            "W8A8Config", "GGUFBlockConfig"]
