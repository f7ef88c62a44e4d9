"""Distillation, compared honestly: one half-depth student trained three ways with the same budget.

Method. Teacher: the bundled smollm2-135m (float32). Student: `build_student(teacher, "layers:15")`,
15 of the 30 layers (evenly spaced, first and last kept), built afresh for each run. Each loss
(hard-label CE, forward KL, reverse KL; temperature 1) trains it with the same steps, batch,
sequence length, learning-rate schedule and seeded data order on the built-in corpus's train part,
so all runs read the same tokens in the same order. The default budget (10 steps x 2 x 256 tokens,
bf16 autocast) is what fits ~10 minutes per run on a shared 2-core CPU; raise --steps on a quiet one. Perplexity is `workbench.eval.perplexity` on the
first `--eval-tokens` tokens of the evaluation part (never trained on), non-overlapping windows of
`--eval-window`, in float32 (also when training used bf16 autocast). Decode speed: teacher and
student on our CPU kernels (`--kernels off`: PyTorch's operators), alternated in `--rounds` rounds
of `bench_decode` (`workbench.bench.timing.alternate`; batch 1, greedy, `--prompt-tokens` prompt,
`--new-tokens` new tokens, `--warmup-rounds` warm-up rounds), medians; speedup = the median of the
per-round student / teacher ratios. Each run checkpoints to `--work-dir` every 5 steps; `--resume`
continues unfinished runs. Rows go to `<out>.csv` atomically after each run; `<out>.json` holds the
method, loss curves, evaluations, decode timings, generated samples and machine load.

With `--resume`, runs and decode timings already in `<out>.*` that this invocation does not redo are
kept, each with the command and date that measured it: every run records its own `command` and
`date`, and `decode_from` names the invocation that timed the decode. An invocation that trains no
loss (`--losses` with no names) keeps the training runs' top-level settings.

    .venv/bin/python benchmarks/distillation.py                    # full mode (the README's numbers)
    .venv/bin/python benchmarks/distillation.py --quick            # smoke run: writes distillation_quick.*
    .venv/bin/python benchmarks/distillation.py --losses --resume  # decode timing only, keeps the runs
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pandas as pd

import workbench
from workbench import kernels
from workbench.bench import bench_decode
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import CLOCKS, alternate, run_end, run_info
from workbench.distill import TrainConfig, build_student, distill, size_report, training_ids
from workbench.engine import SamplingParams, generate
from workbench.corpus import builtin_text
from workbench.eval import perplexity
from workbench.io import atomic_write_json, atomic_write_text
from workbench.settings import cache_root

SAMPLE_PROMPT = "The for statement in Python"


# what this invocation measured; with --resume and no training, everything else stays the file's
MEASURED_KEYS = ("method", "runs", "decode", "student_size", "decode_from")


def decode_speed(teacher, student, tokenizer, rounds: int, warmup: int, **sizes) -> dict:
    """Batch-1 decode of teacher and student, alternated per round so machine noise hits both."""
    sizes = dict(sizes, repeats=1, warmup=0)
    timed = alternate({"teacher": partial(bench_decode, teacher, tokenizer, **sizes),
                       "student": partial(bench_decode, student, tokenizer, **sizes)}, rounds, warmup)
    out = {}
    for name, results in timed.values.items():
        out[name] = {"decode_tok_s": timed.median(name, "decode_tok_s"), "runs_tok_s": timed.series(name, "decode_tok_s"),
                     "bytes_per_step": results[0]["bytes_per_step"], "gb_s": timed.median(name, "gb_s")}
    out["speedup"] = timed.ratio("student", "teacher", "decode_tok_s")
    out["bytes_ratio"] = out["teacher"]["bytes_per_step"] / out["student"]["bytes_per_step"]
    return out


def write_results(out: str, rows: list[dict], report: dict, merge: bool):
    """Write <out>.csv and <out>.json atomically; with `merge`, keep the runs (and decode timings) that
    earlier or parallel invocations of this command wrote and this one did not redo, each with the
    command and date that measured it."""
    csv, js = Path(out + ".csv"), Path(out + ".json")
    if merge and csv.is_file() and js.is_file():
        done = {row["loss"] for row in rows[1:]}  # rows[0] is the teacher
        rows = rows[:1] + [r for r in pd.read_csv(csv, keep_default_na=False).to_dict("records")
                           if r["student"] != "teacher" and r["loss"] not in done] + rows[1:]
        old = json.loads(js.read_text())
        kept = {k: {"command": old["command"], "date": old["date"], **v} for k, v in old["runs"].items() if k not in done}
        report = {**report, "runs": {**kept, **report["runs"]}}
        if not done and kept:  # nothing trained here: the top level keeps describing the runs kept
            report = {**{k: v for k, v in old.items() if k not in MEASURED_KEYS},
                      **{k: v for k, v in report.items() if k in MEASURED_KEYS}}
        if "decode" not in report and "decode" in old:
            report.update(decode=old["decode"], student_size=old["student_size"],
                          decode_from=old.get("decode_from") or f"{old['command']} ({old['date']})")
    atomic_write_text(csv, pd.DataFrame(rows).to_csv(index=False))
    atomic_write_json(js, report)


def sample(model, tokenizer) -> str:
    return generate(model, tokenizer, SAMPLE_PROMPT, SamplingParams(max_tokens=40)).text


def main(argv=None):
    parser = benchmark_parser(__doc__, "distillation", min_rounds=0, full=dict(
        losses=["ce", "kl", "rkl"], steps=10, eval_tokens=2048, eval_window=1024, rounds=3, warmup_rounds=1,
        prompt_tokens=128, new_tokens=64, kernels="on", clock="wall"), quick=dict(
        losses=["kl"], steps=2, eval_tokens=256, eval_window=256, rounds=1, prompt_tokens=16, new_tokens=8))
    parser.add_argument("--student", default="layers:15")
    parser.add_argument("--losses", nargs="*", default=None, help="full: ce kl rkl; none: decode timing only")
    parser.add_argument("--steps", type=int, default=None, help="training steps per loss (full 10)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=2, help="learning-rate warm-up steps")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--autocast", default="bfloat16", help="bfloat16 or 'none' (float32 matmuls)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="evaluation tokens (full 2048)")
    parser.add_argument("--eval-window", type=int, default=None, help="perplexity window (full 1024)")
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="checkpoints (default: distill-runs in the workbench cache)")
    parser.add_argument("--resume", action="store_true",
                        help="continue runs whose checkpoints are in --work-dir, and keep the finished runs "
                             "already in <out>.csv/.json (so losses may also run as parallel invocations)")
    args = parse_benchmark_args(parser, argv)
    work_dir = Path(args.work_dir) if args.work_dir else cache_root() / "distill-runs"

    teacher, tok = workbench.load_model(args.model)
    train_ids = training_ids(tok)
    eval_ids = tok.encode(builtin_text("evaluation"), add_special_tokens=False)[:args.eval_tokens]
    teacher_ppl = perplexity(teacher, eval_ids, window=args.eval_window).ppl
    report = {"method": __doc__, **run_info(bandwidth=args.bandwidth), "settings": vars(args), "teacher_ppl": teacher_ppl,
              "teacher_size": size_report(teacher), "teacher_sample": sample(teacher, tok), "runs": {}}
    rows = [{"student": "teacher", "loss": "", "steps": 0, "tokens": 0, "ppl": teacher_ppl,
             "weight_bytes": teacher.weight_bytes()}]
    print(f"teacher ppl {teacher_ppl:.3f} on {len(eval_ids)} evaluation tokens", flush=True)
    for loss in args.losses:
        student = build_student(teacher, args.student)
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, loss=loss,
                             lr=args.lr, warmup_steps=args.warmup, temperature=args.temperature, eval_every=args.eval_every,
                             checkpoint_every=5, autocast=None if args.autocast == "none" else args.autocast)
        run_dir = work_dir / f"{args.student.replace(':', '')}-{loss}"
        resume = args.resume and (run_dir / "checkpoint.pt").is_file()
        load = os.getloadavg()
        result = distill(student, teacher, train_ids, config, eval_ids=eval_ids, eval_window=args.eval_window,
                         checkpoint_dir=run_dir, resume=resume)
        rows.append(result.row(student=args.student, weight_bytes=student.weight_bytes(), loadavg_1m=load[0],
                               autocast=args.autocast))
        report["runs"][loss] = {"command": report["command"], "date": report["date"], "row": rows[-1],
                                "history": result.history, "evals": result.evals,
                                "sample": sample(student, tok), "resumed": resume}
        print(f"{loss:>4}: ppl {result.ppl_before:.1f} -> {result.ppl_after:.2f} after {result.steps} steps "
              f"({result.tokens} tokens, {result.tokens_per_s:.1f} tok/s, {result.wall_s:.0f} s)", flush=True)
        write_results(args.out, rows, report, args.resume)
    if args.rounds:
        student = build_student(teacher, args.student)  # decode speed does not depend on the weights' values
        if args.kernels == "on":
            kernels.enable(teacher)
            kernels.enable(student)
        timing = run_info()
        report["decode"] = decode_speed(teacher, student, tok, args.rounds, args.warmup_rounds,
                                        prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                                        clock=CLOCKS[args.clock])
        report["decode"]["run"] = {k: v for k, v in run_end(timing).items() if k.startswith(("date", "loadavg"))}
        report["decode"]["settings"] = {k: getattr(args, k) for k in ("rounds", "warmup_rounds", "prompt_tokens",
                                                                      "new_tokens", "kernels", "clock", "threads")}
        report["student_size"] = size_report(student)
        report["decode_from"] = f"{timing['command']} ({timing['date']})"
        print(f"decode b1: teacher {report['decode']['teacher']['decode_tok_s']:.1f} tok/s, student "
              f"{report['decode']['student']['decode_tok_s']:.1f} tok/s ({report['decode']['speedup']:.2f}x; "
              f"bytes ratio {report['decode']['bytes_ratio']:.2f}x)", flush=True)
    run_end(report)
    write_results(args.out, rows, report, args.resume)
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
