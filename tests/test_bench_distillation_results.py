"""benchmarks/distillation.py merges its results file: kept runs and decode timings say who measured them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distillation.py"


def load_script():
    spec = importlib.util.spec_from_file_location("distillation_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEACHER = {"student": "teacher", "loss": "", "steps": 0, "tokens": 0, "ppl": 13.4, "weight_bytes": 1}


def row(loss, ppl):
    return {"student": "layers:15", "loss": loss, "steps": 150, "tokens": 9, "ppl": ppl, "weight_bytes": 1}


def first_file(tmp_path):
    out = str(tmp_path / "distillation")
    old = {"method": "old", "command": "python benchmarks/distillation.py --steps 150 --rounds 0", "date": "D150",
           "settings": {"steps": 150}, "loadavg_start": [1, 1, 1], "teacher_ppl": 13.4,
           "runs": {"ce": {"row": row("ce", 61.7)}, "kl": {"row": row("kl", 50.5)}}}
    pd.DataFrame([TEACHER, row("ce", 61.7), row("kl", 50.5)]).to_csv(out + ".csv", index=False)
    Path(out + ".json").write_text(json.dumps(old))
    return out


def test_a_decode_only_invocation_keeps_the_runs_and_their_settings(tmp_path):
    bench = load_script()
    out = first_file(tmp_path)
    report = {"method": "new", "command": "python benchmarks/distillation.py --losses --resume", "date": "DNOW",
              "settings": {"steps": 10}, "runs": {}, "decode": {"speedup": 1.7}, "student_size": {},
              "decode_from": "python benchmarks/distillation.py --losses --resume (DNOW)"}
    bench.write_results(out, [TEACHER], report, merge=True)
    written = json.loads(Path(out + ".json").read_text())
    assert written["settings"] == {"steps": 150} and written["command"].endswith("--rounds 0")  # the runs' own
    assert written["runs"]["kl"]["command"].endswith("--rounds 0") and written["runs"]["kl"]["date"] == "D150"
    assert written["decode"] == {"speedup": 1.7} and written["decode_from"].endswith("--resume (DNOW)")
    assert written["method"] == "new"
    assert list(pd.read_csv(out + ".csv", keep_default_na=False)["loss"]) == ["", "ce", "kl"]


def test_a_training_invocation_without_decode_names_where_the_kept_timing_came_from(tmp_path):
    bench = load_script()
    out = first_file(tmp_path)
    old = json.loads(Path(out + ".json").read_text())
    Path(out + ".json").write_text(json.dumps({**old, "decode": {"speedup": 1.6}, "student_size": {}}))
    report = {"method": "new", "command": "python benchmarks/distillation.py --losses rkl --rounds 0 --resume",
              "date": "DRKL", "settings": {"steps": 150}, "runs": {"rkl": {"command": "rkl-cmd", "row": row("rkl", 80.0)}}}
    bench.write_results(out, [TEACHER, row("rkl", 80.0)], report, merge=True)
    written = json.loads(Path(out + ".json").read_text())
    assert set(written["runs"]) == {"ce", "kl", "rkl"} and written["command"].endswith("--rounds 0 --resume")
    assert written["decode"] == {"speedup": 1.6}
    assert written["decode_from"] == "python benchmarks/distillation.py --steps 150 --rounds 0 (D150)"
    assert list(pd.read_csv(out + ".csv", keep_default_na=False)["loss"]) == ["", "ce", "kl", "rkl"]
