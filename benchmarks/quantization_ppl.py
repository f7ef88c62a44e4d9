"""Perplexity and bytes of the bundled model under every quantization spec, written as CSV/JSON.

Method: `workbench.bench.quality.METHOD` (a fresh quantized copy per spec, perplexity on the first
`--max-tokens` built-in evaluation tokens in windows of `--window`). Rows are written atomically
after each spec, so an interrupted run keeps what it finished.

    .venv/bin/python benchmarks/quantization_ppl.py [--max-tokens 4096] [--specs int8 q4_0 ...]
"""

from __future__ import annotations

import argparse

import torch

import workbench
from workbench.bench import quantization_table
from workbench.bench.quality import METHOD
from workbench.bench.timing import run_info
from workbench.io import atomic_write_json, atomic_write_text
from workbench.quant import SPECS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--specs", nargs="*", default=["float32", "bfloat16", *SPECS])
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="data/results/quantization")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = workbench.load_model(args.model)
    info = run_info()

    def save(rows):
        import pandas as pd

        print(f"{rows[-1]['spec']:<26} ppl {rows[-1]['ppl']:8.3f}  {rows[-1]['weight_bytes'] / 1e6:7.1f} MB  "
              f"({rows[-1]['quantize_s']:.0f} s to quantize)", flush=True)
        atomic_write_text(args.out + ".csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write_json(args.out + ".json", {"method": METHOD, "model": args.model, "window": args.window,
                                               "max_tokens": args.max_tokens, "run": info, "rows": rows})

    table = quantization_table(model, tok, args.specs, eval_tokens=args.max_tokens, window=args.window,
                               on_row=save, progress=False)
    print(table.drop(columns="description").to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
