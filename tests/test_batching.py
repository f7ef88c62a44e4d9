"""Workloads, policies, replay and metrics; the batching CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench import load_model
from workbench.bench.batching import bench_batching
from workbench.cli import main
from workbench.engine import Policy, poisson_workload, request_metrics, summarize
from workbench.errors import InvalidParameterError


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def test_workload_is_seeded_and_within_ranges(tiny):
    _, tok = tiny
    a = poisson_workload(tok, 20, rate=5.0, seed=1, prompt_tokens=(3, 9), output_tokens=(2, 4), shared_prefix=5)
    b = poisson_workload(tok, 20, rate=5.0, seed=1, prompt_tokens=(3, 9), output_tokens=(2, 4), shared_prefix=5)
    assert a == b and a != poisson_workload(tok, 20, rate=5.0, seed=2, prompt_tokens=(3, 9), output_tokens=(2, 4))
    assert a[0].arrival_s == 0 and all(x.arrival_s <= y.arrival_s for x, y in zip(a, a[1:]))
    assert all(8 <= len(r.prompt_ids) <= 14 and 2 <= r.max_tokens <= 4 for r in a)
    assert len({tuple(r.prompt_ids[:5]) for r in a}) == 1
    gaps = np.diff([r.arrival_s for r in poisson_workload(tok, 400, rate=10.0, seed=0)])
    assert 0.08 < gaps.mean() < 0.12                          # exponential gaps of mean 1/rate
    with pytest.raises(InvalidParameterError):
        poisson_workload(tok, 3, rate=0)


def test_policy_admissions():
    assert Policy("continuous").admissions(running=5, waiting=3, oldest_wait_s=0, drain=False) == 3
    static = Policy("static", batch_size=4)
    assert static.admissions(1, 9, 0, False) == 0             # a batch in flight
    assert static.admissions(0, 3, 99, False) == 0            # waits for a full batch ...
    assert static.admissions(0, 3, 0, True) == 3              # ... unless no more requests will come
    assert static.admissions(0, 9, 0, False) == 4
    dynamic = Policy("dynamic", batch_size=4, max_wait_s=0.1)
    assert dynamic.admissions(0, 2, 0.05, False) == 0 and dynamic.admissions(0, 2, 0.2, False) == 2
    assert Policy("sequential").admissions(0, 5, 0, False) == 1
    with pytest.raises(InvalidParameterError):
        Policy("greedy")


@pytest.mark.parametrize("policy", ["sequential", "static", "dynamic", "continuous"])
def test_every_policy_is_exact_and_frees_every_block(tiny, policy):
    model, tok = tiny
    summary, df = bench_batching(model, tok, policy=policy, requests=6, rate=200.0, seed=0, prompt_tokens=(3, 20),
                                 output_tokens=(2, 9), batch_size=3, max_num_seqs=3, max_wait_s=0.01, block_size=4)
    assert summary["outputs_match_reference"] and summary["all_blocks_free"]
    assert len(df) == 6 and (df["output_tokens"] >= 2).all()
    assert (df["ttft_s"] > 0).all() and (df["latency_s"] >= df["ttft_s"]).all()
    assert summary["kv_waste_paged"] < summary["kv_waste_contiguous"]
    if policy == "sequential":
        assert summary["mean_batch"] == 1


def test_metrics_by_hand():
    class M:  # the fields a RequestOutput's metrics carry
        def __init__(self, arrival, first, last):
            self.arrival_time, self.first_scheduled_time, self.first_token_time = arrival, arrival, first
            self.last_token_time, self.finish_time, self.num_preemptions, self.cached_prompt_tokens = last, last, 0, 0

    class O:
        def __init__(self, rid, n, arrival, first, last):
            self.request_id, self.prompt_token_ids, self.token_ids = rid, [1, 2], list(range(n))
            self.metrics = M(arrival, first, last)

    df = request_metrics([O("a", 5, 0.0, 1.0, 3.0), O("b", 1, 1.0, 2.0, 2.0)])
    assert list(df["ttft_s"]) == [1.0, 1.0] and df["tpot_s"][0] == 0.5 and np.isnan(df["tpot_s"][1])
    s = summarize(df)
    assert s["throughput_tok_s"] == 2.0 and s["requests_s"] == 2 / 3 and s["latency_p50_s"] == 2.0


def test_cli_bench_batching_json(capsys):
    code = main(["bench", "batching", "--model", "tiny-random", "--policy", "continuous", "--requests", "3",
                 "--rate", "100", "--min-output", "2", "--max-output", "4", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("throughput_tok_s", "ttft_p50_s", "ttft_p95_s", "latency_p95_s", "outputs_match_reference"):
        assert key in out
    assert out["outputs_match_reference"] is True


def test_cli_bench_kv_json(capsys):
    assert main(["bench", "kv", "--model", "tiny-random", "--new-tokens", "4", "--prompt-tokens", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["modes"]) == {"none", "contiguous", "paged", "paged-int8"}
    assert all({"tok_s", "kv_bytes"} <= set(v) for v in out["modes"].values())


@pytest.mark.parametrize("argv", [["--policy", "round-robin"], ["--rate", "0"], ["--requests", "0"]])
def test_cli_bench_batching_bad_input(capsys, argv):
    assert main(["bench", "batching", "--model", "tiny-random", *argv]) == 2
    assert capsys.readouterr().err.startswith("workbench: error:")
