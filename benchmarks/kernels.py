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
`--min-ms`; medians over `--rounds` rounds. Speed-up = median over rounds of (F.linear fp32 time /
op time) within the round, so machine noise hits both alike. Threads: `--threads` (default 2).

    .venv/bin/python benchmarks/kernels.py                # writes data/results/kernels.json / .csv
    .venv/bin/python benchmarks/kernels.py --quick        # a smoke run (kernels_quick.*)
    .venv/bin/python benchmarks/kernels.py --decode       # whole model per spec, kernels on/off (kernels_decode.*)

`--decode` measures the whole model instead: `workbench.bench.decode_speed_table` (the same
`bench_decode` as `workbench bench decode --quant SPEC`), every spec with our kernels and without
them, alternated round by round.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench import kernels  # noqa: E402
from workbench.bench.timing import median, now  # noqa: E402
from workbench.io import atomic_write_json, atomic_write_text  # noqa: E402
from workbench.quant.linear import GGUFBlockLinear, Int4WeightOnlyLinear, Int8WeightOnlyLinear  # noqa: E402

SHAPES = {"q_proj/o_proj": (576, 576), "k_proj/v_proj": (192, 576), "gate/up_proj": (1536, 576),
          "down_proj": (576, 1536), "lm_head": (49152, 576)}
CLOCKS = {"wall": now, "cpu": time.process_time}  # cpu: CPU seconds of the process (with --threads 1)
BANDWIDTH_GB_S = {"typical": 38.0, "quiet": 63.0}  # /work/shared/BASELINES.md: a C AVX-512 read loop, 2 threads


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
    times = {op: [] for op in ops}
    for _ in range(args.rounds):
        for op, (copies, call, _) in prepared.items():
            times[op].append(time_op(call, copies, x, args.min_ms / 1e3, CLOCKS[args.clock]))
    base = times["F.linear fp32"]
    rows = []
    for op, (copies, _, nbytes) in prepared.items():
        t = median(times[op])
        rows.append({"shape": name, "out_features": shape[0], "in_features": shape[1], "op": op,
                     "us_per_call": t * 1e6, "weight_bytes": nbytes, "gb_s": nbytes / t / 1e9,
                     "fraction_of_typical_bw": nbytes / t / 1e9 / BANDWIDTH_GB_S["typical"],
                     "fraction_of_quiet_bw": nbytes / t / 1e9 / BANDWIDTH_GB_S["quiet"],
                     "speedup_vs_F.linear_fp32": median(b / o for b, o in zip(base, times[op])),
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
        cells = [f"{by[(s, op)]['us_per_call']:.0f} us, {by[(s, op)]['gb_s']:.0f} GB/s, "
                 f"x{by[(s, op)]['speedup_vs_F.linear_fp32']:.2f}" for s in shapes]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    m = result["machine"]
    lines.append("")
    lines.append(f"Batch 1, {m['threads']} threads, {result['settings']['clock']} clock, kernels backend {m['backend']}, weights cycled through "
                 f">{result['settings']['cold_mb']} MB of copies (read from memory); medians of "
                 f"{result['settings']['rounds']} interleaved rounds; xN = speed-up over F.linear fp32 in the "
                 f"same rounds; load average {m['loadavg_start'][0]:.1f} at start, {m['loadavg_end'][0]:.1f} at end. "
                 f"Read bandwidth of this machine: ~{BANDWIDTH_GB_S['typical']:.0f} GB/s typical, "
                 f"~{BANDWIDTH_GB_S['quiet']:.0f} quiet.")
    return "\n".join(lines) + "\n"


DECODE_SPECS = ["float32", "bfloat16", "int8", "int4-g32", "int4-g64", "int4-g128", "q8_0", "q4_0", "q4_1"]


def decode(args):
    from workbench.bench import decode_speed_table

    start = list(os.getloadavg())
    table = decode_speed_table(specs=args.specs, batch_sizes=(1,), kernels="both", threads=args.threads,
                               prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                               repeats=args.rounds or 3, clock=args.clock)
    result = {"benchmark": "kernels_decode", "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
              "loadavg_start": start, "loadavg_end": list(os.getloadavg()), **table.attrs,
              "rows": table.to_dict("records")}
    stem = Path(args.out_dir) / "kernels_decode"
    atomic_write_json(stem.with_suffix(".json"), result)
    atomic_write_text(stem.with_suffix(".csv"), table.to_csv(index=False, float_format="%.4g"))
    print(table.to_markdown(index=False, floatfmt=".2f") if _has_tabulate() else table.round(2).to_string())


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round, 2 shapes, short timings (kernels_quick.*)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 1)")
    p.add_argument("--min-ms", type=float, default=None, help="time each op for at least this long per round")
    p.add_argument("--cold-mb", type=float, default=64.0, help="bytes of weight copies per op (2x the L3 cache)")
    p.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES))
    p.add_argument("--out-dir", default="data/results")
    p.add_argument("--decode", action="store_true", help="whole-model decode per spec, kernels on and off")
    p.add_argument("--specs", nargs="+", default=DECODE_SPECS, help="--decode: the specs")
    p.add_argument("--prompt-tokens", type=int, default=64, help="--decode: prompt length")
    p.add_argument("--new-tokens", type=int, default=32, help="--decode: tokens generated per run")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall seconds, or CPU seconds of the process (with --threads 1 on a crowded machine)")
    args = p.parse_args(argv)
    if args.decode:
        return decode(args)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.min_ms = args.min_ms or (5.0 if args.quick else 50.0)
    args.shapes = args.shapes or (["q_proj/o_proj", "down_proj"] if args.quick else list(SHAPES))
    torch.set_num_threads(args.threads)
    status = kernels.status()
    if not status["available"]:
        sys.exit(f"error: the kernels are unavailable ({status['reason']}); nothing to measure")
    machine = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
               "torch": torch.__version__, "backend": status["backend"], "cpu_count": os.cpu_count(),
               "loadavg_start": list(os.getloadavg())}
    rows = [r for s in args.shapes for r in bench_shape(s, SHAPES[s], args)]
    machine["loadavg_end"] = list(os.getloadavg())
    result = {"benchmark": "kernels", "settings": {k: v for k, v in vars(args).items() if k != "out_dir"},
              "machine": machine, "bandwidth_gb_s": BANDWIDTH_GB_S, "method": __doc__.split("\n\n")[1:3],
              "rows": rows}
    table = markdown(result)
    result["markdown"] = table
    stem = Path(args.out_dir) / ("kernels_quick" if args.quick else "kernels")
    atomic_write_json(stem.with_suffix(".json"), result)
    import pandas as pd

    atomic_write_text(stem.with_suffix(".csv"), pd.DataFrame(rows).to_csv(index=False, float_format="%.4g"))
    print(table)


if __name__ == "__main__":
    main()
