"""Our GGUF block quantizers against gguf-py's reference encoder, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from workbench.formats.gguf_blocks import (BLOCK_BYTES, dequantize_raw, quantize_q4_0, quantize_q4_1,
                                          quantize_q8_0, quantize_raw)
from workbench.errors import InvalidParameterError

TYPES = ["Q8_0", "Q4_0", "Q4_1"]
QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1}


def _assert_same_bytes(data: np.ndarray, type_name: str) -> torch.Tensor:
    """Quantize float32 `data` with ours and with gguf; the bytes (and their shape) must be identical."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    with np.errstate(over="ignore"):  # gguf's float16 cast of d or m may overflow to inf on purpose
        expected = gguf_quantize(data, GGMLQuantizationType[type_name])
    ours = quantize_raw(torch.from_numpy(data), type_name)
    assert ours.dtype == torch.uint8
    assert tuple(ours.shape) == expected.shape == (*data.shape[:-1], data.shape[-1] // 32 * BLOCK_BYTES[type_name])
    mismatched = np.flatnonzero((ours.numpy() != expected).reshape(-1, BLOCK_BYTES[type_name]).any(axis=-1))
    assert mismatched.size == 0, f"{type_name}: {mismatched.size} blocks differ, first: block {mismatched[:5]}"
    return ours


# ---- data --------------------------------------------------------------------------------------
def _normal(seed: int, shape=(16, 128)) -> np.ndarray:
    """Normal rows at very different scales (one per row), from 1e-30 to 1e4."""
    rng = np.random.default_rng(seed)
    scales = 10.0 ** rng.uniform(-30, 4, size=(*shape[:-1], 1))
    return (rng.standard_normal(shape) * scales).astype(np.float32)


def _outliers(seed: int) -> np.ndarray:
    """Small weights with a few huge ones, of either sign, as in real LLM activations/weights."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((8, 96)).astype(np.float32) * 0.02
    rows, cols = rng.integers(0, 8, 12), rng.integers(0, 96, 12)
    data[rows, cols] = rng.choice([-1, 1], 12) * rng.uniform(5, 50, 12)
    return data


def _special_blocks() -> np.ndarray:
    """One 32-wide block per row, each an edge case of the encoders."""
    rng = np.random.default_rng(7)
    ramp = np.arange(32, dtype=np.float32)
    rows = [
        np.zeros(32),                                       # all zero: d == 0, q at the zero code
        -np.zeros(32),                                      # all -0.0 (Q4_0 keeps the sign of M in d)
        np.full(32, 0.25), np.full(32, -3.0), np.full(32, 1e4),  # constant blocks (Q4_1: d == 0)
        np.r_[-5.0, rng.uniform(-1, 1, 31)],                # negative value of largest magnitude
        -rng.random(32),                                    # all negative
        np.r_[rng.uniform(-1, 1, 5), -3.0, 3.0, rng.uniform(-1, 1, 25)],  # |max| tie: -3 comes first
        np.r_[rng.uniform(-1, 1, 5), 3.0, -3.0, rng.uniform(-1, 1, 25)],  # |max| tie: +3 comes first
        np.r_[127.0, (ramp[:31] - 15) + 0.5],               # Q8_0 d == 1: exact ties +-0.5 .. +-15.5
        np.r_[-127.0, -(ramp[:31] - 15) - 0.5],
        np.r_[-8.0, ((ramp[:31] % 16) - 8) + 0.5],          # Q4_0 d == 1: ties -7.5 .. 7.5
        np.r_[8.0, ((ramp[:31] % 16) - 8) + 0.5],           # Q4_0 d == -1
        np.r_[0.0, 15.0, (ramp[:30] % 15) + 0.5],           # Q4_1 d == 1, m == 0: ties 0.5 .. 14.5
        np.r_[-64.0, 64.0, np.arange(-60, 60, 4) + 2.0],    # Q4_1 d == 128/15, non-trivial ties
        np.r_[127.0, np.nextafter(np.float32(0.5), 0) + ramp[:31]],  # just below a half
        np.r_[-8.0, np.nextafter(np.float32(0.5), 0) + (ramp[:31] % 8)],
        np.r_[rng.standard_normal(31) * 1e4, 6e4],          # d near float16's limit (65504)
        np.r_[rng.standard_normal(31) * 1e4, -7e4],         # Q4_1 m overflows float16 to -inf
        np.r_[1e-8, -1e-7, 6e-5, rng.standard_normal(29) * 1e-6],  # float16 subnormal d
        np.r_[-0.0, 0.0, 1e-30, rng.standard_normal(29) * 1e-20],  # d underflows float16 to 0
    ]
    return np.stack(rows).astype(np.float32)


def _grid(seed: int) -> np.ndarray:
    """Values on a half-step grid of a power-of-two d: many exact ties for every format."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-16, 17, size=(64, 32)).astype(np.float32) / 2
    data[:, 0] = rng.choice([-8.0, 8.0, 127.0, -127.0], size=64)
    return data * (2.0 ** rng.integers(-10, 10, size=(64, 1))).astype(np.float32)


def _near_ties(seed: int, n_blocks: int = 600) -> np.ndarray:
    """Blocks whose values lie within an ulp or two of a rounding boundary of one of the formats.

    Here it matters that gguf multiplies by the float32 reciprocal 1/d instead of dividing by d,
    and where it rounds: an implementation off by one ulp anywhere flips codes.
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    big = (rng.choice([-1, 1], (n_blocks, 1)) * 10.0 ** rng.uniform(-3, 3, (n_blocks, 1))).astype(f32)
    top = np.abs(big)
    lo = (-top * rng.uniform(0, 1, (n_blocks, 1))).astype(f32)        # Q4_1's min, 0 >= lo >= -top
    sign = rng.choice([-1, 1], (n_blocks, 30)).astype(f32)
    # (k + 1/2) steps of each format's d: Q8_0 d = top / 127, Q4_0 d = big / -8, Q4_1 d = (top - lo) / 15
    q8 = top / f32(127) * (sign * (rng.integers(0, 127, (n_blocks, 30)) + f32(0.5)))
    q40 = big / f32(-8) * (rng.integers(-8, 8, (n_blocks, 30)) + f32(0.5))
    q41 = lo + (top - lo) / f32(15) * (rng.integers(0, 15, (n_blocks, 30)) + f32(0.5))
    fmt = rng.integers(0, 3, (n_blocks, 1))                            # one target format per block
    data = np.where(fmt == 0, q8, np.where(fmt == 1, q40, q41)).astype(f32)
    for _ in range(2):  # move each value by 0, 1 or 2 ulps, up or down
        step = np.where(rng.random(data.shape) < 0.5, f32(np.inf), f32(-np.inf))
        data = np.where(rng.random(data.shape) < 0.5, np.nextafter(data, step), data)
    data = np.clip(data, -top, top)
    # columns 0 and 1 pin the scale: the largest magnitude (Q8_0, Q4_0) or the max and the min (Q4_1)
    pins = np.where(fmt == 2, np.concatenate([top, lo], axis=1), np.concatenate([big, 0 * big], axis=1))
    return np.concatenate([pins, data], axis=1).astype(f32)


# ---- byte-identical to gguf --------------------------------------------------------------------
@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("shape", [(1, 32), (7, 64), (3, 5, 96), (64,)])
def test_matches_gguf_on_random_normal_data(type_name, shape):
    _assert_same_bytes(_normal(sum(shape), shape), type_name)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("make", [_outliers, _grid, _near_ties], ids=["outliers", "half_step_grid", "near_ties"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_gguf_on_hard_data(type_name, make, seed):
    _assert_same_bytes(make(seed), type_name)


@pytest.mark.parametrize("type_name", TYPES)
def test_matches_gguf_on_special_blocks(type_name):
    data = _special_blocks()
    _assert_same_bytes(data, type_name)
    for row in data:  # and block by block, so a failure names its block
        _assert_same_bytes(row[None], type_name)


@pytest.mark.parametrize("type_name", TYPES)
def test_named_quantizers_equal_dispatcher(type_name):
    x = torch.from_numpy(_outliers(3))
    assert torch.equal(QUANTIZERS[type_name](x), quantize_raw(x, type_name))


def test_ties_go_where_the_formulas_say():
    """Q8_0 rounds halves away from zero; Q4_0 and Q4_1 round them up (trunc(v + 8.5), trunc(v + 0.5))."""
    q8 = quantize_q8_0(torch.tensor([[127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5] + [0.0] * 25]))
    assert q8[0, 2:9].view(torch.int8).tolist() == [127, 1, -1, 2, -2, 3, -3]
    q4 = quantize_q4_0(torch.tensor([[-8.0, 0.5, -0.5, 1.5, -1.5] + [0.0] * 27]))  # d == 1
    low = (q4[0, 2:] & 0x0F).tolist()
    assert [q - 8 for q in low[:5]] == [-8, 1, 0, 2, -1]
    q41 = quantize_q4_1(torch.tensor([[0.0, 15.0, 0.5, 1.5, 14.5] + [0.0] * 27]))   # d == 1, m == 0
    assert (q41[0, 4:] & 0x0F).tolist()[:5] == [0, 15, 1, 2, 15]


def test_float64_input_is_cast_like_gguf():
    data = np.random.default_rng(4).standard_normal((4, 64))  # float64: both cast to float32 first
    for type_name in TYPES:
        np.testing.assert_array_equal(quantize_raw(torch.from_numpy(data), type_name).numpy(),
                                      gguf_quantize(data, GGMLQuantizationType[type_name]))


@pytest.mark.parametrize("type_name", TYPES)
def test_empty_input(type_name):
    assert _assert_same_bytes(np.zeros((0, 64), np.float32), type_name).shape == (0, 2 * BLOCK_BYTES[type_name])
    assert quantize_raw(torch.zeros(3, 0), type_name).shape == (3, 0)  # (gguf itself fails on this one)


# ---- round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("type_name", TYPES)
def test_round_trip_matches_gguf(type_name):
    data = np.concatenate([_normal(5, (8, 96)), _outliers(5), _special_blocks()[:, :32].repeat(3, axis=1)])
    qtype = GGMLQuantizationType[type_name]
    with np.errstate(over="ignore"):
        expected = gguf_dequantize(gguf_quantize(data, qtype), qtype).reshape(data.shape)
    ours = dequantize_raw(quantize_raw(torch.from_numpy(data), type_name).numpy(), type_name, data.shape)
    np.testing.assert_array_equal(ours.numpy().view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_round_trip_error_is_small(type_name):
    x = torch.from_numpy(_normal(6, (8, 128)))
    x = x / x.abs().amax(dim=-1, keepdim=True)  # every row at scale 1
    back = dequantize_raw(quantize_raw(x, type_name).numpy(), type_name, tuple(x.shape))
    # Half a step of d (plus float16 rounding of d and m), except in Q4_0: there a value of the sign
    # opposite to the block's largest one is clamped at q = 15, i.e. 7/8 of |M|: up to |M| / 8 off.
    limit = {"Q8_0": 0.5 / 127, "Q4_0": 1 / 8, "Q4_1": 0.5 * 2 / 15}[type_name] * 1.01 + 2e-3
    assert (back - x).abs().max().item() <= limit


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 33), (31,), (2, 3, 48)])
@pytest.mark.parametrize("type_name", TYPES)
def test_last_dim_not_multiple_of_32(shape, type_name):
    with pytest.raises(InvalidParameterError, match=rf"\({shape[0]}, " if len(shape) > 1 else r"\(31,\)"):
        quantize_raw(torch.zeros(shape), type_name)
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        QUANTIZERS[type_name](torch.zeros(shape))


def test_scalar_rejected():
    with pytest.raises(InvalidParameterError, match=r"shape \(\)"):
        quantize_q8_0(torch.tensor(1.0))


@pytest.mark.parametrize("type_name", ["Q4_K", "F16", "q8_0"])
def test_unknown_type(type_name):
    with pytest.raises(InvalidParameterError, match="supported types are Q8_0, Q4_0, Q4_1"):
        quantize_raw(torch.zeros(2, 32), type_name)


# ---- a real weight matrix ----------------------------------------------------------------------
@pytest.mark.parametrize("type_name", TYPES)
def test_matches_gguf_on_bundled_weights(bundled_checkpoint, type_name):
    """blk.0.ffn_down.weight (576 x 1536, stored as Q4_1) decoded, then re-encoded in each format."""
    weight = bundled_checkpoint.dequantize("blk.0.ffn_down.weight")
    assert tuple(weight.shape) == (576, 1536)
    _assert_same_bytes(weight.numpy(), type_name)


def test_requantizing_bundled_q4_1_reproduces_the_file(bundled_checkpoint):
    """Decoding the stored Q4_1 blocks and encoding them again gives back the very same bytes."""
    raw, type_name, shape = bundled_checkpoint.raw_tensor("blk.0.ffn_down.weight")
    assert type_name == "Q4_1"
    again = quantize_q4_1(dequantize_raw(raw, type_name, shape))
    np.testing.assert_array_equal(again.numpy(), np.asarray(raw).reshape(tuple(again.shape)))
