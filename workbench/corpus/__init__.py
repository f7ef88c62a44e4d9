"""Text to score and calibrate on: named corpora, the user's own files, calibration sets (floor 1).

Corpora (`corpus_text(name, part)`; `workbench ppl --corpus NAME`):
    builtin    Python's reference documentation, present in every Python install (the default)
    licenses   seven software licences shipped with the package: legal English
Each has an evaluation part and a calibration part that never share text.
"""

from .builtin import PARTS, builtin_text, load_text
from .licenses import licenses_text
from ..errors import InvalidParameterError

# name -> (text of a part, one-line description)
CORPORA = {
    "builtin": (builtin_text, "Python's reference documentation (pydoc_data): technical English with code"),
    "licenses": (licenses_text, "GPL, LGPL, GFDL, Apache, MPL and CC0 licence texts: legal English"),
}
DEFAULT_CORPUS = "builtin"


def corpus_text(name: str = DEFAULT_CORPUS, part: str = "evaluation") -> str:
    """Text of one part ("evaluation", "calibration", "train", "all") of a named corpus."""
    if name not in CORPORA:
        raise InvalidParameterError(f"unknown corpus {name!r} (accepted: {', '.join(CORPORA)})")
    return CORPORA[name][0](part)


from .calibration import CalibrationPart, CalibrationSet, calibration_token_ids, parse_calibration  # noqa: E402

__all__ = ["PARTS", "CORPORA", "DEFAULT_CORPUS", "builtin_text", "licenses_text", "corpus_text", "load_text",
           "CalibrationPart", "CalibrationSet", "calibration_token_ids", "parse_calibration"]
