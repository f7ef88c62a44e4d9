"""`workbench study report`: a markdown report with PNG plots of a results file; `list`: its cells."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import StudyError
from ..io import atomic_write_bytes, atomic_write_text
from .analysis import composition, mixed_vs_uniform, ok_cells, pareto_front
from .results import read_meta, read_results

MEASURE_PREFIXES = ("ppl", "decode_tok_s_b", "prefill_tok_s_b")


def table_columns(frame: pd.DataFrame) -> list[str]:
    """Specs, bytes, every perplexity and speed column the cells have, peak RSS."""
    measures = [c for c in frame.columns if c.startswith(MEASURE_PREFIXES) and frame[c].notna().any()]
    return [c for c in ["model", "prune", "quant", "kv", "weight_bytes", "bits_per_weight"] if c in frame] + \
        measures + (["peak_rss_mb"] if "peak_rss_mb" in frame else [])


def speed_column(cells: pd.DataFrame) -> str | None:
    """The batch-1 decode column when measured, else the smallest batch's, else None."""
    columns = sorted((c for c in cells.columns if c.startswith("decode_tok_s_b") and cells[c].notna().any()),
                     key=lambda c: int(c.removeprefix("decode_tok_s_b")))
    return columns[0] if columns else None


def plot_front(cells: pd.DataFrame, x: str, *, maximize_x: bool = False, ax=None, title: str | None = None):
    """Every cell in grey, the non-dominated ones in colour, joined and labelled."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.2))
    data = cells.dropna(subset=[x, "ppl"])
    front = data[pareto_front(data, x, "ppl", maximize_x=maximize_x)].sort_values(x)
    scale = 1e6 if x == "weight_bytes" else 1
    ax.scatter(data[x] / scale, data["ppl"], color="0.75", s=22, label="all cells")
    ax.plot(front[x] / scale, front["ppl"], "o-", color="C3", label="Pareto front")
    for r in front.itertuples():
        ax.annotate(r.label, (getattr(r, x) / scale, r.ppl), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="weight MB" if x == "weight_bytes" else x.replace("_", " "), ylabel="perplexity",
           title=title or f"perplexity vs {x}")
    ax.legend(fontsize=8)
    return ax


def _save(fig, path: Path):
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame.empty:
        return "(none)\n"
    text = frame.copy()
    for c in text.columns:
        if pd.api.types.is_float_dtype(text[c]):
            text[c] = text[c].map(lambda v: "" if pd.isna(v) else f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:,.0f}")
    header = "| " + " | ".join(map(str, text.columns)) + " |\n|" + "---|" * len(text.columns) + "\n"
    return header + "".join("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |\n"
                            for row in text.itertuples(index=False))


def write_report(results_path, out_dir=None) -> Path:
    """report.md and its PNGs in `out_dir` (default: `<results>.report/` beside the results file)."""
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    results_path = Path(results_path)
    frame = read_results(results_path)
    if frame.empty:
        raise StudyError(f"no results in {str(results_path)!r}: run `workbench study run STUDY.yaml` first")
    out = Path(out_dir) if out_dir else results_path.with_name(results_path.stem + ".report")
    meta = read_meta(results_path)
    cells = ok_cells(frame)
    failed = frame[frame["status"] != "ok"]
    runs = meta.get("runs", [])
    lines = [f"# Study {meta.get('study', results_path.stem)}", "",
             f"{len(cells)} cells measured, {len(failed)} failed; results `{results_path.name}`, code version(s) "
             f"{', '.join(sorted(set(frame['code_version'].dropna())))}.", ""]
    if runs:
        last = runs[-1]
        lines += [f"Last run: `{last.get('command', '')}` on {last.get('date')}, {last.get('cpu')}, torch "
                  f"{last.get('torch')}, {last.get('threads')} threads, load average at start "
                  f"{last.get('loadavg_start')}, executor {last.get('executor')}.", ""]
    lines += ["## Method", "", meta.get("method", ""), ""]
    speed = speed_column(cells)
    plots = [("front_bytes.png", "weight_bytes", False, "perplexity vs weight bytes")]
    if speed:
        plots.append(("front_speed.png", speed, True, f"perplexity vs {speed.replace('_', ' ')}"))
    for name, x, maximize, title in plots:
        if cells.empty or cells[x].isna().all() or "ppl" not in cells or cells["ppl"].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        plot_front(cells, x, maximize_x=maximize, ax=ax, title=title)
        _save(fig, out / name)
        plt.close(fig)
        front = cells[pareto_front(cells, x, "ppl", maximize_x=maximize)].sort_values(x)
        lines += [f"## Pareto front: {title}", "", f"![{title}]({name})", "",
                  _markdown(front[table_columns(front)].reset_index(drop=True)), ""]
    lines += ["## Every cell", "", _markdown(cells[table_columns(cells)].reset_index(drop=True)), ""]
    mixed = mixed_vs_uniform(frame) if "ppl" in cells and "budget_bytes" in cells else pd.DataFrame()
    if not mixed.empty:
        lines += ["## Mixed precision against uniform specs of the same budget", "", _markdown(mixed), ""]
    composed = composition(frame) if "ppl" in cells else pd.DataFrame()
    if not composed.empty:
        lines += ["## Does compression compose?", "",
                  "predicted = base x (1 + increase of the first method + increase of quantization alone); "
                  "gap = measured / predicted - 1.", "", _markdown(composed, 4), ""]
    if not failed.empty:
        lines += ["## Failed cells", "", _markdown(failed[["model", "prune", "quant", "kv", "error"]]), ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"


def list_cells(results_path) -> pd.DataFrame:
    """One line per cell: its key, status, specs and the main measures."""
    frame = read_results(results_path)
    columns = ["cell_key", "status"] + table_columns(frame) + ["error"]
    return frame[columns]
