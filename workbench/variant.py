"""A model variant from its spec: a checkpoint, then pruning, then quantization, then our kernels.

The one place that turns `--model --prune --quant --dtype --device --kernels` into a model, for the
command line, the server it starts, and the study runner. Pruning comes before quantization: it reads
float weights, and the int8/int4 layers keep its zeros. Calibrated specs read the calibration set
`calib` names (`workbench.corpus.calibration`; default: the built-in corpus's calibration part).
"""

from __future__ import annotations

from . import kernels as cpu_kernels
from .checkpoints import load_model
from .prune import prune_
from .quant import quantize_


def compress_(model, tokenizer, *, prune: str | None = None, quant: str | None = None, kernels: bool = False,
              calib=None):
    """Prune, then quantize `model` in place; with `kernels`, the new layers go onto our kernels too."""
    if prune:
        prune_(model, prune, tokenizer=tokenizer, calib=calib)
    if quant:
        quantize_(model, quant, tokenizer=tokenizer, calib=calib)
    if kernels and (prune or quant):
        cpu_kernels.enable(model)  # the new layers' weights: kernels and huge pages too
    return model


def load_variant(name_or_path, *, dtype="float32", device="cpu", prune: str | None = None, quant: str | None = None,
                 kernels: bool = True, calib=None):
    """(model, tokenizer) of `name_or_path` after `prune` and `quant` (specs as the CLI takes them)."""
    model, tokenizer = load_model(name_or_path, dtype=dtype, device=device, kernels=kernels)
    return compress_(model, tokenizer, prune=prune, quant=quant, kernels=kernels, calib=calib), tokenizer
