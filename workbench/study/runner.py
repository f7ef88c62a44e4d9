"""Run a study: skip the cells already measured by this code, measure the rest, append each row as it
comes. Executors: "local" (cells one after another in this process) or "ray" (each cell a Ray task)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..bench.timing import run_info
from ..errors import StudyError
from . import results as store
from .measure import METHOD, measure_cell
from .spec import Study, cell_key, cell_label, code_version, config_hash, load_study

EXECUTORS = ("local", "ray")
SPEED_RESOURCE = "workbench_speed"  # 1 per node: speed cells never share a node with each other


def error_text(e: BaseException) -> str:
    """One line: the exception's type and its first line, as the results file records it."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:500]


def run_study(study, results_path, *, executor: str = "local", force: bool = False, progress: bool = True,
              num_cpus: int | None = None, ray_address: str | None = None, on_row=None) -> dict:
    """Measure every cell of `study` (a `Study`, dict or YAML path) not yet in `results_path` for this
    code version (all of them with `force`). A cell that raises records its error and the study goes
    on. `on_row(row)` is called after each row is written. Returns counts: cells, skipped, measured, failed."""
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise StudyError(f"unknown executor {executor!r} (accepted: {', '.join(EXECUTORS)})")
    study = study if isinstance(study, Study) else load_study(study)
    results_path = Path(results_path)
    version = code_version()
    existing = store.read_results(results_path)
    others = sorted(set(existing["code_version"].dropna()) - {version})
    if others and not force:
        raise StudyError(f"{results_path} holds rows of code version {', '.join(others)}, not this one ({version}); "
                         "rerun with --force to measure again (rows of the same cell are replaced)")
    done = set(existing.loc[existing["status"] == "ok", "cell_key"])
    cells = study.cells()
    todo = [c for c in cells if force or cell_key(c, version) not in done]
    store.record_run(results_path, {"study": study.name, "method": METHOD, "settings": study.settings,
                                    "run": {**run_info(), "executor": executor, "code_version": version,
                                            "cells": len(cells), "to_measure": len(todo)}})
    counts = {"cells": len(cells), "skipped": len(cells) - len(todo), "measured": 0, "failed": 0}
    cache_dir = results_path.parent / (results_path.stem + ".cache")
    runner = _local(todo, cache_dir, progress) if executor == "local" else \
        _ray(todo, cache_dir, num_cpus, ray_address)
    bar = tqdm(total=len(todo), desc=f"study {study.name}", disable=not progress)
    for cell, measured, error in runner:
        row = cell_row(cell, version, measured, error)
        store.append_row(results_path, row)
        counts["measured" if error is None else "failed"] += 1
        bar.update()
        bar.set_postfix_str(cell_label(cell) + ("" if error is None else " FAILED"))
        if on_row is not None:
            on_row(row)
    bar.close()
    return counts


def cell_row(cell: dict, version: str, measured: dict | None, error: str | None) -> dict:
    row = {"cell_key": cell_key(cell, version), "config_hash": config_hash(cell), "code_version": version,
           "status": "ok" if error is None else "error", "error": error, "model": cell["model"],
           "teacher": cell.get("teacher"), "dtype": cell["dtype"], "prune": cell["prune"], "quant": cell["quant"],
           "kv": cell["kv"]}
    row.update(measured or {})
    row["config"] = json.dumps(cell, sort_keys=True)
    return row


def _local(cells, cache_dir, progress):
    for cell in cells:
        try:
            yield cell, measure_cell(cell, cache_dir=cache_dir, progress=progress), None
        except Exception as e:  # the cell's failure is its result; the study goes on
            yield cell, None, error_text(e)


def _measure_remote(cell, cache_dir, num_cpus):
    import torch

    if not cell.get("threads"):
        torch.set_num_threads(num_cpus)  # the task's CPUs, not the whole node's
    try:
        return measure_cell(cell, cache_dir=cache_dir), None
    except Exception as e:
        return None, error_text(e)


def _ray(cells, cache_dir, num_cpus, address):
    try:
        import ray
    except ImportError:
        raise StudyError("--executor ray needs Ray: pip install '.[ray]'") from None
    address = address or os.environ.get("RAY_ADDRESS")
    num_cpus = num_cpus or 1
    started = not ray.is_initialized()
    if started:
        try:
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a local instance: one speed slot for this machine
                ray.init(resources={SPEED_RESOURCE: 1}, include_dashboard=False, log_to_driver=False)
        except Exception as e:
            raise StudyError(f"cannot reach the Ray cluster at {address or 'a new local instance'}: "
                             f"{error_text(e)}") from None
    try:
        speed = [c for c in cells if "speed" in c["measures"]]
        if speed and ray.cluster_resources().get(SPEED_RESOURCE, 0) < 1:
            raise StudyError(f"the Ray cluster has no {SPEED_RESOURCE!r} resource for speed cells: start each node "
                             f"with `ray start --resources '{{\"{SPEED_RESOURCE}\": 1}}'`")
        task = ray.remote(_measure_remote)
        pending = {}
        for cell in cells:
            resources = {SPEED_RESOURCE: 1} if cell in speed else {}
            ref = task.options(num_cpus=num_cpus, resources=resources).remote(cell, str(cache_dir), num_cpus)
            pending[ref] = cell
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                measured, error = ray.get(ref)
            except Exception as e:  # the task itself died (worker crash, out of memory)
                measured, error = None, error_text(e)
            yield cell, measured, error
    finally:
        if started:
            ray.shutdown()
