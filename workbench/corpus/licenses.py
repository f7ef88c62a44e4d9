"""A second corpus: seven software licences, legal English far from Python's documentation.

The texts ship verbatim in `licenses/` (see `licenses/NOTICE.md` for their origin and why they may
be redistributed). Like the built-in corpus it has an *evaluation* and a *calibration* part that
never share text; the split is by author, since the Free Software Foundation's licences share
whole paragraphs with each other (GPL-2 and LGPL-2.1; GPL-3 and the GFDL's termination clause):
its four texts are the evaluation part (about 23k tokens of SmolLM2's tokenizer), the Apache,
Mozilla and Creative Commons texts the calibration part (about 7k tokens). "train" is the
calibration part, as in the built-in corpus.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidParameterError

FOLDER = Path(__file__).with_name("licenses")
EVALUATION = ("GPL-3", "GPL-2", "LGPL-2.1", "GFDL-1.3")  # the FSF's
CALIBRATION = ("Apache-2.0", "MPL-2.0", "CC0-1.0")
PARTS = ("evaluation", "calibration", "train", "all")


def licenses_text(part: str = "evaluation") -> str:
    """Text of one part of the licences corpus: "evaluation", "calibration", "train" or "all"."""
    if part not in PARTS:
        raise InvalidParameterError(f"unknown corpus part {part!r} (accepted: {', '.join(PARTS)})")
    names = {"evaluation": EVALUATION, "all": EVALUATION + CALIBRATION}.get(part, CALIBRATION)
    return "\n\n".join((FOLDER / f"{name}.txt").read_text(encoding="utf-8").strip("\n") for name in names)
