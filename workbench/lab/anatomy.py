"""Anatomy of a checkpoint: what the weights are, how many, how big, how they are distributed.

Small helpers behind notebook 01 (weights). Every function takes a `LlamaModel` (or plain numbers)
and returns a pandas DataFrame or a number, so a notebook can show it and assert on it.

Groups used throughout:

    embedding/head  model.embed_tokens.weight (and lm_head.weight when it is not tied)
    attention       q_proj, k_proj, v_proj, o_proj
    mlp             gate_proj, up_proj, down_proj
    norms           the RMSNorm scales (two per layer, one final)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import InvalidParameterError, UnsupportedTensorTypeError
from ..formats.gguf_blocks import BLOCK_BYTES, BLOCK_SIZE
from ..quant.math import excess_kurtosis, moments  # noqa: F401  (excess_kurtosis: shown on this page too)

GROUPS = ("embedding/head", "attention", "mlp", "norms")

# Storage cost of one weight, in bytes. The GGUF block formats pay for their per-block scale
# (and Q4_1's minimum): 32 weights share one float16 d (and m), so the scale is amortised.
BYTES_PER_WEIGHT = {
    "fp32": 4.0,
    "bf16": 2.0,
    "Q8_0": BLOCK_BYTES["Q8_0"] / BLOCK_SIZE,  # 34/32: 32 x int8 + d
    "int8": 1.0,
    "Q4_1": BLOCK_BYTES["Q4_1"] / BLOCK_SIZE,  # 20/32: 16 bytes of nibbles + d + m
    "Q4_0": BLOCK_BYTES["Q4_0"] / BLOCK_SIZE,  # 18/32: 16 bytes of nibbles + d
    "int4": 0.5,
}


def param_group(name: str) -> str:
    """Which of `GROUPS` a parameter name belongs to."""
    if "embed_tokens" in name or name.startswith("lm_head"):
        return "embedding/head"
    if "norm" in name:
        return "norms"
    if ".self_attn." in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    raise InvalidParameterError(f"parameter {name!r} belongs to no known group")


def parameter_table(model, layer: int | None = None, gguf=None) -> pd.DataFrame:
    """One row per parameter tensor: name, shape, numel, dtype, bytes, group.

    A tied output head shares the embedding's tensor and is listed once (as the embedding), as
    `model.parameters()` does. `layer` keeps only that decoder layer's tensors. With `gguf` (a
    `GGUFCheckpoint` of the same model) two more columns say where each tensor came from:
    its GGUF name and its stored type (F32, Q8_0, Q4_1...).
    """
    rows = []
    for name, p in model.named_parameters():
        if layer is not None and not name.startswith(f"model.layers.{layer}."):
            continue
        rows.append({"name": name, "shape": tuple(p.shape), "numel": p.numel(), "dtype": str(p.dtype).removeprefix("torch."),
                     "bytes": p.numel() * p.element_size(), "group": param_group(name)})
    table = pd.DataFrame(rows)
    if gguf is not None:
        from ..checkpoints.gguf_file import hf_name

        types = gguf.tensor_types()
        by_hf = {hf_name(g): g for g in types}
        table["gguf_name"] = table["name"].map(by_hf)
        table["gguf_type"] = table["gguf_name"].map(types)
    return table


def size_breakdown(model) -> pd.DataFrame:
    """Parameters and bytes per group (embedding/head, attention, mlp, norms), with each group's share."""
    table = parameter_table(model)
    out = table.groupby("group")[["numel", "bytes"]].sum().reindex(list(GROUPS), fill_value=0)
    out = out.rename(columns={"numel": "params"})
    out["share"] = out["params"] / out["params"].sum()
    return out.reset_index()


@torch.no_grad()
def weight_stats(model, names: list[str] | None = None) -> pd.DataFrame:
    """Per-tensor statistics: mean, std, max|w|, max|w|/std (how far the largest weight sits out), excess kurtosis.

    std is the population standard deviation; the ratio and the kurtosis are NaN for a constant tensor.

    `names` defaults to every matrix (2-D parameter). A quantizer with one scale per block or per
    row must stretch that scale to cover max|w|, so a large max|w|/std costs resolution everywhere.
    """
    params = dict(model.named_parameters())
    if names is None:
        names = [n for n, p in params.items() if p.ndim == 2]
    rows = []
    for name in names:
        w = params[name].detach()
        mean, std, kurtosis = moments(w)
        lo, hi = w.aminmax()
        max_abs = max(-float(lo), float(hi))
        rows.append({"name": name, "shape": tuple(w.shape), "mean": mean, "std": std,
                     "max_abs": max_abs, "max_abs_over_std": max_abs / std if std > 0 else float("nan"), "kurtosis": kurtosis})
    return pd.DataFrame(rows)


@torch.no_grad()
def outlier_channels(weight: torch.Tensor, top: int = 5) -> pd.DataFrame:
    """The input channels (columns) with the largest L2 norms, and how many times the median norm each is.

    For an `nn.Linear` weight (out, in) column j multiplies input feature j; for the embedding
    (vocab, hidden) column j is hidden dimension j of every token vector.
    """
    norms = weight.detach().float().norm(dim=0)
    median = float(norms.median())
    values, channels = norms.topk(min(top, norms.numel()))
    return pd.DataFrame({"channel": channels.tolist(), "column_norm": values.tolist(),
                         "x_median": (values / median).tolist()})


def strongest_input_channel(model, module: str) -> pd.DataFrame:
    """For every layer, the input channel with the largest column norm in `module` (e.g. "mlp.gate_proj").

    A channel that wins in many layers is a property of the residual stream, not of one matrix.
    """
    rows = []
    for i, layer in enumerate(model.model.layers):
        top = outlier_channels(layer.get_submodule(module).weight, top=1).iloc[0]
        rows.append({"layer": i, "channel": int(top["channel"]), "x_median": float(top["x_median"])})
    return pd.DataFrame(rows)


def dtype_memory_table(num_params: int, bytes_per_weight: dict[str, float] | None = None) -> pd.DataFrame:
    """Weight memory of `num_params` parameters in each storage format (default `BYTES_PER_WEIGHT`).

    Every tensor is assumed stored in the one format; real files keep the small norm vectors in
    float32, which changes the total by well under 0.1% for a model this size.
    """
    bytes_per_weight = bytes_per_weight or BYTES_PER_WEIGHT
    rows = [{"format": name, "bytes_per_weight": b, "bits_per_weight": 8 * b, "bytes": num_params * b,
             "MB": num_params * b / 1e6, "vs_fp32": b / 4.0} for name, b in bytes_per_weight.items()]
    return pd.DataFrame(rows)


def gguf_tensor_bytes(ckpt) -> pd.DataFrame:
    """Bytes a GGUF file spends on tensors, per stored type: tensors, params, bytes, bits_per_weight.

    The rest of the file is its header and metadata (for a small model, mostly the tokenizer).
    """
    rows = [{"type": t.tensor_type.name, "params": int(t.n_elements), "bytes": int(t.n_bytes)}
            for t in ckpt.reader.tensors]
    table = pd.DataFrame(rows)
    out = table.groupby("type").agg(tensors=("params", "size"), params=("params", "sum"), bytes=("bytes", "sum"))
    out["bits_per_weight"] = 8 * out["bytes"] / out["params"]
    return out.reset_index()


def decode_ceiling_tok_s(bytes_per_step: float, gb_s: float) -> float:
    """Upper bound on decode tokens/s when every step must stream `bytes_per_step` at `gb_s` GB/s (1e9 B/s)."""
    return gb_s * 1e9 / bytes_per_step


def decode_ceiling_table(num_params: int, bandwidths_gb_s: list[float],
                         bytes_per_weight: dict[str, float] | None = None) -> pd.DataFrame:
    """Tokens/s ceilings, one row per format and one column per bandwidth (batch 1, weights only).

    Assumes every weight is read once per token, which holds for a tied model (the embedding is
    read in full as the output head); KV-cache reads are ignored, so real ceilings are a bit lower.
    """
    mem = dtype_memory_table(num_params, bytes_per_weight)
    out = mem[["format", "MB"]].copy()
    for bw in bandwidths_gb_s:
        out[f"tok/s @ {bw:g} GB/s"] = [decode_ceiling_tok_s(b, bw) for b in mem["bytes"]]
    return out


def read_safetensors_header(path: str | Path) -> dict:
    """The JSON header of a .safetensors file, read by hand.

    Layout: 8 bytes little-endian uint64 N | N bytes of JSON | raw tensor bytes. The JSON maps
    each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
    end of the header) plus an optional "__metadata__" dict of strings.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


_SAFETENSORS_NUMPY = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
                      "I32": np.int32, "I8": np.int8, "U8": np.uint8}


def read_safetensors_tensor(path: str | Path, name: str) -> np.ndarray:
    """One tensor of a .safetensors file, read by hand from its header's byte offsets (no library)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        entry = json.loads(f.read(n))[name]
        if entry["dtype"] not in _SAFETENSORS_NUMPY:
            raise UnsupportedTensorTypeError(f"dtype {entry['dtype']} has no numpy equivalent here "
                             f"(read: {', '.join(_SAFETENSORS_NUMPY)})")
        begin, end = entry["data_offsets"]
        f.seek(8 + n + begin)
        data = f.read(end - begin)
    return np.frombuffer(data, dtype=_SAFETENSORS_NUMPY[entry["dtype"]]).reshape(entry["shape"])
