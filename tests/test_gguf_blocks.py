"""Our GGUF dequantizers against gguf-py's reference decoder, bit for bit."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from workbench.formats.gguf_blocks import BLOCK_BYTES, dequantize_raw

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"]
SHAPE = (24, 96)  # 3 blocks of 32 per row


def _bits(a) -> np.ndarray:
    """float32 values as their uint32 bit patterns (so NaN and -0.0 compare exactly)."""
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    assert a.dtype == np.float32, a.dtype
    return np.ascontiguousarray(a).view(np.uint32)


def _random_data(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal(SHAPE) * rng.choice([1e-3, 0.05, 1.0, 30.0], size=(SHAPE[0], 1))).astype(np.float32)
    data[0, :32] = 0.0                       # an all-zero block (d == 0)
    data[1, :32] = 0.25                      # a constant block (Q4_1: d == 0, m == 0.25)
    data[2, :32] = np.arange(32) - 16.0      # exact small integers
    data[3, 32:64] = -rng.random(32)          # an all-negative block
    data[4, :4] = [-0.0, 1e-8, -1e-7, 6e-5]  # signed zero, float16 subnormals / underflow
    return data


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("type_name", TYPES)
def test_matches_gguf_on_random_data(type_name, seed):
    qtype = GGMLQuantizationType[type_name]
    raw = gguf_quantize(_random_data(seed), qtype)
    expected = gguf_dequantize(raw, qtype).reshape(SHAPE)
    ours = dequantize_raw(raw, type_name, SHAPE)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == SHAPE
    np.testing.assert_array_equal(_bits(ours), _bits(expected))


@pytest.mark.parametrize("type_name", TYPES)
def test_accepts_raw_bytes_as_well_as_typed_values(type_name):
    """The reader hands F32/F16 over as typed arrays, quantized types as uint8; plain bytes must also work."""
    qtype = GGMLQuantizationType[type_name]
    raw = gguf_quantize(_random_data(2), qtype)
    as_bytes = np.ascontiguousarray(raw).view(np.uint8)
    np.testing.assert_array_equal(_bits(dequantize_raw(as_bytes, type_name, SHAPE)),
                                  _bits(gguf_dequantize(raw, qtype).reshape(SHAPE)))


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_types_keep_special_values(type_name):
    data = np.array([[np.inf, -np.inf, np.nan, -0.0, 0.0, 1.0, -2.5, 65504.0]], dtype=np.float32)
    qtype = GGMLQuantizationType[type_name]
    raw = gguf_quantize(data, qtype)
    np.testing.assert_array_equal(_bits(dequantize_raw(raw, type_name, data.shape)),
                                  _bits(gguf_dequantize(raw, qtype).reshape(data.shape)))


def test_unknown_type_returns_none():
    assert dequantize_raw(np.zeros(144, dtype=np.uint8), "Q4_K", (256,)) is None


# ---- the bundled file's real tensors ------------------------------------------------------------
REAL_TENSORS = [
    ("blk.0.ffn_down.weight", "Q4_1", (576, 1536)),
    ("blk.29.attn_k.weight", "Q4_1", (192, 576)),
    ("token_embd.weight", "Q8_0", (49152, 576)),
    ("blk.3.attn_norm.weight", "F32", (576,)),
]


@pytest.mark.parametrize("name, type_name, shape", REAL_TENSORS)
def test_matches_gguf_on_bundled_tensors(bundled_checkpoint, name, type_name, shape):
    data, found_type, found_shape = bundled_checkpoint.raw_tensor(name)
    assert (found_type, found_shape) == (type_name, shape)
    expected = gguf_dequantize(data, GGMLQuantizationType[type_name]).reshape(shape)
    ours = dequantize_raw(data, type_name, shape)
    np.testing.assert_array_equal(_bits(ours), _bits(expected))
    assert np.isfinite(expected).all()


# ---- one Q4_1 block decoded by hand -------------------------------------------------------------
def _decode_q4_1_block_by_hand(block: bytes) -> list[float]:
    """Q4_1: float16 d, float16 m, then 16 bytes; byte j = element j (low nibble), j + 16 (high nibble)."""
    assert len(block) == BLOCK_BYTES["Q4_1"] == 20
    d, m = struct.unpack("<ee", block[:4])
    d, m = np.float32(d), np.float32(m)
    out = [0.0] * 32
    for j, byte in enumerate(block[4:]):
        out[j] = float(d * np.float32(byte & 0x0F) + m)
        out[j + 16] = float(d * np.float32(byte >> 4) + m)
    return out


def test_q4_1_hand_built_block():
    d, m = 0.5, -1.0
    lows, highs = list(range(16)), [15 - j for j in range(16)]
    block = struct.pack("<ee", d, m) + bytes(lo | (hi << 4) for lo, hi in zip(lows, highs))
    ours = dequantize_raw(np.frombuffer(block, dtype=np.uint8), "Q4_1", (32,)).tolist()
    expected = [d * q + m for q in lows + highs]  # exact in float32
    assert ours == expected
    assert ours == _decode_q4_1_block_by_hand(block)


def test_q4_1_first_bundled_block_by_hand(bundled_checkpoint):
    data, type_name, shape = bundled_checkpoint.raw_tensor("blk.0.attn_q.weight")
    assert type_name == "Q4_1"
    row0 = dequantize_raw(data, type_name, shape)[0]
    for b in range(3):  # the first three blocks of row 0
        block = bytes(data[0, 20 * b: 20 * (b + 1)])
        assert row0[32 * b: 32 * (b + 1)].tolist() == _decode_q4_1_block_by_hand(block)
