"""Every decoder layer of one decode step in one native call (`csrc/stack.h`).

A decode step of a small model is mostly Python: each of the 30 layers dispatches about a dozen
operations (norms, products, rotary embedding, cache writes, attention, residuals), each costing
tens of microseconds at decode size, a large share of the step when the products themselves take
a few milliseconds. `decode_stack` hands all layers to `DecodeStack.run` instead, which computes the
same maths with our kernels in C++ and writes the step's keys and values into the `KVCache`.

It applies to one new token per sequence (up to `MAX_ROWS` sequences) over a plain `KVCache`, in
float32 or bfloat16, when every layer is the model's own (`DecoderLayer`, `Attention`, `MLP`, RMSNorm)
and every product is one our kernels compute (float, int8, int4 and GGUF-block layers: each says so
through `kernel_spec()`), with no forward hooks. Anything else (LoRA, pruned or W8A8 layers, the
engine's paged caches, autograd, hooks, kernels off) returns None and the layers run one by one.
Whether the native call is faster than the layers on this machine is measured like every other
kernel choice (`choice.py`, key "decode_stack").

The plan (the tensors of every layer) is built at first use and rebuilt when a module or weight
tensor of the model has been replaced, which each call checks by identity.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .. import kernels  # the package's switches and layer classes (it imports this module last)
from ..model import MLP, Attention, DecoderLayer, KVCache, RMSNorm, apply_rope, attention
from . import build
from .choice import bucket, run_faster

_PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
                ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))
_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Plan


class _Plan:
    """The native stack for a model as it was when built, and what must still hold for it to apply."""

    def __init__(self, stack, checks: list, hooks: list, settings: tuple, versions: list = ()):
        self.stack, self.checks, self.hooks, self.settings = stack, checks, hooks, settings
        self.versions = versions  # (tensor, in-place write count): weights the plan holds as tiles

    def valid(self, settings: tuple) -> bool:
        return (settings == self.settings and all(box.get(name) is obj for box, name, obj in self.checks)
                and all(t._version == v for t, v in self.versions))

    def hooked(self) -> bool:
        return any(self.hooks)


def _settings() -> tuple:
    return (kernels.quantized_activations(),)


def _product(module: nn.Module, checks: list, versions: list):
    """The tuple `DecodeStack` takes for this layer's product, or None when our kernels do not compute it.
    A product on weight tiles (a copy) also notes its weights' write counts in `versions`."""
    spec = module.kernel_spec() if hasattr(module, "kernel_spec") else None
    if spec is None:
        return None
    kind, *tensors = spec
    for box in (module._parameters, module._buffers):
        checks.extend((box, name, t) for name, t in box.items() if t is not None)
    tiles = kernels.weight_tiles(module)
    if tiles is not None:  # a copy: the plan also checks its weights' write counts
        versions.extend((t, t._version) for t in tensors if isinstance(t, torch.Tensor) and not t.is_inference())
        return ("tiles_q8", tiles, module.in_features, module.out_features, kernels.tile_scales(module))
    if kind == "dense":
        weight = tensors[0]
        ok = weight.is_contiguous() and weight.dtype in (torch.float32, torch.bfloat16, torch.int8)
        return ("dense", weight, tensors[1]) if ok else None
    if kind == "int4":
        packed, scale, zero, group, in_features = tensors
        return (kernels.int4_kernel(build.load(), group, packed.shape[-1] * 2), packed, scale, zero, group,
                in_features)
    if kind == "gguf":
        raw, type_name, in_features = tensors
        if type_name not in kernels.GGUF_TYPES:
            return None
        type_id = kernels.GGUF_TYPES[type_name]
        return (kernels.gguf_kernel(build.load(), type_id, in_features), raw, type_id, in_features)
    return None


def _norm(module: nn.Module, dtype: torch.dtype, checks: list):
    if type(module) not in (RMSNorm, kernels.KernelRMSNorm) or module.weight.dtype != dtype:
        return None
    checks.append((module._parameters, "weight", module.weight))
    return module.weight


def _layer_fits(layer: nn.Module) -> bool:
    attn, mlp = layer._modules.get("self_attn"), layer._modules.get("mlp")
    return (type(layer) is DecoderLayer and type(attn) is Attention and type(mlp) is MLP
            and attn.rope_fn in (apply_rope, kernels.rope)
            and attn.attention_fn in (attention, kernels.decode_attention))


def build_plan(model) -> _Plan:
    """The native stack for `model` now (its `stack` None where some layer is not covered)."""
    checks, hooks, layers, versions = [], [], [], []
    dtype, eps = model.dtype, None
    ops = build.load()
    container = model.model.layers
    for i, layer in enumerate(container):
        checks.append((container._modules, str(i), layer))
        hooks.extend(h for m in layer.modules() for h in (m._forward_hooks, m._forward_pre_hooks))
        for name, child in layer._modules.items():
            checks.append((layer._modules, name, child))
        if not _layer_fits(layer):
            return _Plan(None, checks, hooks, _settings())
        entry = [_norm(layer.input_layernorm, dtype, checks), _norm(layer.post_attention_layernorm, dtype, checks)]
        for parent, name in _PROJECTIONS:
            box = layer._modules[parent]._modules
            checks.append((box, name, box[name]))
            entry.append(_product(box[name], checks, versions))
        eps = layer.input_layernorm.eps if eps is None else eps
        if any(e is None for e in entry) or {layer.input_layernorm.eps, layer.post_attention_layernorm.eps} != {eps}:
            return _Plan(None, checks, hooks, _settings())
        layers.append(tuple(entry))
    config = model.config
    stack = ops.DecodeStack(layers, eps, config.num_attention_heads, config.num_key_value_heads, config.head_dim)
    return _Plan(stack, checks, hooks, _settings(), versions)


def _plan(model) -> _Plan | None:
    settings = _settings()
    plan = _plans.get(model)
    if plan is None or not plan.valid(settings):
        plan = _plans[model] = build_plan(model)
    return plan


def native_stack(model, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor | None:
    """The hidden rows after every layer through `DecodeStack`, or None when it does not apply."""
    if (not kernels._enabled or type(cache) is not KVCache or x.shape[1] != 1 or x.shape[0] > kernels.MAX_ROWS or not x.is_cpu
            or x.dtype not in (torch.float32, torch.bfloat16) or torch.is_grad_enabled()
            or build.load() is None or nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks):
        return None
    plan = _plan(model)
    if plan.stack is None or plan.hooked():
        return None
    return plan.stack.run(x, cos, sin, cache.k, cache.v, cache._start, cache._mask)


def decode_stack(model, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor | None:
    """`LlamaModel.decode_stack_fn`: the native stack or the layers one by one, whichever was measured
    faster for this dtype and batch size class (both write the same keys and values into the cache)."""
    if type(cache) is not KVCache or x.shape[1] != 1:
        return None
    return run_faster(("decode_stack", x.dtype, bucket(x.shape[0])), lambda: native_stack(model, x, cos, sin, cache),
                      lambda: model.run_layers(x, cos, sin, cache))

