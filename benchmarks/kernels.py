#!/usr/bin/env python
"""Per-shape microbenchmarks of our decode kernels against PyTorch, interleaved in one run.

For each matrix shape of the bundled model (out x in: 576x576 q/o, 192x576 k/v, 1536x576 gate/up,
576x1536 down, 49152x576 the tied output head) and each weight format, time y = x @ W.T for one
row of x (batch 1 decode) and report microseconds per call, achieved GB/s (the format's weight
bytes, scales included, per call) beside the machine's read bandwidth, and the speed-up over
`F.linear` in float32 measured in the same rounds.

Method: weights are random (the bytes read, not their values, set the speed). Each format keeps
enough copies of the matrix to exceed 2x the L3 cache (`--cold-mb`), and calls cycle through them,
so every call streams its weight from memory as in a real decode step (the whole model does not fit
in cache). Rounds: every op once per round, in a fixed order, each timed over enough calls to last
`--min-ms`; medians over `--rounds` rounds after `--warmup-rounds` (`workbench.bench.timing.alternate`).
Speed-up = median over rounds of (F.linear fp32 time / op time) within the round, so machine noise
hits both alike. Threads: `--threads` (default 2).

    .venv/bin/python benchmarks/kernels.py                # writes data/results/kernels.json / .csv
    .venv/bin/python benchmarks/kernels.py --quick        # a smoke run (kernels_quick.*)
    .venv/bin/python benchmarks/kernels.py --decode       # whole model per spec, kernels on/off (kernels_decode.*)
    .venv/bin/python benchmarks/kernels.py --decode --quick   # its smoke run (kernels_decode_quick.*)

`--decode` measures the whole model instead: `workbench.bench.decode_speed_table` (the same
`bench_decode` as `workbench bench decode --quant SPEC`), every spec with our kernels and without
them, alternated round by round.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench import kernels  # noqa: E402
from workbench.bench.flags import benchmark_parser, parse_benchmark_args  # noqa: E402
from workbench.bench.timing import CLOCKS, alternate, median, now, read_bandwidth_gb_s, run_end, run_info  # noqa: E402
from workbench.io import atomic_write_json, atomic_write_text  # noqa: E402
from workbench.quant.linear import GGUFBlockLinear, Int4WeightOnlyLinear, Int8WeightOnlyLinear  # noqa: E402

SHAPES = {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (192, 576), "gate/up_proj": (1536, 576),
          "down_proj": (576, 1536), "lm_head": (49152, 576)}
BANDWIDTH = "read bandwidth"  # a contender of every round: our streaming read kernel over a 512 MiB buffer
BANDWIDTH_MIB = 512


def layer_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def make_ops(weight: torch.Tensor) -> dict:
    """name -> (make one weight copy () -> state, call (state, x) -> y, bytes per call)."""
    def quantized(cls, *args):
        layer = cls(weight, *args)

        def make():
            clone = cls.__new__(cls)
            clone.__dict__ = {**layer.__dict__, "_buffers": {k: v.clone() for k, v in layer._buffers.items()}}
            return clone
        return make, lambda lay, x: lay(x), layer_bytes(layer.buffers())

    def dense(dtype, fn):
        w = weight.to(dtype)
        return (lambda: w.clone()), fn, layer_bytes([w])

    return {
        "F.linear fp32": dense(torch.float32, lambda w, x: F.linear(x, w)),
        "ours fp32": dense(torch.float32, lambda w, x: kernels.dense_linear(x, w)),
        "F.linear bf16": dense(torch.bfloat16, lambda w, x: F.linear(x.bfloat16(), w)),
        "ours bf16": dense(torch.bfloat16, lambda w, x: kernels.dense_linear(x.bfloat16(), w)),
        "ours int8": quantized(Int8WeightOnlyLinear),
        "ours int4-g32": quantized(Int4WeightOnlyLinear, 32),
        "ours int4-g128": quantized(Int4WeightOnlyLinear, 128),
        "ours q8_0": quantized(GGUFBlockLinear, "Q8_0"),
        "ours q4_0": quantized(GGUFBlockLinear, "Q4_0"),
        "ours q4_1": quantized(GGUFBlockLinear, "Q4_1"),
    }


def time_op(call, copies, x, min_s: float, clock=now) -> float:
    """Seconds per call, cycling through the copies until at least `min_s` has passed."""
    n, start = 0, clock()
    while True:
        for state in copies:
            call(state, x)
        n += len(copies)
        elapsed = clock() - start
        if elapsed >= min_s:
            return elapsed / n


@torch.inference_mode()
def bench_shape(name, shape, args) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(*shape, generator=gen) * 0.02
    x = torch.randn(1, shape[1], generator=gen)
    ops = make_ops(weight)
    prepared = {}
    for op, (make, call, nbytes) in ops.items():
        copies = [make() for _ in range(max(2, math.ceil(args.cold_mb * 1e6 / nbytes)))]
        call(copies[0], x)  # warm-up (and the first-use build)
        prepared[op] = (copies, call, nbytes)
    contenders = {op: (lambda copies=copies, call=call: time_op(call, copies, x, args.min_ms / 1e3, CLOCKS[args.clock]))
                  for op, (copies, call, _) in prepared.items()}
    contenders[BANDWIDTH] = lambda: read_bandwidth_gb_s(BANDWIDTH_MIB, 1)["median"]  # same rounds, same noise
    rounds = alternate(contenders, args.rounds, args.warmup_rounds)
    bandwidth = rounds.series(BANDWIDTH)
    rows = []
    for op, (copies, _, nbytes) in prepared.items():
        t = rounds.median(op)
        rows.append({"shape": name, "out_features": shape[0], "in_features": shape[1], "op": op,
                     "us_per_call": t * 1e6, "weight_bytes": nbytes, "gb_s": nbytes / t / 1e9,
                     "read_bandwidth_gb_s": median(bandwidth),
                     "fraction_of_read_bw": median(nbytes / s / 1e9 / bw for s, bw in zip(rounds.series(op), bandwidth)),
                     "speedup_vs_F.linear_fp32": rounds.ratio("F.linear fp32", op),
                     "copies": len(copies)})
        print(f"{name:>14} {op:>16}: {t * 1e6:9.1f} us  {rows[-1]['gb_s']:6.1f} GB/s  "
              f"x{rows[-1]['speedup_vs_F.linear_fp32']:.2f} vs F.linear fp32", file=sys.stderr, flush=True)
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    ops = list(dict.fromkeys(r["op"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    by = {(r["shape"], r["op"]): r for r in rows}
    head = "| op | " + " | ".join(f"{s} {by[(s, ops[0])]['out_features']}x{by[(s, ops[0])]['in_features']}"
                                   for s in shapes) + " |"
    lines = [head, "|---" * (len(shapes) + 1) + "|"]
    for op in ops:
        cells = [f"{by[(s, op)]['us_per_call']:.0f} us, {by[(s, op)]['gb_s']:.0f} GB/s "
                 f"({by[(s, op)]['fraction_of_read_bw']:.0%}), x{by[(s, op)]['speedup_vs_F.linear_fp32']:.2f}"
                 for s in shapes]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    m = result["machine"]
    lines.append("")
    lines.append(f"Batch 1, {m['threads']} threads, {result['settings']['clock']} clock, kernels backend {m['backend']}, weights cycled through "
                 f">{result['settings']['cold_mb']} MB of copies (read from memory); medians of "
                 f"{result['settings']['rounds']} interleaved rounds; xN = speed-up over F.linear fp32 in the "
                 f"same rounds; (N%) = GB/s as a share of the read bandwidth measured in the same rounds by our "
                 f"streaming read kernel ({BANDWIDTH_MIB} MiB buffer; median "
                 f"{median(r['read_bandwidth_gb_s'] for r in rows):.0f} GB/s); load average "
                 f"{m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end.")
    return "\n".join(lines) + "\n"


DECODE_SPECS = ["float32", "bfloat16", "int8", "int4-g32", "int4-g64", "int4-g128", "q8_0", "q4_0", "q4_1"]


def decode(args):
    from workbench.bench import decode_speed_table

    info = run_info(bandwidth=args.bandwidth)
    table = decode_speed_table(specs=args.specs, batch_sizes=(1,), kernels="both", threads=args.threads,
                               prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                               repeats=args.rounds, clock=args.clock)
    result = {"benchmark": "kernels_decode", "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "run": run_end(info), **table.attrs, "rows": table.to_dict("records")}
    atomic_write_json(args.out + ".json", result)
    atomic_write_text(args.out + ".csv", table.to_csv(index=False, float_format="%.4g"))
    print(table.to_markdown(index=False, floatfmt=".2f") if _has_tabulate() else table.round(2).to_string())


OPS_POSITIONS = 600  # context of the one-query attention timed by --ops (a 512-token prompt plus a decode)


@torch.inference_mode()
def decode_ops(args):
    """--ops: the decode step's small operations, ours against PyTorch's, one call at decode size."""
    from workbench.checkpoints import load_model
    from workbench.model import RMSNorm, apply_rope, attention

    cfg = load_model(args.model)[0].config
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    info = {**run_info(bandwidth=args.bandwidth), "backend": kernels.status()["backend"]}
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(dtype)
        cache_k, cache_v = rand(1, kv_heads, 2 * OPS_POSITIONS, hd), rand(1, kv_heads, 2 * OPS_POSITIONS, hd)
        q, k, v = rand(1, heads, 1, hd), cache_k[:, :, :OPS_POSITIONS], cache_v[:, :, :OPS_POSITIONS]  # cache slices
        x, norm = rand(1, 1, cfg.hidden_size), RMSNorm(cfg.hidden_size, cfg.rms_norm_eps).to(dtype)
        fast_norm = kernels.KernelRMSNorm.from_norm(norm)
        angles = torch.rand(1, 1, 1, hd, generator=gen) * 6.28
        cos, sin, xr = angles.cos().to(dtype), angles.sin().to(dtype), rand(1, heads, 1, hd)
        pairs = {f"attention over {OPS_POSITIONS} positions": (lambda: attention(q, k, v, None),
                                                              lambda: kernels.decode_attention(q, k, v, None)),
                 f"RMSNorm of {cfg.hidden_size}": (lambda: norm(x), lambda: fast_norm(x)),
                 f"rotary embedding of {heads}x{hd}": (lambda: apply_rope(xr, cos, sin), lambda: kernels.rope(xr, cos, sin))}
        for op, (theirs, ours) in pairs.items():
            def timed_op(fn):
                return lambda: time_op(lambda _, __: fn(), [None], None, args.min_ms / 1e3, CLOCKS[args.clock])
            timed = alternate({"pytorch": timed_op(theirs), "ours": timed_op(ours)}, args.rounds, args.warmup_rounds)
            diff = float((theirs().float() - ours().float()).abs().max())
            rows.append({"op": op, "dtype": str(dtype).removeprefix("torch."), "pytorch_us": timed.median("pytorch") * 1e6,
                         "ours_us": timed.median("ours") * 1e6, "speedup": timed.ratio("pytorch", "ours"),
                         "max_abs_diff": diff})
            r = rows[-1]
            print(f"{op:>34} {r['dtype']:>8}: PyTorch {r['pytorch_us']:7.1f} us, ours {r['ours_us']:6.1f} us "
                  f"(x{r['speedup']:.1f}, max diff {diff:.2g})", file=sys.stderr, flush=True)
    result = {"benchmark": "kernels_ops", "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "machine": run_end(info), "method": "One call at decode size (batch 1, one new token; attention "
              "over a slice of a cache twice as long, as the KV cache holds it), each timed over enough calls to "
              "last --min-ms on the --clock, ours and PyTorch's alternated in --rounds rounds after --warmup-rounds; medians; "
              "speedup = median of the per-round PyTorch / ours ratios; max_abs_diff between the two outputs.",
              "rows": rows}
    _write(args.out, result, rows)


@torch.inference_mode()
def decode_with_and_without_ops(args):
    """--decode-ops: whole-model decode of packed specs with every kernel, and with the matrix kernels
    only (RMSNorm, rotary embedding and attention on PyTorch), alternated on the same model."""
    from functools import partial

    from workbench.bench import bench_decode, quantized_copy
    from workbench.checkpoints import load_model

    info = run_info(bandwidth=args.bandwidth)
    base, tok = load_model(args.model)
    sizes = dict(batch=1, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=1, warmup=0,
                 clock=CLOCKS[args.clock])
    rows = []
    for spec in [s for s in args.specs if s not in ("float32", "bfloat16")]:  # disable would unplug their matrices too
        model = kernels.enable(quantized_copy(base, spec, tok))

        def run(all_kernels: bool, model=model):
            (kernels.enable if all_kernels else kernels.disable)(model)  # packed layers keep their kernels
            return bench_decode(model, tok, **sizes)
        timed = alternate({"all kernels": partial(run, True), "matrix kernels only": partial(run, False)},
                          args.rounds, args.warmup_rounds)
        s = timed.summary("decode_tok_s", baseline="matrix kernels only")
        rows.append({"spec": spec, "decode_tok_s": s["all kernels"]["median"],
                     "decode_tok_s_matrix_kernels_only": s["matrix kernels only"]["median"],
                     "speedup": s["all kernels"]["vs_baseline"], "rounds_tok_s": s["all kernels"]["rounds"],
                     "rounds_tok_s_matrix_kernels_only": s["matrix kernels only"]["rounds"]})
        print(f"{spec:>10}: {rows[-1]['decode_tok_s_matrix_kernels_only']:6.1f} -> {rows[-1]['decode_tok_s']:6.1f} "
              f"tok/s (x{rows[-1]['speedup']:.2f})", file=sys.stderr, flush=True)
        del model
    result = {"benchmark": "kernels_decode_ops", "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "machine": run_end(info), "method": "bench_decode at batch 1 (greedy, --prompt-tokens prompt, "
              "--new-tokens new tokens, timed on the --clock) of one quantized copy per spec, alternated per round between "
              "workbench.kernels.enable (every kernel) and workbench.kernels.disable (the packed layers still call "
              "their matrix kernels; RMSNorm, the rotary embedding and attention on PyTorch), --rounds rounds after "
              "--warmup-rounds; medians; speedup = median of the per-round ratios. Float specs are skipped (disable "
              "would take their matrix kernels away too).", "rows": rows}
    _write(args.out, result, [{k: v for k, v in r.items() if not k.startswith("rounds")} for r in rows])


def _write(out: str, result: dict, rows: list[dict]):
    import pandas as pd

    atomic_write_json(out + ".json", result)
    table = pd.DataFrame(rows)
    atomic_write_text(out + ".csv", table.to_csv(index=False, float_format="%.4g"))
    print(table.to_markdown(index=False, floatfmt=".2f") if _has_tabulate() else table.round(2).to_string())


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


def main(argv=None):
    p = benchmark_parser(__doc__.split("\n\n")[0], lambda a: "kernels_decode_ops" if a.decode_ops else
                         "kernels_ops" if a.ops else "kernels_decode" if a.decode else "kernels",
                         full=dict(rounds=5, warmup_rounds=1, clock="wall", min_ms=50.0, shapes=list(SHAPES), specs=DECODE_SPECS,
                                   prompt_tokens=64, new_tokens=32),
                         quick=dict(rounds=1, min_ms=5.0, shapes=["q_proj/o_proj", "down_proj"],
                                    specs=["float32", "int8"], prompt_tokens=16, new_tokens=8))
    p.add_argument("--min-ms", type=float, default=None, help="time each op for at least this long per round")
    p.add_argument("--cold-mb", type=float, default=64.0, help="bytes of weight copies per op (2x the L3 cache)")
    p.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES))
    p.add_argument("--decode", action="store_true", help="whole-model decode per spec, kernels on and off")
    p.add_argument("--ops", action="store_true", help="RMSNorm, rotary embedding, attention: ours vs PyTorch's")
    p.add_argument("--decode-ops", action="store_true",
                   help="whole-model decode of packed specs with every kernel vs the matrix kernels only")
    p.add_argument("--specs", nargs="+", default=None, help="--decode, --decode-ops: the specs")
    args = parse_benchmark_args(p, argv)
    if args.decode_ops:
        return decode_with_and_without_ops(args)
    if args.ops:
        return decode_ops(args)
    if args.decode:
        return decode(args)
    status = kernels.status()
    if not status["available"]:
        sys.exit(f"error: the kernels are unavailable ({status['reason']}); nothing to measure")
    machine = {**run_info(bandwidth=args.bandwidth), "backend": status["backend"]}
    rows = [r for s in args.shapes for r in bench_shape(s, SHAPES[s], args)]
    run_end(machine)
    result = {"benchmark": "kernels", "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "machine": machine, "method": __doc__.split("\n\n")[1:3],
              "rows": rows}
    table = markdown(result)
    result["markdown"] = table
    atomic_write_json(args.out + ".json", result)
    import pandas as pd

    atomic_write_text(args.out + ".csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.4g"))
    print(table)


if __name__ == "__main__":
    main()
