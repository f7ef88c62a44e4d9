"""Dequantized-weight cache: a GGUF is parsed once, then read back as safetensors.

Entries are keyed by the SHA-256 of the source file and by `FORMAT_VERSION`, so neither an edited
file nor a change to the conversion code ever reuses a stale entry (bump the version whenever the
dequantization, row order or tokenizer conversion changes). Each entry is a complete Hugging Face model directory, written to a temporary
folder and renamed into place, so an interrupted run leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..io import fsync_dir, locked
from ..settings import cache_root


FORMAT_VERSION = 2  # 2: tokenizer_config.json records the GGUF pre-tokenizer name


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cached_dir(source: Path, build) -> Path:
    """Return the cache directory for `source`, calling `build(tmp_dir)` to fill it if absent."""
    digest = file_sha256(source)
    root = cache_root() / "gguf"
    final = root / f"{source.stem}-{digest[:16]}-v{FORMAT_VERSION}"
    if (final / "source.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with locked(root.parent / "locks" / final.name):  # one builder at a time; the others wait, then find it
        if (final / "source.json").is_file():
            return final
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
        try:
            build(tmp)
            (tmp / "source.json").write_text(json.dumps({"source": str(source), "sha256": digest,
                                                             "format_version": FORMAT_VERSION}, indent=2))
            if final.exists():  # a leftover without source.json (an interrupted build): incomplete
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
