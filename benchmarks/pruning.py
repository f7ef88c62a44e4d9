"""Pruning: perplexity, bytes and decode speed of the bundled model per pruning spec (CSV/JSON).

Method. Float32 model loaded once; each spec prunes a fresh copy with `prune_` (calibrated methods
read the first 2,048 tokens of the built-in calibration part; structured specs choose channels and
head groups by activations on the same text). Perplexity: first `--max-tokens` tokens of the
built-in evaluation part, non-overlapping windows of `--window` (as benchmarks/quantization_ppl.py).
`+int8` rows quantize the pruned copy with `quantize_(..., "int8")`; `+recovery` rows fine-tune the
pruned copy for `--recovery-steps` steps (`workbench.prune.recovery.recover`, masks kept) first.
bytes = `weight_bytes` of the model as stored (dense tensors, zeros included); csr_bytes and
nm_bytes = what a CSR or N:M-compressed layout of the decoder matrices would take (storage.py).
Speed: `bench_decode` at batch 1 on our CPU kernels (`--kernels off`: PyTorch's operators; greedy,
`--prompt-tokens` prompt, `--new-tokens` new tokens) on the dense model and every speed spec,
alternated round by round in one process (`workbench.bench.timing.alternate`: `--rounds` rounds
after `--warmup-rounds` warm-up rounds), medians; speedup = the median over the rounds of pruned /
dense decode tok/s in the same round. Speed specs are measured first, then perplexity for every spec
(speed specs included). Rows are written atomically after each spec, so an interrupted run keeps
what it finished.

    .venv/bin/python benchmarks/pruning.py [--specs wanda:0.5 ...] [--speed-specs mlp:0.5 ...]
    .venv/bin/python benchmarks/pruning.py --quick      # smoke run: writes pruning_quick.*
"""

from __future__ import annotations

import copy
from functools import partial

import pandas as pd

import workbench
from workbench import kernels
from workbench.bench import bench_decode
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import CLOCKS, alternate, now, run_end, run_info
from workbench.corpus import builtin_text
from workbench.eval import perplexity
from workbench.io import atomic_write_json, atomic_write_text
from workbench.prune import parse_spec, prune_
from workbench.prune.recovery import recover
from workbench.prune.storage import storage_report
from workbench.quant import quantize_

QUALITY = ["magnitude:0.5", "magnitude-global:0.5", "wanda:0.5", "sparsegpt:0.5", "magnitude:2:4", "wanda:2:4",
           "magnitude:4:8", "wanda:4:8", "sparsegpt:2:4", "wanda:0.5+int8", "mlp:0.5+recovery"]
SPEED = ["magnitude:0.5", "mlp:0.25", "mlp:0.5", "heads:0.33"]


def build(model, tok, spec: str, recovery_steps: int):
    """A pruned (and optionally recovered / int8) copy of `model` for 'SPEC[+recovery][+int8]'."""
    base, *extras = spec.split("+")
    pruned = prune_(copy.deepcopy(model), base, tokenizer=tok)
    if "recovery" in extras:
        recover(pruned, tok, steps=recovery_steps, progress=False)
    if "int8" in extras:
        quantize_(pruned, "int8")
    return pruned


def main(argv=None):
    parser = benchmark_parser(__doc__, "pruning", full=dict(
        specs=QUALITY, speed_specs=SPEED, max_tokens=4096, window=1024, recovery_steps=100, rounds=5, warmup_rounds=1,
        prompt_tokens=128, new_tokens=64, kernels="on", clock="wall"), quick=dict(
        specs=["wanda:0.5", "magnitude:2:4"], speed_specs=["mlp:0.5"], max_tokens=512, window=256, recovery_steps=2,
        rounds=1, prompt_tokens=16, new_tokens=8))
    parser.add_argument("--specs", nargs="*", default=None, help="perplexity specs")
    parser.add_argument("--speed-specs", nargs="*", default=None, help="specs also timed against the dense model")
    parser.add_argument("--max-tokens", type=int, default=None, help="evaluation tokens (full 4096)")
    parser.add_argument("--window", type=int, default=None, help="perplexity window (full 1024)")
    parser.add_argument("--recovery-steps", type=int, default=None, help="fine-tuning steps of +recovery specs (full 100)")
    args = parse_benchmark_args(parser, argv)

    model, tok = workbench.load_model(args.model)
    ids = tok.encode(builtin_text("evaluation"), add_special_tokens=False)[:args.max_tokens]
    meta = {"method": __doc__, "model": args.model, "window": args.window, "max_tokens": args.max_tokens,
            "recovery_steps": args.recovery_steps, **run_info(bandwidth=args.bandwidth)}
    rows, models = [], {"dense": model}

    def save():
        atomic_write_text(args.out + ".csv", pd.DataFrame(rows).to_csv(index=False))
        atomic_write_json(args.out + ".json", {**run_end(meta), "rows": rows})

    def row(spec, m, seconds):
        base = spec.split("+")[0]
        parsed = parse_spec(base) if spec != "dense" else None
        storage = storage_report(m, parsed.nm if parsed else None).set_index("format")["bytes"] \
            if not spec.endswith("int8") else None
        r = perplexity(m, ids, window=args.window)
        rows.append({"spec": spec, "method": parsed.method if parsed else "dense",
                     "sparsity": parsed.target_sparsity if parsed else 0.0,
                     "pattern": parsed.pattern if parsed else "dense", "ppl": r.ppl,
                     "ppl_increase": r.ppl - rows[0]["ppl"] if rows else 0.0, "bytes": m.weight_bytes(),
                     "csr_bytes": int(storage["csr"]) if storage is not None else None,
                     "nm_bytes": int(storage[parsed.pattern]) if parsed is not None and parsed.nm and storage is not None
                     else None, "tok_s": None, "speedup": None, "prune_s": seconds})
        print(f"{spec:<22} ppl {r.ppl:9.3f}  {m.weight_bytes() / 1e6:6.1f} MB  ({seconds:.0f} s)", flush=True)
        save()

    row("dense", model, 0.0)
    built = {}
    for spec in args.speed_specs:
        start = now()
        built[spec] = (build(model, tok, spec, args.recovery_steps), now() - start)
        models[spec] = built[spec][0]

    # Decode speed first (the pruned models are at hand), alternated: every round times every model
    # once, so load changes hit all of them alike.
    if args.kernels == "on":
        for m in models.values():
            kernels.enable(m)
    decode = dict(batch=1, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=1, warmup=0,
                  clock=CLOCKS[args.clock])
    speed = alternate({name: partial(bench_decode, m, tok, **decode) for name, m in models.items()},
                      rounds=args.rounds, warmup=args.warmup_rounds)
    speed_rows = {name: dict(tok_s=v["median"], tok_s_min=v["min"], tok_s_max=v["max"], speedup=v["vs_baseline"])
                  for name, v in speed.summary("decode_tok_s", baseline="dense").items()}
    for name, v in speed_rows.items():
        print(f"{name:<22} decode {v['tok_s']:6.1f} tok/s  x{v['speedup']:.2f}", flush=True)
    meta.update(speed_method=f"bench_decode batch 1, prompt {args.prompt_tokens}, new {args.new_tokens}, "
                             f"kernels {kernels.in_use(model) or 'off'}, {args.clock} clock, {args.rounds} alternated rounds after "
                             f"{args.warmup_rounds} warm-up, medians; speedup: median of the per-round ratios",
                speed_rounds_tok_s={name: speed.series(name, "decode_tok_s") for name in models})
    del models
    rows[0].update(speed_rows["dense"])
    save()

    for spec in dict.fromkeys(args.speed_specs + args.specs):
        start = now()
        pruned, seconds = built.pop(spec) if spec in built else (build(model, tok, spec, args.recovery_steps), None)
        row(spec, pruned, seconds if seconds is not None else now() - start)
        rows[-1].update(speed_rows.get(spec, {}))
        save()
        del pruned
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
