"""`workbench study run|report|list`: the subcommands' arguments and what they do (cli.py wires them in)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub):
    p = sub.add_parser("study", help="a grid of compression variants measured the same way (resumable)")
    study = p.add_subparsers(dest="study_command", required=True)
    r = study.add_parser("run", help="measure every cell of a study not yet in the results file")
    r.add_argument("study", help="the study file (YAML): models, prune, quant, kv, measures")
    r.add_argument("--results", default=None, metavar="CSV",
                   help="results file (default: STUDY's name with .csv, beside it)")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: cells one after another; ray: each cell a Ray task (RAY_ADDRESS or a local instance)")
    r.add_argument("--num-cpus", type=int, default=None, help="Ray: CPUs (and torch threads) per cell (default 1)")
    r.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    r.add_argument("--force", action="store_true", help="measure every cell again (also rows of another code version)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r = study.add_parser("report", help="a markdown report with PNG plots (Pareto fronts) of a results file")
    r.add_argument("results", help="the results CSV of `workbench study run`")
    r.add_argument("--output", default=None, metavar="DIR", help="default: RESULTS.report/ beside it")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r = study.add_parser("list", help="the cells of a results file: key, status, specs, main measures")
    r.add_argument("results")
    r.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace):
    from pathlib import Path

    from ..errors import InvalidParameterError

    if args.study_command == "run":
        from .runner import run_study

        if args.num_cpus is not None and args.num_cpus < 1:
            raise InvalidParameterError(f"--num-cpus must be >= 1, got {args.num_cpus}")
        results = args.results or str(Path(args.study).with_suffix(".csv"))
        counts = run_study(args.study, results, executor=args.executor, force=args.force, progress=not args.json,
                           num_cpus=args.num_cpus, ray_address=args.ray_address)
        counts["results"] = results
        print(json.dumps(counts) if args.json else
              f"{counts['cells']} cells: {counts['skipped']} already measured, {counts['measured']} measured, "
              f"{counts['failed']} failed -> {results}")
        return 0
    if args.study_command == "report":
        from .report import write_report

        path = write_report(args.results, args.output)
        print(json.dumps({"report": str(path)}) if args.json else f"wrote {path}")
        return 0
    from .report import list_cells

    cells = list_cells(args.results)
    print(cells.to_json(orient="records") if args.json else cells.to_string(index=False))
    return 0
