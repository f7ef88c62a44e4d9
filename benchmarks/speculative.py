"""Speculative decoding at batch 1: acceptance rate and tokens/s against plain decoding for k = 1..8,
with the draft at float32 and at int4, in one run, and the formula that explains the best k.

Method. Target: the bundled smollm2-135m, float32, on our CPU kernels (`--kernels off`: PyTorch's
operators). Draft: the half-depth student `build_student(teacher, "layers:15")` distilled with
forward KL for `--distill-steps` steps (batch 2 x 256 tokens, bf16 autocast, lr 5e-4, the built-in
train text; checkpointed under `speculative-draft/` in the workbench cache, so a rerun reuses it),
or `--draft DIR`, a student saved by `workbench distill --save DIR`. The int4 draft is the same
weights through `quantize_(draft, "int4-g128")`. Prompts: `--prompts` windows of `--prompt-tokens`
tokens from the built-in evaluation text; every contender generates `--new-tokens` greedy tokens
per prompt (EOS ignored) and is checked against plain decoding token for token.

Contenders, alternated round by round (`workbench.bench.timing.alternate`): plain decoding of the
target, plain decoding of each draft (its step time), and speculative decoding with each draft and
each k. Speed is decode tokens per second, the prompt's prefill left out (plain: tokens after the
first over the time from the first to the last; speculative: new tokens over the time after both
prefills), with `--clock` wall or CPU seconds; speed-up = the median over rounds of each round's
ratio to plain decoding.

Formula. alpha = accepted drafts / draft positions checked (a round's accepted count is geometric
in alpha, cut at k), pooled over every k of a draft; expected tokens per verify pass
E_k = (1 - alpha^(k+1)) / (1 - alpha); c = draft step / target step (plain decode step times);
v_k = verify pass (k + 1 positions) / target step, measured inside the speculative runs. Predicted
speed-up: E_k / (k c + 1) (a verify pass costing one step), and E_k / (k c + v_k) (its measured
cost). Both, the measured tokens per pass and the measured speed-up go to the results file.

    .venv/bin/python benchmarks/speculative.py                 # full mode: 150 distillation steps
    .venv/bin/python benchmarks/speculative.py --quick         # smoke run: speculative_quick.*
    .venv/bin/python benchmarks/speculative.py --threads 1 --clock cpu --distill-steps 40  # a shared machine
"""

from __future__ import annotations

import copy
from functools import partial

import pandas as pd

import workbench
from workbench import kernels
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import CLOCKS, alternate, run_end, run_info
from workbench.corpus import builtin_text
from workbench.distill import TrainConfig, build_student, distill, size_report, training_ids
from workbench.engine import SamplingParams, SpeculativeStats, expected_speedup, expected_tokens, generate_ids
from workbench.engine import speculative_ids
from workbench.eval import perplexity
from workbench.io import atomic_write_json, atomic_write_text
from workbench.quant import quantize_
from workbench.settings import cache_root


def prompts_from_text(tokenizer, count: int, length: int) -> list[list[int]]:
    ids = tokenizer.encode(builtin_text("evaluation"), add_special_tokens=False)
    return [ids[i * length:(i + 1) * length] for i in range(count)]


def plain(model, prompts, params, clock) -> dict:
    """Plain greedy decoding: tokens and decode seconds per step (first token to last)."""
    tokens, seconds, steps = [], 0.0, 0
    for prompt in prompts:
        out, first = [], None
        for step in generate_ids(model, [prompt], params):
            out.append(step[0])
            first = first or clock()
        seconds += clock() - first
        steps += len(out) - 1
        tokens.append(out)
    return {"tok_s": steps / seconds, "step_s": seconds / steps, "tokens": tokens}


def speculative(target, draft, k, prompts, params, clock) -> dict:
    """Speculative greedy decoding with `draft` and k: tokens, decode speed, acceptance, pass times."""
    tokens, seconds, stats = [], 0.0, SpeculativeStats(clock=clock)
    for prompt in prompts:
        start = clock()
        tokens.append(list(speculative_ids(target, draft, prompt, params, k, stats=stats)))
        seconds += clock() - start
    seconds -= stats.prefill_s  # both prompt passes, timed inside with the same clock
    generated = sum(len(t) for t in tokens)
    return {"tok_s": generated / seconds, "tokens": tokens, "acceptance_rate": stats.acceptance_rate,
            "alpha": stats.alpha, "accepted": stats.accepted, "reached": stats.reached, "drafted": stats.drafted,
            "rounds": stats.rounds, "tokens_per_round": stats.tokens_per_round,
            "verify_s": stats.verify_s / stats.rounds, "draft_step_s": stats.draft_s / max(stats.draft_calls, 1)}


def distilled_draft(teacher, tokenizer, spec: str, steps: int, eval_ids) -> tuple:
    """The student `spec`, distilled (forward KL) for `steps` steps (0: as built), checkpointed in the cache."""
    student = build_student(teacher, spec)
    if steps == 0:
        return student, {"spec": spec, "steps": 0, "ppl_after": perplexity(student, eval_ids, window=256).ppl}
    config = TrainConfig(steps=steps, batch_size=2, seq_len=256, loss="kl", lr=5e-4, warmup_steps=min(10, steps // 5),
                         checkpoint_every=10, autocast="bfloat16")
    run_dir = cache_root() / "speculative-draft" / f"{spec.replace(':', '')}-kl-{steps}steps"
    resume = (run_dir / "checkpoint.pt").is_file()
    result = distill(student, teacher, training_ids(tokenizer), config, eval_ids=eval_ids, eval_window=256,
                     checkpoint_dir=run_dir, resume=resume, progress=False)
    return student.eval(), {"spec": spec, "loss": "kl", "steps": result.steps, "ppl_before": result.ppl_before,
                            "ppl_after": result.ppl_after, "train_wall_s": result.wall_s, "resumed": resume}


def formula_rows(values: dict, ks: list[int], drafts: list[str]) -> list[dict]:
    """Measured and predicted tokens per pass and speed-up for every draft and k (see the docstring)."""
    rows = []
    target_step = values["plain"]["step_s"]
    for name in drafts:
        runs = {k: values[f"{name}-k{k}"] for k in ks}
        alpha = sum(r["accepted"] for r in runs.values()) / sum(r["reached"] for r in runs.values())
        c = values[f"{name}-plain"]["step_s"] / target_step
        for k, r in runs.items():
            v = r["verify_s"] / target_step
            rows.append({"draft": name, "k": k, "acceptance_rate": r["acceptance_rate"], "alpha_k": r["alpha"],
                         "alpha": alpha, "c": c, "verify_cost": v, "tokens_per_pass": r["tokens_per_round"],
                         "tokens_per_pass_formula": expected_tokens(alpha, k), "tok_s": r["tok_s"],
                         "speedup": r["speedup"], "speedup_formula": expected_speedup(alpha, k, c, 1.0),
                         "speedup_formula_verify": expected_speedup(alpha, k, c, v),
                         "matches_plain": r["matches_plain"]})
    return rows


def main(argv=None):
    parser = benchmark_parser(__doc__, "speculative", full=dict(
        rounds=3, warmup_rounds=1, prompt_tokens=64, new_tokens=64, kernels="on", clock="wall",
        ks=list(range(1, 9)), prompts=2, distill_steps=150), quick=dict(
        rounds=1, warmup_rounds=0, prompt_tokens=16, new_tokens=8, ks=[1, 2], prompts=1, distill_steps=2))
    parser.add_argument("--ks", type=int, nargs="*", default=None, help="draft tokens per pass (full 1..8)")
    parser.add_argument("--prompts", type=int, default=None, help="prompts per contender and round (full 2)")
    parser.add_argument("--student", default="layers:15", help="the draft, built from the target by this spec")
    parser.add_argument("--distill-steps", type=int, default=None,
                        help="forward-KL steps for the draft (full 150; 0: the student as built, untrained)")
    parser.add_argument("--draft", default=None, metavar="DIR", help="a saved student instead (no training here)")
    parser.add_argument("--draft-quant", default="int4-g128", help="the quantized draft's spec (int4-g128)")
    args = parse_benchmark_args(parser, argv)
    clock = CLOCKS[args.clock]

    report = {"method": __doc__, **run_info(bandwidth=args.bandwidth), "settings": vars(args)}
    teacher, tok = workbench.load_model(args.model)
    eval_ids = tok.encode(builtin_text("evaluation"), add_special_tokens=False)[-2048:]  # after the prompts
    if args.draft:
        draft, _ = workbench.load_model(args.draft)
        report["draft"] = {"dir": args.draft, "ppl": perplexity(draft, eval_ids, window=256).ppl}
    else:
        draft, report["draft"] = distilled_draft(teacher, tok, args.student, args.distill_steps, eval_ids)
    report["draft"].update(teacher_ppl=perplexity(teacher, eval_ids, window=256).ppl, size=size_report(draft))
    print(f"draft {report['draft']}", flush=True)
    int4 = quantize_(copy.deepcopy(draft), args.draft_quant)
    if args.kernels == "on":
        for model in (teacher, draft, int4):
            kernels.enable(model)
    drafts = {"float32": draft, args.draft_quant: int4}

    params = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)
    prompts = prompts_from_text(tok, args.prompts, args.prompt_tokens)
    contenders = {"plain": partial(plain, teacher, prompts, params, clock)}
    for name, model in drafts.items():
        contenders[f"{name}-plain"] = partial(plain, model, prompts, params, clock)
    for name, model in drafts.items():
        for k in args.ks:
            contenders[f"{name}-k{k}"] = partial(speculative, teacher, model, k, prompts, params, clock)
    timing = run_info()
    timed = alternate(contenders, args.rounds, args.warmup_rounds)
    run_end(timing)

    reference = timed.values["plain"][0]["tokens"]
    values = {}
    for name, results in timed.values.items():
        values[name] = {**results[-1], "tok_s": timed.median(name, "tok_s"), "tok_s_rounds": timed.series(name, "tok_s"),
                        "speedup": timed.ratio(name, "plain", "tok_s"),
                        "matches_plain": all(r["tokens"] == reference for r in results)}
        values[name]["step_s"] = timed.median(name, "step_s") if "step_s" in results[0] else None
        values[name]["verify_s"] = timed.median(name, "verify_s") if "verify_s" in results[0] else None
        values[name].pop("tokens")
    rows = formula_rows(values, args.ks, list(drafts))
    best = {}
    for name in drafts:
        mine = [r for r in rows if r["draft"] == name]
        best[name] = {"measured": max(mine, key=lambda r: r["speedup"])["k"],
                      "formula": max(mine, key=lambda r: r["speedup_formula_verify"])["k"],
                      "formula_verify_as_one_step": max(mine, key=lambda r: r["speedup_formula"])["k"]}
    report.update(timing={k: v for k, v in timing.items() if k.startswith(("date", "loadavg"))},
                  contenders=values, rows=rows, best_k=best,
                  drafts={name: {"weight_bytes": m.weight_bytes()} for name, m in drafts.items()},
                  target={"weight_bytes": teacher.weight_bytes(), "plain_tok_s": values["plain"]["tok_s"]})
    run_end(report)
    atomic_write_text(args.out + ".csv", pd.DataFrame(rows).to_csv(index=False))
    atomic_write_json(args.out + ".json", report)
    print(f"plain {values['plain']['tok_s']:.1f} tok/s; best k {best}")
    print(pd.DataFrame(rows).drop(columns=["alpha_k"]).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
