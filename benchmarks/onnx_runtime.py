#!/usr/bin/env python
"""ONNX Runtime next to our engine, float32 and int8: perplexity, bytes, prefill and decode speed, one run.

Four engines: ours in float32 and in our int8 (weight-only, per output channel, with our CPU
kernels), and ONNX Runtime on our model exported by `workbench.interop.export_onnx` (float32) and on
that file after ONNX Runtime's own dynamic int8 (`quantize_dynamic`). Perplexity: each engine scores
the first `--max-tokens` tokens of the built-in evaluation text in windows of `--window`
(`workbench.eval.perplexity`, the same function for all four). Speed: per batch size, an untimed
warm-up generation of each engine (its greedy tokens are compared with our float32 engine's), then
`--rounds` rounds in which every engine runs once (`workbench.bench.timing.alternate`); prefill =
start of the call to the first token, decode = first to last token (`workbench.bench.decode.METHOD`).

    .venv/bin/python benchmarks/onnx_runtime.py             # full: prompt 128, 64 new tokens, batch 1 and 8
    .venv/bin/python benchmarks/onnx_runtime.py --quick     # smoke run
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench import kernels  # noqa: E402
from workbench.bench import quantized_copy  # noqa: E402
from workbench.bench.decode import METHOD, benchmark_prompts, time_generation  # noqa: E402
from workbench.bench.flags import benchmark_parser, parse_benchmark_args  # noqa: E402
from workbench.bench.timing import CLOCKS, alternate, median, run_end, run_info  # noqa: E402
from workbench.checkpoints import load_model  # noqa: E402
from workbench.corpus import builtin_text  # noqa: E402
from workbench.eval import perplexity  # noqa: E402
from workbench.interop import INT8_METHOD, OnnxRunner, export_onnx, quantize_int8  # noqa: E402
from workbench.interop.check import ours_greedy  # noqa: E402
from workbench.io import atomic_write_json, atomic_write_text  # noqa: E402

FULL = {"batches": [1, 8], "prompt_tokens": 128, "new_tokens": 64, "rounds": 3, "warmup_rounds": 1, "kernels": "on",
        "clock": "wall", "max_tokens": 4096, "window": 1024}
QUICK = {"batches": [1, 2], "prompt_tokens": 16, "new_tokens": 8, "rounds": 1, "max_tokens": 256, "window": 128}
ORT_METHOD = (
    "ONNX Runtime (CPUExecutionProvider, intra_op_num_threads = --threads, inter_op 1, default graph optimizations) "
    "on workbench.interop's export: the KV cache goes in as past_key_i/past_value_i and comes out as present_*, "
    "concatenated in the graph; OnnxRunner.generate left-pads the prompts, runs one prefill, then one session.run "
    "per new token with the previous step's present tensors as its past; greedy argmax in numpy. Timed with the "
    "same clock and the same prefill/decode split as ours (a callback as each step's tokens are picked).")
BYTES_METHOD = ("bytes: ours = every stored weight tensor (workbench.model.weight_bytes; tied head once, rotary "
                "tables excluded); ONNX Runtime = the size of the .onnx file (weights, graph, 1 MB of rotary tables)")


def parse_args(argv=None):
    p = benchmark_parser(__doc__.split("\n\n")[0], "onnx_runtime", full=FULL, quick=QUICK)
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (full 1 8, quick 1 2)")
    p.add_argument("--max-tokens", type=int, default=None, help="perplexity tokens (full 4096, quick 256)")
    p.add_argument("--window", type=int, default=None, help="perplexity window (full 1024, quick 128)")
    args = parse_benchmark_args(p, argv)
    if any(b < 1 for b in args.batches) or args.window < 2 or args.max_tokens < 2:
        p.error("--batches must be >= 1, --window and --max-tokens >= 2")
    return args


def ort_timed(runner: OnnxRunner, clock):
    def time(prompts, new_tokens):
        marks = []
        start = clock()
        runner.generate(prompts, new_tokens, on_token=lambda: marks.append(clock()))
        return marks[0] - start, marks[-1] - marks[0]
    return time


def ours_timed(model, clock):
    def time(prompts, new_tokens):
        return time_generation(model, prompts, new_tokens, clock)
    return time


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of generated positions before each row's first difference."""
    same = sum(next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), len(x)) for x, y in zip(a, b))
    return same / sum(len(x) for x in a)


def run(args) -> dict:
    clock = CLOCKS[args.clock]
    info = run_info(bandwidth=args.bandwidth)
    base, tokenizer = load_model(args.model, kernels=args.kernels == "on")
    print("quantizing int8 (ours) ...", file=sys.stderr, flush=True)
    ours8 = quantized_copy(base, "int8", tokenizer)
    ours8 = kernels.enable(ours8) if args.kernels == "on" else ours8
    engines = {}
    with tempfile.TemporaryDirectory() as tmp:
        f32, i8 = Path(tmp) / "model.onnx", Path(tmp) / "model-int8.onnx"
        print("exporting to ONNX ...", file=sys.stderr, flush=True)
        start = clock()
        export_onnx(base, f32, name=args.model)
        export_s = clock() - start
        print("ONNX Runtime's dynamic int8 ...", file=sys.stderr, flush=True)
        start = clock()
        quantize_int8(f32, i8)
        quantize_s = clock() - start
        runners = {w: OnnxRunner(p, expect=base, expect_name=args.model, threads=args.threads)
                   for w, p in (("float32", f32), ("int8", i8))}
        import onnxruntime

        ort_name = f"onnxruntime {onnxruntime.__version__}"
        for weights, model in (("float32", base), ("int8", ours8)):
            engines[("workbench", weights)] = {"model": model, "bytes": model.weight_bytes(),
                                               "time": ours_timed(model, clock),
                                               "tokens": lambda p, n, m=model: ours_greedy(m, p, n)}
        for weights, runner in runners.items():
            engines[(ort_name, weights)] = {"model": runner, "bytes": runner.file_bytes,
                                            "time": ort_timed(runner, clock),
                                            "tokens": lambda p, n, r=runner: r.generate(p, n)}
        ids = tokenizer.encode(builtin_text("evaluation"), add_special_tokens=False)[:args.max_tokens]
        ppl = {}
        for key, e in engines.items():
            print(f"perplexity {' '.join(key)} ...", file=sys.stderr, flush=True)
            ppl[key] = perplexity(e["model"], ids, window=args.window).ppl
        rows = []
        P, N = args.prompt_tokens, args.new_tokens
        for batch in args.batches:
            prompts = benchmark_prompts(tokenizer, batch, P)
            print(f"batch {batch}: warm-up, then {args.rounds} rounds ...", file=sys.stderr, flush=True)
            tokens = {key: e["tokens"](prompts, N) for key, e in engines.items()}

            def timed(e):
                def one():
                    gc.collect()
                    return e["time"](prompts, N)
                return one
            rounds = alternate({key: timed(e) for key, e in engines.items()}, args.rounds,
                               max(args.warmup_rounds - 1, 0))
            for key, e in engines.items():
                runs = rounds.values[key]
                same = ("workbench", key[1])
                rows.append({
                    "engine": key[0], "weights": key[1], "batch": batch, "prompt_tokens": P, "new_tokens": N,
                    "threads": args.threads, "rounds": args.rounds, "bytes": e["bytes"], "ppl": ppl[key],
                    "prefill_tok_s": batch * P / median(r[0] for r in runs),
                    "decode_tok_s": batch * (N - 1) / median(r[1] for r in runs),
                    "decode_tok_s_min": min(batch * (N - 1) / r[1] for r in runs),
                    "decode_tok_s_max": max(batch * (N - 1) / r[1] for r in runs),
                    # per-round ratio of decode speeds to ours with the same weights (1.0 for ours)
                    "decode_vs_ours_same_weights": median(o[1] / r[1] for r, o in zip(runs, rounds.values[same])),
                    "greedy_agreement_vs_ours_float32": agreement(tokens[key], tokens[("workbench", "float32")]),
                    "runs_s": [{"prefill_s": p, "decode_s": d} for p, d in runs],
                })
    run_end(info)
    info["kernels"] = kernels.status()
    return {
        "benchmark": "onnx_runtime", "model": args.model, "quick": args.quick, "command": info["command"],
        "settings": {"batches": args.batches, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
                     "rounds": args.rounds, "warmup_rounds": args.warmup_rounds, "threads": args.threads,
                     "kernels": args.kernels, "clock": args.clock, "ppl_tokens": len(ids), "ppl_window": args.window},
        "machine": info,
        "export_s": export_s, "onnx_quantize_s": quantize_s,
        "method": {"ours": METHOD, "onnxruntime": ORT_METHOD, "onnxruntime_int8": INT8_METHOD,
                   "ours_int8": "workbench.quant spec int8: weight-only int8, symmetric per output channel "
                                "(embedding and norms stay float32), our CPU kernels for decode products",
                   "bytes": BYTES_METHOD,
                   "perplexity": "workbench.eval.perplexity on the same token ids for every engine, "
                                 "non-overlapping windows",
                   "greedy_agreement": "share of generated positions before each sequence's first token that "
                                       "differs from our float32 engine's (same prompts, same batch)"},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    lines = [f"{result['model']}, prompt {s['prompt_tokens']} tokens, {s['new_tokens']} new tokens, greedy, "
             f"{s['threads']} threads, medians of {s['rounds']} alternated rounds; perplexity on {s['ppl_tokens']} "
             f"built-in evaluation tokens (window {s['ppl_window']}); 1-minute load {m['loadavg_start'][0]:.1f} "
             f"at the start, {m['loadavg_end'][0]:.1f} at the end.", "",
             "| engine | weights | MB | perplexity | batch | prefill tok/s | decode tok/s [min-max] | vs ours, same weights "
             "| same greedy tokens as ours fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['engine']} | {r['weights']} | {r['bytes'] / 1e6:.0f} | {r['ppl']:.3f} | {r['batch']} "
                     f"| {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} [{r['decode_tok_s_min']:.1f}-"
                     f"{r['decode_tok_s_max']:.1f}] | {r['decode_vs_ours_same_weights']:.2f}x "
                     f"| {r['greedy_agreement_vs_ours_float32']:.0%} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: str):
    import pandas as pd

    atomic_write_json(out + ".json", result)
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "runs_s"} for r in result["rows"]])
    frame["date"] = result["machine"]["date"]
    atomic_write_text(out + ".csv", frame.to_csv(index=False, float_format="%.4g"))


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    result = run(args)
    write_outputs(result, args.out)
    print(markdown(result))
    print(f"wrote {args.out}.json and {args.out}.csv", file=sys.stderr)


if __name__ == "__main__":
    main()
