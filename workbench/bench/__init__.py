"""Benchmarks: measured, written down, never pass/fail unit tests."""

from .decode import bench_decode, decode_bytes_per_step

__all__ = ["bench_decode", "decode_bytes_per_step"]
