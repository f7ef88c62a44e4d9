"""Perplexity and bytes of the bundled model under every quantization spec, written as CSV/JSON.

Method: `workbench.bench.quality.METHOD` (a fresh quantized copy per spec, perplexity on the first
`--max-tokens` built-in evaluation tokens in windows of `--window`). Rows are written atomically
after each spec, so an interrupted run keeps what it finished.

    .venv/bin/python benchmarks/quantization_ppl.py [--max-tokens 4096] [--specs int8 q4_0 ...]
    .venv/bin/python benchmarks/quantization_ppl.py --decode-chunks 16 1 --specs float32 bfloat16 int8 \
        int4-g128 q8_0 q4_0 q4_1 --max-tokens 2048 --window 512 --out data/results/decode_path_ppl
    .venv/bin/python benchmarks/quantization_ppl.py --quick      # smoke run: writes quantization_quick.*
"""

from __future__ import annotations

import workbench
import workbench.kernels
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
    parser.add_argument("--decode-chunks", type=int, nargs="*", default=[],
                        help="also score through the decode path, this many tokens per step (e.g. 16 1)")
    args = parse_benchmark_args(parser, argv)
    if any(c < 1 for c in args.decode_chunks):
        parser.error(f"--decode-chunks: tokens per step must be at least 1, got {args.decode_chunks}")
    model, tok = workbench.load_model(args.model)
    info = run_info(bandwidth=args.bandwidth)

    def save(rows):
        import pandas as pd

        decoded = "".join(f"  chunks of {c}: {rows[-1][f'chunk{c}_vs_window']:+.4%}" for c in args.decode_chunks)
        print(f"{rows[-1]['spec']:<26} ppl {rows[-1]['ppl']:8.3f}  {rows[-1]['weight_bytes'] / 1e6:7.1f} MB  "
              f"({rows[-1]['quantize_s']:.0f} s to quantize){decoded}", flush=True)
        atomic_write_text(args.out + ".csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write_json(args.out + ".json", {"method": METHOD, "model": args.model, "window": args.window,
                                               "max_tokens": args.max_tokens, "decode_chunks": args.decode_chunks,
                                               "kernels": workbench.kernels.status(),
                                               "run": run_end(info), "rows": rows})

    table = quantization_table(model, tok, args.specs, eval_tokens=args.max_tokens, window=args.window,
                               on_row=save, progress=False, decode_chunks=tuple(args.decode_chunks))
    print(table.drop(columns="description").to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
