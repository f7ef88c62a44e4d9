"""Load and answers of served variants through evalscope; writes data/results/evaluation_*.{csv,json}.

    PYTHONPATH=. python benchmarks/evaluation.py                       # the defaults below
    PYTHONPATH=. python benchmarks/evaluation.py --variants fp32 quant=int8 --number 4 --limit 20

Each variant gets its own `workbench serve` child process (offline), then `evalscope perf` at each
concurrency and `evalscope eval` on data/eval (fidelity, mcq, qa). Variants run one after another,
not alternated round by round: throughput ratios between them carry the machine's drift (the load
is recorded before and after). Finished runs are kept under --runs and skipped with --resume.
"""

from __future__ import annotations

import os
import sys

from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import run_info
from workbench.evals import EVALSCOPE_VERSION, Variant, llama_cpp_peer, perf_sweep, run_tasks, served
from workbench.io import atomic_write_json, atomic_write_text

DEFAULT_VARIANTS = ["fp32", "bf16", "quant=int8", "quant=int4-g128", "quant=int4-g128-gptq", "prune=wanda:0.5"]


def main(argv=None):
    p = benchmark_parser(__doc__, "evaluation", full={}, quick={})
    p.add_argument("--variants", nargs="+", default=None)
    p.add_argument("--parallel", type=int, nargs="+", default=None)
    p.add_argument("--number", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="questions per set (default: all; --quick: 4)")
    p.add_argument("--runs", default="evalscope_runs/benchmark")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(_benchmark={"name": "evaluation", "min_rounds": 1,
                               "full": {"variants": DEFAULT_VARIANTS, "parallel": [1, 2, 4, 8], "number": 8,
                                        "max_tokens": 32},
                               "quick": {"variants": ["fp32", "quant=int8"], "parallel": [1, 2], "number": 2,
                                         "max_tokens": 8, "limit": 4}})
    args = parse_benchmark_args(p, argv)
    import pandas as pd

    variants = [Variant.parse(s) for s in args.variants]
    info = run_info(bandwidth=args.bandwidth)
    perf, tasks = [], []
    for v in variants:
        with served(v, server_args=("--threads", str(args.threads))) as server:
            perf.append(perf_sweep(server, args.parallel, args.number, f"{args.runs}/perf/{v.label}",
                                   max_tokens=args.max_tokens, resume=args.resume))
            tasks.append(run_tasks(server, work_dir=f"{args.runs}/tasks/{v.label}", limit=args.limit,
                                   max_tokens=args.max_tokens, resume=args.resume))
            print(tasks[-1][["variant", "set", "score", "ci_low", "ci_high", "questions"]].round(3).to_string(index=False),
                  file=sys.stderr)
    perf, tasks = pd.concat(perf, ignore_index=True), pd.concat(tasks, ignore_index=True)
    peer_ok, peer_reason = llama_cpp_peer(None)
    info.update(loadavg_end=list(os.getloadavg()), evalscope=EVALSCOPE_VERSION, machine_shared=True,
                llama_cpp_peer=peer_reason if not peer_ok else "available (not run by this script)",
                method="one workbench serve per variant (offline); evalscope perf: random prompts of 64 tokens "
                       f"from the model's tokenizer, exactly {args.max_tokens} tokens out, greedy, streaming; "
                       "evalscope eval (openai_api) on data/eval; 95% bootstrap intervals over questions; "
                       "variants one after another (not alternated)")
    for part, df in (("perf", perf), ("tasks", tasks)):  # STEM_perf.* and STEM_tasks.*
        atomic_write_text(f"{args.out}_{part}.csv", df.to_csv(index=False))
        atomic_write_json(f"{args.out}_{part}.json", {"run": info, "rows": df.to_dict(orient="records")})
    print(perf[["variant", "parallel", "failed", "output_throughput", "ttft_ms_p50", "tpot_ms_p50",
                "tokens_match_server"]].round(1).to_string(index=False))
    print(tasks[["variant", "set", "score", "ci_low", "ci_high", "questions"]].round(3).to_string(index=False))
    return 0 if (perf["failed"] == 0).all() and perf["tokens_match_server"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
