"""`workbench serve` under load: throughput against the engine's own, a soak with cancellations, exactness.

Method: `workbench.bench.serving.METHOD`. One server (a child process, `ServerProcess`) and one engine in
this process, on the same model, threads and kernels setting.

1. Throughput: for each round r, a seeded workload (seed + r, so the server's prefix cache never sees a
   prompt twice) runs once through the server with `--clients` streaming clients and once through
   `Engine.generate` with max_num_seqs = clients; the order of the two alternates by round. Reported:
   medians over rounds and the ratio server / engine (target >= 0.8).
2. Soak: `--soak-requests` requests of mixed lengths at `--soak-concurrency`, a seeded `--cancel-fraction`
   of them closed by the client halfway. Checked: no error but the intended cancellations, every KV block
   free afterwards (from /metrics), the server's RSS (/proc) growth from the end of the first tenth of
   the requests (request 100 of 1,000) to the last.
3. Exactness: greedy text through the server equals Engine.generate's, streamed equals non-streamed,
   usage equals our tokenizer's counts.

Writes data/results/serving.json, serving.csv (one row per throughput run) and serving_soak.csv.

    .venv/bin/python benchmarks/serving.py                       # full (1,000-request soak)
    .venv/bin/python benchmarks/serving.py --soak-requests 300   # a reduced soak; its size is in the results
    .venv/bin/python benchmarks/serving.py --quick               # smoke run: writes serving_quick.*
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np
import openai
import pandas as pd
import torch

import workbench
from workbench import kernels
from workbench.bench.serving import (METHOD, engine_throughput, load_summary, run_load, scrape_metrics,
                                     wait_blocks_free)
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import median, run_info
from workbench.engine import Engine, EngineConfig, SamplingParams, poisson_workload
from workbench.io import atomic_write_json, atomic_write_text
from workbench.serve.process import ServerProcess

EXACT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def as_requests(workload, cancel=()):
    return [(r.prompt_ids, r.max_tokens, max(1, r.max_tokens // 2) if i in cancel else None)
            for i, r in enumerate(workload)]


def throughput(args, server, engine, tok):
    rows = []
    for r in range(args.rounds):
        workload = poisson_workload(tok, args.requests, float("inf"), args.seed + r, (args.min_prompt, args.max_prompt),
                                    (args.min_output, args.max_output))
        order = ("server", "engine") if r % 2 == 0 else ("engine", "server")
        for peer in order:
            load = os.getloadavg()[0]
            if peer == "server":
                records, wall = run_load(server.url, server.model, as_requests(workload), args.clients)
                s = load_summary(records, wall)
                assert s["errors"] == 0, [x["error"] for x in records if x["error"]][:3]
            else:
                s = engine_throughput(engine, workload)
            rows.append({"round": r, "peer": peer, "loadavg_1m": load, **s})
            log(f"  round {r} {peer}: {s['throughput_tok_s']:.1f} tok/s ({s['output_tokens']} tokens, "
                f"{s['wall_s']:.1f} s, load {load:.1f})")
    df = pd.DataFrame(rows)
    med = {p: median(df[df.peer == p]["throughput_tok_s"]) for p in ("server", "engine")}
    ratios = [df[(df["round"] == r) & (df.peer == "server")]["throughput_tok_s"].iloc[0]
              / df[(df["round"] == r) & (df.peer == "engine")]["throughput_tok_s"].iloc[0] for r in range(args.rounds)]
    summary = {"server_tok_s_median": med["server"], "engine_tok_s_median": med["engine"],
               "ratio_of_medians": med["server"] / med["engine"], "ratio_per_round": ratios,
               "ttft_p50_s_median": median(df[df.peer == "server"]["ttft_p50_s"]),
               "target_0.8_met": med["server"] / med["engine"] >= 0.8}
    return summary, df


def soak(args, server, tok):
    workload = poisson_workload(tok, args.soak_requests, float("inf"), args.seed + 1000,
                                (args.min_prompt, args.max_prompt), (args.soak_min_output, args.soak_max_output))
    rng = np.random.default_rng(args.seed)
    cancel = set(rng.choice(len(workload), int(round(args.cancel_fraction * len(workload))), replace=False).tolist())
    mark = max(1, len(workload) // 10)  # request 100 of 1,000: growth after the first tenth (warm-up)
    rss = {}

    def on_done(n):
        if n == mark:
            rss["at_first_tenth"] = rss_mb(server.proc.pid)

    rss["before"] = rss_mb(server.proc.pid)
    records, wall = run_load(server.url, server.model, as_requests(workload, cancel), args.soak_concurrency, on_done)
    rss["at_last_request"] = rss_mb(server.proc.pid)
    m = wait_blocks_free(server.url)
    summary = load_summary(records, wall)
    growth = rss["at_last_request"] / rss["at_first_tenth"] - 1
    errors = [r["error"] for r in records if r["error"]]
    summary.update({
        "concurrency": args.soak_concurrency, "cancel_fraction": args.cancel_fraction, "cancel_planned": len(cancel),
        "output_tokens_range": [args.soak_min_output, args.soak_max_output],
        "full_size": args.soak_requests >= 1000, "error_messages": errors[:5],
        "kv_blocks_free_after": m["workbench:kv_cache_blocks_free"],
        "kv_blocks_total": m["workbench:kv_cache_blocks_total"],
        "all_blocks_free_after": m["workbench:kv_cache_blocks_free"] == m["workbench:kv_cache_blocks_total"],
        "running_after": m["workbench:num_requests_running"], "rss_mb": rss, "rss_first_tenth_at_request": mark,
        "rss_growth_first_tenth_to_last": growth,
        "rss_growth_under_10pct": growth < 0.10,
        "only_intended_cancellations": not errors and summary["cancelled"] == len(cancel)})
    per_request = pd.DataFrame([{k: v for k, v in r.items() if k != "text"} for r in records])
    per_request.insert(0, "request", range(len(records)))
    return summary, per_request


def exactness(server, engine, tok, max_tokens):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    rows = []
    for prompt in EXACT_PROMPTS:
        expected = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=max_tokens))[0]
        whole = client.completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True) if c.choices)
        rows.append({"prompt": prompt, "server_equals_engine": whole.choices[0].text == expected.text,
                     "streamed_equals_whole": streamed == whole.choices[0].text,
                     "usage_prompt_equals_tokenizer": whole.usage.prompt_tokens == len(tok.encode(prompt)),
                     "usage_completion_equals_engine": whole.usage.completion_tokens == len(expected.token_ids),
                     "completion_tokens": whole.usage.completion_tokens})
    return {"checks": rows, "all_exact": all(all(v for k, v in r.items() if k not in ("prompt", "completion_tokens"))
                                             for r in rows)}


def main(argv=None):
    sizes = ("requests", "max_output", "soak_requests", "exact_tokens")
    parser = benchmark_parser(__doc__, "serving", full={"rounds": 3, "kernels": "on", "requests": 32, "max_output": 64,
                                                        "soak_requests": 1000, "exact_tokens": 24},
                              quick={"rounds": 2, "requests": 8, "max_output": 16, "soak_requests": 40,
                                     "exact_tokens": 8})
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=None, help="throughput workload, per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-prompt", type=int, default=16)
    parser.add_argument("--max-prompt", type=int, default=128)
    parser.add_argument("--min-output", type=int, default=16)
    parser.add_argument("--max-output", type=int, default=None)
    parser.add_argument("--soak-requests", type=int, default=None)
    parser.add_argument("--soak-concurrency", type=int, default=16)
    parser.add_argument("--soak-min-output", type=int, default=4)
    parser.add_argument("--soak-max-output", type=int, default=24)
    parser.add_argument("--cancel-fraction", type=float, default=0.1)
    parser.add_argument("--exact-tokens", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=[], choices=["throughput", "soak", "exactness"])
    args = parse_benchmark_args(parser, argv)  # shared flags and the sizes above, full or --quick
    assert all(getattr(args, k) is not None for k in sizes)
    # a SIGTERM (a timeout, a kill) unwinds the `with` below, so the server child is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(args.threads)
    kernels.set_enabled(args.kernels == "on")
    model, tok = workbench.load_model(args.model, kernels=args.kernels == "on")
    engine = Engine(model, tok, EngineConfig(max_num_seqs=args.clients))
    flags = ("--model", args.model, "--threads", str(args.threads), "--kernels", args.kernels,
             "--max-num-seqs", str(max(args.clients, args.soak_concurrency)))
    result = {"method": METHOD, "model": args.model, "server_flags": list(flags), "settings": vars(args).copy(),
              "run": run_info(bandwidth=args.bandwidth)}
    with ServerProcess(*flags) as server:
        if "exactness" not in args.skip:
            log("exactness ...")
            result["exactness"] = exactness(server, engine, tok, args.exact_tokens)
            log(f"  all exact: {result['exactness']['all_exact']}")
        if "throughput" not in args.skip:
            log(f"throughput: {args.rounds} rounds of {args.requests} requests, {args.clients} clients ...")
            result["throughput"], runs = throughput(args, server, engine, tok)
            atomic_write_text(args.out + ".csv", runs.to_csv(index=False))
            log(f"  server/engine = {result['throughput']['ratio_of_medians']:.3f}")
        if "soak" not in args.skip:
            log(f"soak: {args.soak_requests} requests at concurrency {args.soak_concurrency} ...")
            result["soak"], per_request = soak(args, server, tok)
            atomic_write_text(args.out + "_soak.csv", per_request.to_csv(index=False))
            s = result["soak"]
            log(f"  {s['wall_s']:.0f} s, errors {s['errors']}, cancelled {s['cancelled']}, blocks free "
                f"{s['all_blocks_free_after']}, RSS growth {s['rss_growth_first_tenth_to_last']:.3%}, TTFT p50/p95 "
                f"{s['ttft_p50_s']:.2f}/{s['ttft_p95_s']:.2f} s, latency p50/p95 {s['latency_p50_s']:.2f}/"
                f"{s['latency_p95_s']:.2f} s")
        result["server_metrics_end"] = {k: v for k, v in scrape_metrics(server.url).items() if "{" not in k}
    result["run"]["loadavg_end"] = list(os.getloadavg())
    atomic_write_json(args.out + ".json", result)
    log(f"wrote {args.out}.json")


if __name__ == "__main__":
    main()
