"""Perplexity and bytes of the bundled model under every quantization spec, written as CSV/JSON.

Method: float32 model loaded once; for each spec a fresh copy is quantized with `quantize_` (calibrated
specs read the first 2,048 tokens of the built-in calibration part), then `perplexity` scores the
first `--max-tokens` tokens of the built-in evaluation part in non-overlapping windows of `--window`.
`weight_bytes` counts every stored tensor (packed integers, scales, zero-points, norms). Rows are
written atomically after each spec, so an interrupted run keeps what it finished.

    .venv/bin/python benchmarks/quantization_ppl.py [--max-tokens 4096] [--specs int8 q4_0 ...]
"""

from __future__ import annotations

import argparse
import copy
import time

import pandas as pd
import torch

import workbench
from workbench.eval import builtin_text, perplexity
from workbench.io import atomic_write_json, atomic_write_text
from workbench.quant import SPECS, quantize_


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--specs", nargs="*", default=list(SPECS))
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="data/results/quantization")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = workbench.load_model(args.model)
    ids = tok.encode(builtin_text("evaluation"), add_special_tokens=False)[:args.max_tokens]

    def row(spec, m, quantize_s):
        r = perplexity(m, ids, window=args.window)
        return {"spec": spec, "ppl": r.ppl, "predictions": r.predictions, "weight_bytes": m.weight_bytes(),
                "quantize_s": quantize_s}

    rows = [row("float32", model, 0.0)]
    for spec in args.specs:
        start = time.perf_counter()
        quantized = quantize_(copy.deepcopy(model), spec, tokenizer=tok)
        rows.append(row(spec, quantized, time.perf_counter() - start))
        rows[-1]["ppl_vs_float32"] = rows[-1]["ppl"] / rows[0]["ppl"] - 1
        print(f"{spec:<26} ppl {rows[-1]['ppl']:8.3f}  {rows[-1]['weight_bytes'] / 1e6:7.1f} MB  "
              f"({rows[-1]['quantize_s']:.0f} s to quantize)", flush=True)
        frame = pd.DataFrame(rows)
        atomic_write_text(args.out + ".csv", frame.to_csv(index=False))
        atomic_write_json(args.out + ".json", {"method": __doc__, "model": args.model, "window": args.window,
                                               "max_tokens": args.max_tokens, "rows": rows})
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
