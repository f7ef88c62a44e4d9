"""The four batching policies on one seeded mixed-length workload, with one shared exactness reference.

Method: `workbench.bench.batching.METHOD`. Policies run one after another on the same workload (same
seed, arrivals, prompts and lengths); the one-at-a-time reference is decoded once. The targets
(issue 6): continuous >= 2x sequential and >= 1.3x static output throughput, continuous p95 latency
<= static's, paged KV waste < 5%. Writes data/results/batching.json and .csv atomically.

    .venv/bin/python benchmarks/batching.py [--requests 32] [--rate 4] [--seed 0] [--min-output 16 --max-output 256]
    .venv/bin/python benchmarks/batching.py --quick      # smoke run: writes batching_quick.*
"""

from __future__ import annotations

import sys

import pandas as pd

import workbench
from workbench.bench.batching import bench_batching, reference_outputs
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import run_end, run_info
from workbench.engine import POLICIES, poisson_workload
from workbench.io import atomic_write_json, atomic_write_text


def main(argv=None):
    parser = benchmark_parser(__doc__, "batching", full=dict(requests=32, min_output=16, max_output=256, batch_size=16),
                              quick=dict(requests=6, min_output=4, max_output=16, batch_size=4))
    parser.add_argument("--requests", type=int, default=None, help="requests in the workload (full 32)")
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--min-output", type=int, default=None, help="shortest output (full 16)")
    parser.add_argument("--max-output", type=int, default=None, help="longest output (full 256)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="static/dynamic batch; continuous max sequences (full 16)")
    parser.add_argument("--max-wait", type=float, default=0.5, help="dynamic batching's wait (s)")
    parser.add_argument("--policies", nargs="*", default=list(POLICIES))
    args = parse_benchmark_args(parser, argv)
    info = run_info(bandwidth=args.bandwidth)
    model, tok = workbench.load_model(args.model)
    settings = dict(requests=args.requests, rate=args.rate, seed=args.seed,
                    prompt_tokens=(args.min_prompt, args.max_prompt), output_tokens=(args.min_output, args.max_output),
                    batch_size=args.batch_size, max_num_seqs=args.batch_size, max_wait_s=args.max_wait)
    workload = poisson_workload(tok, args.requests, args.rate, args.seed, settings["prompt_tokens"],
                                settings["output_tokens"])
    print(f"reference: {len(workload)} requests decoded one at a time ...", file=sys.stderr, flush=True)
    reference = reference_outputs(model, workload)
    summaries, frames = {}, []
    for policy in args.policies:
        print(f"{policy} ...", file=sys.stderr, flush=True)
        summaries[policy], df = bench_batching(model, tok, policy=policy, workload=workload, reference=reference,
                                               **settings)
        frames.append(df)
        s = summaries[policy]
        print(f"  {s['throughput_tok_s']:.1f} tok/s, TTFT p95 {s['ttft_p95_s']:.2f} s, latency p95 "
              f"{s['latency_p95_s']:.2f} s, exact {s['outputs_match_reference']}, load {s['loadavg_end']}",
              file=sys.stderr, flush=True)
    tput = {p: s["throughput_tok_s"] for p, s in summaries.items()}
    targets = {}
    if {"continuous", "sequential", "static"} <= set(summaries):
        c, st = summaries["continuous"], summaries["static"]
        targets = {"continuous_over_sequential": tput["continuous"] / tput["sequential"],
                   "continuous_over_static": tput["continuous"] / tput["static"],
                   "p95_latency_continuous_over_static": c["latency_p95_s"] / st["latency_p95_s"],
                   "paged_kv_waste_continuous": c["kv_waste_paged"],
                   "contiguous_kv_waste_continuous": c["kv_waste_contiguous"]}
        targets["met"] = {"2x_sequential": targets["continuous_over_sequential"] >= 2,
                          "1.3x_static": targets["continuous_over_static"] >= 1.3,
                          "p95_no_worse": targets["p95_latency_continuous_over_static"] <= 1,
                          "waste_under_5pct": targets["paged_kv_waste_continuous"] < 0.05}
    result = {"policies": summaries, "targets": targets, "settings": settings, "model": args.model,
              "run": run_end(info)}
    atomic_write_json(args.out + ".json", result)
    atomic_write_text(args.out + "_requests.csv", pd.concat(frames).to_csv(index=False))
    table = pd.DataFrame(summaries).T.drop(columns=["method"])
    atomic_write_text(args.out + ".csv", table.to_csv())
    cols = ["throughput_tok_s", "ttft_p50_s", "ttft_p95_s", "latency_p95_s", "mean_batch", "kv_waste_paged",
            "kv_waste_contiguous", "preemptions", "outputs_match_reference", "all_blocks_free"]
    print(table[cols].to_markdown(floatfmt=".3f"))
    print(targets)


if __name__ == "__main__":
    main()
