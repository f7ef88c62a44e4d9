"""GGUF block formats by hand: how 4- and 8-bit weights are laid out on disk, decoded and encoded.

Each format packs 32 consecutive weights of a row into one block:

    Q8_0  34 bytes: d (float16) | 32 x int8 q            w = d * q
    Q4_0  18 bytes: d (float16) | 16 bytes of nibbles     w = d * (q - 8),   q in 0..15
    Q4_1  20 bytes: d, m (float16) | 16 bytes of nibbles  w = d * q + m,     q in 0..15

In the 4-bit formats byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
The arithmetic (float32, multiply then add) matches `gguf.quants.dequantize` bit for bit.

Encoding a block x[0..31] (what `gguf.quants.quantize` does, and the `quantize_*` functions below,
byte for byte). All of it is float32 arithmetic; 1/d is the float32 reciprocal, taken as 0 when
d == 0 (a block of zeros; in Q4_1 any constant block), so that every q is then its zero code:

    Q8_0  d = max|x| / 127                  q = round(x * 1/d)      (halves away from zero)
    Q4_0  d = M / -8, M = the x of largest  q = min(15, trunc(x * 1/d + 8.5))
          magnitude, sign kept (the first one if several tie)
    Q4_1  d = (max x - min x) / 15,  m = min x
                                            q = min(15, trunc((x - m) * 1/d + 0.5))

Points worth noticing:
  * q is computed with the float32 d (and m); only afterwards are d and m rounded to float16 for
    storage, so decoding uses slightly different scales than encoding did.
  * Q4_0 divides by -8, not by 7: M itself gets q = 0 and decodes to d * -8 = M (up to the float16
    rounding of d), while values of the other sign reach at most d * 7 = 7/8 of |M| (clamped).
  * The 4-bit formats round halves up (trunc(v + 0.5) for v >= 0), Q8_0 rounds them away from zero.
    The 4-bit sum is rounded to float32 before trunc, so a v a few ulps below a half rounds up too;
    Q8_0's rounding looks at the exact fraction of |v| instead.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidParameterError

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


# ---- encoding: float32 weights -> raw GGUF blocks ---------------------------------------------------
def _as_blocks(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """float32 (..., n) with n a multiple of 32 -> ((blocks, 32) float32, the input's shape)."""
    x = torch.as_tensor(x, dtype=torch.float32)  # like gguf, which first casts to float32
    if x.dim() == 0 or x.shape[-1] % BLOCK_SIZE != 0:
        raise InvalidParameterError(
            f"cannot quantize a tensor of shape {tuple(x.shape)}: its last dimension must be a "
            f"multiple of the block size {BLOCK_SIZE}")
    return x.reshape(-1, BLOCK_SIZE), tuple(x.shape)


def _rows(blocks: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(blocks, bytes per block) uint8 -> (..., n / 32 * bytes per block), gguf's byte shape."""
    return blocks.reshape(*shape[:-1], shape[-1] // BLOCK_SIZE * blocks.shape[-1])


def _f16_bytes(v: torch.Tensor) -> torch.Tensor:
    """(blocks, 1) float32 -> (blocks, 2) uint8: rounded to the nearest float16, little-endian."""
    return v.to(torch.float16).flatten().view(torch.uint8).reshape(-1, 2)  # flatten: empty inputs too


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1/d in float32, and 0 where d == 0 so that a block of zeros (or a constant) encodes cleanly."""
    return torch.where(d == 0, 0.0, d.reciprocal())


def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(blocks, 32) uint8 values 0..15 -> (blocks, 16): weight j low nibble, weight j + 16 high."""
    return q[:, :16] | (q[:, 16:] << 4)


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """Round to nearest, halves away from zero (gguf's np_roundf; torch.round sends halves to even).

    Done on |v| via its exact fractional part: floor(|v| + 0.5) would itself round in float32
    (0.49999997 + 0.5 == 1.0) and get some values wrong.
    """
    a = v.abs()
    whole = a.floor()
    return torch.sign(v) * (whole + (a - whole >= 0.5))


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    """float32 (..., n) -> Q8_0 bytes (..., n / 32 * 34), identical to `gguf.quants.quantize`."""
    blocks, shape = _as_blocks(x)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127        # the largest |x| maps to +-127
    q = _round_half_away(blocks * _inverse(d))               # in -127..127
    q = q.to(torch.int8).view(torch.uint8)                   # two's complement bytes
    return _rows(torch.cat([_f16_bytes(d), q], dim=-1), shape)


def quantize_q4_0(x: torch.Tensor) -> torch.Tensor:
    """float32 (..., n) -> Q4_0 bytes (..., n / 32 * 18), identical to `gguf.quants.quantize`."""
    blocks, shape = _as_blocks(x)
    # The value of largest magnitude, with its sign (argmax picks the first of equal ones, as numpy).
    biggest = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))
    d = biggest / -8                                         # so `biggest` itself gets q - 8 = -8
    # x/d lies in [-8, 8]; + 8.5 then trunc = round halves up, shifted to 0..16; 16 is clamped to 15.
    q = torch.trunc(blocks * _inverse(d) + 8.5).to(torch.uint8).clamp_(0, 15)
    return _rows(torch.cat([_f16_bytes(d), _pack_nibbles(q)], dim=-1), shape)


def quantize_q4_1(x: torch.Tensor) -> torch.Tensor:
    """float32 (..., n) -> Q4_1 bytes (..., n / 32 * 20), identical to `gguf.quants.quantize`."""
    blocks, shape = _as_blocks(x)
    lo = blocks.amin(dim=-1, keepdim=True)
    hi = blocks.amax(dim=-1, keepdim=True)
    d = (hi - lo) / 15                                       # 16 levels from min to max
    # (x - min)/d lies in [0, 15]; + 0.5 then trunc = round halves up. (gguf clamps here too.)
    q = torch.trunc((blocks - lo) * _inverse(d) + 0.5).to(torch.uint8).clamp_(0, 15)
    return _rows(torch.cat([_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)], dim=-1), shape)


BLOCK_QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "Q4_1": quantize_q4_1}


def quantize_raw(x: torch.Tensor, type_name: str) -> torch.Tensor:
    """float32 (..., n) -> raw GGUF bytes of `type_name`, uint8 (..., n / 32 * bytes per block).

    Byte-identical to `gguf.quants.quantize`; `dequantize_raw` reads the result back.
    Raises InvalidParameterError (a ValueError) for a type other than Q8_0, Q4_0, Q4_1, or a last
    dimension that is not a multiple of 32.
    """
    if type_name not in BLOCK_QUANTIZERS:
        raise InvalidParameterError(
            f"cannot quantize to {type_name!r}: supported types are {', '.join(BLOCK_QUANTIZERS)}")
    return BLOCK_QUANTIZERS[type_name](x)
