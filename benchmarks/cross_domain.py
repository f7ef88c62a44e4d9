"""Cross-domain table: every calibrated method x calibration set x evaluation corpus (CSV/JSON).

Method: `workbench.bench.cross_domain.METHOD`. Calibration sets (`--calib`, each `--calib-tokens`
tokens): the built-in corpus's calibration part, the licences corpus's calibration part, and text
the model generates itself (`generated`); corpora: every corpus's evaluation part (`--eval-tokens`
tokens, windows of `--window`). Cells run in the order given (the cheap data-free peers first; the GPTQ head variants, with
the first calibration set only, last), and
rows are written atomically after each cell, so an interrupted run keeps what it finished. The JSON
adds the targets (`targets`): int8 within +0.5%, the best int4-g128 calibrated method closing half
of round to nearest's gap with a calibration set from another corpus, Wanda/SparseGPT within half
of magnitude's increase, and every calibrated method that scores worse than its data-free peer.

    .venv/bin/python benchmarks/cross_domain.py [--methods int4-g128-gptq ...] [--calib builtin licenses]
    .venv/bin/python benchmarks/cross_domain.py --quick      # smoke run: writes cross_domain_quick.*
    .venv/bin/python benchmarks/cross_domain.py --merge data/results/cross_domain_part2.csv   # join side-by-side parts
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

import workbench
from workbench.bench.cross_domain import (METHOD, METHODS, NONE, add_comparisons, calibrated, cross_domain_table,
                                          targets)
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import run_end, run_info
from workbench.corpus import parse_calibration
from workbench.io import atomic_write_json, atomic_write_text

CALIB = ["licenses", "builtin", "generated"]


def sized(calib, tokens):
    """The calibration spec with its size: `tokens` shared by the parts without a count of their own
    (`licenses` -> `licenses:2048`, `licenses+generated` -> `licenses:1024+generated:1024`; a part
    with a count, `licenses:4096`, keeps it)."""
    parts = parse_calibration(calib).parts
    share = max(1, tokens // max(1, sum(p.tokens is None for p in parts)))
    return "+".join(str(p) if p.tokens is not None else f"{p}:{share}" for p in parts)


def cells(methods, calibs, tokens):
    """Data-free methods once (calib "none"), each calibrated one per calibration set in the order
    given; the GPTQ output-head variants (".../head-...") with the first calibration set only, last."""
    free = [(m, NONE) for m in methods if not calibrated(m)]
    grid = [(m, sized(c, tokens)) for c in calibs for m in methods if calibrated(m) and "/head-" not in m]
    return free + grid + [(m, sized(calibs[0], tokens)) for m in methods if "/head-" in m]


def main(argv=None):
    parser = benchmark_parser(__doc__, "cross_domain",
                              full=dict(methods=list(METHODS), calib=CALIB, calib_tokens=2048, eval_tokens=8192,
                                        window=1024),
                              quick=dict(methods=["int8", "int4-g128", "int4-g128-awq", "w8a8", "w8a8-smoothquant",
                                                  "magnitude:0.5", "wanda:0.5"],
                                         calib=["licenses", "builtin"], calib_tokens=512, eval_tokens=1024, window=512))
    parser.add_argument("--methods", nargs="*", default=None, choices=list(METHODS), help="full: every method")
    parser.add_argument("--calib", nargs="*", default=None,
                        help=f"calibration sets, each a --calib spec (full: {' '.join(CALIB)})")
    parser.add_argument("--calib-tokens", type=int, default=None,
                        help="tokens per calibration set, shared by its parts without a count (full 2048)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="evaluation tokens per corpus (full 8192)")
    parser.add_argument("--window", type=int, default=None, help="perplexity window (full 1024)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of --out's CSV (same sizes) and run only the cells it lacks")
    parser.add_argument("--merge", nargs="*", default=None, metavar="CSV",
                        help="run nothing: join these results files (same sizes, e.g. parts run side by side) "
                             "with --out's, recompute the comparisons and targets, write --out")
    args = parse_benchmark_args(parser, argv)
    info = run_info()

    def save(frame):
        last = frame.iloc[-1]
        print(f"{last.method:<36} {last.calib:<16} " + "  ".join(
            f"{r.corpus} {r.ppl:8.3f}" for r in frame[(frame.method == last.method) & (frame.calib == last.calib)]
            .itertuples()) + f"  ({last.compress_s:.0f} s)", flush=True)
        atomic_write_text(args.out + ".csv", frame.to_csv(index=False))
        atomic_write_json(args.out + ".json", {"method": METHOD, "model": args.model, "window": args.window,
                                               "eval_tokens": args.eval_tokens,
                                               # merged parts: each row's calib names its own count
                                               "calib_tokens": None if args.merge is not None else args.calib_tokens,
                                               "targets": targets(frame), "run": run_end(dict(info)),
                                               "rows": frame.to_dict("records")})

    if args.merge is not None:
        parts = [pd.read_csv(f) for f in [args.out + ".csv", *args.merge] if Path(f).is_file()]
        joined = pd.concat(parts).drop_duplicates(["method", "calib", "corpus"])
        if joined.tokens.nunique() != 1:
            parser.error(f"--merge: the files scored different numbers of tokens ({sorted(joined.tokens.unique())})")
        info["merged"] = [args.out + ".csv", *args.merge]
        save(add_comparisons(joined[["method", "calib", "corpus", "ppl", "compress_s", "tokens"]]))
        return
    model, tok = workbench.load_model(args.model)  # a merge runs no model
    done = None
    if args.resume and Path(args.out + ".csv").is_file():
        done = pd.read_csv(args.out + ".csv")
    frame = cross_domain_table(model, tok, cells(args.methods, args.calib, args.calib_tokens),
                               eval_tokens=args.eval_tokens, window=args.window, on_row=save, done=done)
    print(frame[["method", "calib", "corpus", "ppl", "ppl_vs_float32", "gap_closed", "worse_than_peer"]]
          .to_markdown(index=False, floatfmt=".3f"))
    for t in targets(frame):
        print(("MET   " if t["met"] else "NOT MET ") + t["target"] + f" (worst {t['worst']:.3f})")


if __name__ == "__main__":
    main()
