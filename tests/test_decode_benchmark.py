"""The decode benchmark's bookkeeping: peers matched by format, per-round ratios, what the table says."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_vs_transformers.py"
    spec = importlib.util.spec_from_file_location("benchmark_decode_vs_transformers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def row(engine, weights, runs, call="", kernels="", batch=1):
    return {"engine": engine, "call": call, "weights": weights, "kernels": kernels, "batch": batch,
            "decode_tok_s": 31 / runs[0][1], "runs_s": [{"prefill_s": p, "decode_s": d} for p, d in runs],
            "_tokens": [[1, 2, 3]]}


def test_ratios_pair_each_of_our_rows_with_llama_cpp_in_its_format_round_by_round(bench):
    rows = [row("workbench", "q8_0", [(1.0, 2.0), (1.0, 4.0)], kernels="avx512"),
            row("workbench", "int8", [(1.0, 1.0), (1.0, 1.0)], kernels="avx512"),
            row("llama.cpp 0.3.36", "Q8_0", [(2.0, 3.0), (3.0, 4.0)]),
            row("llama.cpp 0.3.36", "Q8_0", [(9.0, 9.0), (9.0, 9.0)], batch=8)]  # another batch: never paired
    bench.add_ratios(rows)
    q8, int8, peer = rows[:3]
    assert q8["llama_cpp_peer"] == int8["llama_cpp_peer"] == "Q8_0"  # the same bytes; the same bits
    assert q8["vs_llama_cpp"] == pytest.approx((3 / 2 + 4 / 4) / 2)  # median of the per-round ratios
    assert q8["prefill_vs_llama_cpp"] == pytest.approx((2 + 3) / 2)
    assert int8["vs_llama_cpp"] == pytest.approx(3.5)
    assert peer["vs_llama_cpp"] is None and "_tokens" not in peer


def test_transformers_ratios_use_its_usual_call_and_its_fastest(bench):
    rows = [row("workbench", "float32", [(1.0, 1.0)], kernels="avx512"),
            row("transformers 5", "float32", [(1.0, 2.0)], call="generate"),
            row("transformers 5", "float32", [(1.0, 1.5)], call="static")]
    bench.add_ratios(rows)
    assert rows[0]["vs_transformers"] == pytest.approx(2.0)
    assert rows[0]["vs_transformers_fastest"] == pytest.approx(1.5)
    assert rows[0]["transformers_fastest_call"] == "static"


def test_the_reference_table_of_another_session_is_gone(bench, capsys):
    assert not hasattr(bench, "LLAMA_CPP_PEERS")
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(["--no-peers"])
    assert exit_.value.code == 2
    source = Path(bench.__file__).read_text()
    assert "/work/" not in source and "BASELINES" not in source


@pytest.mark.parametrize("start, end, busy", [(0.9, 2.1, False), (1.6, 2.1, True), (0.2, 3.4, True)])
def test_the_table_flags_a_busy_machine_but_not_the_runs_own_threads(bench, start, end, busy):
    path = Path(__file__).resolve().parents[1] / "data" / "results" / "decode_vs_transformers.json"
    result = json.loads(path.read_text())
    machine = result["machine"]
    machine["threads"], machine["loadavg_start"], machine["loadavg_end"] = 2, [start, 1, 1], [end, 1, 1]
    assert ("WARNING: the machine was busy" in bench.markdown(result)) is busy
