"""The evalscope bridge (`workbench.evals`): key tables, variant specs, the project's datasets, and real
evalscope runs (perf and eval) against one `workbench serve` child process: zero failures, evalscope's
token counts equal the server's /metrics, the float32 server reproduces its own fidelity references,
resume skips finished runs, bad input ends in one line, and a run with no network at all still works."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

pytest.importorskip("evalscope")
pytest.importorskip("sse_starlette")

from workbench.errors import WorkbenchError  # noqa: E402
from workbench.evals import EvalscopeOutputError, ServerUnreachableError, Variant, connect, perf_sweep  # noqa: E402
from workbench.evals.keys import PERCENTILE_LABEL, PERCENTILES, PERF_PERCENTILE, PERF_SUMMARY  # noqa: E402
from workbench.evals.perf import read_perf_run  # noqa: E402
from workbench.evals.tasks import (DatasetFormatError, check_set, mean_ci, read_rows, run_tasks,  # noqa: E402
                                   task_sets)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*argv, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


# --- without a server -------------------------------------------------------------------------------

def _write_perf_files(d, drop=None):
    d.mkdir(parents=True, exist_ok=True)
    summary = {key: 1.0 for key in PERF_SUMMARY.values() if key != drop}
    rows = [{PERCENTILE_LABEL: label, **{key: 2.0 for key in PERF_PERCENTILE.values() if key != drop}}
            for label in ["min", *PERCENTILES.values(), "max"]]
    (d / "benchmark_summary.json").write_text(json.dumps(summary))
    (d / "benchmark_percentile.json").write_text(json.dumps(rows))


def test_perf_files_read_by_the_key_table(tmp_path):
    _write_perf_files(tmp_path / "ok")
    row = read_perf_run(tmp_path / "ok")
    assert row["output_throughput"] == 1.0 and row["ttft_ms_p99"] == 2.0 and row["tpot_ms_p50"] == 2.0
    for missing in ("Output Throughput (tok/s)", "TTFT (ms)"):
        _write_perf_files(tmp_path / missing[:6], drop=missing)
        with pytest.raises(EvalscopeOutputError, match=r"no key '" + missing.replace("(", r"\(").replace(")", r"\)")):
            read_perf_run(tmp_path / missing[:6])
    with pytest.raises(EvalscopeOutputError, match="no such file"):
        read_perf_run(tmp_path / "absent")


def test_variant_specs():
    assert Variant.parse("fp32") == Variant()
    assert Variant.parse("quant=int8,bf16") == Variant(quant="int8", dtype="bfloat16")
    assert Variant.parse("quant=int4-g128,dtype=bfloat16").label == "int4-g128+bf16"
    assert Variant.parse("prune=wanda:0.5").flags()[-2:] == ["--prune", "wanda:0.5"]
    calibrated = Variant.parse("quant=int4-g128-gptq,calib=licenses:1024")
    assert calibrated.calib == "licenses:1024" and calibrated.label == "int4-g128-gptq@licenses:1024"
    assert calibrated.flags()[-2:] == ["--calib", "licenses:1024"]
    assert Variant.parse("quant=int4-g128-awq", calib="generated").calib == "generated"  # --calib's default
    for bad in ("int8", "quant=nope", "dtype=float64", "prune=magic:0.5", "model=/no/such/dir", "colour=red",
                "quant=int4-g128-gptq,calib=nowhere:12"):
        with pytest.raises(WorkbenchError):
            Variant.parse(bad)


def test_project_datasets_are_well_formed():
    sets = task_sets()
    assert check_set(sets["mcq"]) >= 100
    assert check_set(sets["qa"]) >= 20
    assert check_set(sets["fidelity"]) == len(read_rows(sets["fidelity"].directory / "prompts.jsonl", ("question",)))
    answers = {r["answer"] for r in read_rows(sets["mcq"].file, ("answer",))}
    assert answers == {"A", "B", "C", "D"}  # every letter is right somewhere: a fixed letter scores chance


def test_dataset_with_a_missing_column(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"question": "q1", "answer": "a"}\n{"question": "q2"}\n')
    with pytest.raises(DatasetFormatError, match="row 2 has no answer"):
        read_rows(f, ("question", "answer"))
    c = tmp_path / "general_val.csv"
    c.write_text("id,question,A,B,answer\n1,q,x,y,C\n")
    from workbench.evals.tasks import TaskSet

    with pytest.raises(DatasetFormatError, match="not one of its choices"):
        check_set(TaskSet("mcq", "general_mcq", tmp_path, "general", "acc"))


def test_mean_ci():
    m, lo, hi = mean_ci([0, 1] * 10)
    assert m == 0.5 and lo < 0.5 < hi
    m2, lo2, hi2 = mean_ci([0, 1] * 200)
    assert hi2 - lo2 < (hi - lo) / 2          # 20x the questions: an interval under half as wide
    assert mean_ci([1.0] * 5) == (1.0, 1.0, 1.0)


def test_cli_bad_input():
    r = _cli("eval", "perf", "--url", "http://127.0.0.1:9")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no server answers" in r.stderr
    r = _cli("eval", "tasks", "--variant", "quant=int9")
    assert r.returncode == 2 and "unknown quant spec 'int9'" in r.stderr and "Traceback" not in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = _cli("eval", "perf", "--port", str(s.getsockname()[1]), "--number", "1", "--parallel", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot listen" in r.stderr, r.stderr


# --- against one server -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    from workbench.evals import served

    with served(Variant(), server_args=("--threads", "1", "--max-num-seqs", "4"), timeout_s=900) as s:
        yield s


def test_connect_to_a_running_server(server):
    assert connect(server.url + "/v1").model == server.model
    with pytest.raises(ServerUnreachableError, match="not 'other'"):
        connect(server.url, model="other")


def test_perf_sweep_counts_equal_the_server_and_resume_skips(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # as a library beside evalscope may leave it: its bars must still work
    df = perf_sweep(server, parallel=[1, 2], number=2, out_dir=tmp_path, prompt_tokens=48, max_tokens=4)
    assert list(df["parallel"]) == [1, 2] and (df["failed"] == 0).all() and (df["succeeded"] == 2).all()
    assert (df["output_tokens"] == 2 * 4).all()                 # exactly max_tokens each (ignore_eos)
    assert (df["server_generation_tokens"] == df["output_tokens"]).all() and df["tokens_match_server"].all()
    assert (df["ttft_ms_p50"] > 0).all() and (df["output_throughput"] > 0).all()
    shutil.rmtree(tmp_path / "parallel_2_number_2" / "evalscope")   # an interrupted second run
    (tmp_path / "parallel_2_number_2" / "row.json").unlink()
    first = (tmp_path / "parallel_1_number_2" / "row.json").stat().st_mtime_ns
    again = perf_sweep(server, parallel=[1, 2], number=2, out_dir=tmp_path, prompt_tokens=48, max_tokens=4,
                       resume=True)
    assert (tmp_path / "parallel_1_number_2" / "row.json").stat().st_mtime_ns == first   # kept, not rerun
    assert again.loc[0].equals(df.loc[0]) and again.loc[1, "failed"] == 0


def test_tasks_fidelity_of_the_reference_server_is_one(server, tmp_path):
    df = run_tasks(server, ["fidelity", "mcq"], tmp_path, limit=3, max_tokens=8, batch_size=3).set_index("set")
    assert df.loc["fidelity", "questions"] == 3 and df.loc["mcq", "questions"] == 3
    assert df.loc["fidelity", "score"] == pytest.approx(1.0, abs=1e-6)      # greedy: its own answers again
    assert df.loc["fidelity", "exact_match"] == 1.0
    assert 0 <= df.loc["mcq", "score"] <= 1 and df.loc["mcq", "ci_low"] <= df.loc["mcq", "score"] <= df.loc["mcq", "ci_high"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
                    reason="needs root, unshare and ip to take the network away from a process")
def test_offline_with_no_network_at_all(tmp_path):
    """Server and evalscope in a network namespace with only loopback: nothing can be downloaded."""
    script = ("ip link set lo up && python -m workbench.cli eval perf --threads 1 --parallel 2 --number 2 "
              f"--max-tokens 3 --prompt-tokens 48 --output-dir {tmp_path} --json")
    r = subprocess.run(["unshare", "-n", "sh", "-c", script.replace("python", sys.executable, 1)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout.strip().splitlines()[-1])
    assert rows[0]["failed"] == 0 and rows[0]["tokens_match_server"]
