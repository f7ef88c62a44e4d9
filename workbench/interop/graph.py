"""The model as a graph with its KV cache as plain tensors: what the ONNX exporter traces.

`LlamaModel.forward` talks to its cache through four calls (see `workbench.model.KVCache`).
`FlatCache` answers them over tensors that come in and go out of the graph: the past keys and
values of every layer in, the present ones (past + this step's, concatenated) out, and an
attention mask over all positions (0 = left padding) from which positions and the attention mask
are computed inside the graph. `CachedLM` wraps the model so that the exporter sees one function
of flat tensors: (input_ids, attention_mask, past_key_0, past_value_0, ...) -> (logits,
present_key_0, present_value_0, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grouped_attention(q, k, v, mask):
    """Grouped-query attention of q (B, heads, T, hd) over k, v (B, kv_heads, S, hd) under a boolean
    mask (B, 1, T, S) -> (B, T, heads*hd): `workbench.model.attention`'s maths without its branch on
    the query length (a graph with dynamic axes must not depend on a shape)."""
    B, n_heads, T, head_dim = q.shape
    groups = n_heads // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(B, T, n_heads * head_dim)


class FlatCache:
    """The model's cache protocol over past (key, value) tensors per layer; `present` collects the new ones."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]], attention_mask: torch.Tensor):
        self.past, self.attention_mask = past, attention_mask
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._mask = None

    def prepare(self, input_ids: torch.Tensor) -> torch.Tensor:
        T, start = input_ids.shape[1], self.past[0][0].shape[2]
        valid = self.attention_mask > 0  # (B, start + T)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
        causal = torch.ones(T, start + T, dtype=torch.bool, device=input_ids.device).tril(start)
        # as KVCache: a padding query would see no key at all (NaN); let every query see itself
        self._mask = ((causal & valid[:, None, :]) | causal.triu(start)).unsqueeze(1)
        return positions

    def attend(self, layer: int, q, k, v, attention_fn=None) -> torch.Tensor:
        past_k, past_v = self.past[layer]
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        self.present.append((k, v))
        return grouped_attention(q, k, v, self._mask)

    def advance(self):
        pass

    def last(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:]


class CachedLM(nn.Module):
    """(input_ids, attention_mask, *past) -> (logits, *present), past and present as
    key_0, value_0, key_1, value_1, ... each (batch, kv_heads, positions, head_dim)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        cache = FlatCache(list(zip(past[0::2], past[1::2])), attention_mask)
        logits = self.model(input_ids, cache)
        return (logits, *[t for kv in cache.present for t in kv])


def input_names(num_layers: int) -> list[str]:
    return ["input_ids", "attention_mask"] + [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]


def output_names(num_layers: int) -> list[str]:
    return ["logits"] + [f"present_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]
