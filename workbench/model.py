"""A Llama-family decoder in plain PyTorch, with a preallocated KV cache.

Module and parameter names follow Hugging Face's `LlamaForCausalLM`, so a state dict moves between
the two unchanged. Every weight matrix lives in an `nn.Linear` (the *linear seam*): quantization
and faster kernels replace those modules in place and nothing else in the model changes. The other
per-token operations have seams too, for `workbench.kernels.enable`: `RMSNorm` modules, and each
`Attention`'s `rope_fn` and `attention_fn` (the same maths, computed by our decode kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import ContextLengthError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the model dtype, as the reference does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position up to the context length, computed once."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        """(B, T) positions -> cos, sin of shape (B, 1, T, head_dim)."""
        return self.cos[positions].unsqueeze(1).to(dtype), self.sin[positions].unsqueeze(1).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention of q (B, heads, T, hd) over k, v (B, kv_heads, S, hd) -> (B, T, heads*hd).

    `mask` (B or 1, 1, T, S) says which keys each query sees; None means causal (T == S) or, for
    a single query, every key.
    """
    B, n_heads, T, head_dim = q.shape
    n_kv_heads = k.shape[1]
    groups = n_heads // n_kv_heads
    if T == 1:
        # One new token per sequence: fold the query heads of each KV group into the query-length
        # axis so K/V are read once, not repeated per query head (the mask broadcasts over heads).
        out = F.scaled_dot_product_attention(q.view(B, n_kv_heads, groups, head_dim), k, v, attn_mask=mask)
        return out.reshape(B, 1, n_heads * head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=groups > 1)
    return out.transpose(1, 2).reshape(B, T, n_heads * head_dim)


class KVCache:
    """Preallocated keys and values for every layer: written in place, never concatenated.

    `k[layer]` has shape (batch, kv_heads, max_len, head_dim). `valid` marks which positions hold a
    real token (left padding in a batch of unequal prompts leaves holes); `length` is how many
    positions are filled for every sequence.

    Every cache (this one, the engine's paged and int8 caches) answers the calls `LlamaModel.forward`
    makes: `prepare(input_ids)` -> positions of the new tokens, `attend(layer, q, k, v, attention_fn)`
    (store the new keys/values, attend over everything cached with `attention_fn`, which has
    `attention`'s signature), `advance()` once the layers ran, and `last(x)` -> each sequence's last
    hidden state.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        shape = (config.num_hidden_layers, batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.padded = False
        self.max_len = max_len
        self.length = 0
        self._start, self._new, self._mask = 0, 0, None  # the forward pass in progress

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def reset(self):
        self.length = 0
        self.valid.fill_(True)
        self.padded = False

    def prepare(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Positions (B, T) of the new tokens; sets up the mask the layers share."""
        T, start, device = input_ids.shape[1], self.length, input_ids.device
        if start + T > self.max_len:
            raise ContextLengthError(f"KV cache holds {self.max_len} positions; {start + T} needed")
        mask = None
        if self.padded:
            valid = self.valid[:, :start + T]
            positions = (valid.cumsum(-1) - 1).clamp(min=0)[:, start:]
            causal = torch.ones(T, start + T, dtype=torch.bool, device=device).tril(start)
            # A padding query would see no key at all (NaN); let every query see itself.
            mask = ((causal & valid[:, None, :]) | causal.triu(start)).unsqueeze(1)
        else:
            positions = torch.arange(start, start + T, device=device).expand(input_ids.shape[0], T)
            if T > 1 and start > 0:  # a chunk continuing a cache: causal with an offset
                mask = torch.ones(T, start + T, dtype=torch.bool, device=device).tril(start)
        self._start, self._new, self._mask = start, T, mask
        return positions

    def attend(self, layer: int, q, k, v, attention_fn=attention) -> torch.Tensor:
        end = self._start + self._new
        self.k[layer, :, :, self._start:end] = k
        self.v[layer, :, :, self._start:end] = v
        return attention_fn(q, self.k[layer, :, :, :end], self.v[layer, :, :, :end], self._mask)

    def advance(self):
        self.length = self._start + self._new

    def truncate(self, length: int):
        """Forget every position from `length` on (speculative decoding rolls rejected drafts back);
        their keys and values are overwritten by the next forward pass."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:]


class Attention(nn.Module):
    # Seams: `workbench.kernels.enable` sets these per module to our decode kernels (same signatures).
    rope_fn = staticmethod(apply_rope)
    attention_fn = staticmethod(attention)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.q_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.kv_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.kv_dim, bias=False)
        self.o_proj = nn.Linear(config.q_dim, config.hidden_size, bias=False)

    def forward(self, x, cos, sin, cache=None, layer: int = 0, mask=None):
        """Attend through `cache` (as layer `layer`), or within `x` only (causal, or `mask`) without one."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.rope_fn(q, cos, sin), self.rope_fn(k, cos, sin)
        fn = self.attention_fn
        out = fn(q, k, v, mask) if cache is None else cache.attend(layer, q, k, v, fn)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_proj(x), self.up_proj(x)
        if gate.requires_grad or up.requires_grad:
            return self.down_proj(F.silu(gate) * up)
        # the same operations in place: a prompt's two (tokens x intermediate) buffers are not allocated again
        return self.down_proj(F.silu(gate, inplace=True).mul_(up))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache=None, layer: int = 0, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and weight buffers (quantized integers, scales), each tensor
    counted once however often it is shared; rotary cos/sin tables are not weights."""
    seen, total = set(), 0
    for t in list(module.parameters()) + [b for n, b in module.named_buffers() if "rotary" not in n]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class LlamaModel(nn.Module):
    """Token ids in, next-token logits out; optionally reading and extending a `KVCache`."""

    # Seam: `workbench.kernels.enable` points this at one native call for every layer of a decode
    # step (the same maths); called as fn(model, x, cos, sin, cache), it returns the hidden rows after
    # the last layer, or None where it does not apply, and then the layers run one by one.
    decode_stack_fn = None

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)

    # Read from the final norm: norms stay floating point even when every matrix is quantized.
    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.norm.weight.device

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        max_len = max_len or self.config.max_position_embeddings
        return KVCache(self.config, batch_size, max_len, self.dtype, self.device)

    def forward(self, input_ids: torch.Tensor, cache=None, last_only: bool = False) -> torch.Tensor:
        """Logits for `input_ids` (B, T), continuing the sequences held in `cache`.

        With a `KVCache`, positions start at `cache.length` (minus any left padding) and the cache
        grows by T; other caches (see `KVCache`) lay the tokens out as they need. `last_only`
        computes logits for each sequence's final position only, which is all that generation
        needs (the output head is the largest matrix of a small model).
        """
        B, T = input_ids.shape
        if cache is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        else:
            positions = cache.prepare(input_ids)
        cos, sin = self.rotary(positions, self.dtype)
        x = self.model.embed_tokens(input_ids).to(self.dtype)
        stacked = None
        if T == 1 and cache is not None and self.decode_stack_fn is not None:
            stacked = self.decode_stack_fn(self, x, cos, sin, cache)
        x = self.run_layers(x, cos, sin, cache) if stacked is None else stacked
        if cache is not None:
            cache.advance()
        if last_only:
            x = x[:, -1:] if cache is None else cache.last(x)
        return self.lm_head(self.model.norm(x))

    def run_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None) -> torch.Tensor:
        """The hidden rows after every decoder layer, one layer after another."""
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, cache, i)
        return x

    def weight_bytes(self) -> int:
        """Bytes of every parameter and buffer that holds weights (tied tensors counted once)."""
        return weight_bytes(self)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
