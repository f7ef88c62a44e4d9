"""Benchmarks: measured, written down, never pass/fail unit tests."""

from .decode import bench_decode, decode_bytes_by_part, decode_bytes_per_step
from .quality import quantization_table, quantized_copy
from .speed import decode_speed_table

__all__ = ["bench_decode", "decode_bytes_by_part", "decode_bytes_per_step", "decode_speed_table",
           "quantization_table", "quantized_copy"]
