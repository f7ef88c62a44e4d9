"""Our model as an ONNX file with its KV cache as inputs and outputs, and ONNX Runtime's own int8.

The file holds `graph.CachedLM`: inputs `input_ids` (batch, sequence), `attention_mask` (batch,
past_sequence + sequence; 0 marks left padding) and `past_key_i` / `past_value_i` (batch, kv_heads,
past_sequence, head_dim) for every layer; outputs `logits` (batch, sequence, vocab) and
`present_key_i` / `present_value_i` (past + new positions). Batch and both lengths are dynamic, so
one file prefills (empty past) and decodes step by step. Its metadata records where it came from
(`identity`): the runner refuses a file exported from another model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.metadata
import inspect
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

from .. import kernels
from ..errors import InvalidParameterError, MissingDependencyError
from ..io import atomic_path, atomic_write_bytes
from ..settings import cache_root
from . import graph
from .graph import CachedLM, input_names, output_names

FORMAT = "workbench-onnx-kv/1"  # the graph's inputs and outputs as above; bump when they change
INT8_PER_CHANNEL = True
INT8_METHOD = ("onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=True): every MatMul "
               "weight stored as int8 with one float scale per output column; activations quantized to uint8 "
               "per tensor at run time (DynamicQuantizeLinear + MatMulInteger, or ORT's fused "
               "DynamicQuantizeMatMul)")


def require(module: str):
    """Import an optional package of the [onnx] extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"ONNX export and ONNX Runtime need the optional packages onnx, onnxruntime "
                                     f"and onnxscript ({module} is missing): pip install '.[onnx]'") from None


def weights_fingerprint(model) -> str:
    """A short hash of every weight (names, shapes and bytes): tells two models of one shape apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def identity(model, name: str) -> dict[str, str]:
    """The metadata that ties an ONNX file to the model it was exported from."""
    return {"workbench.format": FORMAT, "workbench.model": name,
            "workbench.config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
            "workbench.weights_sha256": weights_fingerprint(model), "workbench.quantization": "float32"}


def _check_exportable(model):
    stored = model.state_dict().values()
    if any(not t.is_floating_point() for t in stored):
        raise InvalidParameterError("ONNX export takes a float model; this one holds packed integer layers. Export "
                                    "the float model and quantize the file with ONNX Runtime (--type INT8)")
    if model.dtype != torch.float32:
        raise InvalidParameterError(f"ONNX export is float32 only (the model is {model.dtype}); load it in float32")


def _has_kernel_seams(model) -> bool:
    from ..model import Attention

    return any(isinstance(m, Attention) and ("rope_fn" in m.__dict__ or "attention_fn" in m.__dict__)
               for m in model.modules())


def _example_inputs(config, batch=2, past=3, new=4):
    # sizes of 0 or 1 would be specialised by torch.export: the example avoids them
    shape = (batch, config.num_key_value_heads, past, config.head_dim)
    past_kv = [torch.zeros(shape) for _ in range(2 * config.num_hidden_layers)]
    return (torch.zeros(batch, new, dtype=torch.long), torch.ones(batch, past + new, dtype=torch.long), *past_kv)


def export_onnx(model, path: str | Path, *, name: str, opset: int = 18, cache: bool = True) -> dict:
    """Write `model` (float32) to `path` as an ONNX file (atomically) with torch's exporter; the
    metadata records `name`, the config and a weights fingerprint. Returns that metadata.

    With `cache`, the file is also kept under the cache root, keyed by the metadata, the opset, the
    exporter's versions and the source of the traced code (`cache_file`): exporting the same weights
    again copies it (the exporter takes about a minute for the bundled model on 2 cores)."""
    require("onnx"), require("onnxscript")
    _check_exportable(model)
    if any(getattr(m, "uses_kernels", False) for m in model.modules()) or _has_kernel_seams(model):
        # our decode kernels branch on the query length, which a graph with dynamic axes must not do:
        # trace a copy on PyTorch's operators (the same weights and maths)
        model = kernels.disable(copy.deepcopy(model))
    meta = identity(model, name)
    cached = cache_file(model, meta, opset) if cache else None
    if cached is not None and cached.is_file():
        with atomic_path(path) as tmp:
            shutil.copyfile(cached, tmp)
        return meta
    config, layers = model.config, model.config.num_hidden_layers
    batch, new, past = (torch.export.Dim(n) for n in ("batch", "sequence", "past_sequence"))
    shapes = {"input_ids": {0: batch, 1: new}, "attention_mask": {0: batch, 1: torch.export.Dim.AUTO},
              "past": tuple({0: batch, 2: past} for _ in range(2 * layers))}
    # the exporter reports its steps on stdout (which `--json` keeps for the result) and warns about
    # axis names it merges: its progress goes to stderr, the warnings away
    with kernels.disabled(), torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(CachedLM(model).eval(), _example_inputs(config), dynamo=True, opset_version=opset,
                                    dynamic_shapes=shapes, input_names=input_names(layers),
                                    output_names=output_names(layers), optimize=True, verbose=False)
    program.model.graph.inputs[1].shape = _mask_shape(program)
    proto = program.model_proto
    _set_metadata(proto, meta)
    data = proto.SerializeToString()
    atomic_write_bytes(path, data)
    if cached is not None:
        atomic_write_bytes(cached, data)
    return meta


def cache_file(model, meta: dict[str, str], opset: int) -> Path:
    """Where the export of `model` is cached: a new key whenever the weights, the config, the name, the
    opset, torch or the ONNX packages, or the source of any traced module (or of this exporter) change."""
    versions = {package: importlib.metadata.version(package) for package in ("torch", "onnx", "onnxscript")}
    digest = hashlib.sha256(json.dumps({"meta": meta, "opset": opset, "versions": versions}, sort_keys=True).encode())
    sources = {inspect.getsourcefile(type(m)) for m in CachedLM(model).modules()} | {__file__, graph.__file__}
    for source in sorted(sources):
        digest.update(Path(source).read_bytes())
    return cache_root() / "onnx" / f"{digest.hexdigest()[:24]}.onnx"


def _mask_shape(program):
    """The attention mask's length axis named after the relation the exporter found for it."""
    import onnx_ir

    mask = program.model.graph.inputs[1].shape
    return onnx_ir.Shape([mask[0], "past_sequence + sequence"])


def _set_metadata(proto, meta: dict[str, str]):
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in meta}
    del proto.metadata_props[:]
    for key, value in {**kept, **meta}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an ONNX file (without loading its weights into memory twice)."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def quantize_int8(source: str | Path, target: str | Path) -> dict:
    """ONNX Runtime's dynamic int8 (`INT8_METHOD`) of an exported file, written atomically, with the
    source's metadata kept (its quantization field says int8-dynamic)."""
    onnx = require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    meta = read_metadata(source)
    with atomic_path(target) as tmp:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=INT8_PER_CHANNEL)
        proto = onnx.load(str(tmp))
        meta = {**meta, "workbench.quantization": "int8-dynamic"}
        _set_metadata(proto, meta)
        Path(tmp).write_bytes(proto.SerializeToString())
    return meta

