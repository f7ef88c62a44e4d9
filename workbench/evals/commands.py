"""`workbench eval perf | tasks | references`: the flags and what each command runs (the CLI wires
these in; a model flag set is passed in by the CLI so the model flags stay defined once)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import InvalidParameterError


def add_arguments(sub, model_args):
    p = sub.add_parser("eval", help="evaluate a served model with evalscope: load (perf), answers (tasks)")
    ev = p.add_subparsers(dest="eval_command", required=True)

    def target(q):
        model_args(q)
        q.add_argument("--variant", action="append", default=None, metavar="SPEC",
                       help="a variant to serve and evaluate, repeatable: fp32, bf16, quant=int8, "
                            "quant=int4-g128,dtype=bfloat16, prune=wanda:0.5, model=DIR (default: the model flags)")
        q.add_argument("--url", default=None, help="evaluate the server running at URL instead of starting one")
        q.add_argument("--api-key", default=None, help="bearer key for --url")
        q.add_argument("--port", type=int, default=0, help="port of the server started (default 0: any free one)")
        q.add_argument("--output-dir", default="evalscope_runs", help="evalscope's files (default ./evalscope_runs)")
        q.add_argument("--resume", action="store_true", help="skip the runs already finished in --output-dir")
        q.add_argument("--results", default=None, metavar="CSV", help="also write the table to this CSV (atomically)")

    q = ev.add_parser("perf", help="evalscope perf: throughput, TTFT, TPOT, ITL at each concurrency")
    target(q)
    q.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8], help="concurrent streams (default 1 2 4 8)")
    q.add_argument("--number", type=int, default=8, help="requests per concurrency (default 8)")
    q.add_argument("--dataset", default="random", choices=["random", "line_by_line"],
                   help="random prompts from the model's tokenizer, or a prompts file (line_by_line)")
    q.add_argument("--dataset-path", default=None, help="the prompts file of line_by_line, one prompt a line")
    q.add_argument("--prompt-tokens", type=int, default=64, help="random: prompt length in tokens (default 64)")
    q.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request, exactly (default 32)")

    q = ev.add_parser("tasks", help="evalscope eval on data/eval: fidelity, multiple choice, QA")
    target(q)
    q.add_argument("--sets", nargs="+", default=["fidelity", "mcq", "qa"], help="fidelity mcq qa (default all)")
    q.add_argument("--limit", type=int, default=None, help="first N questions of each set (default all)")
    q.add_argument("--max-tokens", type=int, default=32, help="answer length for mcq and qa (fidelity: its references')")
    q.add_argument("--batch-size", type=int, default=4, help="concurrent requests (default 4)")
    q.add_argument("--fidelity-refs", default="smollm2-135m", metavar="NAME",
                   help="data/eval/fidelity/NAME.jsonl, written by `workbench eval references`")

    q = ev.add_parser("references", help="write the fidelity references: the served model's greedy answers")
    model_args(q)
    q.add_argument("--url", default=None, help="use the server running at URL instead of starting one")
    q.add_argument("--api-key", default=None)
    q.add_argument("--port", type=int, default=0)
    q.add_argument("--prompts", default=None, help="prompts file (.jsonl with `question`; default data/eval/fidelity)")
    q.add_argument("--out-dir", default=None, help="where NAME.jsonl goes (default data/eval/fidelity)")
    q.add_argument("--name", default=None, help="file name (default: the served model name)")
    q.add_argument("--max-tokens", type=int, default=32, help="answer length (default 32)")


def _variants(args):
    from .server import Variant

    if args.variant:
        return [Variant.parse(s, model=args.model, calib=args.calib) for s in args.variant]
    return [Variant(args.model, args.quant, args.prune, args.dtype, args.calib).checked()]


def _server_args(args) -> list[str]:
    out = ["--kernels", args.kernels, "--quantized-activations", args.quantized_activations]
    return out + (["--threads", str(args.threads)] if args.threads else [])


@contextmanager
def _target(args, variant):
    from .server import connect, served

    if args.url:
        yield connect(args.url, args.api_key)
    else:
        with served(variant, port=args.port, server_args=tuple(_server_args(args))) as server:
            yield server


def _write(args, df):
    if args.results:
        from ..io import atomic_write_text

        atomic_write_text(Path(args.results), df.to_csv(index=False))
    print(json.dumps(df.to_dict(orient="records")) if args.json else df.to_string(index=False))


def cmd_eval(args):
    import pandas as pd

    from .perf import perf_sweep
    from .tasks import run_tasks, write_references

    if not 0 <= args.port <= 65535:
        raise InvalidParameterError(f"--port must be in [0, 65535], got {args.port}")
    variants = [None] if args.url and args.eval_command != "references" and not args.variant else None
    if args.eval_command == "references":
        from .server import Variant

        with _target(args, Variant(args.model, args.quant, args.prune, args.dtype, args.calib).checked()) as server:
            kw = {k: v for k, v in (("prompts", args.prompts), ("out_dir", args.out_dir)) if v}
            out = write_references(server, name=args.name, max_tokens=args.max_tokens, **kw)
        print(json.dumps({"references": str(out)}) if args.json else f"wrote {out}")
        return 0
    variants = variants or _variants(args)
    frames = []
    for v in variants:
        with _target(args, v) as server:
            out = Path(args.output_dir) / args.eval_command / (server.label if v is None else v.label)
            if args.eval_command == "perf":
                frames.append(perf_sweep(server, args.parallel, args.number, out, dataset=args.dataset,
                                         dataset_path=args.dataset_path, prompt_tokens=args.prompt_tokens,
                                         max_tokens=args.max_tokens, resume=args.resume))
            else:
                frames.append(run_tasks(server, args.sets, out, fidelity_refs=args.fidelity_refs, limit=args.limit,
                                        max_tokens=args.max_tokens, batch_size=args.batch_size, resume=args.resume))
    df = pd.concat(frames, ignore_index=True)
    _write(args, df)
    if args.eval_command == "perf":
        from .peers import llama_cpp_peer

        ok, reason = llama_cpp_peer(variants[0].quant if variants[0] else None)
        if not ok:
            print(f"workbench eval: {reason}", file=sys.stderr)
        bad = df[(df["failed"] > 0) | (df.get("tokens_match_server", True) == False)]  # noqa: E712
        return 1 if len(bad) else 0
    return 0
