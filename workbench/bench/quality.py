"""Perplexity and bytes of one model under many quantization specs: the quality half of the study.

Method: the float model is left untouched; each spec quantizes a deep copy with `quantize_`
(calibrated specs read the first `calibration_tokens` tokens of the built-in calibration part,
default 2,048), then `perplexity` scores the first `eval_tokens` tokens of the evaluation text in
non-overlapping windows of `window`. `weight_bytes` counts every stored tensor (packed integers,
scales, zero-points, norms; the tied embedding/head once). The rows "float32" and "bfloat16" are the
unquantized model in those dtypes.

With `decode_chunks` (e.g. (16, 1)), every spec runs on our kernels (`kernels.enable`, as the CLI
and the server run it), whole windows included, and is also scored through the decode path: the
same windows fed through a KV cache that many tokens at a time (with 1, one token per step through
the native decode stack), as generation computes them; `ppl_chunkN` and `chunkN_vs_window` (its
relative difference from the whole-window figure) say whether splitting the text moves the score.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from .. import kernels
from ..corpus import builtin_text
from ..settings import now
from ..eval import perplexity, weight_only_perplexity

METHOD = __doc__


def quantized_copy(model, spec: str, tokenizer, calibration_tokens: int | None = None):
    """A quantized deep copy of `model` ("float32"/"bfloat16" give plain dtype copies)."""
    from ..quant import config_from_spec, quantize_

    if spec in ("float32", "bfloat16"):
        return copy.deepcopy(model).to(getattr(torch, spec))
    config = config_from_spec(spec)
    if calibration_tokens is not None and hasattr(config, "calibration_tokens"):
        config = dataclasses.replace(config, calibration_tokens=calibration_tokens)
    return quantize_(copy.deepcopy(model), config, tokenizer=tokenizer)


def quantization_table(model, tokenizer, specs, *, eval_tokens: int = 4096, window: int = 1024,
                       calibration_tokens: int | None = None, text: str | None = None, on_row=None,
                       progress: bool = True, decode_chunks: tuple[int, ...] = ()):
    """A DataFrame with one row per spec: spec, ppl, ppl_vs_float32, weight_bytes, bits_per_weight
    (stored bits over the model's parameter count), quantize_s. `on_row(rows)` is called after each
    spec (to save partial results); `text` replaces the built-in evaluation part; `decode_chunks`
    adds the decode-path columns (see the module's docstring)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..quant import SPECS

    ids = tokenizer.encode(text or builtin_text("evaluation"), add_special_tokens=False)[:eval_tokens]
    params = model.num_parameters()
    reference = perplexity(model, ids, window=window).ppl
    rows = []
    for spec in tqdm(list(specs), desc="quantize + perplexity", disable=not progress):
        start = now()
        # float32 is the reference itself: no copy, no second perplexity run
        quantized = model if spec == "float32" and model.dtype == torch.float32 and not decode_chunks else \
            quantized_copy(model, spec, tokenizer, calibration_tokens)
        quantize_s = now() - start
        if decode_chunks:
            kernels.enable(quantized)
        # the table's figure: weights alone (float activations); with decode_chunks, the kernels' arithmetic
        score = perplexity if decode_chunks else weight_only_perplexity
        ppl = reference if spec == "float32" and not decode_chunks else score(quantized, ids, window=window).ppl
        rows.append({"spec": spec, "ppl": ppl, "ppl_vs_float32": ppl / reference - 1,
                     "weight_bytes": quantized.weight_bytes(),
                     "bits_per_weight": quantized.weight_bytes() * 8 / params, "quantize_s": quantize_s,
                     "description": SPECS[spec][1] if spec in SPECS else f"unquantized, {spec}"})
        for chunk in decode_chunks:
            decoded = perplexity(quantized, ids, window=window, chunk_tokens=chunk).ppl
            rows[-1].update({f"ppl_chunk{chunk}": decoded, f"chunk{chunk}_vs_window": decoded / ppl - 1})
        del quantized
        if on_row is not None:
            on_row(rows)
    return pd.DataFrame(rows)
