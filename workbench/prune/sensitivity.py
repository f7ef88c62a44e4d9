"""Per-layer sensitivity: prune one decoder layer (or one matrix) at a time, measure perplexity.

Distiller's sensitivity analysis, on this model: which layers can lose more weights than others.
Each measurement starts from the unpruned model (the pruned weights are restored afterwards), so
the rows are independent. The result is a long DataFrame (layer, matrix, sparsity, ppl, increase);
`plot_sensitivity` draws it as a heat map.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..corpus import builtin_text, calibration_token_ids
from ..errors import PruningError
from .api import SPECS, parse_spec, prune_
from .masks import DECODER_LINEARS, check_sparsity, decoder_linears


def sensitivity(model, tokenizer, *, sparsities=(0.25, 0.5, 0.75), layers=None, unit: str = "layer",
                method: str = "magnitude", text=None, max_tokens: int = 1024, window: int = 512,
                progress: bool = True, calib=None) -> pd.DataFrame:
    """Perplexity after pruning one unit at a time at each sparsity.

    `layers`: decoder layer indices (default all); `unit`: "layer" (its 7 matrices together) or
    "matrix" (each matrix alone); `method`: an unstructured method of `workbench prune list`
    (magnitude, wanda, sparsegpt...). Perplexity on the first `max_tokens` tokens of `text` (default:
    the built-in evaluation part) in windows of `window`. Columns: layer, matrix ("all" for a whole
    layer), sparsity, ppl, ppl_increase (over the unpruned model's). `calib` (a calibration set spec,
    `workbench.corpus.calibration`) replaces the text: its first `max_tokens` tokens are both what a
    calibrated method reads and what each cut is scored on, so no evaluation text is seen.
    """
    from ..eval import perplexity

    if unit not in ("layer", "matrix"):
        raise PruningError(f"unknown sensitivity unit {unit!r} (accepted: layer, matrix)")
    if parse_spec(f"{method}:0.5").method in ("mlp", "heads"):
        raise PruningError(f"sensitivity prunes one unit at a time with an unstructured method; {method!r} is structured")
    sparsities = [check_sparsity(s) for s in sparsities]
    n_layers = len(model.model.layers)
    layers = list(range(n_layers)) if layers is None else list(layers)
    if any(not isinstance(i, int) or not 0 <= i < n_layers for i in layers):
        raise PruningError(f"layers must be indices in 0..{n_layers - 1}, got {layers}")
    if calib is not None and text is not None:
        raise PruningError("pass text or calib, not both")
    if calib is not None:
        ids = calibration_token_ids(calib, tokenizer, model=model, default_tokens=max_tokens)[:max_tokens]
    else:
        ids = tokenizer.encode(text if text is not None else builtin_text("evaluation"), add_special_tokens=False)
        ids = ids[:max_tokens]
    base = perplexity(model, ids, window=window).ppl
    units = [(i, m) for i in layers for m in (["all"] if unit == "layer" else DECODER_LINEARS)]
    jobs = [(i, m, s) for i, m in units for s in sparsities]
    if progress:
        from tqdm.auto import tqdm

        jobs = tqdm(jobs, desc="sensitivity", unit="run")
    rows = []
    for i, matrix, s in jobs:
        pattern = f"model.layers.{i}.*" if matrix == "all" else f"model.layers.{i}.{matrix}"
        saved = {n: m.weight.detach().clone() for n, m in decoder_linears(model, pattern).items()}
        try:
            prune_(model, f"{method}:{s}", tokenizer=tokenizer, layers=pattern,
                   calibration_text=ids if calib is not None and SPECS[method][1] else None)
            ppl = perplexity(model, ids, window=window).ppl
        finally:
            with torch.no_grad():
                for n, m in decoder_linears(model, pattern).items():
                    m.weight.copy_(saved[n])
        rows.append({"layer": i, "matrix": matrix, "sparsity": s, "ppl": ppl, "ppl_increase": ppl - base})
    return pd.DataFrame(rows)


def plot_sensitivity(frame: pd.DataFrame, ax=None, value: str = "ppl_increase"):
    """Heat map of `value` per unit (rows) and sparsity (columns), on a log colour scale."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    label = frame["layer"].astype(str) + frame["matrix"].map(lambda m: "" if m == "all" else f" {m.split('.')[-1]}")
    grid = frame.assign(unit=label).pivot_table(index="unit", columns="sparsity", values=value, sort=False)
    ax = ax or plt.subplots(figsize=(1.2 * grid.shape[1] + 2, 0.22 * grid.shape[0] + 1.5))[1]
    image = ax.imshow(grid.clip(lower=1e-3).to_numpy(), aspect="auto", cmap="magma_r", norm=LogNorm())
    ax.set_xticks(range(grid.shape[1]), [f"{s:.0%}" for s in grid.columns])
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xlabel("sparsity of the unit")
    ax.set_ylabel("layer" + (" / matrix" if (frame["matrix"] != "all").any() else ""))
    ax.figure.colorbar(image, ax=ax, label=value.replace("_", " "))
    return ax
