#!/usr/bin/env python
"""Our engine vs transformers and llama.cpp: prefill and decode speed, same run, same prompts, same clock.

The contenders, all in one process (a list of `Engine`s; a peer is one more function that returns
one): ours in float32 and bfloat16 with our CPU kernels and without them (PyTorch's operators);
transformers in the same dtypes, in its usual call (`generate` with a dynamic cache) and in its
fastest supported ones (`--hf-calls`: a static cache, and a static cache compiled by torch.compile);
ours on every quantization spec (`--specs`, with kernels); llama.cpp, when llama-cpp-python is
importable, on GGUFs our exporter writes from the same weights (F32, BF16, and Q8_0 / Q4_0 / Q4_1
for the matching specs and for our int8 / int4 rows' peers of the same bits), at every batch size
through its low-level batch API (one sequence id per prompt, its cache cleared every run:
`workbench.bench.llama_cpp_peer`). Without llama-cpp-python the run says so and runs the rest.

For every batch size: an untimed warm-up run of each engine (it also records the greedy tokens
compared in the table; `--warmup-rounds` above 1 adds alternated warm-up rounds), then `--rounds`
rounds of one timed run of every engine and one read-bandwidth measurement (our streaming read
kernel, `workbench.bench.timing.read_bandwidth_gb_s`), alternated (`workbench.bench.timing.alternate`),
so a noisy neighbour on a shared machine slows all alike; every row's GB/s is also given as a
fraction of the bandwidth measured in the same rounds. All are timed the way
`workbench.bench.decode.METHOD` defines it: prefill = start of the call to the first sampled token,
decode = first to last sampled token. See benchmarks/README.md.

    .venv/bin/python benchmarks/decode_vs_transformers.py            # full: prompt 512, 128 new, batch 1 and 8
    .venv/bin/python benchmarks/decode_vs_transformers.py --quick    # smoke run, seconds
    .venv/bin/python benchmarks/decode_vs_transformers.py --readme README.md   # also update the README table
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF loader draws a progress bar with plain tqdm

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from workbench import kernels  # noqa: E402
from workbench.bench import llama_cpp_peer, quantized_copy  # noqa: E402
from workbench.bench.decode import METHOD, bench_decode, benchmark_prompts, decode_bytes_per_step  # noqa: E402
from workbench.bench.flags import benchmark_parser, parse_benchmark_args  # noqa: E402
from workbench.bench.timing import CLOCKS, alternate, median, read_bandwidth_gb_s, run_end, run_info  # noqa: E402
from workbench.checkpoints import load_model  # noqa: E402
from workbench.engine import SamplingParams, generate_ids  # noqa: E402
from workbench.io import atomic_write_json, atomic_write_text  # noqa: E402
from workbench.verify import load_reference  # noqa: E402
from workbench.model import weight_bytes  # noqa: E402

MODEL = "smollm2-135m"
MARK_START, MARK_END = "<!-- decode-benchmark:start -->", "<!-- decode-benchmark:end -->"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SPECS = ["int8", "int4-g32", "int4-g64", "int4-g128", "q8_0", "q4_0", "q4_1"]
HF_CALLS = {"generate": {}, "static": {"cache_implementation": "static"},
            "compile": {"cache_implementation": "static", "compile": True}}
FULL = {"batches": [1, 8], "prompt_tokens": 512, "new_tokens": 128, "rounds": 3, "warmup_rounds": 1, "specs": SPECS,
        "kernels": "both", "clock": "wall", "hf_calls": list(HF_CALLS)}
BUSY_LOAD = 1.0  # 1-minute load average above which a run is flagged as measured on a busy machine
QUICK = {"batches": [1, 2], "prompt_tokens": 32, "new_tokens": 8, "rounds": 1, "specs": ["int8"],
         "hf_calls": ["generate", "static"]}
LLAMA_CPP_METHOD = llama_cpp_peer.METHOD
# llama.cpp's format for each of our weights: the same bytes (float32, bfloat16, q8_0, q4_0, q4_1), or for
# our own formats the GGUF type of the same bits (int8 per channel: Q8_0; int4 with groups: Q4_0)
LLAMA_CPP_PEER = {"float32": "F32", "bfloat16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1",
                  "int8": "Q8_0", "int4-g32": "Q4_0", "int4-g64": "Q4_0", "int4-g128": "Q4_0"}
BANDWIDTH_MIB, BANDWIDTH_READS = 1024, 3  # per round: the median of 3 reads of a 1 GiB buffer

HF_METHOD = (
    "transformers: LlamaForCausalLM loaded by workbench.verify.load_reference from the same GGUF (float32; "
    "bfloat16 = a copy cast with .to(torch.bfloat16)), default attention implementation, "
    "model.generate(input_ids, attention_mask=all ones, do_sample=False, max_new_tokens=N, min_new_tokens=N) on "
    "the same token ids as ours, in up to three calls: 'generate' (the usual call: default dynamic KV cache), "
    "'static' (cache_implementation='static') and 'compile' (static cache and generate's own torch.compile of "
    "the decode step, CompileConfig(_compile_all_devices=True) since transformers compiles only on GPUs "
    "unless told; compiled in the warm-up run). A LogitsProcessor records the clock (time.perf_counter, or "
    "time.process_time with --clock cpu) at each "
    "call: the first call comes right after the prefill forward, the last one before the N-th token is picked. "
    "prefill_tok_s = batch*prompt_tokens / (first call - start of generate); decode_tok_s = batch*(N-1) / "
    "(last call - first call); gb_s = the same weight bytes as ours (every weight in the tested dtype, the tied "
    "output head once) x decode steps per second. Per batch: one warm-up run of each engine, then "
    "`repeats` rounds of one timed run of every engine; medians over the rounds."
)


def parse_args(argv=None) -> argparse.Namespace:
    p = benchmark_parser(__doc__.split("\n\n")[0], "decode_vs_transformers", full=FULL, quick=QUICK,
                         kernels=("on", "off", "both"))
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (full: 1 8)")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--specs", nargs="+", default=None,
                   help=f"quantization specs run on our engine with kernels (full: {' '.join(SPECS)}; quick: int8)")
    p.add_argument("--spec-baselines", action="store_true",
                   help="also run every spec without kernels (its PyTorch path dequantizes every step: slow)")
    p.add_argument("--hf-calls", nargs="*", default=None, choices=list(HF_CALLS),
                   help="transformers' calls: generate (usual, dynamic cache), static (static cache), compile "
                        "(static cache + torch.compile) (full: all; quick: generate static; none given: "
                        "transformers does not run)")
    p.add_argument("--no-llama-cpp", action="store_true", help="skip llama.cpp even when llama_cpp is importable")
    p.add_argument("--readme", default=None,
                   help=f"replace the text between {MARK_START} and {MARK_END} in this file with the table")
    args = parse_benchmark_args(p, argv)
    if any(b < 1 for b in args.batches):
        p.error("--batches must all be >= 1")
    args.dtypes = list(dict.fromkeys(args.dtypes))
    args.hf_calls = list(dict.fromkeys(args.hf_calls))
    args.specs = list(dict.fromkeys(args.specs))
    from workbench.quant import SPECS as KNOWN

    if unknown := [s for s in args.specs if s not in KNOWN]:
        p.error(f"unknown --specs {' '.join(unknown)} (accepted: {', '.join(KNOWN)})")
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

        def __init__(self, clock):
            self.clock, self.times = clock, []

        def __call__(self, input_ids, scores):
            self.times.append(self.clock())
            return scores

    return StepTimer


def hf_generation(ref, prompts: list[list[int]], new_tokens: int, timer_cls, clock,
                  call: str = "generate") -> tuple[float, float, list[list[int]]]:
    """(prefill seconds, decode seconds, new token ids) of one greedy `generate` call made the way
    `HF_CALLS[call]` says."""
    from transformers import CompileConfig, LogitsProcessorList

    options = dict(HF_CALLS[call])
    if options.pop("compile", False):
        config = CompileConfig(mode="default")  # "reduce-overhead" means CUDA graphs
        config._compile_all_devices = True  # transformers' own switch to compile on a CPU
        options["compile_config"] = config
    else:
        options["disable_compile"] = True  # a static cache alone would be compiled on a GPU
    ids = torch.tensor(prompts, dtype=torch.long)
    timer = timer_cls(clock)
    gc.collect()
    start = clock()
    with torch.inference_mode():
        out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           logits_processor=LogitsProcessorList([timer]),
                           pad_token_id=ref.generation_config.pad_token_id or 0, use_cache=True, **options)
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


# ---------------------------------------------------------------------------------------------------
# the engines: each times one greedy generation of `new_tokens` tokens for a list of prompts


@dataclass
class Engine:
    engine: str  # "workbench", "transformers X", "llama.cpp X"
    weights: str  # a dtype or a quantization spec / GGUF type
    kernels: str  # our kernels' instruction set, "off", or "" for other engines
    model_bytes: int
    step_bytes: int
    time: Callable  # (prompts, new_tokens) -> (prefill_s, decode_s) of one timed run
    tokens: Callable  # (prompts, new_tokens) -> greedy tokens per sequence (an untimed warm-up run)
    call: str = ""  # how the engine is called, where it has several ways (transformers' HF_CALLS)
    batches: tuple | None = None  # batch sizes it can run (None: any)


def ours_engine(model, tokenizer, weights: str, kernels_on: bool, clock) -> Engine:
    def mode():
        return nullcontext() if kernels_on else kernels.disabled()

    def time(prompts, new_tokens):
        with mode():
            r = bench_decode(model, tokenizer, batch=len(prompts), prompt_tokens=len(prompts[0]),
                             new_tokens=new_tokens, repeats=1, warmup=0, clock=clock)
        return r["runs_s"][0]["prefill_s"], r["runs_s"][0]["decode_s"]

    def tokens(prompts, new_tokens):
        with mode():
            return ours_tokens(model, prompts, new_tokens)
    with mode():
        used = kernels.in_use(model) or "off"
    return Engine("workbench", weights, used, model.weight_bytes(), decode_bytes_per_step(model), time, tokens)


def hf_engine(ref, dtype_name: str, call: str, timer_cls, clock) -> Engine:
    import transformers

    def run(prompts, n):
        return hf_generation(ref, prompts, n, timer_cls, clock, call)
    return Engine(f"transformers {transformers.__version__}", dtype_name, "", weight_bytes(ref),
                  hf_bytes_per_step(ref), lambda p, n: run(p, n)[:2], lambda p, n: run(p, n)[2], call=call)


def llama_cpp_engine(model, tokenizer, gguf_type: str, tmp: Path, threads: int, context: int, clock,
                     stack: ExitStack) -> Engine:
    """llama.cpp on our model exported as GGUF `gguf_type`, any batch size (llama_cpp_peer)."""
    from workbench.checkpoints.gguf_export import export_gguf

    path = tmp / f"model-{gguf_type}.gguf"
    print(f"exporting {gguf_type} for llama.cpp ...", file=sys.stderr, flush=True)
    export_gguf(model, tokenizer, path, gguf_type, name=f"benchmark {gguf_type}")
    runner = stack.enter_context(llama_cpp_peer.LlamaCppBatchRunner(path, threads=threads,
                                                                     context_per_sequence=context))
    size = path.stat().st_size
    return Engine(f"llama.cpp {llama_cpp_peer.version()}", gguf_type, "", size, size,
                  lambda p, n: runner.generate(p, n, clock)[:2], lambda p, n: runner.generate(p, n, clock)[2])


def build_engines(args, tmp: Path, stack: ExitStack) -> tuple[list[Engine], object, str | None]:
    """The contenders, and why llama.cpp is not among them (None when it is)."""
    timer_cls, clock = _step_timer_class(), CLOCKS[args.clock]
    engines, floats = [], {}
    if args.hf_calls:
        print(f"loading transformers' model for {args.model} (float32) ...", file=sys.stderr, flush=True)
    ref32 = load_reference(args.model) if args.hf_calls else None
    for dtype_name in args.dtypes:
        model, tokenizer = load_model(args.model, dtype=DTYPES[dtype_name], kernels=args.kernels != "off")
        floats[dtype_name] = model
        modes = {"on": [True], "off": [False], "both": [True, False]}[args.kernels]
        engines += [ours_engine(model, tokenizer, dtype_name, on, clock) for on in modes]
        if ref32 is not None:
            ref = ref32 if dtype_name == "float32" else copy.deepcopy(ref32).to(DTYPES[dtype_name])
            engines += [hf_engine(ref, dtype_name, call, timer_cls, clock) for call in args.hf_calls]
    base = floats.get("float32") or load_model(args.model)[0]
    for spec in args.specs:
        print(f"quantizing {spec} ...", file=sys.stderr, flush=True)
        variant = kernels.enable(quantized_copy(base, spec, tokenizer))
        engines += [ours_engine(variant, tokenizer, spec, on, clock)
                    for on in ([True, False] if args.spec_baselines else [True])]
    if args.no_llama_cpp:
        return engines, tokenizer, "skipped (--no-llama-cpp)"
    if not llama_cpp_peer.available():
        return engines, tokenizer, "not installed here (pip install .[peers] builds llama-cpp-python)"
    wanted = dict.fromkeys(LLAMA_CPP_PEER[w] for w in [*args.dtypes, *args.specs] if w in LLAMA_CPP_PEER)
    context = args.prompt_tokens + args.new_tokens + 16
    # exported from float32 weights: the same bytes as ours in every format (bfloat16: the same rounding)
    engines += [llama_cpp_engine(base, tokenizer, gguf_type, tmp, args.threads, context, clock, stack)
                for gguf_type in wanted]
    return engines, tokenizer, None


def bandwidth_contender():
    """One round's read bandwidth (GB/s): the median of a few reads by our streaming read kernel."""
    last = {}

    def measure():
        last.update(read_bandwidth_gb_s(BANDWIDTH_MIB, BANDWIDTH_READS))
        return last["median"]
    return measure, last


def run(args) -> dict:
    import tempfile

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    info = run_info(bandwidth=args.bandwidth)
    if (info["loadavg_start"] or [0.0])[0] > BUSY_LOAD:
        print(f"warning: load average {info['loadavg_start'][0]:.1f}: the machine is busy, timings will be noisy",
              file=sys.stderr, flush=True)
    P, N = args.prompt_tokens, args.new_tokens
    rows, bandwidth = [], {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        engines, tokenizer, llama_cpp_absent = build_engines(args, Path(tmp), stack)
        if llama_cpp_absent:
            print(f"llama.cpp: {llama_cpp_absent}; running the other engines", file=sys.stderr, flush=True)
        info["kernels"] = kernels.status()
        for batch in args.batches:
            prompts = benchmark_prompts(tokenizer, batch, P)
            active = {label(e): e for e in engines if e.batches is None or batch in e.batches}
            print(f"batch {batch}: warm-up of {len(active)} engines, then {args.rounds} rounds ...", file=sys.stderr,
                  flush=True)
            tokens = {name: e.tokens(prompts, N) for name, e in active.items()}  # the first warm-up run

            def timed(e):
                def run():
                    gc.collect()
                    return e.time(prompts, N)
                return run
            measure_bandwidth, last_bandwidth = bandwidth_contender()
            # every engine once per round, and the read bandwidth, so noise hits all alike
            rounds = alternate({**{name: timed(e) for name, e in active.items()}, BANDWIDTH: measure_bandwidth},
                               args.rounds, max(args.warmup_rounds - 1, 0))
            per_round_bw = rounds.series(BANDWIDTH)
            bandwidth[batch] = {"median_gb_s": median(per_round_bw), "rounds_gb_s": per_round_bw,
                                "method": last_bandwidth["method"] + " per round", "reader": last_bandwidth["reader"]}
            for name, e in active.items():
                row = {"engine": e.engine, "call": e.call, "weights": e.weights, "kernels": e.kernels,
                       "batch": batch, "prompt_tokens": P, "new_tokens": N, "threads": args.threads,
                       "repeats": args.rounds, "model_bytes": e.model_bytes, "bytes_per_step": e.step_bytes,
                       **summarise(rounds.values[name], batch, P, N, e.step_bytes), "_tokens": tokens[name]}
                row["bandwidth_fraction"] = median(e.step_bytes * (N - 1) / r[1] / 1e9 / bw
                                                   for r, bw in zip(rounds.values[name], per_round_bw))
                rows.append(row)
    add_ratios(rows)
    run_end(info)
    return {
        "benchmark": "decode_vs_transformers",
        "model": args.model,
        "quick": args.quick,
        "command": info["command"],
        "settings": {"batches": args.batches, "dtypes": args.dtypes, "specs": args.specs, "kernels": args.kernels,
                     "hf_calls": args.hf_calls, "prompt_tokens": P, "new_tokens": N, "repeats": args.rounds,
                     "warmup": args.warmup_rounds, "threads": args.threads, "clock": args.clock},
        "machine": info,
        "read_bandwidth": bandwidth,
        "llama_cpp": llama_cpp_absent or "in this run",
        "method": {"ours": METHOD, "transformers": HF_METHOD, "llama.cpp": LLAMA_CPP_METHOD,
                   "bandwidth": "each round also reads a 1 GiB float32 buffer 3 times with our streaming read "
                                "kernel (workbench.bench.timing.read_bandwidth_gb_s, the same threads; torch.sum "
                                "where the kernels are unavailable); bandwidth_fraction = median over the rounds "
                                "of the row's GB/s / that round's read bandwidth",
                   "ratios": "medians of the per-round ratios (same rounds): vs_transformers = ours / transformers' "
                             "usual call (generate) in the same dtype; vs_transformers_fastest = ours / the fastest "
                             "(median decode) of transformers' calls in that dtype; vs_llama_cpp and "
                             "prefill_vs_llama_cpp = ours / llama.cpp in the format named by llama_cpp_peer (the "
                             "same bytes, or for our int8/int4 the GGUF type of the same bits), decode and prefill; "
                             "vs_ours_float32 = this row / our float32 row with kernels (same batch); "
                             "kernel_speedup = our row with kernels / the same weights without",
                   "greedy_agreement": "fraction of generated positions before the first disagreement with "
                                       "transformers' greedy tokens in the same dtype (its usual call; quantized rows: "
                                       "with our float32 model's), per sequence; bf16 and quantized weights diverge "
                                       "early"},
        "rows": rows,
    }


BANDWIDTH = "read bandwidth"  # the bandwidth contender's name in the rounds


def label(e: Engine) -> str:
    """An engine's name in the rounds (and in a contender's error note)."""
    return " ".join(part for part in (e.engine, e.call, e.weights, e.kernels) if part)


def per_round_ratio(row: dict, other: dict, key: str = "decode_s") -> float:
    """Median over the rounds of row / other speed (both timed in the same rounds)."""
    return median(o[key] / r[key] for r, o in zip(row["runs_s"], other["runs_s"]))


def add_ratios(rows: list[dict]):
    """Ratios between rows of the same batch (see the method text); the greedy tokens are dropped after."""
    def find(batch, **match):
        return [r for r in rows if r["batch"] == batch and all(r[k] == v for k, v in match.items())]
    for r in rows:
        b, ours = r["batch"], r["engine"] == "workbench"
        hf_all = [h for h in find(b, weights=r["weights"]) if h["engine"].startswith("transformers")]
        hf = next((h for h in hf_all if h["call"] == "generate"), None)
        fastest = max(hf_all, key=lambda h: h["decode_tok_s"], default=None)
        ours32 = next((o for o in find(b, engine="workbench", weights="float32") if o["kernels"] != "off"), None)
        off = next(iter(find(b, engine="workbench", weights=r["weights"], kernels="off")), None)
        peer_type = LLAMA_CPP_PEER.get(r["weights"]) if ours else None
        peer = next((p for p in find(b, weights=peer_type) if p["engine"].startswith("llama.cpp")), None)
        r["vs_transformers"] = per_round_ratio(r, hf) if hf and ours else None
        r["vs_transformers_fastest"] = per_round_ratio(r, fastest) if fastest and ours else None
        r["transformers_fastest_call"] = fastest["call"] if fastest and ours else None
        r["llama_cpp_peer"] = peer_type if peer else None
        r["vs_llama_cpp"] = per_round_ratio(r, peer) if peer else None
        r["prefill_vs_llama_cpp"] = per_round_ratio(r, peer, "prefill_s") if peer else None
        r["vs_ours_float32"] = per_round_ratio(r, ours32) if ours32 else None
        r["kernel_speedup"] = per_round_ratio(r, off) if off and ours and r["kernels"] != "off" else None
        reference = hf or ours32
        r["greedy_agreement"] = agreement(r["_tokens"], reference["_tokens"]) if reference and reference is not r else None
    for r in rows:
        r.pop("_tokens")


# ---------------------------------------------------------------------------------------------------
# output


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    x = lambda v: f"{v:.2f}x" if v is not None else ""  # noqa: E731
    versions = ", ".join(f"{name} {m[key]}" for name, key in (("torch", "torch"), ("transformers", "transformers"),
                                                               ("llama-cpp-python", "llama_cpp")) if m.get(key))
    bw = result["read_bandwidth"]
    lines = [
        f"Same run, every engine once per round: {result['model']}, prompt {s['prompt_tokens']} tokens, "
        f"{s['new_tokens']} new tokens, greedy, {m['threads']} threads, "
        f"{'CPU seconds of the process' if s.get('clock') == 'cpu' else 'wall clock'}, medians of {s['repeats']} "
        f"(after {s['warmup']} warm-up), {m['cpu']} ({m['cpu_threads']} logical CPUs), {versions}. "
        f"Decode and prefill in tokens/s (all sequences of the batch); GB/s = weight bytes per decode step "
        f"x steps/s; % bw = that as a share of the read bandwidth measured in the same rounds ("
        + ", ".join(f"batch {b}: {v['median_gb_s']:.1f} GB/s" for b, v in bw.items())
        + f", {next(iter(bw.values()))['reader'] if bw else ''} reader); kernels = our C++ kernels' instruction set "
        f"(off: PyTorch's operators); transformers' calls: generate (usual), static (static cache), compile (static "
        f"cache + torch.compile); vs llama.cpp = ours / llama.cpp in the format in brackets (decode, prefill).",
        "",
        "| engine | call / kernels | weights | batch | MB | prefill | decode [min-max] | GB/s | % bw "
        "| vs transformers (generate / fastest) | vs llama.cpp decode | vs llama.cpp prefill | kernel speed-up "
        "| same greedy tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        agree = f"{r['greedy_agreement']:.0%}" if r["greedy_agreement"] is not None else ""
        hf = (f"{x(r['vs_transformers'])} / {x(r['vs_transformers_fastest'])} ({r['transformers_fastest_call']})"
              if r.get("vs_transformers_fastest") is not None else "")
        peer = f" ({r['llama_cpp_peer']})" if r.get("llama_cpp_peer") else ""
        lines.append(
            f"| {r['engine']} | {r['call'] or r['kernels']} | {r['weights']} | {r['batch']} "
            f"| {r['model_bytes'] / 1e6:.0f} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} "
            f"[{r['decode_tok_s_min']:.1f}-{r['decode_tok_s_max']:.1f}] | {r['gb_s']:.1f} "
            f"| {r['bandwidth_fraction']:.0%} | {hf} | {x(r['vs_llama_cpp'])}{peer} "
            f"| {x(r['prefill_vs_llama_cpp'])}{peer} | {x(r['kernel_speedup'])} | {agree} |")
    lines.append("")
    start, end = (m.get("loadavg_start") or [0.0])[0], (m.get("loadavg_end") or [0.0])[0]
    lines.append(f"Decode [min-max] over the rounds. 1-minute load average {start:.1f} at the start, {end:.1f} at the end.")
    if result["llama_cpp"] != "in this run":
        lines.append(f"llama.cpp: {result['llama_cpp']}, so it has no rows in this run.")
    # at the end the 1-minute average also counts the run's own threads, busy until its last round
    if start > BUSY_LOAD or end > m["threads"] + BUSY_LOAD:
        lines.append(f"WARNING: the machine was busy (other processes on {m['cpu_threads']} CPUs): absolute numbers "
                     f"are unreliable; ratios within a round are less affected.")
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: str) -> tuple[Path, Path]:
    import pandas as pd

    json_path, csv_path = Path(out + ".json"), Path(out + ".csv")
    atomic_write_json(json_path, result)
    columns = ["engine", "call", "weights", "kernels", "batch", "prompt_tokens", "new_tokens", "threads", "repeats",
               "prefill_tok_s", "decode_tok_s", "decode_tok_s_min", "decode_tok_s_max", "gb_s", "bandwidth_fraction",
               "model_bytes", "bytes_per_step", "vs_transformers", "vs_transformers_fastest",
               "transformers_fastest_call", "llama_cpp_peer", "vs_llama_cpp", "prefill_vs_llama_cpp",
               "vs_ours_float32", "kernel_speedup", "greedy_agreement"]
    frame = pd.DataFrame([{k: r.get(k) for k in columns} for r in result["rows"]], columns=columns)
    frame["date"] = result["machine"]["date"]
    atomic_write_text(csv_path, frame.to_csv(index=False, float_format="%.4g"))
    return json_path, csv_path


def repository_name(path: Path) -> str:
    """A results path as the README may name it: relative to the repository, else the file name alone."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def main(argv=None):
    args = parse_args(argv)
    readme_text = check_readme(args.readme) if args.readme else None
    result = run(args)
    json_path, csv_path = write_outputs(result, args.out)
    table = markdown(result)
    print(table)
    print(f"wrote {json_path} and {csv_path}", file=sys.stderr)
    if args.readme:
        readme_text = check_readme(args.readme)  # re-read: it may have been edited during the run
        command = " ".join(Path(a).name if Path(a).is_absolute() else a for a in result["command"].split(" "))
        header = (f"Measured {result['machine']['date'][:10]} with `{command}`, which wrote "
                  f"`{repository_name(json_path)}` and `{repository_name(csv_path)}`.")
        atomic_write_text(args.readme, replace_between_markers(readme_text, header + "\n\n" + table))
        print(f"updated {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
