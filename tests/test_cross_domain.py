"""The cross-domain table's arithmetic (workbench.bench.cross_domain) and the benchmark's cells; no model."""

import importlib.util
from pathlib import Path

import pandas as pd

from workbench.bench.cross_domain import add_comparisons, targets

ROWS = [("float32", "none", "a", 10.0), ("float32", "none", "b", 20.0),
        ("int4-g128", "none", "a", 20.0), ("int4-g128", "none", "b", 40.0),
        # in-domain calibration wins big but does not count; outside it, clip holds on both corpora
        ("int4-g128-gptq", "a:64", "a", 11.0), ("int4-g128-gptq", "a:64", "b", 39.0),
        ("int4-g128-gptq", "b:64", "a", 21.0), ("int4-g128-gptq", "b:64", "b", 21.0),
        ("int4-g128-clip", "b:64", "a", 14.0), ("int4-g128-clip", "a:64", "b", 29.0),
        ("int4-g128-clip", "a:64", "a", 12.0), ("int4-g128-clip", "b:64", "b", 22.0)]


def _frame():
    frame = pd.DataFrame(ROWS, columns=["method", "calib", "corpus", "ppl"])
    frame["compress_s"], frame["tokens"] = 0.0, 64
    return frame


def test_gap_closed_flags_and_one_method_must_hold_on_every_corpus(monkeypatch):
    from workbench.bench import cross_domain

    monkeypatch.setattr(cross_domain, "CORPORA", {"a": None, "b": None})
    monkeypatch.setattr(cross_domain, "_source_corpora", lambda calib: {calib.split(":")[0]})
    frame = add_comparisons(pd.concat([_frame().iloc[:6], _frame().iloc[6:].reset_index(drop=True)]))  # as --merge joins parts
    clip = frame[(frame.method == "int4-g128-clip") & (frame.calib == "b:64") & (frame.corpus == "a")].iloc[0]
    assert clip.gap_closed == 0.6 and not clip.calib_in_corpus
    worse = frame[frame.worse_than_peer]
    assert list(zip(worse.method, worse.calib, worse.corpus)) == [("int4-g128-gptq", "b:64", "a")]
    (int4,) = [t for t in targets(frame) if "int4-g128" in t["target"]]
    # gptq's outside-corpus cells close -10% and 5%; clip's 60% and 55%: clip is the method, and it holds
    assert int4["method"] == "int4-g128-clip" and abs(int4["worst"] - 0.55) < 1e-12 and int4["met"]
    assert int4["best_per_corpus"] == {"a": {"gap_closed": 0.6, "calib": "b:64"},
                                       "b": {"gap_closed": 0.55, "calib": "a:64"}}
    (flag,) = [t for t in targets(frame) if t["target"].startswith("no calibrated")]
    assert not flag["met"] and flag["worst"] == 1


def test_benchmark_cells_size_each_calibration_set():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "cross_domain.py"
    spec = importlib.util.spec_from_file_location("benchmark_cross_domain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.sized("licenses", 2048) == "licenses:2048"
    assert module.sized("licenses:4096", 2048) == "licenses:4096"
    assert module.sized("licenses+generated", 2048) == "licenses:1024+generated:1024"
    assert module.sized("licenses:4096+generated", 2048) == "licenses:4096+generated:2048"
    cells = module.cells(["int4-g128", "int4-g128-clip"], ["licenses:4096", "builtin"], 1024)
    assert cells == [("int4-g128", "none"), ("int4-g128-clip", "licenses:4096"), ("int4-g128-clip", "builtin:1024")]
