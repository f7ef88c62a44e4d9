"""GGUF block formats decoded by hand: how 4- and 8-bit weights are laid out on disk.

Each format packs 32 consecutive weights of a row into one block:

    Q8_0  34 bytes: d (float16) | 32 x int8 q            w = d * q
    Q4_0  18 bytes: d (float16) | 16 bytes of nibbles     w = d * (q - 8),   q in 0..15
    Q4_1  20 bytes: d, m (float16) | 16 bytes of nibbles  w = d * q + m,     q in 0..15

In the 4-bit formats byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
The arithmetic (float32, multiply then add) matches `gguf.quants.dequantize` bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK_SIZE = 32
BLOCK_BYTES = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """Two uint8 columns per row -> float32 from little-endian float16."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(raw: torch.Tensor) -> torch.Tensor:
    """(blocks, 16) bytes -> (blocks, 32) values 0..15: low nibbles first, then high nibbles."""
    return torch.cat([raw & 0x0F, raw >> 4], dim=-1).float()


def dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    q = blocks[:, 2:].contiguous().view(torch.int8).float()
    return q * d


def dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    return d * (_nibbles(blocks[:, 2:]) - 8)


def dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    return d * _nibbles(blocks[:, 4:]) + m


BLOCK_DEQUANTIZERS = {"Q8_0": dequantize_q8_0, "Q4_0": dequantize_q4_0, "Q4_1": dequantize_q4_1}


def dequantize_raw(raw: np.ndarray, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw GGUF tensor bytes (or typed values) -> float32 tensor of `shape` (row-major, torch order).

    Returns None for a type this module does not decode itself.
    """
    if type_name == "F32":
        return torch.from_numpy(np.ascontiguousarray(raw).view(np.float32).reshape(shape).copy())
    if type_name == "F16":
        return torch.from_numpy(np.ascontiguousarray(raw).view(np.float16).reshape(shape).astype(np.float32))
    if type_name == "BF16":
        bits = torch.from_numpy(np.ascontiguousarray(raw).view(np.int16).astype(np.int32))  # a copy
        return (bits << 16).view(torch.float32).reshape(shape)
    if type_name in BLOCK_DEQUANTIZERS:
        blocks = torch.from_numpy(np.array(raw, dtype=np.uint8).reshape(-1, BLOCK_BYTES[type_name]))
        return BLOCK_DEQUANTIZERS[type_name](blocks).reshape(shape)
    return None
