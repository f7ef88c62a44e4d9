"""KV cache modes (none, contiguous, paged, paged-int8) on the bundled model, and int8 KV's perplexity cost.

Method: `workbench.bench.kv.METHOD` (one prompt, greedy, batch 1, modes interleaved per round) and
`int8_kv_perplexity` (the built-in evaluation text, the same windows with float and int8 keys/values).
Target (issue 6): the cache at least 5x the tokens/s of no cache at 256 generated tokens.
Writes data/results/kv_cache.json and .csv atomically.

    .venv/bin/python benchmarks/kv_cache.py [--new-tokens 256] [--prompt-tokens 128] [--repeats 3]
    .venv/bin/python benchmarks/kv_cache.py --quick      # smoke run: writes kv_cache_quick.*
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

import workbench
from workbench.bench.kv import bench_kv, int8_kv_perplexity
from workbench.bench.timing import run_info
from workbench.io import atomic_write_json, atomic_write_text

TARGET = 5.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ppl-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="data/results/kv_cache")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.prompt_tokens, args.repeats, args.ppl_tokens = 16, 16, 1, 512
        args.out += "_quick"
    torch.set_num_threads(args.threads)
    model, tok = workbench.load_model(args.model)
    result = bench_kv(model, tok, new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens, repeats=args.repeats)
    result["int8_kv_perplexity"] = int8_kv_perplexity(model, tok, max_tokens=args.ppl_tokens,
                                                      window=min(1024, args.ppl_tokens))
    speedup = result["speedup_vs_none"]["contiguous"]
    result.update(model=args.model, run=run_info(),
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
