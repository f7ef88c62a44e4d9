"""Safe file writes: a reader (or an interrupted run) never sees half a file, and writers never lose rows.

- `atomic_write_bytes/text/json`: write a uniquely named temporary file beside the target, fsync it,
  rename it over the target, fsync the directory (so the rename survives a crash). The file gets the
  mode a plain `open(..., "w")` would give (0666 minus the umask), not mkstemp's 0600.
- `locked(path)`: an exclusive advisory lock (a `path.lock` file, `flock`) for read-modify-write
  updates that several processes may run at once.
- `append_csv_row`: one row added to a CSV under that lock, columns the union of old and new.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: str | Path):
    """Make a rename or a new file in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a unique temporary path beside `path`; on success it replaces `path` atomically.

    For writers that want a file name rather than bytes (e.g. a library that writes the file itself).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def locked(path: str | Path):
    """Hold an exclusive lock on `path.lock` (created if absent) for the duration of the block."""
    import fcntl

    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def append_csv_row(path: str | Path, row: dict):
    """Add one row to a CSV: locked against other writers, written atomically, columns the union of
    the file's and the row's (missing values empty)."""
    import pandas as pd

    path = Path(path)
    with locked(path):
        frame = pd.DataFrame([row])
        if path.is_file() and path.stat().st_size > 0:
            frame = pd.concat([pd.read_csv(path), frame], ignore_index=True)
        atomic_write_text(path, frame.to_csv(index=False))
