"""Int8 KV cache: keys and values stored as int8 with one scale per (token, head).

Symmetric absmax quantization over head_dim: scale = max|x| / 127 (kept in float16), q = round(x / scale).
A head of 64 values then costs 64 + 2 bytes instead of 256 (float32) or 128 (bfloat16). Attention
reads the values back dequantized, so every later token sees the rounding error.
"""

from __future__ import annotations

import torch

from ..model import KVCache, attention

SCALE_DTYPE = torch.float16


def quantize_kv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., head_dim) floats -> int8 values and (..., 1) float16 scales."""
    # Round the scale to its stored precision first, so quantizing and dequantizing use the same one.
    scale = (x.detach().abs().amax(-1, keepdim=True).float() / 127).clamp(min=1e-6).to(SCALE_DTYPE)
    q = (x.float() / scale.float()).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_kv(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


def int8_bytes_per_token(config) -> int:
    """KV bytes per position in int8: 2 x layers x kv_heads x (head_dim int8 values + one float16 scale)."""
    return 2 * config.num_hidden_layers * config.num_key_value_heads * (config.head_dim + SCALE_DTYPE.itemsize)


class Int8KVCache(KVCache):
    """The contiguous `KVCache` with int8 storage; positions and masks work exactly as there."""

    def __init__(self, config, batch_size: int, max_len: int, dtype: torch.dtype, device="cpu"):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=torch.int8, device=device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=device)
        self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=SCALE_DTYPE, device=device)
        self.v_scale = torch.zeros_like(self.k_scale)
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.dtype, self.padded, self.max_len, self.length = dtype, False, max_len, 0
        self._start, self._new, self._mask = 0, 0, None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.k_scale, self.v_scale))

    def attend(self, layer: int, q, k, v, attention_fn=attention) -> torch.Tensor:
        start, end = self._start, self._start + self._new
        for store, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            store[layer, :, :, start:end], scales[layer, :, :, start:end] = quantize_kv(x)
        keys = dequantize_kv(self.k[layer, :, :, :end], self.k_scale[layer, :, :, :end], self.dtype)
        values = dequantize_kv(self.v[layer, :, :, :end], self.v_scale[layer, :, :, :end], self.dtype)
        return attention_fn(q, keys, values, self._mask)


class Int8KVModel:
    """A model whose every forward pass goes through a fresh `Int8KVCache`, so that functions that
    call `model(ids)` (perplexity) measure what int8 keys/values cost."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    @property
    def device(self):
        return self.model.device

    def __call__(self, input_ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        B, T = input_ids.shape
        cache = Int8KVCache(self.config, B, T, self.model.dtype, self.model.device)
        return self.model(input_ids, cache, last_only=last_only)
