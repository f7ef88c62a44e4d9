"""Benchmarks: measured, written down, never pass/fail unit tests."""

from .decode import bench_decode, decode_bytes_per_step
from .quality import quantization_table, quantized_copy

__all__ = ["bench_decode", "decode_bytes_per_step", "quantization_table", "quantized_copy"]
