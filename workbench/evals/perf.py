"""`evalscope perf` (its Python API, `run_perf_benchmark`) against one server, one run per concurrency,
read back into one tidy DataFrame and checked against the server's own /metrics counters.

Each finished run leaves `row.json` (written atomically) in its directory: `resume=True` reads it
back instead of running again, so an interrupted sweep keeps what it finished.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import InvalidParameterError
from ..io import atomic_write_json
from .keys import (PERCENTILE_LABEL, PERCENTILES, PERF_PERCENTILE, PERF_SUMMARY, EvalscopeOutputError, read_key,
                   read_keys)
from .offline import offline, quiet, run_isolated
from .server import Server, scrape_metrics

GENERATION_TOKENS = "workbench:generation_tokens_total"
PROMPT_TOKENS = "workbench:prompt_tokens_total"


def tokenizer_dir(model: str, root: Path) -> Path:
    """The model's tokenizer as a Hugging Face directory (what evalscope's `random` dataset loads)."""
    from ..checkpoints import load_tokenizer

    out = root / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        load_tokenizer(model).save(out)
    return out


def _perf_args(server: Server, parallel: int, number: int, run_dir: Path, dataset: str, dataset_path,
               tokenizer_path, prompt_tokens: int, max_tokens: int) -> dict:
    args = dict(model=server.model, url=server.url + "/v1/chat/completions", api="openai", api_key=server.api_key,
                number=[number], parallel=[parallel], max_tokens=max_tokens, min_tokens=max_tokens,
                temperature=0.0, stream=True, outputs_dir=str(run_dir.parent), name=run_dir.name,
                no_timestamp=True, sleep_interval=0, no_test_connection=True, dataset=dataset,
                extra_args={"ignore_eos": True})
    if dataset == "random":
        args.update(tokenizer_path=str(tokenizer_path), min_prompt_length=prompt_tokens,
                    max_prompt_length=prompt_tokens)
    else:
        args.update(dataset_path=str(dataset_path))
    return args


def read_perf_run(result_dir: Path) -> dict:
    """One run's benchmark_summary.json and benchmark_percentile.json as one flat row."""
    summary_file, pct_file = result_dir / "benchmark_summary.json", result_dir / "benchmark_percentile.json"
    for f in (summary_file, pct_file):
        if not f.is_file():
            raise EvalscopeOutputError(f"{f}: evalscope wrote no such file (see {result_dir.parent}/console.log)")
    row = read_keys(json.loads(summary_file.read_text()), PERF_SUMMARY, str(summary_file))
    by_label = {read_key(r, PERCENTILE_LABEL, str(pct_file)): r for r in json.loads(pct_file.read_text())}
    for ours, label in PERCENTILES.items():
        if label not in by_label:
            raise EvalscopeOutputError(f"{pct_file}: no {PERCENTILE_LABEL} row {label!r} (has: {', '.join(by_label)})")
        for col, key in PERF_PERCENTILE.items():
            row[f"{col}_{ours}"] = read_key(by_label[label], key, f"{pct_file} row {label}")
    return row


def perf_run(server: Server, parallel: int, number: int, out_dir, *, dataset: str = "random", dataset_path=None,
             prompt_tokens: int = 64, max_tokens: int = 32, resume: bool = False) -> dict:
    """One `evalscope perf` run at `parallel` concurrent streams, `number` requests of exactly `max_tokens`."""
    from evalscope.perf.main import run_perf_benchmark

    run_dir = Path(out_dir) / f"parallel_{parallel}_number_{number}"
    done = run_dir / "row.json"
    if resume and done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():  # an unfinished run: evalscope refuses an existing database
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    tok = tokenizer_dir(server.variant.model if server.variant else "smollm2-135m", Path(out_dir)) \
        if dataset == "random" else None
    before = scrape_metrics(server)
    args = _perf_args(server, parallel, number, run_dir / "evalscope", dataset, dataset_path, tok, prompt_tokens,
                      max_tokens)
    with offline(), quiet(run_dir / "console.log"):
        try:
            run_isolated(run_perf_benchmark, args, log_path=run_dir / "console.log")
        except Exception as e:  # evalscope's own failure: one line, the details are in console.log
            raise EvalscopeOutputError(f"evalscope perf failed at parallel {parallel}: {type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''} (see {run_dir}/console.log)") from None
    after = scrape_metrics(server)
    row = {"variant": server.label, "server": server.kind, "model": server.model, "dataset": dataset,
           "max_tokens": max_tokens, **read_perf_run(run_dir / "evalscope" / f"parallel_{parallel}_number_{number}")}
    row["output_tokens"] = round(row["avg_output_tokens"] * row["succeeded"])
    if GENERATION_TOKENS in after:  # our server: its counters must tell the same story
        row["server_generation_tokens"] = round(after[GENERATION_TOKENS] - before.get(GENERATION_TOKENS, 0))
        row["server_prompt_tokens"] = round(after[PROMPT_TOKENS] - before.get(PROMPT_TOKENS, 0))
        row["tokens_match_server"] = row["output_tokens"] == row["server_generation_tokens"]
    atomic_write_json(done, row)
    return row


def perf_sweep(server: Server, parallel=(1, 2, 4, 8), number: int = 8, out_dir="evalscope_perf", **options):
    """`perf_run` at each concurrency in turn; a DataFrame with one row per run."""
    import pandas as pd

    if not parallel or min(parallel) < 1 or number < 1:
        raise InvalidParameterError(f"--parallel values and --number must be >= 1, got {list(parallel)} and {number}")
    if options.get("dataset", "random") not in ("random", "line_by_line"):
        raise InvalidParameterError(f"perf dataset must be random or line_by_line, got {options['dataset']!r}")
    if options.get("dataset") == "line_by_line":
        path = Path(options.get("dataset_path") or "")
        if not path.is_file():
            raise InvalidParameterError(f"line_by_line needs --dataset-path, a file of prompts: {path} is not a file")
    return pd.DataFrame([perf_run(server, p, number, out_dir, **options) for p in parallel])
