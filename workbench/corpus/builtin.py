"""The built-in corpus: Python's reference documentation, present in every Python install.

`pydoc_data.topics.topics` maps 79 topic names to their text (about 465 KB of English prose with
code). Documents are taken in sorted key order and joined with blank lines. The first half of the
documents (by characters) is the *evaluation* part, the rest the *calibration* part; the split
falls between documents, so the two never share text. The evaluation part begins like the whole
corpus, so its first N tokens are the text the peer baselines in the README were scored on.
The *train* part (for distillation) is every document outside the evaluation part: the same text
as the calibration part, so training may see calibration text but never evaluation text.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EmptyTextError, InvalidParameterError

PARTS = ("evaluation", "calibration", "train", "all")


def _documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def builtin_text(part: str = "evaluation") -> str:
    """Text of one part of the built-in corpus: "evaluation", "calibration", "train" or "all"."""
    if part not in PARTS:
        raise InvalidParameterError(f"unknown corpus part {part!r} (accepted: {', '.join(PARTS)})")
    docs = _documents()
    if part == "all":
        return "\n\n".join(docs)
    half = sum(len(d) for d in docs) / 2
    seen, split = 0, len(docs)
    for i, d in enumerate(docs):
        if seen + len(d) > half:
            split = i
            break
        seen += len(d)
    chosen = docs[:split] if part == "evaluation" else docs[split:]
    return "\n\n".join(chosen)


def load_text(path: str | Path) -> str:
    """A user's text file (UTF-8), with a clear error if it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise EmptyTextError(f"{path}: text file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EmptyTextError(f"{path}: not UTF-8 text ({e})") from None
    if not text.strip():
        raise EmptyTextError(f"{path}: the file is empty")
    return text
