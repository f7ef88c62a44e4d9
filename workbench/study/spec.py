"""A study: models x prune specs x quant specs x KV dtypes, each cell a full config with a stable key.

A study file (YAML) or dict:

    name: compression-study
    models: [smollm2-135m]           # bundled name, .gguf, HF directory, or {path: DIR, teacher: NAME}
    prune: [none, wanda:0.5]         # `workbench prune list`; none = unpruned
    quant: [none, int8, int4-g32, auto:100MB]   # `workbench quant list`; auto:BYTES = mixed precision
    kv: [auto, int8]                 # auto = the model's dtype; int8 = int8 keys/values
    dtype: float32
    measures: [perplexity, speed]    # weight bytes and peak RSS are always recorded
    perplexity: {tokens: 2048, window: 512, texts: [notes.txt]}   # texts: relative to the study file
    speed: {batches: [1, 8], prompt_tokens: 64, new_tokens: 32, rounds: 3}
    mixed: {tiers: [int4-g32, int8, float], tokens: 512, window: 256, unit: matrix}  # auto:BYTES's scan (unit: matrix | block)
    threads: null                    # torch threads per cell (default: the machine's / Ray's num_cpus)
    kernels: true                    # our CPU kernels for decode-sized products (false: PyTorch's only)

A cell's key hashes its full config (texts by content) with the code version, so a changed text,
setting or source file makes a new cell, never a silently reused one.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import StudyError, WorkbenchError

DEFAULTS = {
    "name": "study", "models": ["smollm2-135m"], "prune": ["none"], "quant": ["none"], "kv": ["auto"],
    "dtype": "float32", "measures": ["perplexity", "speed"], "threads": None, "kernels": True,
    "perplexity": {"tokens": 2048, "window": 512, "texts": []},
    "speed": {"batches": [1, 8], "prompt_tokens": 64, "new_tokens": 32, "rounds": 3},
    "mixed": {"tiers": ["int4-g32", "int8", "float"], "tokens": 512, "window": 256, "unit": "matrix"},
}
MEASURES = ("perplexity", "speed")
KV_DTYPES = ("auto", "int8")
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


# Sources that present results but never change a measurement: editing them keeps the code version.
PRESENTATION = ("cli.py", "__main__.py", "lab/", "study/analysis.py", "study/report.py", "study/commands.py")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the source files of `workbench` (Python and C++) that can
    change a measurement (all but `PRESENTATION`)."""
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cpp", ".h") and "__pycache__" not in p.parts
                       and not str(p.relative_to(root)).startswith(PRESENTATION)):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        release = version("workbench")
    except PackageNotFoundError:
        release = "0"
    return f"{release}+{digest.hexdigest()[:12]}"


def parse_bytes(text: str) -> int:
    """'100MB' -> 100_000_000, '64MiB' -> 67_108_864, '5e7' -> 50_000_000."""
    s = str(text).strip().lower().replace("_", "")
    number = s.rstrip("kmgib")
    unit = s[len(number):]
    try:
        value = float(number) * UNITS[unit]
    except (KeyError, ValueError):
        raise StudyError(f"cannot read the byte budget {text!r} (e.g. auto:100MB, auto:64MiB, auto:80000000)") from None
    if value <= 0:
        raise StudyError(f"the byte budget must be positive, got {text!r}")
    return int(value)


def check_quant(spec: str):
    """Raise the quant room's error for an unknown spec (auto:BYTES is checked here)."""
    if spec == "none":
        return
    if spec.startswith("auto:"):
        parse_bytes(spec.removeprefix("auto:"))
        return
    from ..quant import config_from_spec

    config_from_spec(spec)


def check_prune(spec: str):
    if spec != "none":
        from ..prune.api import parse_spec

        parse_spec(spec)


def check_kv(dtype: str):
    if dtype not in KV_DTYPES:
        raise StudyError(f"unknown KV dtype {dtype!r} (accepted: {', '.join(KV_DTYPES)})")


@dataclass
class Study:
    """A parsed, validated study; `cells()` lists the grid in a fixed order."""

    settings: dict
    base_dir: Path = field(default_factory=Path.cwd)  # where relative text paths are read from

    @property
    def name(self) -> str:
        return self.settings["name"]

    def cells(self) -> list[dict]:
        s = self.settings
        texts = [_text_entry(self.base_dir, t) for t in s["perplexity"]["texts"]]
        cells = []
        for model, prune, quant, kv in itertools.product(s["models"], s["prune"], s["quant"], s["kv"]):
            cell = {"model": model["path"], "teacher": model.get("teacher"), "dtype": s["dtype"],
                    "prune": prune, "quant": quant, "kv": kv, "measures": list(s["measures"]),
                    "threads": s["threads"], "kernels": bool(s["kernels"])}
            if "perplexity" in s["measures"]:
                cell["perplexity"] = {"tokens": s["perplexity"]["tokens"], "window": s["perplexity"]["window"],
                                      "texts": texts}
            if "speed" in s["measures"]:
                cell["speed"] = dict(s["speed"])
            if quant.startswith("auto:"):
                cell["mixed"] = dict(s["mixed"])
            cells.append(cell)
        return cells


def _text_entry(base_dir: Path, path) -> dict:
    file = Path(path) if Path(path).is_absolute() else base_dir / path
    if not file.is_file():
        raise StudyError(f"perplexity text {path!r} not found (paths are relative to the study file)")
    return {"name": Path(path).stem, "path": str(file), "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


def cell_label(cell: dict) -> str:
    return f"{Path(str(cell['model'])).name} | prune {cell['prune']} | quant {cell['quant']} | kv {cell['kv']}"


def config_hash(cell: dict) -> str:
    """A hash of what the cell measures (text paths left out: their content hash stands for them)."""
    canonical = copy.deepcopy(cell)
    for text in canonical.get("perplexity", {}).get("texts", []):
        text.pop("path", None)
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


def cell_key(cell: dict, version: str | None = None) -> str:
    """The results file's key: the cell's config hash together with the code version."""
    return hashlib.sha256(f"{config_hash(cell)}|{version or code_version()}".encode()).hexdigest()[:16]


def load_study(source) -> Study:
    """A `Study` from a YAML file path or a dict, checked: unknown keys, specs and measures are errors
    that name the cell and the spec; malformed YAML names the line."""
    if isinstance(source, dict):
        raw, base_dir = copy.deepcopy(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise StudyError(f"study file {str(path)!r} not found")
        raw, base_dir = _read_yaml(path), path.resolve().parent
    if not isinstance(raw, dict):
        raise StudyError("a study is a mapping of settings (models, prune, quant, kv, measures, ...)")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise StudyError(f"unknown study setting(s) {', '.join(unknown)} (accepted: {', '.join(DEFAULTS)})")
    settings = copy.deepcopy(DEFAULTS)
    for key, value in raw.items():
        if isinstance(DEFAULTS[key], dict):
            if not isinstance(value, dict) or set(value) - set(DEFAULTS[key]):
                raise StudyError(f"study setting {key!r} takes a mapping of {', '.join(DEFAULTS[key])}, got {value!r}")
            settings[key].update(value)
        else:
            settings[key] = value
    for key in ("models", "prune", "quant", "kv", "measures"):
        if isinstance(settings[key], (str, dict)):
            settings[key] = [settings[key]]
        if not settings[key] and key != "measures":
            raise StudyError(f"study setting {key!r} is empty: give at least one")
    settings["models"] = [m if isinstance(m, dict) else {"path": str(m)} for m in settings["models"]]
    for key in ("prune", "quant", "kv"):
        settings[key] = ["none" if v is None else str(v) for v in settings[key]]
    for m in settings["measures"]:
        if m not in MEASURES:
            raise StudyError(f"unknown measure {m!r} (accepted: {', '.join(MEASURES)}; bytes and peak RSS are always taken)")
    study = Study(settings, base_dir)
    _check_specs(study)
    return study


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise StudyError(f"malformed YAML in {path.name} at {where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise StudyError(f"malformed YAML in {path.name}: {e}") from None


def _check_specs(study: Study):
    """Every spec is checked once, and a bad one is reported with the first cell that uses it."""
    s = study.settings
    for model in s["models"]:
        if "path" not in model or set(model) - {"path", "teacher"}:
            raise StudyError(f"a model entry is a name/path or {{path: ..., teacher: ...}}, got {model!r}")
    checks = {"prune": check_prune, "quant": check_quant, "kv": check_kv}
    cells = study.cells()
    for key, check in checks.items():
        for value in s[key]:
            try:
                check(value)
            except WorkbenchError as e:
                first = next(c for c in cells if c[key] == value)
                raise StudyError(f"cell [{cell_label(first)}]: bad {key} spec {value!r}: {e}") from None
    mixed = s["mixed"]
    if any(q.startswith("auto:") for q in s["quant"]):
        tiers = mixed["tiers"]
        if len(tiers) < 2 or tiers[-1] != "float" or any(t == "float" for t in tiers[:-1]):
            raise StudyError(f"mixed tiers go from the smallest spec up and end with float, got {tiers!r}")
        if mixed["unit"] not in ("matrix", "block"):
            raise StudyError(f"mixed unit is matrix or block, got {mixed['unit']!r}")
        for tier in tiers[:-1]:
            try:
                check_quant(tier)
            except WorkbenchError as e:
                raise StudyError(f"bad mixed-precision tier {tier!r}: {e}") from None
