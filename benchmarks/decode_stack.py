"""The native decode stack against the layers one by one, and its grouped products, per spec and batch.

Method: for each spec and batch size, one model with our kernels on (`kernels.enable`) decodes the
same prompts (`workbench.bench.decode.benchmark_prompts`, greedy, end of sequence ignored) three
ways, alternated round by round (`workbench.bench.timing.alternate`, medians, ratios as medians of
per-round ratios): `stack` (`kernels.stack.native_stack` as the model's `decode_stack_fn`: every layer of a step in one C++ call,
q/k/v and gate/up each in one parallel region), `stack-separate` (the same call, one parallel region
per matrix: `set_grouped_products(False)`) and `layers` (`decode_stack_fn` unset: the layers run
from Python, each operation on our kernels). Decode tokens/s counts the tokens between the first
and the last of a run (`workbench.bench.decode.time_generation`). Writes `data/results/decode_stack.json`
and `.csv` with `run_info()`.

    .venv/bin/python benchmarks/decode_stack.py                       # float32 bfloat16 int8 int4-g128 q8_0 q4_0 q4_1, batch 1 and 8
    .venv/bin/python benchmarks/decode_stack.py --quick               # smoke run: decode_stack_quick.*
"""

from __future__ import annotations

import workbench
from workbench import kernels
from workbench.bench.decode import benchmark_prompts, time_generation
from workbench.bench.flags import benchmark_parser, parse_benchmark_args, save_rows
from workbench.bench.quality import quantized_copy
from workbench.bench.timing import alternate, run_end, run_info
from workbench.kernels.stack import native_stack

WAYS = ("stack", "stack-separate", "layers")


def main(argv=None):
    parser = benchmark_parser(__doc__, "decode_stack",
                              full=dict(rounds=4, warmup_rounds=1, prompt_tokens=256, new_tokens=64,
                                        specs=["float32", "bfloat16", "int8", "int4-g128", "q8_0", "q4_0", "q4_1"],
                                        batches=[1, 8]),
                              quick=dict(rounds=1, warmup_rounds=0, prompt_tokens=16, new_tokens=4,
                                         specs=["float32", "int8"], batches=[1]))
    parser.add_argument("--specs", nargs="*", default=None, help="full: float32 bfloat16 int8 int4-g128 q8_0 q4_0 q4_1")
    parser.add_argument("--batches", type=int, nargs="*", default=None, help="full: 1 8")
    args = parse_benchmark_args(parser, argv)
    if any(b < 1 or b > kernels.MAX_ROWS for b in args.batches):
        parser.error(f"--batches: the decode stack covers 1 to {kernels.MAX_ROWS} sequences, got {args.batches}")
    model, tok = workbench.load_model(args.model)
    ops = kernels.build.load()
    if ops is None:
        parser.error(f"our kernels are unavailable here: {kernels.status()['reason']}")
    info = run_info(bandwidth=args.bandwidth)
    rows = []
    for spec in args.specs:
        variant = kernels.enable(quantized_copy(model, spec, tok))
        for batch in args.batches:
            prompts = benchmark_prompts(tok, batch, args.prompt_tokens)

            def way(stack: bool, grouped: bool):
                def run():
                    variant.decode_stack_fn = native_stack if stack else None  # no measured choice between them
                    ops.set_grouped_products(grouped)
                    _, decode_s = time_generation(variant, prompts, args.new_tokens)
                    return batch * (args.new_tokens - 1) / decode_s
                return run

            rounds = alternate({"stack": way(True, True), "stack-separate": way(True, False),
                                "layers": way(False, True)}, args.rounds, args.warmup_rounds)
            ops.set_grouped_products(True)
            variant.decode_stack_fn = kernels.decode_stack
            row = {"spec": spec, "batch": batch, **{f"{w}_tok_s": rounds.median(w) for w in WAYS},
                   "stack_vs_layers": rounds.ratio("stack", "layers"),
                   "grouped_vs_separate": rounds.ratio("stack", "stack-separate"),
                   "runs_tok_s": {w: rounds.series(w) for w in WAYS}}
            rows.append(row)
            print(f"{spec:<10} batch {batch}: stack {row['stack_tok_s']:.1f}  separate {row['stack-separate_tok_s']:.1f}"
                  f"  layers {row['layers_tok_s']:.1f} tok/s  stack/layers {row['stack_vs_layers']:.2f}x"
                  f"  grouped/separate {row['grouped_vs_separate']:.3f}x", flush=True)
            save_rows(args, rows, method=__doc__, run=run_end(info), kernels=kernels.status(),
                      settings=("rounds", "warmup_rounds", "prompt_tokens", "new_tokens", "threads", "specs",
                                "batches"), series="runs_tok_s")
        del variant


if __name__ == "__main__":
    main()
