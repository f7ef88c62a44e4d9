#!/usr/bin/env python
"""Our engine vs transformers' `generate`: prefill and decode speed, same run, same prompts, same clock.

For every (dtype, batch) the two engines are measured in alternation inside one process (a warm-up
run of each, then `repeats` rounds of: one timed run of ours, one timed run of transformers'), so a
noisy neighbour on a shared machine slows both alike. Both are timed the way
`workbench.bench.decode.METHOD` defines it: prefill = start of the call to the first sampled token,
decode = first to last sampled token. See benchmarks/README.md.

    .venv/bin/python benchmarks/decode_vs_transformers.py            # full: prompt 512, 128 new, batch 1 and 8
    .venv/bin/python benchmarks/decode_vs_transformers.py --quick    # smoke run, seconds
    .venv/bin/python benchmarks/decode_vs_transformers.py --readme README.md   # also update the README table
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import os
import platform
import shlex
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws a progress bar with plain tqdm

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench.bench.decode import METHOD, bench_decode, benchmark_prompts, decode_bytes_per_step  # noqa: E402
from workbench.bench.timing import median, now  # noqa: E402
from workbench.checkpoints import load_model  # noqa: E402
from workbench.engine import SamplingParams, generate_ids  # noqa: E402
from workbench.io import atomic_write_json, atomic_write_text  # noqa: E402
from workbench.reference import load_reference  # noqa: E402
from workbench.model import weight_bytes  # noqa: E402

MODEL = "smollm2-135m"
MARK_START, MARK_END = "<!-- decode-benchmark:start -->", "<!-- decode-benchmark:end -->"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
FULL = {"batches": [1, 8], "prompt_tokens": 512, "new_tokens": 128, "repeats": 3, "warmup": 1}
BUSY_LOAD = 1.0  # 1-minute load average above which a run is flagged as measured on a busy machine
QUICK = {"batches": [1, 2], "prompt_tokens": 32, "new_tokens": 8, "repeats": 1, "warmup": 1}

HF_METHOD = (
    "transformers: LlamaForCausalLM loaded by workbench.reference.load_reference from the same GGUF (float32; "
    "bfloat16 = a copy cast with .to(torch.bfloat16)), default attention implementation and default (dynamic) "
    "KV cache, model.generate(input_ids, attention_mask=all ones, do_sample=False, max_new_tokens=N, "
    "min_new_tokens=N) on the same token ids as ours. A LogitsProcessor records time.perf_counter() at each "
    "call: the first call comes right after the prefill forward, the last one before the N-th token is picked. "
    "prefill_tok_s = batch*prompt_tokens / (first call - start of generate); decode_tok_s = batch*(N-1) / "
    "(last call - first call); gb_s = the same weight bytes as ours (every weight in the tested dtype, the tied "
    "output head once) x decode steps per second. Per (dtype, batch): one warm-up run of each engine, then "
    "`repeats` rounds of one timed run of ours (bench_decode, repeats=1, warmup=0) followed by one of "
    "transformers; medians over the rounds."
)

# llama.cpp on the same model, from /work/shared/BASELINES.md (measured 2026-11-21 on a 2-core
# AVX-512 machine like CI's, llama-cpp-python 0.3.36, 2 threads, 512-token prompt, 128 new tokens,
# greedy, medians over 4 processes x 3 runs). Another run on another day: reference only.
LLAMA_CPP_PEERS = [
    # weights, bytes, prefill 512 tok/s, decode b1 tok/s, decode b8 tok/s
    ("F32", 538e6, 802, 60.4, 249),
    ("BF16", 269e6, 1126, 109.4, 331),
    ("Q8_0", 143e6, 643, 122.2, 263),
    ("Q4_1 (as published)", 96.6e6, 398, 137.8, 232),
]
PEER_SOURCE = ("llama.cpp (llama-cpp-python 0.3.36), from /work/shared/BASELINES.md, measured 2026-11-21 in "
               "another session on a 2-core machine like this one; 2 threads, prompt 512, 128 new tokens")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: prompt 32, 8 new tokens, 1 repeat, batches 1 2 (writes *_quick.json/.csv)")
    p.add_argument("--out-dir", default="data/results", help="where the .json and .csv go")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (full: 1 8)")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (full: 512)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per sequence (full: 128)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per config (full: 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs of each engine per config (default 1)")
    p.add_argument("--model", default=MODEL, help="bundled name, .gguf file or Hugging Face directory")
    p.add_argument("--readme", default=None,
                   help=f"replace the text between {MARK_START} and {MARK_END} in this file with the table")
    p.add_argument("--no-peers", action="store_true", help="leave the llama.cpp reference table out")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problems = []
    if args.threads < 1:
        problems.append("--threads must be >= 1")
    if any(b < 1 for b in args.batches):
        problems.append("--batches must all be >= 1")
    if args.prompt_tokens < 1:
        problems.append("--prompt-tokens must be >= 1")
    if args.new_tokens < 2:
        problems.append("--new-tokens must be >= 2 (decode speed is timed between tokens)")
    if args.repeats < 1:
        problems.append("--repeats must be >= 1")
    if args.warmup < 0:
        problems.append("--warmup must be >= 0")
    if problems:
        p.error("; ".join(problems))
    args.dtypes = list(dict.fromkeys(args.dtypes))
    args.batches = list(dict.fromkeys(args.batches))
    return args


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_readme(path: str) -> str:
    """The README's text, after checking that it has the markers (fail before a long run, not after)."""
    file = Path(path)
    if not file.is_file():
        fail(f"--readme {path}: no such file")
    text = file.read_text(encoding="utf-8")
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < 0 or end < start or text.count(MARK_START) != 1 or text.count(MARK_END) != 1:
        fail(f"--readme {path}: needs exactly one '{MARK_START}' line followed by one "
                 f"'{MARK_END}' line; the table goes between them. Add them where the table belongs.")
    return text


def replace_between_markers(text: str, body: str) -> str:
    start = text.index(MARK_START) + len(MARK_START)
    end = text.index(MARK_END)
    return text[:start] + "\n" + body.strip("\n") + "\n" + text[end:]


# ---------------------------------------------------------------------------------------------------
# transformers, timed like ours


def _step_timer_class():
    from transformers import LogitsProcessor

    class StepTimer(LogitsProcessor):
        """Records the clock each time generate asks for the next token's scores (changes nothing)."""

        def __init__(self):
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(now())
            return scores

    return StepTimer


def hf_generation(ref, prompts: list[list[int]], new_tokens: int, timer_cls) -> tuple[float, float, list[list[int]]]:
    """(prefill seconds, decode seconds, new token ids) of one greedy `generate` call."""
    from transformers import LogitsProcessorList

    ids = torch.tensor(prompts, dtype=torch.long)
    timer = timer_cls()
    gc.collect()
    start = now()
    with torch.inference_mode():
        out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           logits_processor=LogitsProcessorList([timer]),
                           pad_token_id=ref.generation_config.pad_token_id or 0, use_cache=True)
    if len(timer.times) != new_tokens or tuple(out.shape) != (len(prompts), ids.shape[1] + new_tokens):
        raise RuntimeError(f"transformers generated {tuple(out.shape)} with {len(timer.times)} timed steps; "
                           f"expected {new_tokens} new tokens per sequence")
    return timer.times[0] - start, timer.times[-1] - timer.times[0], out[:, ids.shape[1]:].tolist()


def ours_tokens(model, prompts, new_tokens) -> list[list[int]]:
    """Greedy tokens from our engine (untimed: a warm-up run that also gives tokens to compare)."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    steps = list(generate_ids(model, prompts, params))
    return [list(row) for row in zip(*steps)]


def hf_bytes_per_step(ref) -> int:
    """Same rule as `decode_bytes_per_step`: all weights, minus an untied embedding table."""
    total = weight_bytes(ref)
    emb = ref.get_input_embeddings().weight
    if emb.data_ptr() != ref.get_output_embeddings().weight.data_ptr():
        total -= emb.numel() * emb.element_size()
    return total


def summarise(runs: list[tuple[float, float]], batch: int, prompt_tokens: int, new_tokens: int,
              step_bytes: int) -> dict:
    """The METHOD formulas on medians of (prefill_s, decode_s) runs; identical for both engines."""
    prefill_s = median(r[0] for r in runs)
    decode_s = median(r[1] for r in runs)
    steps_per_s = (new_tokens - 1) / decode_s
    decode_each = [batch * (new_tokens - 1) / r[1] for r in runs]
    return {
        "prefill_tok_s": batch * prompt_tokens / prefill_s,
        "decode_tok_s": batch * steps_per_s,
        "gb_s": step_bytes * steps_per_s / 1e9,
        "decode_tok_s_min": min(decode_each),
        "decode_tok_s_max": max(decode_each),
        "runs_s": [{"prefill_s": p, "decode_s": d} for p, d in runs],
    }


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of generated positions before the first token where the two engines differ (per row)."""
    same = total = 0
    for x, y in zip(a, b):
        n = next((i for i, (s, t) in enumerate(zip(x, y)) if s != t), min(len(x), len(y)))
        same, total = same + n, total + len(x)
    return same / total if total else 1.0


# ---------------------------------------------------------------------------------------------------
# the run


def machine_info(threads: int) -> dict:
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        cpu = platform.processor() or "unknown"
    import transformers

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run(args) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    info = machine_info(torch.get_num_threads())
    if (info["loadavg_start"] or [0.0])[0] > BUSY_LOAD:
        print(f"warning: load average {info['loadavg_start'][0]:.1f}: the machine is busy, timings will be noisy",
              file=sys.stderr, flush=True)
    timer_cls = _step_timer_class()
    P, N = args.prompt_tokens, args.new_tokens

    print(f"loading transformers' model for {args.model} (float32) ...", file=sys.stderr, flush=True)
    ref32 = load_reference(args.model)
    rows, ratios = [], []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        model, tokenizer = load_model(args.model, dtype=dtype)
        if P + N > model.config.max_position_embeddings:
            fail(f"--prompt-tokens + --new-tokens = {P + N} exceeds the context window "
                     f"of {model.config.max_position_embeddings}")
        ref = ref32 if dtype == torch.float32 else copy.deepcopy(ref32).to(dtype)
        assert next(ref.parameters()).dtype == dtype and model.dtype == dtype
        ours_step, hf_step = decode_bytes_per_step(model), hf_bytes_per_step(ref)
        ours_bytes, hf_bytes = model.weight_bytes(), weight_bytes(ref)
        for batch in args.batches:
            prompts = benchmark_prompts(tokenizer, batch, P)
            print(f"{dtype_name} batch {batch}: warm-up ...", file=sys.stderr, flush=True)
            our_toks = hf_toks = None
            for _ in range(args.warmup):
                our_toks = ours_tokens(model, prompts, N)
                hf_toks = hf_generation(ref, prompts, N, timer_cls)[2]
            ours_runs, hf_runs, last = [], [], None
            for r in range(args.repeats):
                gc.collect()
                last = bench_decode(model, tokenizer, batch=batch, prompt_tokens=P, new_tokens=N,
                                    repeats=1, warmup=0)
                ours_runs += [(x["prefill_s"], x["decode_s"]) for x in last["runs_s"]]
                prefill_s, decode_s, hf_toks = hf_generation(ref, prompts, N, timer_cls)
                hf_runs.append((prefill_s, decode_s))
                print(f"  round {r + 1}/{args.repeats}: ours decode {batch * (N - 1) / ours_runs[-1][1]:.1f} tok/s, "
                      f"transformers {batch * (N - 1) / decode_s:.1f} tok/s", file=sys.stderr, flush=True)
            if our_toks is None:
                our_toks = ours_tokens(model, prompts, N)
            common = {"dtype": dtype_name, "batch": batch, "prompt_tokens": P, "new_tokens": N,
                      "threads": torch.get_num_threads(), "repeats": args.repeats, "warmup": args.warmup}
            ours = {"engine": "workbench", **common, "model_bytes": ours_bytes, "bytes_per_step": ours_step,
                    **summarise(ours_runs, batch, P, N, ours_step),
                    "kv_cache_bytes": last["kv_cache_bytes"]}  # (peak RSS left out: both models share the process)
            if args.repeats == 1:  # our formulas must reproduce bench_decode's own numbers
                for key in ("prefill_tok_s", "decode_tok_s", "gb_s"):
                    assert abs(ours[key] - last[key]) <= 1e-9 * abs(last[key]), key
            theirs = {"engine": f"transformers {transformers.__version__}", **common, "model_bytes": hf_bytes,
                      "bytes_per_step": hf_step, **summarise(hf_runs, batch, P, N, hf_step),
                      "attn_implementation": ref.config._attn_implementation}
            ratio = {"dtype": dtype_name, "batch": batch,
                     "prefill_ratio": ours["prefill_tok_s"] / theirs["prefill_tok_s"],
                     "decode_ratio": ours["decode_tok_s"] / theirs["decode_tok_s"],
                     "gb_s_ratio": ours["gb_s"] / theirs["gb_s"],
                     "greedy_agreement": agreement(our_toks, hf_toks)}
            for row in (ours, theirs):
                row.update({k: ratio[k] for k in ("prefill_ratio", "decode_ratio", "gb_s_ratio")})
            rows += [ours, theirs]
            ratios.append(ratio)
        del model, ref
        gc.collect()
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "benchmark": "decode_vs_transformers",
        "model": args.model,
        "quick": args.quick,
        "command": command_line(),
        "settings": {"batches": args.batches, "dtypes": args.dtypes, "prompt_tokens": P, "new_tokens": N,
                     "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads},
        "machine": info,
        "method": {"ours": METHOD, "transformers": HF_METHOD,
                   "ratios": "ours / transformers, from the medians; gb_s_ratio equals decode_ratio when both "
                             "count the same weight bytes",
                   "greedy_agreement": "fraction of generated positions before the first disagreement between "
                                       "the two engines' greedy tokens (per sequence; bf16 may diverge early)"},
        "rows": rows,
        "ratios": ratios,
        "peers_reference_only": None if args.no_peers else {
            "source": PEER_SOURCE,
            "rows": [{"engine": "llama.cpp", "weights": w, "bytes": b, "prefill_512_tok_s": pf,
                      "decode_b1_tok_s": d1, "decode_b8_tok_s": d8} for w, b, pf, d1, d8 in LLAMA_CPP_PEERS],
        },
    }


def command_line() -> str:
    args = [shlex.quote(a) for a in sys.argv[1:]]
    return " ".join([".venv/bin/python", "benchmarks/decode_vs_transformers.py", *args])


# ---------------------------------------------------------------------------------------------------
# output


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    by = {(r["dtype"], r["batch"], r["engine"] == "workbench"): r for r in result["rows"]}
    lines = [
        f"Same run, engines alternated per round: {result['model']}, prompt {s['prompt_tokens']} tokens, "
        f"{s['new_tokens']} new tokens, greedy, {m['threads']} threads, medians of {s['repeats']} "
        f"(after {s['warmup']} warm-up), {m['cpu']}, torch {m['torch']}, transformers {m['transformers']}. "
        f"Decode and prefill in tokens/s (all sequences of the batch); GB/s = weight bytes per decode step "
        f"x steps/s; ratio = ours / transformers.",
        "",
        "| dtype | batch | weights MB | prefill ours | prefill transformers | ratio | decode ours "
        "| decode transformers | ratio | GB/s ours | GB/s transformers | same greedy tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q in result["ratios"]:
        o, t = by[(q["dtype"], q["batch"], True)], by[(q["dtype"], q["batch"], False)]
        lines.append(
            f"| {q['dtype']} | {q['batch']} | {o['model_bytes'] / 1e6:.0f} | {o['prefill_tok_s']:.0f} "
            f"| {t['prefill_tok_s']:.0f} | {q['prefill_ratio']:.2f}x "
            f"| {o['decode_tok_s']:.1f} [{o['decode_tok_s_min']:.1f}-{o['decode_tok_s_max']:.1f}] "
            f"| {t['decode_tok_s']:.1f} [{t['decode_tok_s_min']:.1f}-{t['decode_tok_s_max']:.1f}] "
            f"| {q['decode_ratio']:.2f}x | {o['gb_s']:.1f} | {t['gb_s']:.1f} | {q['greedy_agreement']:.0%} |")
    lines.append("")
    lines.append("Decode [min-max] over the rounds.")
    load = (m.get("loadavg_start") or [0.0])[0]
    if load > BUSY_LOAD:
        lines.append(f"WARNING: 1-minute load average {load:.1f} when the run started (other processes on "
                     f"{m['cpu_count']} cores): the machine was busy, absolute numbers are unreliable.")
    peers = result.get("peers_reference_only")
    if peers:
        lines += [
            "",
            f"Reference only, NOT from this run (other session, other load; compare loosely): {peers['source']}.",
            "",
            "| llama.cpp weights | bytes MB | prefill 512 tok/s | decode b1 tok/s | decode b8 tok/s |",
            "|---|---|---|---|---|",
        ]
        for r in peers["rows"]:
            lines.append(f"| {r['weights']} | {r['bytes'] / 1e6:.0f} | {r['prefill_512_tok_s']:.0f} "
                         f"| {r['decode_b1_tok_s']:.1f} | {r['decode_b8_tok_s']:.0f} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out_dir: Path, quick: bool) -> tuple[Path, Path]:
    import pandas as pd

    stem = "decode_vs_transformers_quick" if quick else "decode_vs_transformers"
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"
    atomic_write_json(json_path, result)
    columns = ["engine", "dtype", "batch", "prompt_tokens", "new_tokens", "threads", "repeats", "prefill_tok_s",
               "decode_tok_s", "decode_tok_s_min", "decode_tok_s_max", "gb_s", "model_bytes", "bytes_per_step",
               "prefill_ratio", "decode_ratio", "gb_s_ratio"]
    frame = pd.DataFrame([{k: r.get(k) for k in columns} for r in result["rows"]], columns=columns)
    frame["date"] = result["machine"]["date"]
    atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.4g"))
    return json_path, csv_path


def main(argv=None):
    args = parse_args(argv)
    readme_text = check_readme(args.readme) if args.readme else None
    result = run(args)
    table = markdown(result)
    json_path, csv_path = write_outputs(result, Path(args.out_dir), args.quick)
    print(table)
    print(f"wrote {json_path} and {csv_path}", file=sys.stderr)
    if args.readme:
        readme_text = check_readme(args.readme)  # re-read: it may have been edited during the run
        header = f"Measured {result['machine']['date'][:10]} with `{result['command']}`."
        atomic_write_text(args.readme, replace_between_markers(readme_text, header + "\n\n" + table))
        print(f"updated {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
