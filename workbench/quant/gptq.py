"""GPTQ: 4-bit weights whose rounding errors are compensated by the columns not yet quantized.

Follows Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers" (2022, arXiv:2210.17323), Algorithm 1, and its reference code.

For one Linear with weight W (rows x cols) and calibration inputs X (tokens x cols), GPTQ minimises
||X W^T - X Ŵ^T||^2 one input column at a time:
    H = 2 X^T X / N                                   (Hessian of that error, shared by every row)
    H += damp * mean(diag H) * I                      (dampening, damp = 1%: H may be singular)
    U = cholesky(H^-1), upper                         (the rows of U give the OBS updates directly)
    for each column j (in blocks of 128 columns; updates to later blocks applied once per block):
        when j starts a group: scale/zero-point of the group from the *current* (updated) weights
        q_j = quantize(w_j);  err = (w_j - dequant(q_j)) / U[j, j]
        w_k -= err * U[j, k]  for every later column k  (spreads the error where H says it hurts least)
act_order processes columns by descending diag(H) (the inputs with most energy first). The integers
must still fit `Int4WeightOnlyLinear`'s layout (groups of consecutive *original* columns), so with
act_order the group parameters are fixed before the loop from the float weights ("static_groups"
in the reference code) and each column uses the parameters of its original group (`static_groups`
alone does the same in the natural order). `clip` takes each group's parameters from the
Hessian-weighted clip search (`clip.search_clip`) instead of its min/max: a narrower range whose
rounding hurts the layer's output least; with act_order that is what moves int4 furthest on text
from another domain than the calibration set's (benchmarks/README.md, cross_domain).

Whole model: decoder layers are quantized in order, and the calibration inputs of layer i are
computed by layers < i that are already quantized, so each layer corrects for the error upstream.
Inside a layer the Linears go in the "true sequential" order of the reference code: q/k/v, then
o_proj (inputs recomputed with quantized q/k/v), then gate/up, then down_proj.

The output head goes last, with the final-norm outputs of the quantized decoder as its inputs
(`head_method="gptq"`). Tied to the token embedding, its GPTQ rows also serve as embedding rows; that
costs less than it saves: on the bundled model, int4-g128 act-order reached perplexity 15.6 with a
GPTQ head against 17.6 with a round-to-nearest one (21.1 for RTN everywhere, 13.1 in float).

The helpers below (calibration tokens, layer-by-layer runner, building an Int4WeightOnlyLinear from
precomputed integers) are shared with `awq.py` and `smoothquant.py`; the Hessian, its dampened
inverse factor and the layer-by-layer Hessian pass with `workbench.prune.sparsegpt`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..corpus import calibration_token_ids
from ..errors import InvalidParameterError
from .linear import Int4WeightOnlyLinear, Int8WeightOnlyLinear, QuantizedLinear
from .clip import search_clip
from .math import calc_qparams

MIN_CALIBRATION_TOKENS = 64
HEAD_METHODS = ("gptq", "rtn", "int8")  # the output head (the tied embedding too): GPTQ, RTN int4, int8

# Linears of one decoder layer, in the order GPTQ quantizes them ("true sequential").
SEQUENTIAL_GROUPS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                     ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


# ----------------------------------------------------------------------------------------- shared helpers

def calibration_ids(model, tokenizer, calibration_text, calibration_tokens: int, window: int) -> torch.Tensor:
    """(windows, tokens) ids of the calibration text: its first `calibration_tokens` tokens, cut into
    non-overlapping windows of at most `window` tokens (shorter remainder dropped unless it is all).

    `calibration_text` is a string (tokenized with `tokenizer`, no special tokens), a sequence of ids,
    or None for the calibration half of the built-in corpus (never overlaps the evaluation half).
    """
    if calibration_text is None or isinstance(calibration_text, str):
        if tokenizer is None:
            raise InvalidParameterError("this quantization method needs calibration data: pass "
                                        "quantize_(model, spec, tokenizer=tokenizer) (and optionally calibration_text=...)")
        if calibration_text is None:
            ids = calibration_token_ids("builtin", tokenizer, default_tokens=calibration_tokens)
        else:
            ids = tokenizer.encode(calibration_text, add_special_tokens=False)
    else:
        ids = [int(i) for i in calibration_text]
    ids = ids[:calibration_tokens]
    if len(ids) < MIN_CALIBRATION_TOKENS:
        raise InvalidParameterError(f"calibration text has {len(ids)} tokens; at least {MIN_CALIBRATION_TOKENS} "
                                    f"are needed ({calibration_tokens} requested)")
    window = min(window, model.config.max_position_embeddings)
    n = max(1, len(ids) // window)
    length = min(window, len(ids))
    return torch.tensor(ids[:n * length], dtype=torch.long, device=model.device).reshape(n, length)


class LayerRunner:
    """Runs calibration windows through the decoder one layer at a time (no KV cache, causal).

    `hidden` is the input of the next layer; `capture(layer, names)` runs that layer and returns the
    inputs of the named sub-modules, flattened to (tokens, in_features) float32; `advance(layer)`
    replaces `hidden` with the layer's output (computed with whatever the layer holds now).
    """

    def __init__(self, model, ids: torch.Tensor):
        self.model = model
        with torch.no_grad():
            self.hidden = model.model.embed_tokens(ids).to(model.dtype)
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        self.cos, self.sin = model.rotary(positions, model.dtype)

    @torch.no_grad()
    def capture(self, layer, names) -> dict[str, torch.Tensor]:
        modules = dict(layer.named_modules())
        seen, handles = {}, []
        for name in names:
            def hook(_module, args, name=name):
                seen[name] = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            handles.append(modules[name].register_forward_pre_hook(hook))
        try:
            layer(self.hidden, self.cos, self.sin, None, 0, None)
        finally:
            for h in handles:
                h.remove()
        return seen

    @torch.no_grad()
    def advance(self, layer):
        self.hidden = layer(self.hidden, self.cos, self.sin, None, 0, None)


def set_submodule(root: nn.Module, name: str, module: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def int4_linear_from_integers(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                              group_size: int) -> Int4WeightOnlyLinear:
    """An `Int4WeightOnlyLinear` holding precomputed integers, in exactly the layout its constructor makes.

    q (out, in) integers 0..15; scale (out, groups) float32; zero_point (out, groups) 0..15 with
    groups = ceil(in / group_size). A ragged last group is padded with its zero-point (dequantizes to
    0, sliced off on use), as the constructor's zero padding would quantize.
    """
    out_features, in_features = q.shape
    groups = -(-in_features // group_size)
    if scale.shape != (out_features, groups) or zero_point.shape != (out_features, groups):
        raise InvalidParameterError(f"scale/zero_point must have shape {(out_features, groups)}")
    if q.min() < 0 or q.max() > 15 or zero_point.min() < 0 or zero_point.max() > 15:
        raise InvalidParameterError("int4 integers and zero-points must lie in 0..15")
    pad = -in_features % group_size
    q = torch.cat([q, zero_point[:, -1:].expand(-1, pad)], dim=1) if pad else q
    q = q.to(torch.uint8)
    # Bypass __init__ (which quantizes by round-to-nearest) but build the very same buffers.
    layer = Int4WeightOnlyLinear.__new__(Int4WeightOnlyLinear)
    QuantizedLinear.__init__(layer, in_features, out_features)
    layer.group_size = group_size
    layer.format = f"int4-g{group_size}"
    layer.register_buffer("packed", q[:, 0::2] | (q[:, 1::2] << 4))
    layer.register_buffer("scale", scale.float().reshape(out_features, groups).contiguous())
    layer.register_buffer("zero_point", zero_point.reshape(out_features, groups).to(torch.uint8))
    return layer


def _group_qparams(w: torch.Tensor):
    """Asymmetric 4-bit min/max (scale, zero_point), each (rows, 1), for one group of columns `w`.

    Via `math.calc_qparams` per row: the same numbers Int4WeightOnlyLinear's RTN would choose
    for these values (its zero padding of a ragged group changes no asymmetric range)."""
    qp = calc_qparams(w, 4, False, "channel")
    return qp.scale.reshape(-1, 1), qp.zero_point.reshape(-1, 1)


def _quant_column(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor):
    """(integers, dequantized) for one column, with math.quantize's arithmetic (round(x * 1/s) + z)."""
    q = (torch.round(w * (1.0 / scale)) + zero_point).clamp(0, 15)
    return q, (q - zero_point) * scale


# ----------------------------------------------------------------------------------------- GPTQ proper

def hessian(x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """H = 2 X^T X / N for inputs X (tokens, in_features), accumulated in float64 for stability
    (SparseGPT passes float32, as its reference code does: 4x faster, and its dampening absorbs it)."""
    x = x.reshape(-1, x.shape[-1]).to(dtype)
    return (2.0 / x.shape[0]) * (x.T @ x)


def inverse_hessian_factor(H: torch.Tensor, damp: float, method: str = "GPTQ") -> torch.Tensor:
    """Upper Cholesky factor (float32) of (H + damp * mean(diag H) * I)^-1: the rows GPTQ and SparseGPT
    read to spread one column's error over the columns not yet processed. `H` is not modified."""
    H = H + damp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    try:
        return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()
    except torch.linalg.LinAlgError as e:  # pragma: no cover - only for pathological inputs
        raise InvalidParameterError(f"{method}: Hessian not positive definite even after dampening ({e}); "
                                    "raise `damp` or use more calibration tokens") from e


@torch.no_grad()
def gptq_quantize_weight(weight: torch.Tensor, H: torch.Tensor, group_size: int = 128, block_size: int = 128,
                         damp: float = 0.01, act_order: bool = False, static_groups: bool = False,
                         clip: bool = False):
    """GPTQ integers for one weight (out, in) given the Hessian H (in, in) of its inputs.

    Returns (q, scale, zero_point): q (out, in) int32 in 0..15, scale/zero_point (out, groups) for
    groups of `group_size` consecutive original columns (last one ragged), asymmetric 4-bit.
    `static_groups` fixes every group's parameters from the float weights before the loop (always so
    with act_order); `clip` takes them from the Hessian-weighted clip search (`clip.search_clip`)
    instead of the group's min/max.
    """
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise InvalidParameterError(f"int4 group size must be an even integer >= 2, got {group_size!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise InvalidParameterError(f"GPTQ block size must be a positive integer, got {block_size!r}")
    W = weight.detach().float().clone()
    rows, cols = W.shape
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0          # an input that is always 0: its weights can't matter
    H[dead, dead] = 1
    W[:, dead] = 0
    n_groups = -(-cols // group_size)

    static = None
    if act_order or static_groups:
        # Static groups: parameters from the float weights, so groups stay consecutive original columns.
        if clip:
            s_all, z_all = search_clip(W, H, group_size)
            static = [(s_all[:, g:g + 1], z_all[:, g:g + 1]) for g in range(n_groups)]
        else:
            static = [_group_qparams(W[:, g * group_size:(g + 1) * group_size]) for g in range(n_groups)]
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(cols)
    col_group = perm // group_size     # original group of each processed column

    Hinv = inverse_hessian_factor(H, damp)

    Q = torch.zeros(rows, cols, dtype=torch.float32, device=W.device)
    scales = torch.zeros(rows, n_groups, dtype=torch.float32, device=W.device)
    zeros = torch.zeros(rows, n_groups, dtype=torch.float32, device=W.device)
    if static is not None:
        for g, (s, z) in enumerate(static):
            scales[:, g:g + 1], zeros[:, g:g + 1] = s, z.float()
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, Err1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1, device=W.device), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            g = int(col_group[j])
            if static is None and j % group_size == 0:
                # Group parameters from the weights as they are *now*, errors of earlier columns included.
                width = min(group_size, cols - j)
                current = W1[:, i:i + width]
                if current.shape[1] < width:  # the group runs past this block: add its pending updates
                    rest = slice(i2, i2 + width - current.shape[1])
                    current = torch.cat([current, W[:, rest] - Err1[:, :i] @ Hinv[i1:j, rest]], dim=1)
                if clip:
                    s, z = search_clip(current, H[j:j + width, j:j + width], width + width % 2)
                else:
                    s, z = _group_qparams(current)
                scales[:, g:g + 1], zeros[:, g:g + 1] = s, z.float()
            s, z = scales[:, g], zeros[:, g]
            w = W1[:, i]
            q, w_hat = _quant_column(w, s, z)
            Q[:, j] = q
            err = (w - w_hat) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        # Lazy batch update: the later blocks receive this block's errors in one matmul.
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(torch.int32), scales, zeros.to(torch.int32)


@dataclass(frozen=True)
class GPTQConfig:
    """int4 weight-only, asymmetric per group (Int4WeightOnlyLinear format), integers chosen by GPTQ.

    Needs calibration data: `quantize_(model, config, tokenizer=tok)` uses the first
    `calibration_tokens` tokens of `calibration_text` (default: the calibration half of the built-in
    corpus) in windows of `window` tokens (CLI default 2048 tokens = 4 x 512). For SmolLM2-135M on a
    busy 2-core CPU that took 7 minutes (the column loop is sequential Python); the GPTQ paper uses
    128 x 2048 tokens of C4.
    The output head is quantized by GPTQ too (`head_method="gptq"`; "rtn" rounds it to nearest in
    the same int4 format, "int8" keeps it at 8 bits per output channel, `include_head=False` keeps it
    float). With tied embeddings the head's choice is the embedding's too, see the module docstring.
    `static_groups` fixes the group parameters from the float weights (implied by act_order);
    `clip` searches them per group (`clip.search_clip`) instead of taking min/max.
    """

    group_size: int = 128
    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128
    calibration_tokens: int = 2048
    window: int = 512
    include_head: bool = True
    head_method: str = "gptq"
    static_groups: bool = False
    clip: bool = False
    needs_calibration = True  # class attribute, not a field: quantize_ passes calibration data

    def __post_init__(self):
        if not isinstance(self.damp, (int, float)) or isinstance(self.damp, bool) or not 0 < self.damp <= 1:
            raise InvalidParameterError(f"GPTQ damp must be in (0, 1] (a fraction of mean(diag H)), got {self.damp!r}")
        if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size < 1:
            raise InvalidParameterError(f"GPTQ block size must be a positive integer, got {self.block_size!r}")
        if self.head_method not in HEAD_METHODS:
            raise InvalidParameterError(f"head_method must be one of {', '.join(HEAD_METHODS)}, got {self.head_method!r}")

    def make(self, weight):
        """Round-to-nearest fallback (layers outside the decoder, the head with head_method="rtn")."""
        return Int4WeightOnlyLinear(weight, self.group_size)

    def make_head(self, weight):
        """The output head when GPTQ left it float: int8 per channel ("int8") or int4 RTN ("rtn")."""
        return Int8WeightOnlyLinear(weight) if self.head_method == "int8" else self.make(weight)

    def bits_per_weight(self, in_features: int) -> float:
        return 4 + (32 + 8) / self.group_size

    def calibrate(self, model, tokenizer=None, calibration_text=None, filter_fn=None, verbose=False):
        return gptq_quantize_model(model, calibration_ids(model, tokenizer, calibration_text,
                                                          self.calibration_tokens, self.window),
                                   self, filter_fn, verbose)


@torch.no_grad()
def sequential_hessian_pass(model, ids: torch.Tensor, process, filter_fn=None, verbose: bool = False,
                            label: str = "gptq", dtype: torch.dtype = torch.float64, final=None):
    """Layer by layer, group by group (`SEQUENTIAL_GROUPS`): `process(layer, names, H)` with the Hessian
    H of the inputs the named Linears of `layer` share, measured with everything before them already
    processed. Only float `nn.Linear`s for which filter_fn(full name, module) holds are named.
    `final(hidden)`, if given, then receives the last layer's output (windows, tokens, hidden)."""
    runner = LayerRunner(model, ids)
    for index, layer in enumerate(model.model.layers):
        start = time.perf_counter()
        for names in SEQUENTIAL_GROUPS:
            names = [n for n in names if isinstance(layer.get_submodule(n), nn.Linear) and
                     (filter_fn is None or filter_fn(f"model.layers.{index}.{n}", layer.get_submodule(n)))]
            if not names:
                continue
            inputs = runner.capture(layer, names[:1])  # with the layer's earlier groups already processed
            process(layer, names, hessian(inputs[names[0]], dtype))  # the group's Linears share one input: one H
        runner.advance(layer)                       # next layer's inputs come from this processed layer
        if verbose:
            print(f"{label} layer {index}: {time.perf_counter() - start:.1f}s")
    if final is not None:
        final(runner.hidden)
    return model


def gptq_quantize_model(model, ids: torch.Tensor, config: GPTQConfig = GPTQConfig(), filter_fn=None,
                        verbose: bool = False):
    """Replace every decoder Linear (for which filter_fn(name, module) holds) by its GPTQ int4 version."""
    def gptq_linear(linear, H):
        q, scale, zp = gptq_quantize_weight(linear.weight, H, config.group_size, config.block_size, config.damp,
                                            config.act_order, config.static_groups, config.clip)
        return int4_linear_from_integers(q, scale, zp, config.group_size).to(linear.weight.device)

    def quantize(layer, names, H):
        for name in names:
            set_submodule(layer, name, gptq_linear(layer.get_submodule(name), H))

    def quantize_head(hidden):  # the head's inputs: final-norm outputs of the quantized decoder
        head = model.lm_head
        if filter_fn is None or filter_fn("lm_head", head):
            model.lm_head = gptq_linear(head, hessian(model.model.norm(hidden).reshape(-1, head.in_features).float()))

    with_head = config.include_head and config.head_method == "gptq" and isinstance(model.lm_head, nn.Linear)
    return sequential_hessian_pass(model, ids, quantize, filter_fn, verbose, label="gptq",
                                   final=quantize_head if with_head else None)


def rtn_reference(weight: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """Round-to-nearest int4 dequantized weight in the same format (for comparisons)."""
    return Int4WeightOnlyLinear(weight, group_size).dequantized_weight()


__all__ = ["GPTQConfig", "gptq_quantize_weight", "gptq_quantize_model", "hessian", "inverse_hessian_factor",
           "int4_linear_from_integers", "calibration_ids", "LayerRunner", "sequential_hessian_pass", "rtn_reference"]
