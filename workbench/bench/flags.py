"""The command-line flags every benchmark script shares, so that each script declares only its own.

Always: `--model`, `--threads`, `--quick` (a smoke run with small sizes), `--out STEM` (where the
results go, without suffix: `data/results/NAME`, `data/results/NAME_quick` with `--quick`, so a smoke
run never overwrites a full run's files) and `--bandwidth` (measure the read bandwidth into the run
info). A script that times contenders gets `--rounds` (alias `--repeats`) and `--warmup-rounds` by
giving them defaults; one that times decoding gets `--prompt-tokens` and `--new-tokens`; one that can
run with and without our kernels gets `--kernels`, and one that can time CPU seconds `--clock`.

    parser = benchmark_parser(__doc__, "pruning", full={"rounds": 5, "prompt_tokens": 128, ...},
                              quick={"rounds": 1, "prompt_tokens": 16, ...})
    parser.add_argument("--specs", nargs="*", default=None)   # the script's own; None: from full/quick
    args = parse_benchmark_args(parser, argv)                  # sizes filled in, checked, threads set

`full` and `quick` give the defaults of the shared flags and of the script's own flags whose default
is None; a flag given on the command line wins in both modes.
"""

from __future__ import annotations

import argparse

MODEL = "smollm2-135m"
RESULTS_DIR = "data/results"

# shared flag -> (option strings, type, help, smallest accepted value)
TIMING_FLAGS = {
    "rounds": (("--rounds", "--repeats"), int, "timed rounds, every contender once per round", 1),
    "warmup_rounds": (("--warmup-rounds",), int, "untimed rounds first (discarded)", 0),
    "prompt_tokens": (("--prompt-tokens",), int, "prompt length of each timed decode", 1),
    "new_tokens": (("--new-tokens",), int, "tokens generated per timed decode (speed is timed between them)", 2),
}


def benchmark_parser(doc: str, name, *, full: dict, quick: dict | None = None, min_rounds: int = 1,
                     kernels: tuple[str, ...] = ("on", "off")) -> argparse.ArgumentParser:
    """An ArgumentParser with the shared flags; `name` (or a function of the parsed args giving it)
    names the default results file. `min_rounds=0` lets `--rounds 0` mean "skip the timing"."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    quick = quick or {}
    parser.set_defaults(_benchmark={"name": name, "full": full, "quick": quick, "min_rounds": min_rounds})

    def sizes(key):
        q = f", quick {quick[key]}" if key in quick and quick[key] != full[key] else ""
        return f" (full {full[key]}{q})"

    shared = parser.add_argument_group("shared benchmark flags")
    shared.add_argument("--model", default=MODEL, help=f"bundled name, .gguf file or model directory ({MODEL})")
    shared.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    shared.add_argument("--quick", action="store_true", help="smoke run: small sizes, seconds to a few minutes")
    shared.add_argument("--out", default=None, metavar="STEM",
                        help=f"results path without suffix (default {RESULTS_DIR}/NAME, NAME_quick with --quick)")
    shared.add_argument("--bandwidth", action="store_true",
                        help="also measure the memory read bandwidth (about a second) into the run info")
    for key, (options, kind, text, _) in TIMING_FLAGS.items():
        if key in full:
            skip = " (0: skip the timing)" if key == "rounds" and min_rounds == 0 else ""
            shared.add_argument(*options, dest=key, type=kind, default=None, help=text + sizes(key) + skip)
    if "clock" in full:
        shared.add_argument("--clock", choices=("wall", "cpu"), default=None,
                            help="wall seconds, or CPU seconds of the process (with --threads 1 on a crowded "
                                 "machine)" + sizes("clock"))
    if "kernels" in full:
        shared.add_argument("--kernels", choices=kernels, default=None,
                            help="our CPU kernels, PyTorch's operators (off)" + (", or both" * ("both" in kernels))
                                 + sizes("kernels"))
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, fill every flag left at None from the parser's full (or, with --quick, quick) defaults,
    check the shared sizes (a bad one: the usage line and one error line, exit 2), set the results
    stem and torch's thread count."""
    import torch

    args = parser.parse_args(argv)
    setup = args.__dict__.pop("_benchmark")
    defaults = {**setup["full"], **setup["quick"]} if args.quick else setup["full"]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    problems = [] if args.threads >= 1 else ["--threads must be at least 1"]
    for key, (options, _, _, smallest) in TIMING_FLAGS.items():
        smallest = setup["min_rounds"] if key == "rounds" else smallest
        if getattr(args, key, None) is not None and getattr(args, key) < smallest:
            problems.append(f"{options[0]} must be at least {smallest}, got {getattr(args, key)}")
    if problems:
        parser.error("; ".join(problems))
    if args.out is None:
        name = setup["name"](args) if callable(setup["name"]) else setup["name"]
        args.out = f"{RESULTS_DIR}/{name}{'_quick' if args.quick else ''}"
    torch.set_num_threads(args.threads)
    return args


def save_rows(args: argparse.Namespace, rows: list[dict], *, method: str, run: dict, settings: tuple[str, ...],
              series: str, **extra):
    """Write a benchmark's rows to `args.out` + `.csv` (without each row's per-round `series`) and + `.json`
    (method, model, `settings` read from args, the run record and the rows), each written atomically."""
    import pandas as pd

    from ..io import atomic_write_json, atomic_write_text

    flat = [{k: v for k, v in r.items() if k != series} for r in rows]
    atomic_write_text(args.out + ".csv", pd.DataFrame(flat).to_csv(index=False))
    atomic_write_json(args.out + ".json", {"method": method, "model": args.model, **extra,
                                           "settings": {k: getattr(args, k) for k in settings}, "run": run,
                                           "rows": rows})
