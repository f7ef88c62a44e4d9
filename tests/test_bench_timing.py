"""The benchmark harness: alternated rounds, discarded warm-up, medians, per-round ratios, errors, run info."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from workbench.bench import timing
from workbench.bench.timing import alternate, median, read_bandwidth_gb_s, run_end, run_info
from workbench.errors import InvalidParameterError


def recorder(log, values):
    """A contender per name that logs its call and returns the next of its values."""
    def make(name):
        it = iter(values[name])
        return lambda: (log.append(name), next(it))[1]
    return {name: make(name) for name in values}


def test_contenders_alternate_round_by_round_and_warmup_is_discarded():
    log = []
    rounds = alternate(recorder(log, {"a": [100, 1, 2, 3], "b": [200, 4, 5, 6], "c": [300, 7, 8, 9]}),
                       rounds=3, warmup=1)
    assert log == ["a", "b", "c"] * 4  # one call each per round, in the mapping's order, never a-a-a then b-b-b
    assert rounds.values == {"a": [1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]}  # the warm-up's 100/200/300 are gone
    assert list(rounds.values) == ["a", "b", "c"] and (rounds.rounds, rounds.warmup) == (3, 1)


def test_two_warmup_rounds_and_none():
    log = []
    rounds = alternate(recorder(log, {"x": [9, 9, 1, 2], "y": [9, 9, 3, 4]}), rounds=2, warmup=2)
    assert rounds.values == {"x": [1, 2], "y": [3, 4]} and len(log) == 8
    log = []
    assert alternate(recorder(log, {"x": [5]}), rounds=1, warmup=0).values == {"x": [5]} and log == ["x"]


def test_medians_and_per_round_ratios():
    rounds = alternate(recorder([], {"fast": [0, 10.0, 30.0, 12.0], "slow": [0, 5.0, 10.0, 8.0]}), rounds=3)
    assert rounds.median("fast") == 12.0 and rounds.median("slow") == 8.0
    assert rounds.ratios("fast", "slow") == [2.0, 3.0, 1.5]
    assert rounds.ratio("fast", "slow") == 2.0  # median of the per-round ratios ...
    assert rounds.median("fast") / rounds.median("slow") == 1.5  # ... which is not the ratio of the medians
    s = rounds.summary(baseline="slow")
    assert s["fast"] == {"median": 12.0, "min": 10.0, "max": 30.0, "rounds": [10.0, 30.0, 12.0], "vs_baseline": 2.0}
    assert s["slow"]["vs_baseline"] == 1.0
    assert median([4, 1, 3, 2]) == 2.5  # an even count: the mean of the two middle values


def test_mapping_results_are_read_by_key():
    results = [{"tok_s": t, "gb_s": t / 10} for t in (0, 20, 40, 30)]
    rounds = alternate({"m": iter(results).__next__}, rounds=3)
    assert rounds.series("m", "tok_s") == [20.0, 40.0, 30.0]
    assert rounds.median("m", "gb_s") == 3.0


def test_a_failing_contender_stops_the_run_with_its_own_exception_and_a_note():
    log = []
    calls = {"n": 0}

    def flaky():
        log.append("b")
        calls["n"] += 1
        if calls["n"] == 3:  # warm-up, round 1, then fails in round 2
            raise ZeroDivisionError("division by zero")
        return 1.0

    contenders = {"a": lambda: log.append("a") or 1.0, "b": flaky, "c": lambda: log.append("c") or 1.0}
    with pytest.raises(ZeroDivisionError) as raised:
        alternate(contenders, rounds=3, warmup=1)
    assert raised.value.__notes__ == ["raised by benchmark contender 'b' in round 2 of 3"]
    assert log == ["a", "b", "c", "a", "b", "c", "a", "b"]  # nothing runs after the failure

    def broken():
        raise KeyError("weights")
    with pytest.raises(KeyError) as raised:
        alternate({"ok": lambda: 1.0, "broken": broken}, rounds=2, warmup=1)
    assert raised.value.__notes__ == ["raised by benchmark contender 'broken' in warm-up round 1 of 1"]


@pytest.mark.parametrize("rounds, warmup, contenders", [(0, 1, {"a": float}), (-1, 0, {"a": float}),
                                                        (1, -1, {"a": float}), (1, 1, {})])
def test_bad_settings_raise_before_any_call(rounds, warmup, contenders):
    with pytest.raises(InvalidParameterError):
        alternate(contenders, rounds=rounds, warmup=warmup)


def test_run_info_records_machine_versions_and_load(monkeypatch):
    import torch

    script = Path(timing.__file__).resolve().parents[2] / "benchmarks" / "pruning.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--out", "/tmp/x y"])
    info = run_info()
    assert info["command"] == "python benchmarks/pruning.py --quick --out '/tmp/x y'"  # no machine path
    assert info["torch"] == torch.__version__
    assert info["threads"] == torch.get_num_threads() and info["cpu"]
    assert info["cpu_threads"] >= 1 and info["cpus_usable"] >= 1
    assert "transformers" in info and "llama_cpp" in info  # None when not installed
    assert len(info["loadavg_start"]) == 3 and "read_bandwidth_gb_s" not in info
    assert run_end(info) is info and len(info["loadavg_end"]) == 3 and info["date_end"] >= info["date"]


def test_read_bandwidth_is_measured():
    from workbench import kernels

    bw = read_bandwidth_gb_s(mib=64, rounds=3)
    assert 0 < bw["median"] <= bw["best"] and bw["rounds"] == 3 and bw["mib"] == 64 and bw["clock"] == "wall"
    assert bw["reader"] == ("workbench" if kernels.available() else "torch.sum")
    with kernels.disabled():
        assert read_bandwidth_gb_s(mib=8, rounds=1)["reader"] == "torch.sum"


def test_stream_read_kernel_reads_every_element():
    import torch

    from workbench import kernels

    if not kernels.available():
        pytest.skip("our kernels are not built here")
    for n in (1, 17, 1000, 1 << 20, (1 << 20) + 5):  # tails, a part per thread
        x = torch.arange(n, dtype=torch.float32) % 7
        assert kernels.stream_read(x) == pytest.approx(float(x.double().sum()), rel=1e-5)


def test_read_bandwidth_on_the_cpu_clock():
    bw = read_bandwidth_gb_s(mib=64, rounds=2, clock="cpu")
    assert 0 < bw["median"] <= bw["best"] and bw["clock"] == "cpu"
    with pytest.raises(InvalidParameterError):
        read_bandwidth_gb_s(mib=8, rounds=1, clock="sundial")


def test_csr_matmul_timing_alternates_dense_and_csr():
    import torch

    from workbench.bench.sparse import matmul_timing

    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    weight[:, ::2] = 0  # 50% sparse
    t = matmul_timing(weight, tokens=1, repeats=3)
    assert t["dense_us"] > 0 and t["csr_us"] > 0 and t["csr_over_dense"] > 0
    assert t["max_abs_diff"] < 1e-4  # the CSR product is the same product
