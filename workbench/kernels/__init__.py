"""Our own CPU matrix-vector kernels for decoding: float32, bfloat16, int8, int4 and GGUF blocks.

Decoding one token multiplies every weight matrix by a single activation row, so its speed is the
speed of reading the weights. These kernels (C++ in `csrc/`, OpenMP over output rows, AVX-512 or
AVX2 chosen at run time, a scalar fallback) stream each weight once in its stored form and convert
it to float32 in registers; activations and accumulation stay float32 (weight-only quantization).

Where they apply (all on CPU, inference only, a few rows of x):

* float32/bfloat16 `nn.Linear`: after `enable(model)` (or `load_model(..., kernels=True)`), which
  swaps each bias-free float `nn.Linear` for a `KernelLinear` sharing the same weight tensor;
* the packed layers of `workbench.quant` (int8, int4, Q8_0/Q4_0/Q4_1) use them on their own, for
  any number of rows where they run on weight tiles (below);
* the rest of a decode step, after `enable(model)`: RMSNorm, rotary embeddings and attention of one
  new token per sequence over its KV cache (float32 or bfloat16; attention on AVX2 or AVX-512).
  PyTorch spends more time per call on these small operations than on their arithmetic.

One exception to float activations, like llama.cpp's quantized dot products: quantized layers (int8,
int4, GGUF Q8_0 / Q4_0 / Q4_1 blocks) round the activation row to int8 per block of 32 inputs (scale
max|x| / 127) and multiply on integer dot products on weight tiles (`weight_tiles`): AVX-512 VNNI, 64
products per instruction, or AVX2's byte products with the same results. Each weight is read once.
It is on wherever tiles run (AVX2 or AVX-512); `set_quantized_activations("float")` or
`WORKBENCH_QUANTIZED_ACTIVATIONS=float` keeps them float32 (exact weight-only), "int8" forces the
rounding where a kernel can (4-bit layers: a portable loop without tiles; 8-bit layers only round on
tiles).

A whole decode step's layers can also run in one native call (`stack.py`, `csrc/stack.h`): the same
maths and kernels, without PyTorch dispatching a dozen small operations per layer from Python, which
otherwise costs a large share of a step at batch 1. `enable` sets it as the model's `decode_stack_fn`.

Where a kernel and PyTorch's operator both apply to a float layer or decode operation, which of the
two runs is measured per shape, dtype and batch size at first use (`choice.py`): our kernels win at
one or two rows and can lose to PyTorch's GEMM at eight, and the crossing depends on the machine.
Float32 prompts (more than 16 rows) are measured the same way against our own GEMM
(`csrc/gemm_f32.h`, AVX-512), which can beat PyTorch's where its BLAS does not use AVX-512.

Anything else (more rows, autograd, another device or dtype, kernels unavailable or switched off
with `set_enabled(False)` / `WORKBENCH_KERNELS=0`) takes the PyTorch path, which computes the same
product. The first use compiles the extension (see `build.py`); without a compiler you get one
warning and the PyTorch path, never an error.

The switches (`set_enabled`, `disabled()`, `set_quantized_activations`) are process-wide: every model
and thread sees them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError
from ..model import Attention, LlamaModel, RMSNorm, apply_rope, attention
from . import build, choice
from .choice import bucket, run_faster
from .memory import huge_page_copy, move_weights_to_huge_pages

MAX_ROWS = 16  # rows of x up to which float layers may use the kernel (whether they do is measured: choice.py)
MAX_ROWS_QUANTIZED = 16  # packed weights: the kernel reads them once per 4 rows, still far ahead of dequantizing
GGUF_TYPES = {"Q8_0": 0, "Q4_0": 1, "Q4_1": 2}
ACTIVATION_BLOCK = 32  # inputs per int8 scale where activations are rounded to int8
_DENSE_DTYPES = (torch.float32, torch.bfloat16, torch.int8)

_enabled = True
QUANTIZED_ACTIVATIONS = ("int8", "float")
_quantized_activations: str | None = None  # None: not chosen yet (the environment, else int8 where tiles run)


def set_enabled(flag: bool):
    """Switch every kernel route on or off for this process (off: PyTorch's operators everywhere)."""
    global _enabled
    _enabled = bool(flag)


@contextmanager
def disabled():
    """`with kernels.disabled():` runs the PyTorch path, e.g. to compare speeds or results."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


def set_quantized_activations(mode: str | None):
    """How quantized layers (int8, int4, GGUF Q8_0 / Q4_0 / Q4_1) treat activations on the kernel path:
    "int8" (rounded per block of 32, integer dot products; on weight tiles at every number of rows,
    prompts included, see `weight_tiles`), "float" (exact weight-only), or None (the default: int8 where
    tiles run: AVX2 or AVX-512 VNNI)."""
    global _quantized_activations
    if mode is not None and mode not in QUANTIZED_ACTIVATIONS:
        raise InvalidParameterError(f"quantized activations must be one of {QUANTIZED_ACTIVATIONS} or None, got {mode!r}")
    _quantized_activations = mode


@contextmanager
def using_quantized_activations(mode: str | None):
    """`with kernels.using_quantized_activations("float"):` runs quantized layers in `mode`, then restores the previous one."""
    global _quantized_activations
    before = _quantized_activations
    set_quantized_activations(mode)
    try:
        yield
    finally:
        _quantized_activations = before


def quantized_activations() -> str:
    """The mode quantized layers use now: "int8" or "float" (see `set_quantized_activations`)."""
    global _quantized_activations
    if _quantized_activations is None:  # resolved once: this runs for every quantized layer of every decode step
        mode = os.environ.get("WORKBENCH_QUANTIZED_ACTIVATIONS", "").lower()
        if mode and mode not in QUANTIZED_ACTIVATIONS:
            raise InvalidParameterError(
                f"WORKBENCH_QUANTIZED_ACTIVATIONS must be one of {QUANTIZED_ACTIVATIONS}, got {mode!r}")
        ops = build.load() if not mode else None
        _quantized_activations = mode or ("int8" if ops is not None and ops.tiles_fit() else "float")
    return _quantized_activations


def available() -> bool:
    """True when the kernels are switched on and built (building them now if needed)."""
    return _enabled and build.load() is not None


def stream_read(buffer: torch.Tensor) -> float | None:
    """The sum of a contiguous float32 CPU buffer, read by our streaming kernel on torch's threads
    (each thread its own contiguous part): a read-bandwidth probe. None when the kernels are off."""
    ops = build.load() if _enabled else None
    return None if ops is None else ops.stream_read(buffer)


def status() -> dict:
    return {"enabled": _enabled, **build.status(), "quantized_activations": quantized_activations()}


def in_use(model: nn.Module) -> str | None:
    """The instruction set our kernels run `model`'s decode products on, or None (PyTorch's operators)."""
    if not any(getattr(m, "uses_kernels", False) for m in model.modules()) or not available():
        return None
    return build.load().backend()


def _ops(x: torch.Tensor, weight: torch.Tensor | None, max_rows: int):
    """The extension if it should compute x's product (on, CPU, few rows, no autograd), else None.
    Cheap checks only: this runs for every linear layer of every decode step."""
    if not _enabled or not x.is_cpu or x.numel() > max_rows * x.shape[-1]:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
        return None
    return build.load()


def dense_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                 max_rows: int = MAX_ROWS) -> torch.Tensor | None:
    """x @ weight.T (times a per-row `scale` for int8 weights) through the kernel, or None when it does not apply."""
    ops = _ops(x, weight, max_rows)
    if ops is None or weight.dtype not in _DENSE_DTYPES or not weight.is_contiguous():
        return None
    return ops.dense(x, weight, scale)


def gemm_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x @ weight.T for a float32 weight and any number of rows of x (a prompt) through our GEMM
    (`csrc/gemm_f32.h`, AVX-512), or None when it does not apply."""
    ops = _ops(x, weight, x.numel() // max(x.shape[-1], 1))
    if ops is None or weight.dtype != torch.float32 or not weight.is_contiguous() or not ops.gemm_fits():
        return None
    return ops.gemm(x, weight)


def int4_kernel(ops, group_size: int, padded_in_features: int) -> str:
    """The extension's int4 product for this layout: "int4_q8" where 4-bit layers round activations to
    int8 and the integer kernel covers the layout, else "int4" (float activations)."""
    rounds = quantized_activations() == "int8" and ops.int4_q8_fits(group_size, padded_in_features)
    return "int4_q8" if rounds else "int4"


def gguf_kernel(ops, type_id: int, in_features: int) -> str:
    """The extension's GGUF product: "gguf_q8" for Q4_0 / Q4_1 where 4-bit layers round activations to
    int8 (as int4 layers do), else "gguf"."""
    return "gguf_q8" if quantized_activations() == "int8" and ops.gguf_q8_fits(type_id, in_features) else "gguf"


def weight_tiles(layer) -> torch.Tensor | None:
    """A quantized layer's weights regrouped 16 rows per tile (`csrc/gguf_q8.h`) for the int8-activation
    product `tiles_q8`: int8, int4 and GGUF Q8_0 / Q4_0 / Q4_1 layers, from what their `kernel_spec()`
    names. None where it does not run (float activations, no AVX2, a layout it does not cover).
    Built at first use and kept on the layer (as many bytes again as its weights; Q8_0 and int4: plus
    a float32 scale per row and block of 32); rebuilt when a weight tensor is replaced or written in
    place."""
    ops = build.load() if _enabled and quantized_activations() == "int8" else None
    spec = layer.kernel_spec() if ops is not None and ops.tiles_fit() and hasattr(layer, "kernel_spec") else None
    if spec is None:
        return None
    kind, *tensors = spec
    row_scales = None  # what tiles_q8 multiplies the finished sums by: an int8 layer's own row scales
    if kind == "gguf" and tensors[1] in GGUF_TYPES:
        raw, type_name, in_features = tensors
        tensors, make = [raw], lambda: ops.gguf_tiles(raw, GGUF_TYPES[type_name], in_features)
    elif kind == "int4" and ops.int4_tiles_fit(tensors[3], tensors[4], tensors[0].shape[-1] * 2):
        packed, scale, zero, group, in_features = tensors
        tensors, make = [packed, scale, zero], lambda: ops.int4_tiles(packed, scale, zero, group, in_features)
    elif kind == "dense" and tensors[0].dtype == torch.int8 and tensors[0].shape[-1] % ACTIVATION_BLOCK == 0:
        qweight, row_scales = tensors  # the tiles hold the weights alone (`tile_scales`)
        make = lambda: ops.int8_tiles(qweight)
    else:
        return None
    if not all(t.is_cpu and t.is_contiguous() for t in tensors):
        return None
    versions = tuple(_version(t) for t in tensors)
    cached = layer.__dict__.get("_kernel_tiles")  # (tensors, their versions, tiles, row scales or None)
    if cached is None or any(a is not b for a, b in zip(cached[0], tensors)) or cached[1] != versions:
        tiles = make()
        moved = huge_page_copy(tiles)  # streamed as fast as the weights `enable` moved (memory.py)
        cached = layer.__dict__["_kernel_tiles"] = (tuple(tensors), versions, tiles if moved is None else moved,
                                                    row_scales)
    return cached[2]


def tile_scales(layer) -> torch.Tensor | None:
    """The row scales `tiles_q8` multiplies the layer's tiles by (an int8 layer's own; None for the
    other layouts), once `weight_tiles(layer)` has returned its tiles."""
    return layer.__dict__["_kernel_tiles"][3]


def _version(t: torch.Tensor) -> int | None:
    """t's in-place write counter (None for inference tensors, which keep none)."""
    return None if t.is_inference() else t._version


def _tiles_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """The layer's product on its tiles for any number of rows of x (a prompt's rows are rounded to
    int8 exactly as a decode step's), or None."""
    if _ops(x, None, x.numel() // max(x.shape[-1], 1)) is None or (tiles := weight_tiles(layer)) is None:
        return None
    return build.load().tiles_q8(x, tiles, x.shape[-1], layer.out_features, tile_scales(layer))


def int8_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """`Int8WeightOnlyLinear`'s product through the kernel (tiles, else float activations), or None."""
    y = _tiles_linear(x, layer)
    return dense_linear(x, layer.qweight, layer.scale, max_rows=MAX_ROWS_QUANTIZED) if y is None else y


def int4_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """`Int4WeightOnlyLinear`'s product through the kernel, or None when it does not apply."""
    y = _tiles_linear(x, layer)
    ops = _ops(x, None, MAX_ROWS_QUANTIZED) if y is None else None
    if ops is None or not layer.packed.is_contiguous():
        return y
    G = layer.group_size
    kernel = getattr(ops, int4_kernel(ops, G, layer.packed.shape[-1] * 2))
    return kernel(x, layer.packed, layer.scale, layer.zero_point, G, x.shape[-1])


def gguf_linear(x: torch.Tensor, layer) -> torch.Tensor | None:
    """`GGUFBlockLinear`'s product through the kernel, or None when it does not apply."""
    y = _tiles_linear(x, layer)
    ops = _ops(x, None, MAX_ROWS_QUANTIZED) if y is None else None
    if ops is None or layer.type_name not in GGUF_TYPES or not layer.raw.is_contiguous():
        return y
    type_id, K = GGUF_TYPES[layer.type_name], x.shape[-1]
    return getattr(ops, gguf_kernel(ops, type_id, K))(x, layer.raw, type_id, K)


_DECODE_DTYPES = (torch.float32, torch.bfloat16)


def _decode_ops(*tensors):
    """The extension for decode-size operations on these CPU tensors of one dtype (float32 or
    bfloat16, no autograd), else None."""
    dtype = tensors[0].dtype
    if not _enabled or dtype not in _DECODE_DTYPES or any(t.dtype != dtype or not t.is_cpu for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    return build.load()


def rope_kernel(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """`model.apply_rope` of x (B, H, T, hd) on our kernel, the same operations rounded alike, or None
    when it does not apply."""
    ops = _decode_ops(x, cos, sin) if x.dim() == 4 else None
    if ops is None or not (cos.is_contiguous() and sin.is_contiguous() and x.stride(-1) == 1):
        return None
    return ops.rope(x, cos, sin)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`model.apply_rope`: for one token per sequence our kernel or PyTorch's, whichever is faster for
    this shape (choice.py); for a prompt our kernel where it applies (one pass over x, not five)."""
    if x.dim() != 4 or x.shape[2] != 1:
        out = rope_kernel(x, cos, sin) if x.dim() == 4 else None
        return apply_rope(x, cos, sin) if out is None else out
    return run_faster(("rope", x.dtype, *x.shape[1:], bucket(x.shape[0])), lambda: rope_kernel(x, cos, sin),
                      lambda: apply_rope(x, cos, sin))


def attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """`model.attention` for one query per sequence on our kernel (AVX2 or AVX-512), or None when it does not apply."""
    ops = _decode_ops(q, k, v) if q.dim() == 4 and q.shape[2] == 1 and k.dim() == 4 else None
    if (ops is None or not ops.decode_attention_fits(q.shape[-1], q.shape[1] // k.shape[1])
            or k.stride(-1) != 1 or k.stride() != v.stride() or q.stride(-1) != 1
            or (mask is not None and (mask.dtype != torch.bool or mask.dim() != 4
                                      or tuple(mask.shape[1:]) != (1, 1, k.shape[2])
                                      or mask.shape[0] not in (1, q.shape[0])))):
        return None
    return ops.decode_attention(q, k, v, mask)


def prefill_attention_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             mask: torch.Tensor | None) -> torch.Tensor | None:
    """`model.attention` for several queries per sequence (a prompt, causal over the keys before and
    among them) on our kernel, each query computed exactly as `attention_kernel` computes it alone at
    its position; None when it does not apply."""
    ops = _decode_ops(q, k, v) if q.dim() == 4 and k.dim() == 4 and 1 < q.shape[2] <= k.shape[2] else None
    if (ops is None or not ops.decode_attention_fits(q.shape[-1], q.shape[1] // k.shape[1])
            or k.stride(-1) != 1 or k.stride() != v.stride() or q.stride(-1) != 1
            or (mask is not None and (mask.dtype != torch.bool or tuple(mask.shape[-2:]) != (q.shape[2], k.shape[2])
                                      or not (mask.dim() == 2 or mask.dim() == 4 and mask.shape[1] == 1
                                              and mask.shape[0] in (1, q.shape[0]))))):
        return None
    return ops.prefill_attention(q, k, v, mask)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`model.attention`: for one query per sequence, our kernel or PyTorch's, whichever is faster for
    this shape, batch and context size class (choice.py); for a prompt, our kernel where it applies
    (so a prompt's attention is what its decode steps on the kernel compute); else PyTorch's."""
    if q.dim() == 4 and k.dim() == 4 and q.shape[2] > 1:
        out = prefill_attention_kernel(q, k, v, mask)
        return attention(q, k, v, mask) if out is None else out
    if q.dim() != 4 or q.shape[2] != 1 or k.dim() != 4:
        return attention(q, k, v, mask)
    key = ("attention", q.dtype, q.shape[1], k.shape[1], q.shape[-1], bucket(q.shape[0]), bucket(k.shape[2]),
           mask is None)
    return run_faster(key, lambda: attention_kernel(q, k, v, mask), lambda: attention(q, k, v, mask))


class KernelRMSNorm(RMSNorm):
    """`RMSNorm` computed by our kernel for float32 or bfloat16 rows (the same parameter): at decode
    sizes where measured faster, for a prompt's rows always, so that a prompt is normalised exactly
    as its decode steps are (the kernel and PyTorch differ in the last bit)."""

    uses_kernels = True

    @classmethod
    def from_norm(cls, norm: RMSNorm) -> KernelRMSNorm:
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.weight, layer.eps = norm.weight, norm.eps
        return layer

    def kernel(self, x: torch.Tensor) -> torch.Tensor | None:
        ops = _decode_ops(x, self.weight) if x.is_contiguous() else None
        return None if ops is None else ops.rms_norm(x, self.weight, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS:
            y = self.kernel(x)
            return super().forward(x) if y is None else y
        return run_faster(("rms_norm", x.dtype, x.shape[-1], bucket(rows)), lambda: self.kernel(x),
                          lambda: super(KernelRMSNorm, self).forward(x))


class KernelLinear(nn.Linear):
    """A bias-free float32/bfloat16 `nn.Linear` whose small-batch products run on our kernel, and
    whose float32 prompts run on our GEMM, each where measured faster than PyTorch's (`choice.py`).

    Same parameter (shared, not copied: tied weights stay tied), same state-dict names; a subclass
    of `nn.Linear`, so `quantize_` and calibration hooks treat it like any linear layer.
    """

    uses_kernels = True

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> KernelLinear:
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.register_parameter("bias", None)
        return layer

    def kernel_spec(self):
        """What the decode stack (stack.py) needs to compute this product: ("dense", weight, scale)."""
        return ("dense", self.weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        kernel = dense_linear if rows <= MAX_ROWS else gemm_linear  # more rows (prompts): a GEMM
        key = ("linear", self.weight.dtype, self.out_features, self.in_features, bucket(rows))
        return run_faster(key, lambda: kernel(x, self.weight), lambda: F.linear(x, self.weight))


def enable(model: nn.Module) -> nn.Module:
    """Swap every bias-free float32/bfloat16 `nn.Linear` of `model` for a `KernelLinear` and every
    `RMSNorm` for a `KernelRMSNorm`, and point each `Attention`'s rotary and attention seams at our
    decode kernels, in place.

    Packed quantized layers need no swap (they call the kernels themselves). Large weights move
    into huge pages (`memory.py`: streamed faster); call `enable` again after quantizing or pruning
    so that the new tensors move too. Returns the model. Building the kernels happens here, once, so
    that the first token is not the one that waits.
    """
    build.load()
    move_weights_to_huge_pages(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (type(child) is nn.Linear and child.bias is None
                    and child.weight.dtype in (torch.float32, torch.bfloat16)):
                setattr(parent, name, KernelLinear.from_linear(child))
            elif type(child) is RMSNorm:
                setattr(parent, name, KernelRMSNorm.from_norm(child))
        if isinstance(parent, Attention):
            parent.rope_fn, parent.attention_fn = rope, decode_attention
        if isinstance(parent, LlamaModel):
            parent.decode_stack_fn = decode_stack
    return model


def disable(model: nn.Module) -> nn.Module:
    """Undo `enable`: plain `nn.Linear` and `RMSNorm` modules (same weight tensors), PyTorch's rotary
    embedding and attention."""
    for parent in list(model.modules()):
        if isinstance(parent, (Attention, LlamaModel)):  # back to the class's seams
            for seam in ("rope_fn", "attention_fn", "decode_stack_fn"):
                parent.__dict__.pop(seam, None)
        for name, child in list(parent.named_children()):
            if isinstance(child, KernelRMSNorm):
                plain = RMSNorm.__new__(RMSNorm)
                nn.Module.__init__(plain)
                plain.weight, plain.eps = child.weight, child.eps
                setattr(parent, name, plain)
            if isinstance(child, KernelLinear):
                plain = nn.Linear.__new__(nn.Linear)
                nn.Module.__init__(plain)
                plain.in_features, plain.out_features = child.in_features, child.out_features
                plain.weight = child.weight
                plain.register_parameter("bias", None)
                setattr(parent, name, plain)
    return model


from .stack import decode_stack  # noqa: E402  (it reads the classes and switches above)
