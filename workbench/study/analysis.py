"""What a study's rows say: Pareto fronts, filters for the explorer, whether compression composes,
and mixed precision against the uniform specs of the same budget. Pure functions of the DataFrame."""

from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_front(frame: pd.DataFrame, x: str, y: str = "ppl", *, maximize_x: bool = False) -> pd.Series:
    """True for the rows no other row dominates: lower y and lower x (higher x with `maximize_x`), at
    least as good in both and better in one. Rows missing x or y are never on the front."""
    xs = frame[x].to_numpy(dtype=float) * (-1 if maximize_x else 1)
    ys = frame[y].to_numpy(dtype=float)
    valid = ~(np.isnan(xs) | np.isnan(ys))
    front = np.zeros(len(frame), dtype=bool)
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        dominated = (xs[others] <= xs[i]) & (ys[others] <= ys[i]) & ((xs[others] < xs[i]) | (ys[others] < ys[i]))
        front[i] = not dominated.any()
    return pd.Series(front, index=frame.index, name=f"front_{x}")


def sparsity_of(prune: str) -> float:
    if prune in ("none", "", None) or pd.isna(prune):
        return 0.0
    from ..prune.api import parse_spec

    return float(parse_spec(prune).target_sparsity)


def method_of(row) -> str:
    """'float', 'prune', 'quant', 'mixed', 'prune+quant', ... with '+kv8' for int8 keys/values and
    'distill' for a student (a model with a teacher)."""
    parts = []
    if isinstance(row.get("teacher"), str) and row["teacher"]:
        parts.append("distill")
    if row["prune"] != "none":
        parts.append("prune")
    if row["quant"] != "none":
        parts.append("mixed" if str(row["quant"]).startswith("auto:") else "quant")
    label = "+".join(parts) or "float"
    return label + ("+kv8" if row["kv"] == "int8" else "")


def ok_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """The measured rows with the columns the explorer filters on: method, sparsity, label."""
    cells = frame[frame["status"] == "ok"].copy()
    if cells.empty:
        return cells.assign(method=[], sparsity=[], label=[])
    cells["method"] = cells.apply(method_of, axis=1)
    cells["sparsity"] = cells["prune"].map(sparsity_of)
    cells["label"] = cells["prune"].astype(str) + " / " + cells["quant"].astype(str) + " / kv " + cells["kv"].astype(str)
    return cells


def filter_cells(frame: pd.DataFrame, *, methods=None, bits=None, sparsity=None, kv=None, models=None) -> pd.DataFrame:
    """Rows of `ok_cells(frame)` whose method is in `methods`, bits_per_weight in the closed range
    `bits`, sparsity in the closed range `sparsity`, KV dtype in `kv`, model in `models` (None: any)."""
    cells = ok_cells(frame)
    keep = pd.Series(True, index=cells.index)
    if methods is not None:
        keep &= cells["method"].isin(list(methods))
    if kv is not None:
        keep &= cells["kv"].isin(list(kv))
    if models is not None:
        keep &= cells["model"].isin(list(models))
    for column, span in (("bits_per_weight", bits), ("sparsity", sparsity)):
        if span is not None:
            keep &= cells[column].between(span[0], span[1])
    return cells[keep]


def composition(frame: pd.DataFrame, y: str = "ppl") -> pd.DataFrame:
    """Does compression compose? For every combined cell (prune+quant on one model, or a student with
    quant), the relative increases of the single methods over the same base predict the combined one
    additively: predicted = base x (1 + d_a + d_b). gap = measured / predicted - 1 (> 0: worse than
    the single methods promise). Bases and singles share the combined cell's dtype and KV dtype."""
    cells = ok_cells(frame)
    rows = []

    def find(model, prune, quant, dtype, kv):
        hit = cells[(cells["model"] == model) & (cells["prune"] == prune) & (cells["quant"] == quant)
                    & (cells["dtype"] == dtype) & (cells["kv"] == kv)]
        return None if hit.empty else float(hit[y].iloc[0])

    for r in cells.itertuples():
        teacher = r.teacher if isinstance(r.teacher, str) and r.teacher else None
        if r.quant == "none" or (r.prune == "none" and teacher is None) or (r.prune != "none" and teacher):
            continue
        if teacher:  # distill + quant: base = teacher float, a = student float, b = teacher quantized
            kind, base, a, b = ("distill+quant", find(teacher, "none", "none", r.dtype, r.kv),
                                find(r.model, "none", "none", r.dtype, r.kv), find(teacher, "none", r.quant, r.dtype, r.kv))
        else:
            kind, base, a, b = ("prune+quant", find(r.model, "none", "none", r.dtype, r.kv),
                                find(r.model, r.prune, "none", r.dtype, r.kv), find(r.model, "none", r.quant, r.dtype, r.kv))
        if None in (base, a, b):
            continue
        measured = getattr(r, y)
        predicted = base * (1 + (a / base - 1) + (b / base - 1))
        rows.append({"kind": kind, "model": r.model, "prune": r.prune, "quant": r.quant, "kv": r.kv,
                     f"{y}_base": base, f"{y}_first": a, f"{y}_quant_only": b, f"{y}_predicted": predicted,
                     f"{y}_measured": measured, "gap": measured / predicted - 1})
    return pd.DataFrame(rows)


def mixed_vs_uniform(frame: pd.DataFrame, y: str = "ppl") -> pd.DataFrame:
    """Each auto:BYTES cell against the best uniform quant spec that fits its budget (same model,
    prune, dtype and KV dtype): `mixed_wins` when its y is no worse."""
    cells = ok_cells(frame)
    rows = []
    for r in cells[cells["quant"].astype(str).str.startswith("auto:")].itertuples():
        peers = cells[(cells["model"] == r.model) & (cells["prune"] == r.prune) & (cells["dtype"] == r.dtype)
                      & (cells["kv"] == r.kv) & ~cells["quant"].astype(str).str.startswith("auto:")
                      & (cells["weight_bytes"] <= r.budget_bytes)]
        best = peers.loc[peers[y].idxmin()] if not peers.empty else None
        rows.append({"model": r.model, "prune": r.prune, "kv": r.kv, "budget_bytes": int(r.budget_bytes),
                     "mixed_bytes": int(r.weight_bytes), f"mixed_{y}": getattr(r, y),
                     "best_uniform": None if best is None else best["quant"],
                     "uniform_bytes": None if best is None else int(best["weight_bytes"]),
                     f"uniform_{y}": None if best is None else float(best[y]),
                     "mixed_wins": None if best is None else bool(getattr(r, y) <= best[y])})
    return pd.DataFrame(rows)
