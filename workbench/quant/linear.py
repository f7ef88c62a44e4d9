"""Quantized replacements for `nn.Linear` that really store packed integers.

Every class keeps its weight in its integer form (int8, two int4 per byte, or raw GGUF blocks),
so model bytes in memory and on disk shrink. `forward` computes through PyTorch ops that exist
today (dequantize, then `F.linear`; exact int8 products for W8A8, `int8_matmul`). That is the kernel seam: for a few
rows of x (decoding), the int8, int4 and GGUF-block layers call our C++ kernels (`workbench.kernels`),
which read the packed weight once and never materialise the float matrix; with int8 activations
(AVX2 or AVX-512 VNNI) they take prompts too, on weight tiles (`kernels.weight_tiles`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..formats import gguf_blocks
from ..errors import InvalidParameterError
from .math import calc_qparams, quantize


class QuantizedLinear(nn.Module):
    """Base class: a bias-free linear layer whose weight is stored quantized."""

    format = "?"

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 (out, in) weight this layer computes with."""
        return self.dequantize_rows(slice(None))

    def dequantize_rows(self, rows) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype))

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def layer_args(self) -> dict:
        """Constructor arguments besides the weight: with the shapes, enough to rebuild the layer."""
        return {}

    @classmethod
    def empty(cls, in_features: int, out_features: int, **layer_args):
        """A layer of the right shapes (quantized zeros) for a saved state to fill."""
        return cls(torch.zeros(out_features, in_features), **layer_args)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}"


class Int8WeightOnlyLinear(QuantizedLinear):
    """int8 weights, symmetric, one float32 scale per output channel: w = q * scale.

    Where the CPU has AVX2 the kernel rounds x to int8 per block of 32 inputs and multiplies
    on weight tiles, for any number of rows (see `workbench.kernels.set_quantized_activations`)."""

    format = "int8"
    uses_kernels = True  # forward calls workbench.kernels for a few rows of x

    def __init__(self, weight: torch.Tensor, observer="minmax"):
        super().__init__(weight.shape[1], weight.shape[0])
        qp = calc_qparams(weight, 8, True, "channel", observer=observer)
        self.register_buffer("qweight", quantize(weight, qp).to(torch.int8))
        self.register_buffer("scale", qp.scale.reshape(-1, 1))

    def dequantize_rows(self, rows):
        return self.qweight[rows].float() * self.scale[rows]

    def kernel_spec(self):  # what the kernels' decode stack computes this product from
        return ("dense", self.qweight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # our kernel for a few rows of x, else dequantize
        y = kernels.int8_linear(x, self)
        return super().forward(x) if y is None else y


class Int4WeightOnlyLinear(QuantizedLinear):
    """4-bit weights, asymmetric per group of `group_size` inputs, packed two per byte:
    w = (q - zero_point) * scale; byte j of a row holds input 2j (low nibble) and 2j+1 (high).

    Where the CPU has AVX2 the kernel rounds x to int8 per block of 32 inputs (integer dot
    products; see `workbench.kernels.set_quantized_activations`), on weight tiles for any number of rows,
    so a prompt is computed as its decode steps are; elsewhere, and with kernels off, float x
    multiplies the dequantized weight."""

    uses_kernels = True

    def __init__(self, weight: torch.Tensor, group_size: int = 128, observer="minmax"):
        super().__init__(weight.shape[1], weight.shape[0])
        if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
            raise InvalidParameterError(f"int4 group size must be an even integer >= 2, got {group_size!r}")
        self.group_size = group_size
        self.format = f"int4-g{group_size}"
        # A row whose length is not a multiple of the group size gets a shorter last group: padding
        # with zeros changes no range (asymmetric ranges always contain 0) and is sliced off on use.
        weight = F.pad(weight.float(), (0, -weight.shape[1] % group_size))
        qp = calc_qparams(weight, 4, False, "group", group_size, observer=observer)
        q = quantize(weight, qp).to(torch.uint8)
        self.register_buffer("packed", q[:, 0::2] | (q[:, 1::2] << 4))
        self.register_buffer("scale", qp.scale.reshape(self.out_features, -1))
        self.register_buffer("zero_point", qp.zero_point.reshape(self.out_features, -1).to(torch.uint8))

    def layer_args(self):
        return {"group_size": self.group_size}

    def dequantize_rows(self, rows):
        packed = self.packed[rows]
        q = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)
        groups = q.reshape(*q.shape[:-1], -1, self.group_size).float()
        zp, scale = self.zero_point[rows].float().unsqueeze(-1), self.scale[rows].unsqueeze(-1)
        return ((groups - zp) * scale).reshape(q.shape)[..., :self.in_features]

    def kernel_spec(self):
        return ("int4", self.packed, self.scale, self.zero_point, self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kernels.int4_linear(x, self)
        return super().forward(x) if y is None else y


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(m, k) int8 @ (k, n) int8 -> (m, n) int32, exact, like `torch._int_mm`. On a CPU the product
    runs in float64, which holds every integer sum of int8 products exactly (|sum| <= k * 2**14, far
    below 2**53) whatever the order of addition: PyTorch's CPU `_int_mm` is tens of times slower."""
    if a.device.type != "cpu":
        return torch._int_mm(a, b)
    return (a.double() @ b.double()).to(torch.int32)


class W8A8Linear(Int8WeightOnlyLinear):
    """int8 weights (per output channel) and int8 activations quantized on the fly per token
    (symmetric, scale = max|x_token| / 127); the product accumulates exactly in int32."""

    format = "w8a8"
    uses_kernels = False  # int8 activations: its own forward, no kernel yet

    def __init__(self, weight: torch.Tensor, observer="minmax"):
        super().__init__(weight, observer)
        self.register_buffer("qweight_t", self.qweight.t().contiguous())  # (in, out) for int8_matmul
        del self.qweight

    def kernel_spec(self):  # int8 activations: not a product the kernels compute
        return None

    def dequantize_rows(self, rows):
        return self.qweight_t.t()[rows].float() * self.scale[rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        x_scale = flat.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
        x_q = torch.round(flat / x_scale).clamp(-127, 127).to(torch.int8)
        out = int8_matmul(x_q, self.qweight_t).float() * x_scale * self.scale.reshape(1, -1)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class GGUFBlockLinear(QuantizedLinear):
    """Raw GGUF blocks (Q8_0, Q4_0, Q4_1: 32 weights each, see `formats.gguf_blocks`), as llama.cpp stores them."""

    uses_kernels = True

    def __init__(self, weight: torch.Tensor, type_name: str):
        super().__init__(weight.shape[1], weight.shape[0])
        if type_name not in gguf_blocks.BLOCK_BYTES:
            raise InvalidParameterError(f"unknown GGUF block type {type_name!r} (accepted: {', '.join(gguf_blocks.BLOCK_BYTES)})")
        self.format = type_name.lower()
        self.type_name = type_name
        self.register_buffer("raw", gguf_blocks.quantize_raw(weight.float(), type_name))

    def layer_args(self):
        return {"type_name": self.type_name}

    def dequantize_rows(self, rows):
        raw = self.raw[rows]
        out = gguf_blocks.BLOCK_DEQUANTIZERS[self.type_name](raw.reshape(-1, gguf_blocks.BLOCK_BYTES[self.type_name]))
        return out.reshape(*raw.shape[:-1], self.in_features)

    def kernel_spec(self):
        return ("gguf", self.raw, self.type_name, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = kernels.gguf_linear(x, self)
        return super().forward(x) if y is None else y


class QuantizedEmbedding(nn.Module):
    """Token lookup from a quantized output head, for tied embeddings: one quantized copy serves both."""

    def __init__(self, head: QuantizedLinear):
        super().__init__()
        self.head = [head]  # a list, so the head's buffers are not registered (and counted) twice

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head[0].dequantize_rows(ids.reshape(-1)).reshape(*ids.shape, -1)

    @property
    def weight(self):
        return self.head[0].dequantized_weight()
