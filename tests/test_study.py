"""workbench.study: cell keys, study validation, the results file (resume, --force, failures, two
writers), Pareto fronts, mixed-precision allocation, composition, the report, the CLI, Ray vs local."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from workbench.errors import StudyError
from workbench.study import (allocate, append_row, cell_key, composition, config_hash, filter_cells, load_study,
                             mixed_vs_uniform, pareto_front, read_results, run_study)
from workbench.study.mixed import apply_plan, fixed_bytes, linear_layers, plan_bytes, sensitivity_scan
from workbench.study.report import list_cells, write_report

WORKBENCH = [sys.executable, "-c", "import sys; from workbench.cli import main; sys.exit(main(sys.argv[1:]))"]
# Tiny but real: the bundled model, a few tokens, PyTorch's operators (kernel setup costs more than these cells).
TINY = {"measures": ["perplexity"], "kernels": False, "perplexity": {"tokens": 32, "window": 16}}
TIMING = ("decode_tok_s", "prefill_tok_s", "compress_s", "cell_s", "loadavg", "peak_rss", "threads")


def study(**settings):
    return load_study({**TINY, **settings})


# --- keys and validation ---------------------------------------------------------------------------

def test_cell_key_hashes_the_full_config_and_the_code_version(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("Some text of our own to score. " * 20)
    base = {**TINY, "quant": ["none", "int8"], "perplexity": {"tokens": 32, "window": 16, "texts": [str(text)]}}
    a, b = load_study(base).cells(), load_study(base).cells()
    assert [cell_key(c, "v1") for c in a] == [cell_key(c, "v1") for c in b]       # stable
    assert len({cell_key(c, "v1") for c in a}) == 2                                # one per cell
    assert cell_key(a[0], "v1") != cell_key(a[0], "v2")                            # code version is in the key
    assert config_hash(a[0]) == config_hash(load_study(base).cells()[0])
    longer = load_study({**base, "perplexity": {**base["perplexity"], "tokens": 64}}).cells()
    assert cell_key(longer[0], "v1") != cell_key(a[0], "v1")                       # a setting is in the key
    text.write_text("Other text. " * 20)
    assert cell_key(load_study(base).cells()[0], "v1") != cell_key(a[0], "v1")    # the text by content


@pytest.mark.parametrize("settings, message", [
    ({"quant": ["none", "int9"]}, "cell [smollm2-135m | prune none | quant int9 | kv auto]: bad quant spec 'int9'"),
    ({"prune": ["wandaa:0.5"]}, "bad prune spec 'wandaa:0.5'"),
    ({"kv": ["fp8"]}, "unknown KV dtype 'fp8'"),
    ({"quant": ["auto:lots"]}, "cannot read the byte budget"),
    ({"quantize": ["int8"]}, "unknown study setting(s) quantize"),
    ({"measures": ["fidelity"]}, "unknown measure 'fidelity'"),
    ({"quant": ["auto:90MB"], "mixed": {"tiers": ["int8", "q4_1", "float"]}}, None),
])
def test_bad_studies_name_the_cell_and_the_spec(settings, message):
    if message is None:  # a valid mix: tiers need not be ordered by bytes, only end with float
        study(**settings)
        return
    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("|", r"\|").replace("(", r"\(")
                       .replace(")", r"\)")):
        study(**settings)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nquant: [none, int8\nkv: [auto]\n")
    with pytest.raises(StudyError, match=r"malformed YAML in bad.yaml at line \d+"):
        load_study(path)


# --- the results file --------------------------------------------------------------------------------

def _writer(path, worker, rows):
    for i in range(rows):
        append_row(path, {"cell_key": f"{worker}-{i}", "config_hash": f"{worker}-{i}", "code_version": "v",
                          "status": "ok", "ppl": float(i), f"only_{worker}": worker})


def test_two_writers_lose_no_row(tmp_path):
    path = tmp_path / "results.csv"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    frame = read_results(path)
    assert sorted(frame["cell_key"]) == sorted(f"{w}-{i}" for w in "ab" for i in range(15))
    assert {"only_a", "only_b"} <= set(frame.columns)                    # columns are the union
    assert not list(tmp_path.glob(".results.csv.*.tmp"))                 # no half-written file left


def test_resume_after_interruption_force_and_a_failing_cell(tmp_path):
    results = tmp_path / "r.csv"
    s = study(models=["smollm2-135m", str(tmp_path / "no-such-model")], quant=["none", "int8"])

    class Interrupted(KeyboardInterrupt):
        pass

    def interrupt(row):
        raise Interrupted

    with pytest.raises(Interrupted):  # interrupted right after the first row was written
        run_study(s, results, progress=False, on_row=interrupt)
    first = read_results(results)
    assert len(first) == 1 and first["status"].tolist() == ["ok"]

    counts = run_study(s, results, progress=False)
    assert counts == {"cells": 4, "skipped": 1, "measured": 1, "failed": 2}
    frame = read_results(results).set_index("quant", drop=False)
    failed = frame[frame["status"] == "error"]
    assert len(failed) == 2 and failed["error"].str.startswith("UnknownModelError").all()
    ok = frame[frame["status"] == "ok"]
    assert ok.loc["none", "weight_bytes"] > 3.9 * ok.loc["int8", "weight_bytes"]
    assert 0 < ok.loc["none", "ppl"] < ok.loc["int8", "ppl"] * 1.5 and ok["predictions"].eq(30).all()

    again = run_study(s, results, progress=False)                 # finished cells are skipped, failed ones retried
    assert again == {"cells": 4, "skipped": 2, "measured": 0, "failed": 2}
    forced = run_study(s, results, force=True, progress=False)
    assert forced == {"cells": 4, "skipped": 0, "measured": 2, "failed": 2}
    after = read_results(results)
    assert len(after) == 4                                        # rows replaced, not duplicated
    pd.testing.assert_series_equal(after.set_index("cell_key")["ppl"].dropna().sort_index(),
                                   frame.set_index("cell_key")["ppl"].dropna().sort_index())

    report = write_report(results, tmp_path / "report")           # the report of a real (tiny) study
    text = report.read_text()
    assert "![perplexity vs weight bytes](front_bytes.png)" in text and "## Failed cells" in text
    assert (tmp_path / "report" / "front_bytes.png").read_bytes()[:4] == b"\x89PNG"
    assert set(list_cells(results)["status"]) == {"ok", "error"}


def test_rows_of_another_code_version_are_refused_unless_force(tmp_path):
    results = tmp_path / "r.csv"
    append_row(results, {"cell_key": "x", "config_hash": "x", "code_version": "0.0.0+old", "status": "ok"})
    s = study()
    with pytest.raises(StudyError, match="code version 0.0.0\\+old"):
        run_study(s, results, progress=False)
    assert run_study(s, results, force=True, progress=False)["measured"] == 1


def test_kv_int8_and_speed_are_measured(tmp_path):
    s = study(kv=["auto", "int8"], measures=["perplexity", "speed"],
              speed={"batches": [1, 2], "prompt_tokens": 8, "new_tokens": 3, "rounds": 1})
    run_study(s, tmp_path / "r.csv", progress=False)
    frame = read_results(tmp_path / "r.csv").set_index("kv")
    assert (frame["status"] == "ok").all()
    for b in (1, 2):
        assert (frame[f"decode_tok_s_b{b}"] > 0).all() and (frame[f"prefill_tok_s_b{b}"] > 0).all()
    rel = abs(frame.loc["int8", "ppl"] / frame.loc["auto", "ppl"] - 1)
    assert 0 < rel < 0.05                                         # int8 keys/values: a small, real change
    assert frame["peak_rss_mb"].gt(100).all()


# --- analysis ---------------------------------------------------------------------------------------------

def test_pareto_front_is_the_non_dominated_set():
    frame = pd.DataFrame({"weight_bytes": [1, 2, 2, 3, 4, np.nan], "ppl": [5, 3, 4, 3, 1, 6],
                          "speed": [10, 9, 11, 1, 1, 100]})
    assert pareto_front(frame, "weight_bytes").tolist() == [True, True, False, False, True, False]
    assert pareto_front(frame, "speed", maximize_x=True).tolist() == [False, True, True, False, True, True]
    rng = np.random.default_rng(0)
    cloud = pd.DataFrame({"x": rng.random(60), "ppl": rng.random(60)})
    front = cloud[pareto_front(cloud, "x")]
    for r in cloud.itertuples():                                  # every cell off the front is dominated by one on it
        if not ((front["x"] == r.x) & (front["ppl"] == r.ppl)).any():
            assert ((front["x"] <= r.x) & (front["ppl"] <= r.ppl)).any()
    for a in front.itertuples():                                  # and no front cell dominates another
        assert not ((front["x"] < a.x) & (front["ppl"] < a.ppl)).any()


def test_composition_and_mixed_against_uniform():
    cells = [("none", "none", 10.0, 400, None), ("wanda:0.5", "none", 12.0, 400, None),
             ("none", "int8", 10.5, 100, None), ("wanda:0.5", "int8", 13.0, 100, None),
             ("none", "q4_1", 11.0, 80, None), ("none", "auto:90", 10.8, 88, 90)]
    frame = pd.DataFrame([{"status": "ok", "model": "m", "teacher": None, "dtype": "float32", "kv": "auto",
                           "prune": p, "quant": q, "ppl": ppl, "weight_bytes": b, "bits_per_weight": b / 10,
                           "budget_bytes": budget} for p, q, ppl, b, budget in cells])
    c = composition(frame)
    assert len(c) == 1 and c.loc[0, "kind"] == "prune+quant"
    assert c.loc[0, "ppl_predicted"] == pytest.approx(10 * (1 + 0.2 + 0.05))
    assert c.loc[0, "gap"] == pytest.approx(13.0 / 12.5 - 1)
    m = mixed_vs_uniform(frame)
    assert m.loc[0, "best_uniform"] == "q4_1" and bool(m.loc[0, "mixed_wins"])     # int8 (100 B) is over budget
    picked = filter_cells(frame, methods=["quant", "mixed"], bits=(8, 9))
    assert picked["quant"].tolist() == ["q4_1", "auto:90"]
    assert filter_cells(frame, sparsity=(0.4, 0.6))["prune"].eq("wanda:0.5").all()


def test_greedy_allocation_respects_the_budget():
    scan = pd.DataFrame({"matrix": list("abcd"), "members": list("abcd"),
                         "bytes_int4": [10, 10, 40, 5], "bytes_int8": [20, 20, 80, 10], "bytes_float": [80, 80, 320, 40],
                         "loss_int4": [1.0, 0.01, 2.0, 0.5], "loss_int8": [0.1, 0.001, 0.2, 0.05],
                         "loss_float": [0.0, 0.0, 0.0, 0.0]})
    tiers = ["int4", "int8", "float"]
    assert set(allocate(scan, tiers, 65).values()) == {"int4"}
    with pytest.raises(StudyError, match="below the smallest mix"):
        allocate(scan, tiers, 64)
    losses = []
    for budget in (65, 80, 120, 200, 600):
        plan = allocate(scan, tiers, budget, fixed_bytes=0)
        assert plan_bytes(scan, plan) <= budget
        losses.append(sum(scan.set_index("matrix").loc[m, f"loss_{t}"] for m, t in plan.items()))
    assert losses == sorted(losses, reverse=True) and losses[-1] == 0   # more bytes never cost quality
    assert allocate(scan, tiers, 75)["a"] == "int8"                      # the best loss per byte goes first


def test_sensitivity_scan_and_plan_on_the_real_model(model_and_tokenizer):
    import copy

    model, tok = model_and_tokenizer
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head"]
    scan = sensitivity_scan(model, tok, tiers=["int4-g32", "int8", "float"], tokens=32, window=32, matrices=names)
    assert sorted(scan["matrix"]) == sorted(names)
    assert (scan["loss_int8"] <= scan["loss_int4-g32"]).all() and (scan["loss_float"] == 0).all()
    assert (scan["bytes_int4-g32"] < scan["bytes_int8"]).all() and (scan["bytes_int8"] < scan["bytes_float"]).all()
    assert scan.set_index("matrix").loc["lm_head", "ppl"] != scan["ppl_base"].iloc[0]   # the scan really quantized
    copy_ = copy.deepcopy(model)
    plan = dict(zip(names, ["int4-g32", "int8", "float"]))
    expected = copy_.weight_bytes() - sum(scan["bytes_float"]) + plan_bytes(scan, plan)
    apply_plan(copy_, plan)
    assert copy_.weight_bytes() == expected                              # bytes as the allocation counts them
    assert fixed_bytes(model) < 1e6 and len(linear_layers(model)) == 7 * model.config.num_hidden_layers + 1


# --- command line and Ray -------------------------------------------------------------------------------

def test_cli_study_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("quant: [int9]\n")
    p = subprocess.run(WORKBENCH + ["study", "run", str(bad)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "bad quant spec 'int9'" in p.stderr
    p = subprocess.run(WORKBENCH + ["study", "report", str(tmp_path / "none.csv")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "no results" in p.stderr


def _untimed(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in frame.columns if not c.startswith(TIMING)]
    return frame[keep].sort_values("cell_key").reset_index(drop=True)


def test_ray_executor_rows_equal_local(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install '.[ray]')")
    s = study(quant=["none", "int8"], threads=1)
    run_study(s, tmp_path / "local.csv", progress=False)
    counts = run_study(s, tmp_path / "ray.csv", executor="ray", num_cpus=1, progress=False)
    assert counts["measured"] == 2
    local, remote = _untimed(read_results(tmp_path / "local.csv")), _untimed(read_results(tmp_path / "ray.csv"))
    pd.testing.assert_frame_equal(local.drop(columns=["ppl"]), remote.drop(columns=["ppl"]))
    np.testing.assert_allclose(remote["ppl"], local["ppl"], rtol=1e-6)


def test_explorer_draws_the_filtered_front(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from workbench.lab.study_explorer import draw, study_explorer

    cells = [("none", "none", 10.0, 400, 5.0), ("none", "int8", 10.5, 100, 9.0), ("none", "q4_1", 11.0, 80, 8.0),
             ("wanda:0.5", "q4_1", 14.0, 80, 8.5)]
    frame = pd.DataFrame([{"status": "ok", "model": "m", "teacher": None, "dtype": "float32", "kv": "auto",
                           "prune": p, "quant": q, "ppl": ppl, "weight_bytes": b, "bits_per_weight": b / 12.5,
                           "decode_tok_s_b1": s} for p, q, ppl, b, s in cells])
    fig, shown = draw(frame, methods=["quant"], x="decode_tok_s_b1")
    assert shown["quant"].tolist() == ["int8", "q4_1"]
    red = [line for line in fig.axes[0].lines if line.get_color() == "C3"][0]
    assert list(red.get_xdata()) == [9.0]               # int8 is faster and better than q4_1: alone on the front
    fig, shown = draw(frame, sparsity=(0.4, 0.6))
    assert shown["prune"].tolist() == ["wanda:0.5"]
    pytest.importorskip("ipywidgets")
    assert study_explorer(frame) is not None            # constructed headless
