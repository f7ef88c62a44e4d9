"""One results file per study: a CSV with one row per cell config, and a JSON beside it with the method
and the machine of every run.

Appends hold an exclusive lock (a `.lock` file beside the CSV), read the file, replace the row of the
same config (or add it) and write the whole file atomically (`workbench.io`): two writers never lose a
row and a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..errors import StudyError
from ..io import atomic_write_json, atomic_write_text

# Columns every row has, first in the file; measures follow in the order they were taken.
KEY_COLUMNS = ["cell_key", "config_hash", "code_version", "status", "error", "model", "teacher", "dtype",
               "prune", "quant", "kv"]


def meta_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".meta.json")


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_results(path) -> pd.DataFrame:
    """The rows of a results file (an empty frame when there is none yet)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=KEY_COLUMNS)
    try:
        return pd.read_csv(path, dtype={"cell_key": str, "config_hash": str, "code_version": str})
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise StudyError(f"results file {str(path)!r} is not a study results CSV: {e}") from None


def append_row(path, row: dict):
    """Add `row` (or replace the row with its `config_hash`), atomically and under the lock."""
    path = Path(path)
    with locked(path):
        frame = read_results(path)
        frame = frame[frame["config_hash"] != row["config_hash"]]
        new = pd.DataFrame([row])
        frame = new if frame.empty else pd.concat([frame, new], ignore_index=True)
        columns = KEY_COLUMNS + [c for c in frame.columns if c not in KEY_COLUMNS]
        atomic_write_text(path, frame.reindex(columns=columns).to_csv(index=False))


def record_run(path, info: dict):
    """Add one run's method and machine to the JSON beside the results (under the same lock)."""
    path = Path(path)
    with locked(path):
        meta_file = meta_path(path)
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"runs": []}
        meta.update({k: v for k, v in info.items() if k != "run"})
        meta["runs"].append(info["run"])
        atomic_write_json(meta_file, meta)


def read_meta(path) -> dict:
    file = meta_path(path)
    return json.loads(file.read_text()) if file.is_file() else {"runs": []}
