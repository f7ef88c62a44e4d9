"""Mixed precision from sensitivity: bits per matrix under a byte budget (`--quant auto:BYTES`).

Method:
1. Scan: for every linear matrix alone, quantize it to the smallest tier (default int4-g32), score
   perplexity on the first `tokens` tokens of the built-in evaluation text, and put it back. Its
   sensitivity is the perplexity increase over the unquantized model (negative noise clipped to 0).
2. Other tiers are estimated, not scanned: a tier's loss = the scanned loss x (that tier's squared
   weight error / the smallest tier's), i.e. the loss is taken to grow with the rounding noise a
   matrix receives; float (the model's dtype) loses nothing. Costs are each layer's stored bytes.
3. Allocate greedily: start with every matrix at the smallest tier, then repeatedly take the upgrade
   (to any higher tier) with the largest loss reduction per added byte that still fits the budget.
   The budget counts every weight the model stores (norms and a tied embedding included).
Losses are assumed additive over matrices; the study's cells measure whether the plan pays.
`unit="block"` scans and allocates per attention or MLP block of a layer (its matrices share a tier)
instead of per matrix: about a third of the forward passes, for machines where the scan is too slow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ..errors import StudyError
from ..eval import weight_only_perplexity as perplexity
from ..corpus import builtin_text, calibration_token_ids
from ..io import atomic_write_text
from ..model import weight_bytes

FLOAT = "float"
UNITS = ("matrix", "block")


def unit_of(name: str, unit: str) -> str:
    """The scan unit a matrix belongs to: itself, or its layer's attention / MLP block."""
    return name if unit == "matrix" else name.rsplit(".", 1)[0] if ".layers." in name else name


def tier_configs(tiers) -> dict:
    """tier name -> quant config (None for float); calibrated specs cannot be tiers (one matrix at a time)."""
    from ..quant import config_from_spec

    configs = {}
    for tier in tiers:
        config = None if tier == FLOAT else config_from_spec(tier)
        if getattr(config, "needs_calibration", False):
            raise StudyError(f"mixed-precision tier {tier!r} is calibrated; tiers are round-to-nearest specs")
        configs[tier] = config
    return configs


def linear_layers(model) -> dict[str, tuple[nn.Module, str, nn.Linear]]:
    """name -> (parent, attribute, layer) for every float linear matrix, the output head included."""
    found = {}
    for parent_name, parent in model.named_modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found[f"{parent_name}.{attr}" if parent_name else attr] = (parent, attr, child)
    return found


@torch.inference_mode()
def sensitivity_scan(model, tokenizer, *, tiers=("int4-g32", "int8", FLOAT), tokens: int = 512,
                     window: int = 256, unit: str = "matrix", matrices=None, progress: bool = False,
                     calib=None) -> pd.DataFrame:
    """One row per unit (`matrix`: its name; a block's name with `unit="block"`; `members`: its
    matrices): parameters, bytes and estimated loss per tier (`bytes_<tier>`, `loss_<tier>`), and the
    scanned `ppl` with that unit alone at the smallest tier. `matrices` limits the scan to those names.
    `calib` (a calibration set spec, `workbench.corpus.calibration`) scores on its first `tokens`
    tokens instead of the built-in evaluation text, so the plan is chosen without seeing evaluation text."""
    from tqdm.auto import tqdm

    if unit not in UNITS:
        raise StudyError(f"unknown sensitivity unit {unit!r} (accepted: {', '.join(UNITS)})")
    configs = tier_configs(tiers)
    lowest = tiers[0]
    if calib is not None:
        ids = calibration_token_ids(calib, tokenizer, model=model, default_tokens=tokens)[:tokens]
    else:
        ids = tokenizer.encode(builtin_text("evaluation"), add_special_tokens=False)[:tokens]
    base = perplexity(model, ids, window=window).ppl
    layers = linear_layers(model)
    units: dict[str, list[str]] = {}
    for name in layers:
        if matrices is None or name in matrices:
            units.setdefault(unit_of(name, unit), []).append(name)
    rows = []
    for name, members in tqdm(units.items(), desc="sensitivity scan", disable=not progress, leave=False):
        row = {"matrix": name, "members": ";".join(members), "ppl_base": base,
               "parameters": sum(layers[m][2].weight.numel() for m in members)}
        errors = {}
        for tier, config in configs.items():
            row[f"bytes_{tier}"], errors[tier], swapped = 0, 0.0, []
            for m in members:
                parent, attr, layer = layers[m]
                if config is None:
                    row[f"bytes_{tier}"] += weight_bytes(layer)
                    continue
                quantized = config.make(layer.weight.detach())
                row[f"bytes_{tier}"] += weight_bytes(quantized)
                errors[tier] += float((quantized.dequantized_weight() - layer.weight.detach().float()).pow(2).sum())
                swapped.append((parent, attr, quantized))
            if tier == lowest:
                for parent, attr, quantized in swapped:
                    setattr(parent, attr, quantized)
                try:
                    row["ppl"] = perplexity(model, ids, window=window).ppl
                finally:
                    for m in members:
                        parent, attr, layer = layers[m]
                        setattr(parent, attr, layer)
        loss = max(row["ppl"] - base, 0.0)
        for tier in configs:
            row[f"loss_{tier}"] = loss * errors[tier] / errors[lowest] if errors[lowest] > 0 else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def allocate(scan: pd.DataFrame, tiers, budget_bytes: int, fixed_bytes: int = 0) -> dict[str, str]:
    """matrix -> tier minimising the summed loss with fixed_bytes + summed bytes <= budget (greedy)."""
    tiers = list(tiers)
    cost = {r.matrix: [getattr(r, f"bytes_{t}") for t in tiers] for r in scan.itertuples()}
    loss = {r.matrix: [getattr(r, f"loss_{t}") for t in tiers] for r in scan.itertuples()}
    level = {m: 0 for m in cost}
    used = fixed_bytes + sum(c[0] for c in cost.values())
    if used > budget_bytes:
        raise StudyError(f"byte budget {budget_bytes:,} is below the smallest mix ({used:,} bytes: every matrix "
                         f"at {tiers[0]})")
    while True:
        best = None
        for m, lv in level.items():
            for up in range(lv + 1, len(tiers)):
                extra = cost[m][up] - cost[m][lv]
                gain = loss[m][lv] - loss[m][up]
                if used + extra > budget_bytes or gain <= 0:
                    continue
                ratio = gain / max(extra, 1)
                if best is None or ratio > best[0]:
                    best = (ratio, m, up, extra)
        if best is None:
            return {m: tiers[lv] for m, lv in level.items()}
        _, m, up, extra = best
        level[m], used = up, used + extra


def plan_bytes(scan: pd.DataFrame, plan: dict, fixed_bytes: int = 0) -> int:
    return fixed_bytes + int(sum(scan.set_index("matrix").loc[m, f"bytes_{t}"] for m, t in plan.items()))


def expand(scan: pd.DataFrame, plan: dict[str, str]) -> dict[str, str]:
    """A per-unit plan as a per-matrix one (a block's matrices take its tier)."""
    members = dict(zip(scan["matrix"], scan["members"]))
    return {m: tier for unit, tier in plan.items() for m in members[unit].split(";")}


def fixed_bytes(model) -> int:
    """Bytes the plan does not choose: everything but the linear matrices (norms; a tied embedding
    shares the head's tensor, which the head's tier already counts)."""
    return model.weight_bytes() - sum(weight_bytes(layer) for _, _, layer in linear_layers(model).values())


def apply_plan(model, plan: dict[str, str]):
    """Quantize each matrix to its tier in place (float tiers stay); with tied embeddings and a
    quantized head, the embedding reads the quantized head, as `quantize_` does. Returns the model."""
    from ..quant.linear import QuantizedEmbedding, QuantizedLinear

    configs = tier_configs(set(plan.values()))
    layers = linear_layers(model)
    unknown = sorted(set(plan) - set(layers))
    if unknown:
        raise StudyError(f"plan names matrices the model does not have: {', '.join(unknown[:3])}")
    for name, tier in plan.items():
        if configs[tier] is not None:
            parent, attr, layer = layers[name]
            setattr(parent, attr, configs[tier].make(layer.weight.detach()).to(layer.weight.device))
    if model.config.tie_word_embeddings and isinstance(model.lm_head, QuantizedLinear):
        model.model.embed_tokens = QuantizedEmbedding(model.lm_head)
    model.quant_spec = "mixed"
    return model


def cached_scan(model, tokenizer, settings: dict, cache_dir: Path | None, key: dict, progress: bool = False):
    """`sensitivity_scan`, read from `cache_dir` when the same model/settings/code were scanned before."""
    digest = hashlib.sha256(json.dumps({**key, **settings}, sort_keys=True).encode()).hexdigest()[:16]
    file = Path(cache_dir) / f"sensitivity-{digest}.csv" if cache_dir else None
    if file is not None and file.is_file():
        return pd.read_csv(file)
    scan = sensitivity_scan(model, tokenizer, tiers=settings["tiers"], tokens=settings["tokens"],
                            window=settings["window"], unit=settings.get("unit", "matrix"), progress=progress,
                            calib=settings.get("calib"))
    if file is not None:
        atomic_write_text(file, scan.to_csv(index=False))
    return scan


def quantize_auto_(model, tokenizer, budget_bytes: int, settings: dict, cache_dir=None, key=None,
                   progress: bool = False) -> dict:
    """Scan (or read the cached scan), allocate under `budget_bytes` and apply: returns the plan."""
    scan = cached_scan(model, tokenizer, settings, cache_dir, key or {}, progress)
    fixed = fixed_bytes(model)
    plan = expand(scan, allocate(scan, settings["tiers"], budget_bytes, fixed))
    apply_plan(model, plan)
    return plan
