"""KV cache modes (none, contiguous, paged, paged-int8) on the bundled model, and int8 KV's perplexity cost.

Method: `workbench.bench.kv.METHOD` (one prompt, greedy, batch 1, modes alternated per round) and
`int8_kv_perplexity` (the built-in evaluation text, the same windows with float and int8 keys/values).
Target (issue 6): the cache at least 5x the tokens/s of no cache at 256 generated tokens.
Writes data/results/kv_cache.json and .csv atomically.

    .venv/bin/python benchmarks/kv_cache.py [--new-tokens 256] [--prompt-tokens 128] [--rounds 3]
    .venv/bin/python benchmarks/kv_cache.py --quick      # smoke run: writes kv_cache_quick.*
"""

from __future__ import annotations

import pandas as pd

import workbench
from workbench.bench.kv import bench_kv, int8_kv_perplexity
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import run_end, run_info
from workbench.io import atomic_write_json, atomic_write_text

TARGET = 5.0


def main(argv=None):
    parser = benchmark_parser(__doc__, "kv_cache", full=dict(new_tokens=256, prompt_tokens=128, rounds=3, ppl_tokens=8192),
                              quick=dict(new_tokens=16, prompt_tokens=16, rounds=1, ppl_tokens=512))
    parser.add_argument("--ppl-tokens", type=int, default=None, help="evaluation tokens of the int8 KV perplexity")
    args = parse_benchmark_args(parser, argv)
    info = run_info(bandwidth=args.bandwidth)
    model, tok = workbench.load_model(args.model)
    result = bench_kv(model, tok, new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens, repeats=args.rounds)
    result["int8_kv_perplexity"] = int8_kv_perplexity(model, tok, max_tokens=args.ppl_tokens,
                                                      window=min(1024, args.ppl_tokens))
    speedup = result["speedup_vs_none"]["contiguous"]
    result.update(model=args.model, run=run_end(info),
                  target={"contiguous_over_none_at_256": TARGET, "measured": speedup,
                          "met": speedup >= TARGET if args.new_tokens == 256 else None})
    rows = [{"mode": m, **{k: v for k, v in r.items() if k != "seconds"}} for m, r in result["modes"].items()]
    atomic_write_json(args.out + ".json", result)
    atomic_write_text(args.out + ".csv", pd.DataFrame(rows).to_csv(index=False))
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f"))
    q = result["int8_kv_perplexity"]
    print(f"speed-up contiguous / none at {args.new_tokens} tokens: {speedup:.2f}x (target {TARGET}x); "
          f"int8 KV perplexity {q['ppl']:.3f} -> {q['ppl_int8_kv']:.3f}; load {result['loadavg_start']} -> "
          f"{result['loadavg_end']}")


if __name__ == "__main__":
    main()
