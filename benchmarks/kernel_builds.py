"""This tree's kernels against an earlier commit's, alternated in one process: what a kernel change bought.

Method: the kernels of `--against REV` (its `workbench/kernels/csrc`, read with `git show`) are compiled
into the workbench cache next to this tree's. For each spec, one model with our kernels
(`kernels.enable`) holds a KV cache filled by a prompt of `--prompt-tokens` tokens
(`workbench.bench.decode.benchmark_prompts`, batch 1); each build gets its own native decode stack of
that model (`kernels.stack.build_plan`: the same weight tiles and cache), and one decode step of every
layer (`DecodeStack.run` at the position after the prompt, writing the same slot each time) is timed
`--steps` times per round, builds alternated round by round (`workbench.bench.timing.alternate`).
Reported: each build's median step time (milliseconds, the median over rounds of each round's median)
and `speedup` = REV's time / this tree's, the median of per-round ratios. Only the layers are timed
(not the embedding, the output head or the engine's sampling). Writes
`data/results/kernel_builds.json` and `.csv` with `run_info()`.

    .venv/bin/python benchmarks/kernel_builds.py --against 02abb82 --specs float32 bfloat16 int8 q4_0
    .venv/bin/python benchmarks/kernel_builds.py --against HEAD --quick        # smoke run
"""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

import torch

import workbench
from workbench import kernels
from workbench.bench.decode import benchmark_prompts
from workbench.bench.flags import benchmark_parser, parse_benchmark_args, save_rows
from workbench.bench.quality import quantized_copy
from workbench.bench.timing import alternate, run_end, run_info
from workbench.kernels import build
from workbench.kernels.stack import build_plan
from workbench.settings import cache_root

ROOT = Path(__file__).resolve().parents[1]


def revision_kernels(rev: str):
    """The compiled kernels of commit `rev` (built once into the cache, under the commit's id)."""
    from torch.utils.cpp_extension import load

    sha = subprocess.run(["git", "rev-parse", "--short=12", rev], cwd=ROOT, capture_output=True, text=True)
    if sha.returncode:
        raise SystemExit(f"kernel_builds.py: error: --against {rev}: not a commit of this repository")
    sha = sha.stdout.strip()
    out = cache_root() / "kernels" / f"rev-{sha}"
    (out / "csrc").mkdir(parents=True, exist_ok=True)
    listing = subprocess.run(["git", "ls-tree", "--name-only", sha, "workbench/kernels/csrc/"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for path in listing:
        text = subprocess.run(["git", "show", f"{sha}:{path}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
        # older trees registered DecodeStack globally, which a second build in the process may not repeat
        text = text.replace('py::class_<DecodeStack>(m, "DecodeStack", "',
                            'py::class_<DecodeStack>(m, "DecodeStack", py::module_local(), "')
        target = out / "csrc" / Path(path).name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    return load(f"workbench_kernels_rev_{sha}", [str(out / "csrc" / "matvec.cpp")], extra_cflags=list(build.CFLAGS),
                extra_ldflags=list(build.LDFLAGS), extra_include_paths=[str(out / "csrc")], build_directory=str(out))


def stack_of(model, ops):
    """The model's native decode stack built on the kernels `ops`."""
    load = build.load
    build.load = lambda verbose=False: ops
    try:
        return build_plan(model).stack
    finally:
        build.load = load


def main(argv=None):
    parser = benchmark_parser(__doc__, "kernel_builds",
                              full=dict(rounds=15, warmup_rounds=1, prompt_tokens=512,
                                        specs=["float32", "bfloat16", "int8", "q8_0", "q4_0"], steps=15),
                              quick=dict(rounds=2, warmup_rounds=0, prompt_tokens=16, specs=["int8"], steps=2))
    parser.add_argument("--against", required=True, metavar="REV", help="the commit whose kernels to compare with")
    parser.add_argument("--specs", nargs="*", default=None, help="full: float32 bfloat16 int8 q8_0 q4_0")
    parser.add_argument("--steps", type=int, default=None, help="decode steps timed per build and round (full 15)")
    args = parse_benchmark_args(parser, argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    ours = build.load()
    if ours is None:
        parser.error(f"our kernels are unavailable here: {kernels.status()['reason']}")
    theirs = revision_kernels(args.against)
    model, tok = workbench.load_model(args.model)
    info = run_info(bandwidth=args.bandwidth)
    info["against"] = args.against
    rows = []
    torch.set_grad_enabled(False)
    for spec in args.specs:
        variant = kernels.enable(quantized_copy(model, spec, tok))
        prompt = benchmark_prompts(tok, 1, args.prompt_tokens)[0]
        cache = variant.new_cache(1, args.prompt_tokens + 1)
        variant(torch.tensor([prompt]), cache, last_only=True)
        token = torch.tensor([[prompt[-1]]])
        x = variant.model.embed_tokens(token).to(variant.dtype)
        cos, sin = variant.rotary(cache.prepare(token), variant.dtype)

        def step_ms(stack):
            def run():
                times = []
                for _ in range(args.steps):
                    start = time.perf_counter()
                    stack.run(x, cos, sin, cache.k, cache.v, cache._start, cache._mask)
                    times.append(time.perf_counter() - start)
                return statistics.median(times) * 1e3
            return run

        rounds = alternate({"this": step_ms(stack_of(variant, ours)), "against": step_ms(stack_of(variant, theirs))},
                           args.rounds, args.warmup_rounds)
        row = {"spec": spec, "this_ms": rounds.median("this"), "against_ms": rounds.median("against"),
               "speedup": rounds.ratio("against", "this"),
               "runs_ms": {w: rounds.series(w) for w in ("this", "against")}}
        rows.append(row)
        print(f"{spec:<10} step {row['this_ms']:.2f} ms, {args.against}: {row['against_ms']:.2f} ms, "
              f"speed-up {row['speedup']:.3f}x", flush=True)
        save_rows(args, rows, method=__doc__, run=run_end(info), kernels=kernels.status(),
                  settings=("against", "rounds", "warmup_rounds", "prompt_tokens", "steps", "threads", "specs"),
                  series="runs_ms")
        del variant


if __name__ == "__main__":
    main()
