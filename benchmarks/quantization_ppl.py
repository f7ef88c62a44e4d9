"""Perplexity and bytes of the bundled model under every quantization spec, written as CSV/JSON.

Method: `workbench.bench.quality.METHOD` (a fresh quantized copy per spec, perplexity on the first
`--max-tokens` built-in evaluation tokens in windows of `--window`). Rows are written atomically
after each spec, so an interrupted run keeps what it finished.

    .venv/bin/python benchmarks/quantization_ppl.py [--max-tokens 4096] [--specs int8 q4_0 ...]
    .venv/bin/python benchmarks/quantization_ppl.py --quick      # smoke run: writes quantization_quick.*
"""

from __future__ import annotations

import workbench
from workbench.bench import quantization_table
from workbench.bench.quality import METHOD
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import run_end, run_info
from workbench.io import atomic_write_json, atomic_write_text
from workbench.quant import SPECS


def main(argv=None):
    parser = benchmark_parser(__doc__, "quantization", full=dict(specs=["float32", "bfloat16", *SPECS], max_tokens=4096,
                                                               window=1024),
                              quick=dict(specs=["float32", "int8", "q4_0"], max_tokens=512, window=256))
    parser.add_argument("--specs", nargs="*", default=None, help="full: float32 bfloat16 and every quantization spec")
    parser.add_argument("--max-tokens", type=int, default=None, help="evaluation tokens (full 4096)")
    parser.add_argument("--window", type=int, default=None, help="perplexity window (full 1024)")
    args = parse_benchmark_args(parser, argv)
    model, tok = workbench.load_model(args.model)
    info = run_info(bandwidth=args.bandwidth)

    def save(rows):
        import pandas as pd

        print(f"{rows[-1]['spec']:<26} ppl {rows[-1]['ppl']:8.3f}  {rows[-1]['weight_bytes'] / 1e6:7.1f} MB  "
              f"({rows[-1]['quantize_s']:.0f} s to quantize)", flush=True)
        atomic_write_text(args.out + ".csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write_json(args.out + ".json", {"method": METHOD, "model": args.model, "window": args.window,
                                               "max_tokens": args.max_tokens, "run": run_end(info), "rows": rows})

    table = quantization_table(model, tok, args.specs, eval_tokens=args.max_tokens, window=args.window,
                               on_row=save, progress=False)
    print(table.drop(columns="description").to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
