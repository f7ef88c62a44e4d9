"""`workbench` command line: every command takes --model and prints one JSON object with --json.

Bad input ends with a one-line message on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import InvalidParameterError, WorkbenchError

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # what a shell reports for a program stopped by SIGPIPE (`workbench ... | head`)


class Parser(argparse.ArgumentParser):
    """argparse with the command line's error contract: one line on stderr, exit status 2."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", default="smollm2-135m",
                   help="bundled name (smollm2-135m, tiny-random), a .gguf file or a Hugging Face directory")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quant", default=None, metavar="SPEC",
                   help="quantize the weights first (see `workbench quant list`)")
    p.add_argument("--prune", default=None, metavar="SPEC",
                   help="prune the weights first, before any --quant (see `workbench prune list`)")
    p.add_argument("--calib", default=None, metavar="SPEC",
                   help="calibration set of calibrated --quant/--prune methods: builtin, licenses, generated, "
                        "file:PATH, each with an optional :TOKENS, joined by + (e.g. builtin:1024+generated:1024; "
                        "default builtin)")
    p.add_argument("--kernels", choices=["on", "off"], default="on",
                   help="our CPU kernels for decode-sized products (default on; off: PyTorch's operators only)")
    p.add_argument("--quantized-activations", choices=["auto", "int8", "float"], default="auto",
                   help="quantized layers on our kernels (int8, int4, Q8_0, Q4_0, Q4_1): round activations to int8 per 32 "
                        "inputs (integer dot products) or keep them float (default auto: int8 where the CPU has "
                        "AVX2 or AVX-512 VNNI)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _parallel_args(p: argparse.ArgumentParser):
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks: starts torchrun itself, or runs as one "
                                                     "of its ranks under torchrun (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks, contiguous layer stages (default 1)")


def _parallel(args, command: str):
    """Exit status of the run on several ranks when --tp/--pp ask for them (or torchrun started us), else None."""
    from .parallel.command import requested, run

    return None if requested(args) is None else run(args, command)


def _sampling_args(p: argparse.ArgumentParser):
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)


def _draft_args(p: argparse.ArgumentParser):
    p.add_argument("--draft", default=None, metavar="MODEL",
                   help="speculative decoding: a smaller model with the same tokenizer (a student directory saved "
                        "by `workbench distill --save`, or any --model form) drafts tokens the model verifies")
    p.add_argument("--draft-tokens", type=int, default=4, metavar="K", help="tokens drafted per verify pass (default 4)")
    p.add_argument("--draft-quant", default=None, metavar="SPEC", help="quantize the draft model first (e.g. int4-g128)")


def _load_draft(args, model, tokenizer):
    """The --draft model (None without one), checked against the target: same tokenizer, same device."""
    from .engine import check_draft
    from .variant import load_variant

    if args.draft is None:
        return None
    draft, draft_tokenizer = load_variant(args.draft, dtype=args.dtype, device=args.device, quant=args.draft_quant,
                                          kernels=args.kernels == "on")
    check_draft(model, draft, tokenizer, draft_tokenizer)
    return draft


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="workbench", description="LLM deployment workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="architecture, parameter count, bytes per dtype")
    _model_args(p)

    p = sub.add_parser("generate", help="complete a prompt, streaming the text")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    _model_args(p)
    _sampling_args(p)
    _parallel_args(p)
    _draft_args(p)

    p = sub.add_parser("chat", help="multi-turn chat in the terminal (empty line or /exit ends)")
    p.add_argument("--system", default=None, help="system message")
    _model_args(p)
    _sampling_args(p)

    p = sub.add_parser("ppl", help="perplexity over fixed windows (see workbench.eval.perplexity)")
    p.add_argument("--text-file", default=None, help="UTF-8 text (default: the --corpus evaluation part)")
    p.add_argument("--corpus", default=None, metavar="NAME",
                   help="score the evaluation part of a named corpus: builtin (default) or licenses")
    p.add_argument("--max-tokens", type=int, default=32768, help="score the first N tokens (default 32768)")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--stride", type=int, default=None, help="default: the window (non-overlapping)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--chunk-tokens", type=int, default=None,
                   help="feed windows through the KV cache N tokens at a time (the decode path and its kernels)")
    _model_args(p)

    p = sub.add_parser("bench", help="benchmarks")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("decode", help="prefill/decode tokens per second and GB/s")
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--prompt-tokens", type=int, default=512)
    b.add_argument("--new-tokens", type=int, default=128)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--output", default=None, help="also write the JSON result to this file (atomically)")
    _model_args(b)
    _parallel_args(b)
    b.add_argument("--micro-batches", type=int, default=1, help="--pp: groups of sequences in flight (default 1)")
    b = bench.add_parser("kv", help="generation with no KV cache, contiguous, paged and paged-int8: tok/s, KV bytes")
    b.add_argument("--new-tokens", type=int, default=256)
    b.add_argument("--prompt-tokens", type=int, default=128)
    b.add_argument("--repeats", type=int, default=1)
    b.add_argument("--block-size", type=int, default=16)
    _model_args(b)
    b = bench.add_parser("batching", help="a seeded Poisson workload under one batching policy: throughput, TTFT")
    b.add_argument("--policy", default="continuous", help="sequential | static | dynamic | continuous")
    b.add_argument("--requests", type=int, default=32)
    b.add_argument("--rate", type=float, default=4.0, help="arrivals per second (Poisson)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--min-output", type=int, default=16)
    b.add_argument("--max-output", type=int, default=256)
    b.add_argument("--batch-size", type=int, default=16, help="static/dynamic batch size; continuous: max sequences")
    b.add_argument("--chunked-prefill", action="store_true")
    _model_args(b)

    p = sub.add_parser("export", help="write the (optionally --quant'ed) model as a GGUF file, a HF directory "
                                      "or an ONNX file")
    p.add_argument("output", help="a path ending in .gguf, .onnx (float32 with the KV cache as inputs/outputs, for "
                                  "ONNX Runtime), or a directory (safetensors; with --quant the packed layers, which "
                                  "`--model DIR` loads back)")
    p.add_argument("--type", default=None, type=str.upper,
                   help="GGUF tensor type: F32, F16, Q8_0, Q4_0, Q4_1 (default: the --quant's GGUF type, else Q8_0); "
                        "for .onnx: F32 (default) or INT8 (ONNX Runtime's dynamic int8 of the float32 export)")
    _model_args(p)

    p = sub.add_parser("quant", help="quantization specs")
    quant = p.add_subparsers(dest="quant_command", required=True)
    q = quant.add_parser("list", help="the specs --quant accepts")
    q.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("prune", help="pruning specs")
    prune = p.add_subparsers(dest="prune_command", required=True)
    q = prune.add_parser("list", help="the specs --prune accepts")
    q.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("verify", help="check our logits and greedy output against transformers")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--tolerance", type=float, default=1e-3)
    _model_args(p)

    p = sub.add_parser("distill", help="train a student built from the model (the teacher) to imitate it")
    p.add_argument("--student", required=True, help="layers:N, mlp:F, scratch:layers=L,hidden=D,... or A+B")
    p.add_argument("--loss", default="kl", choices=["ce", "kl", "rkl", "mix"])
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run checkpointed in DIR")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR", help="write checkpoints to DIR (atomically)")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--text-file", action="append", default=None, help="training text (default: built-in train part)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=0.5, help="hard-label weight of --loss mix")
    p.add_argument("--autocast", default=None, choices=["bfloat16", "float16"], help="mixed-precision matmuls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens for ppl_before/ppl_after")
    p.add_argument("--eval-window", type=int, default=1024)
    p.add_argument("--save", default=None, metavar="DIR", help="save the trained student (Hugging Face directory)")
    p.add_argument("--results", default=None, metavar="CSV", help="append the run's row to this CSV")
    _model_args(p)

    p = sub.add_parser("finetune", help="train a LoRA adapter on the model (PEFT's layout; --quant: a frozen quantized base)")
    p.add_argument("--lora", default="r=8,alpha=16", help="r=INT,alpha=FLOAT[,dropout=FLOAT][,rslora=1] (default r=8,alpha=16)")
    p.add_argument("--target", default="q_proj,v_proj", help="projections to adapt, comma-separated, or all-linear "
                                                             "(default q_proj,v_proj)")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True, metavar="DIR", help="adapter and training checkpoint go here")
    p.add_argument("--resume", action="store_true", help="continue the run checkpointed in --out")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--text-file", action="append", default=None, help="training text (default: built-in train part)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=5, help="learning-rate warm-up steps")
    p.add_argument("--autocast", default=None, choices=["bfloat16", "float16"], help="mixed-precision matmuls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=4096, help="evaluation tokens for ppl_before/ppl_after")
    p.add_argument("--eval-window", type=int, default=1024)
    _model_args(p)

    p = sub.add_parser("merge", help="fold a LoRA adapter into its base: a plain model directory")
    p.add_argument("adapter", metavar="ADAPTER", help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True, metavar="DIR", help="the merged model (Hugging Face directory)")
    p.add_argument("--model", default=None, help="the base (default: the one the adapter names)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    from .serve.options import add_arguments as _serve_args

    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server: completions, chat, metrics, a chat page",
                       description="Serve the model over OpenAI's API (/v1/completions, /v1/chat/completions, "
                                   "/v1/models), with /health, /version, /tokenize, /detokenize, /metrics "
                                   "(Prometheus) and a chat page at /.")
    _serve_args(p)
    _model_args(p)

    from .study.commands import add_parser as add_study_parser

    add_study_parser(sub)

    from .evals.commands import add_arguments as _eval_args

    _eval_args(sub, _model_args)
    return parser


def _positive(name: str, value, minimum: int = 1):
    if value is not None and value < minimum:
        raise InvalidParameterError(f"{name} must be >= {minimum}, got {value}")


def _load(args):
    import torch

    from .variant import load_variant

    _check_device(args.device)
    calib = getattr(args, "calib", None)
    if calib is not None:
        from .corpus import parse_calibration

        calib = parse_calibration(calib)  # a bad spec fails before the model loads
    if args.threads is not None:
        _positive("--threads", args.threads)
        torch.set_num_threads(args.threads)
    from . import kernels

    kernels.set_enabled(args.kernels == "on")
    kernels.set_quantized_activations(None if args.quantized_activations == "auto" else args.quantized_activations)
    return load_variant(args.model, dtype=args.dtype, device=args.device, prune=getattr(args, "prune", None),
                        quant=getattr(args, "quant", None), kernels=args.kernels == "on", calib=calib)


def _check_device(device: str):
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise InvalidParameterError(f"--device {device!r} is not a device (accepted: cpu, cuda, cuda:N)") from None
    if kind not in ("cpu", "cuda"):
        raise InvalidParameterError(f"--device {device!r}: only cpu and cuda are supported")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidParameterError(f"--device {device}: this PyTorch build sees no CUDA device "
                                    f"(torch {torch.__version__}); use --device cpu")


def _check_fits(model, args):
    from .errors import ContextLengthError

    if args.prompt_tokens + args.new_tokens > model.config.max_position_embeddings:
        raise ContextLengthError(f"--prompt-tokens + --new-tokens = {args.prompt_tokens + args.new_tokens} exceeds "
                                 f"the context window of {model.config.max_position_embeddings}")


def _sampling(args):
    from .engine import SamplingParams

    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, max_tokens=args.max_tokens,
                          stop=args.stop, seed=args.seed)


def _emit(args, result: dict, text: str):
    print(json.dumps(result) if args.json else text)


def cmd_info(args):
    model, tokenizer = _load(args)
    cfg = model.config
    params = model.num_parameters()
    result = {
        "model": args.model, "architecture": "llama", "config": cfg.to_hf_dict(),
        "parameters": params, "parameters_from_config": cfg.num_parameters(),
        "bytes": {"float32": params * 4, "bfloat16": params * 2, "int8": params, "int4": params // 2},
        "loaded_dtype": str(model.dtype).removeprefix("torch."), "loaded_bytes": model.weight_bytes(),
        "kv_bytes_per_token": cfg.kv_bytes_per_token(model.dtype.itemsize),
        "vocab_size": tokenizer.vocab_size, "context_length": cfg.max_position_embeddings,
    }
    lines = [f"{args.model}: Llama-family, {params / 1e6:.1f}M parameters",
             f"  layers {cfg.num_hidden_layers}, hidden {cfg.hidden_size}, heads {cfg.num_attention_heads} "
             f"(kv {cfg.num_key_value_heads}), head_dim {cfg.head_dim}, ffn {cfg.intermediate_size}",
             f"  vocab {cfg.vocab_size}, context {cfg.max_position_embeddings}, rope theta {cfg.rope_theta:g}, "
             f"tied embeddings {cfg.tie_word_embeddings}"]
    lines += [f"  {k:>8}: {v / 1e6:8.1f} MB" for k, v in result["bytes"].items()]
    _emit(args, result, "\n".join(lines))


def cmd_generate(args):
    from .engine import generate, stream

    from .engine import SpeculativeStats

    _positive("--draft-tokens", args.draft_tokens)
    if args.draft is not None and (args.tp > 1 or args.pp > 1):
        raise InvalidParameterError("--draft runs on one process; drop --tp/--pp")
    if args.draft_quant and args.draft is None:
        raise InvalidParameterError("--draft-quant quantizes the --draft model; give --draft too")
    if (status := _parallel(args, "generate")) is not None:
        return status

    model, tokenizer = _load(args)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    params = _sampling(args)
    draft = _load_draft(args, model, tokenizer)
    spec = dict(draft=draft, draft_tokens=args.draft_tokens, stats=SpeculativeStats())
    if args.json:
        c = generate(model, tokenizer, prompt, params, **spec)
        result = {"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                  "completion_tokens": len(c.token_ids)}
        if draft is not None:
            stats = spec["stats"]
            result["speculative"] = {"draft": args.draft, "draft_tokens": args.draft_tokens, "rounds": stats.rounds,
                                     "drafted": stats.drafted, "accepted": stats.accepted,
                                     "acceptance_rate": stats.acceptance_rate,
                                     "tokens_per_round": stats.tokens_per_round}
        print(json.dumps(result))
        return
    for piece in stream(model, tokenizer, prompt, params, **spec):
        print(piece, end="", flush=True)
    print()
    if draft is not None:
        stats = spec["stats"]
        print(f"speculative: {stats.accepted} of {stats.drafted} drafts accepted ({stats.acceptance_rate:.0%}), "
              f"{stats.tokens_per_round:.2f} tokens per verify pass", file=sys.stderr)


def cmd_chat(args):
    from .engine import stream

    model, tokenizer = _load(args)
    params = _sampling(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("Chat with the model; an empty line or /exit ends.", file=sys.stderr)
    while True:
        try:
            user = input("> ")
        except EOFError:
            break
        if not user.strip() or user.strip() == "/exit":
            break
        messages.append({"role": "user", "content": user})
        reply = []
        for piece in stream(model, tokenizer, messages, params):
            reply.append(piece)
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": "".join(reply)})


def cmd_ppl(args):
    from .corpus import DEFAULT_CORPUS, corpus_text, load_text
    from .eval import perplexity

    _positive("--max-tokens", args.max_tokens, 2)
    _positive("--batch-size", args.batch_size)
    if args.text_file and args.corpus:
        raise InvalidParameterError("--text-file and --corpus both name the text to score; give one")
    corpus = args.corpus or DEFAULT_CORPUS
    text = load_text(args.text_file) if args.text_file else corpus_text(corpus, "evaluation")
    model, tokenizer = _load(args)
    r = perplexity(model, text, tokenizer, window=args.window, stride=args.stride, max_tokens=args.max_tokens,
                   batch_size=args.batch_size, chunk_tokens=args.chunk_tokens, progress=not args.json)
    result = {"ppl": r.ppl, "tokens": r.tokens, "predictions": r.predictions, "window": r.window,
              "stride": r.stride, "chunk_tokens": args.chunk_tokens, "nll": r.nll,
              "text": args.text_file or f"{corpus} evaluation part", "model": args.model, "dtype": args.dtype,
              "quant": args.quant, "prune": args.prune, "calib": args.calib}
    _emit(args, result, f"perplexity {r.ppl:.4f} over {r.predictions} predictions "
                        f"({r.tokens} tokens, window {r.window}, stride {r.stride})")


def cmd_bench(args):
    from .bench import bench_decode
    from .io import atomic_write_json

    if args.bench != "decode":
        return {"kv": cmd_bench_kv, "batching": cmd_bench_batching}[args.bench](args)
    for name in ("batch", "prompt_tokens", "repeats"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _positive("--new-tokens", args.new_tokens, 2)
    _positive("--warmup", args.warmup, 0)
    if (status := _parallel(args, "bench")) is not None:
        return status
    model, tokenizer = _load(args)
    _check_fits(model, args)
    result = bench_decode(model, tokenizer, batch=args.batch, prompt_tokens=args.prompt_tokens,
                          new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup)
    result.update(model=args.model, quant=args.quant)
    if args.output:
        atomic_write_json(args.output, result)
    _emit(args, result, f"batch {result['batch']} {args.quant or result['dtype']} (kernels: {result['kernels']}): "
                        f"prefill {result['prefill_tok_s']:.1f} tok/s, "
                        f"decode {result['decode_tok_s']:.1f} tok/s, {result['gb_s']:.1f} GB/s, "
                        f"weights {result['model_bytes'] / 1e6:.1f} MB, peak RSS {result['peak_rss_mb']:.0f} MB")


def cmd_bench_kv(args):
    from .bench.kv import bench_kv

    _positive("--new-tokens", args.new_tokens)
    _positive("--prompt-tokens", args.prompt_tokens)
    _positive("--repeats", args.repeats)
    _positive("--block-size", args.block_size)
    model, tokenizer = _load(args)
    _check_fits(model, args)
    result = bench_kv(model, tokenizer, new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens,
                      repeats=args.repeats, block_size=args.block_size)
    result.update(model=args.model, quant=args.quant)
    _emit(args, result, "\n".join(f"{mode:>11}: {r['tok_s']:7.1f} tok/s, KV {r['kv_bytes'] / 1e6:7.2f} MB"
                                  for mode, r in result["modes"].items()))


def cmd_bench_batching(args):
    from .bench.batching import bench_batching
    from .engine import Policy

    Policy(args.policy, args.batch_size)  # a bad policy or size fails before the model loads
    _positive("--requests", args.requests)
    _positive("--min-output", args.min_output)
    _positive("--max-output", args.max_output, args.min_output)
    if not args.rate > 0:
        raise InvalidParameterError(f"--rate must be > 0 requests per second, got {args.rate}")
    model, tokenizer = _load(args)
    summary, _ = bench_batching(model, tokenizer, policy=args.policy, requests=args.requests, rate=args.rate,
                                seed=args.seed, output_tokens=(args.min_output, args.max_output),
                                batch_size=args.batch_size, max_num_seqs=args.batch_size,
                                chunked_prefill=args.chunked_prefill)
    summary.update(model=args.model, quant=args.quant)
    _emit(args, summary, f"{args.policy}: {summary['throughput_tok_s']:.1f} output tok/s, TTFT p50 "
                         f"{summary['ttft_p50_s']:.2f} s p95 {summary['ttft_p95_s']:.2f} s, latency p95 "
                         f"{summary['latency_p95_s']:.2f} s, outputs match one-at-a-time: "
                         f"{summary['outputs_match_reference']}")


def _export_type(args, to_gguf: bool) -> str | None:
    """The GGUF tensor type to write, refusing combinations that would be ignored or quantize twice."""
    from .checkpoints.gguf_export import EXPORT_TYPES

    if not to_gguf:
        if args.type is not None:
            raise InvalidParameterError("--type applies to .gguf outputs only; a directory keeps the model's own "
                                        "weights (float, or the packed layers of --quant)")
        return None
    if args.type is not None and args.type not in EXPORT_TYPES:
        raise InvalidParameterError(f"--type {args.type}: not a GGUF type we write (accepted: {', '.join(EXPORT_TYPES)})")
    block_type = args.quant.upper() if args.quant and args.quant.upper() in ("Q8_0", "Q4_0", "Q4_1") else None
    if args.quant and not block_type and (args.type or "Q8_0") not in ("F32", "F16"):
        raise InvalidParameterError(f"--quant {args.quant} is not a GGUF block format: exporting it as "
                                    f"{args.type or 'Q8_0'} would quantize twice; use --quant q8_0/q4_0/q4_1, or "
                                    f"--type F32/F16 for its dequantized values, or save a directory")
    if block_type and args.type and args.type != block_type:
        raise InvalidParameterError(f"--quant {args.quant} with --type {args.type} would quantize twice; drop --type "
                                    f"(the blocks are then written bit for bit) or pick --type {block_type}")
    return args.type or block_type or "Q8_0"


def cmd_export(args):
    from pathlib import Path

    out = Path(args.output)
    if out.suffix.lower() == ".onnx":
        return _export_onnx(args, out)
    type_name = _export_type(args, out.suffix.lower() == ".gguf")
    model, tokenizer = _load(args)
    if type_name is not None:
        from .checkpoints.gguf_export import export_gguf

        export_gguf(model, tokenizer, out, type_name, name=f"{args.model} ({args.quant or 'float'} -> {type_name})")
    else:  # a --quant'ed model keeps its packed layers (workbench format; float: transformers reads it too)
        from .checkpoints import save_pretrained

        save_pretrained(model, out, tokenizer)
    result = {"output": str(out), "bytes": sum(f.stat().st_size for f in ([out] if out.is_file() else out.iterdir())),
              "type": type_name or args.quant or str(model.dtype).removeprefix("torch.")}
    _emit(args, result, f"wrote {result['output']} ({result['bytes'] / 1e6:.1f} MB, {result['type']})")


def _export_onnx(args, out):
    """`workbench export FILE.onnx`: torch's exporter on the float32 model, then optionally ONNX Runtime's int8."""
    import tempfile

    from .interop import export_onnx, quantize_int8

    if args.type not in (None, "F32", "INT8"):
        raise InvalidParameterError(f"--type {args.type}: an .onnx output is F32 or INT8 (ONNX Runtime's dynamic int8)")
    if args.quant or getattr(args, "prune", None) or args.dtype != "float32":
        raise InvalidParameterError("an .onnx export starts from the float32 model: drop --quant/--prune/--dtype "
                                    "(use --type INT8 for ONNX Runtime's own int8)")
    model, _ = _load(args)
    if args.type == "INT8":
        with tempfile.TemporaryDirectory(dir=out.parent if out.parent.is_dir() else None) as tmp:
            export_onnx(model, Path(tmp) / "float32.onnx", name=args.model)
            meta = quantize_int8(Path(tmp) / "float32.onnx", out)
    else:
        meta = export_onnx(model, out, name=args.model)
    result = {"output": str(out), "bytes": out.stat().st_size, "type": meta["workbench.quantization"],
              "format": meta["workbench.format"], "model": args.model}
    _emit(args, result, f"wrote {result['output']} ({result['bytes'] / 1e6:.1f} MB, ONNX {result['type']})")


def cmd_quant(args):
    from .quant import SPECS

    specs = {name: {"bits_per_weight_at_576_inputs": round(config.bits_per_weight(576), 3), "description": text}
             for name, (config, text) in SPECS.items()}
    _emit(args, {"specs": specs}, "\n".join(f"{name:<24} {v['bits_per_weight_at_576_inputs']:>6.3f} bits/weight  "
                                           f"{v['description']}" for name, v in specs.items()))


def cmd_prune(args):
    from .prune.api import EXAMPLES, SPECS

    methods = {name: {"n_m": takes_nm, "calibrated": calibrated, "description": text}
               for name, (takes_nm, calibrated, text) in SPECS.items()}
    lines = [f"{name:<18} {'METHOD:S or METHOD:N:M' if v['n_m'] else 'METHOD:S':<24} {v['description']}"
             for name, v in methods.items()]
    _emit(args, {"methods": methods, "examples": list(EXAMPLES)},
          "\n".join(lines + ["S: fraction removed in [0, 1); examples: " + ", ".join(EXAMPLES)]))


def cmd_verify(args):
    from .verify import verify

    if args.prune:
        raise InvalidParameterError("verify checks the unpruned model against transformers; --prune does not apply "
                                    "(compare a pruned model with `workbench ppl --prune SPEC`)")
    if args.quant:
        raise InvalidParameterError("verify checks the float model against transformers; --quant does not apply "
                                    "(compare a quantized model with `workbench ppl --quant SPEC`)")
    if args.dtype != "float32":
        raise InvalidParameterError("verify compares in float32 only (the reference check's tolerance is for float32)")
    _check_device(args.device)
    _positive("--new-tokens", args.new_tokens)
    if args.threads is not None:
        import torch

        _positive("--threads", args.threads)
        torch.set_num_threads(args.threads)
    result = verify(args.model, new_tokens=args.new_tokens, tolerance=args.tolerance, device=args.device,
                    kernels=args.kernels == "on")
    _emit(args, result, f"max |logit diff| {result['max_abs_logit_diff']:.2e} (tolerance {args.tolerance:g}), "
                        f"greedy {args.new_tokens}-token match: {result['greedy_match']} -> "
                        f"{'PASSED' if result['passed'] else 'FAILED'}")
    return 0 if result["passed"] else 1


def cmd_distill(args):
    from .corpus import builtin_text
    from .distill import TrainConfig, append_results_row, build_student, distill, training_ids

    if args.quant:
        raise InvalidParameterError("distill trains a float student from a float teacher; quantize the saved "
                                    "student afterwards (workbench ppl --model DIR --quant SPEC)")
    _positive("--eval-tokens", args.eval_tokens, 2)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         seq_len=args.seq_len, loss=args.loss, temperature=args.temperature, alpha=args.alpha,
                         lr=args.lr, seed=args.seed, autocast=args.autocast, checkpoint_every=args.checkpoint_every)
    teacher, tokenizer = _load(args)
    student = build_student(teacher, args.student, seed=args.seed, tokenizer=tokenizer)  # mlp:F ranks by activations
    train_ids = training_ids(tokenizer, args.text_file or "builtin")
    eval_ids = tokenizer.encode(builtin_text("evaluation"), add_special_tokens=False)[:args.eval_tokens]
    result = distill(student, teacher, train_ids, config, eval_ids=eval_ids, eval_window=args.eval_window,
                     checkpoint_dir=args.resume or args.checkpoint_dir, resume=args.resume is not None,
                     progress=not args.json)
    if args.save:
        from .checkpoints import save_pretrained

        save_pretrained(student, args.save, tokenizer)
    row = result.row(student=args.student, teacher=args.model)
    if args.results:
        append_results_row(args.results, row)
    out = {"student": args.student, "loss": args.loss, "steps": result.steps, "tokens": result.tokens,
           "ppl_before": result.ppl_before, "ppl_after": result.ppl_after, "wall_s": result.wall_s,
           "tokens_per_s": result.tokens_per_s, "teacher": args.model, "parameters": student.num_parameters(),
           "checkpoint_dir": args.resume or args.checkpoint_dir, "saved_to": args.save}
    _emit(args, out, f"{args.student} ({args.loss}): ppl {result.ppl_before:.2f} -> {result.ppl_after:.2f} "
                     f"after {result.steps} steps, {result.tokens} tokens, {result.tokens_per_s:.0f} tok/s")


def cmd_finetune(args):
    from pathlib import Path

    from .adapters import finetune, parse_lora_spec, trainable_parameters
    from .corpus import builtin_text
    from .distill import TrainConfig, training_ids

    lora = parse_lora_spec(args.lora, args.target)
    _positive("--eval-tokens", args.eval_tokens, 2)
    _positive("--checkpoint-every", args.checkpoint_every, 0)
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, seq_len=args.seq_len,
                         loss="ce", lr=args.lr, warmup_steps=args.warmup, seed=args.seed, autocast=args.autocast,
                         checkpoint_every=args.checkpoint_every)
    from .distill.trainer import CHECKPOINT

    if not args.resume and (Path(args.out) / CHECKPOINT).is_file():
        raise InvalidParameterError(f"{args.out} holds a training checkpoint already: --resume continues that run, "
                                    "or choose another --out")
    model, tokenizer = _load(args)
    train_ids = training_ids(tokenizer, args.text_file or "builtin")
    eval_ids = tokenizer.encode(builtin_text("evaluation"), add_special_tokens=False)[:args.eval_tokens]
    result = finetune(model, train_ids, lora, config, out_dir=args.out, eval_ids=eval_ids, eval_window=args.eval_window,
                      resume=args.resume, base_model=args.model, progress=not args.json)
    out = {"adapter": args.out, "base": args.model, "quant": args.quant, "lora": args.lora,
           "target_modules": list(lora.target_modules), "trainable_parameters": sum(p.numel() for p in
                                                                                    trainable_parameters(model)),
           "steps": result.steps, "tokens": result.tokens, "ppl_before": result.ppl_before,
           "ppl_after": result.ppl_after, "wall_s": result.wall_s, "tokens_per_s": result.tokens_per_s}
    _emit(args, out, f"LoRA {args.lora} on {','.join(lora.target_modules)}: ppl {result.ppl_before:.2f} -> "
                     f"{result.ppl_after:.2f} after {result.steps} steps ({out['trainable_parameters']} trainable "
                     f"parameters); adapter in {args.out}")


def cmd_merge(args):
    from .adapters import load_adapter, merge_lora, read_adapter_config
    from .checkpoints import load_model, save_pretrained

    _, raw = read_adapter_config(args.adapter)
    base = args.model or raw.get("base_model_name_or_path")
    if not base:
        raise InvalidParameterError(f"{args.adapter} names no base model; give it with --model")
    model, tokenizer = load_model(base, dtype=args.dtype)
    merge_lora(load_adapter(model, args.adapter))
    save_pretrained(model, args.out, tokenizer)
    _emit(args, {"adapter": args.adapter, "base": base, "saved_to": args.out, "parameters": model.num_parameters()},
          f"merged {args.adapter} into {base}: {args.out}")


def cmd_serve(args):
    from .serve.options import config_from_args

    config = config_from_args(args)  # bad flags end here, before the server's imports
    from .serve.server import serve

    return serve(config, load=lambda: _load(args))


def cmd_study(args):
    from .study.commands import run

    return run(args)


def cmd_eval(args):
    from .evals.commands import cmd_eval as run

    return run(args)


COMMANDS = {"info": cmd_info, "generate": cmd_generate, "chat": cmd_chat, "ppl": cmd_ppl,
            "bench": cmd_bench, "export": cmd_export, "quant": cmd_quant, "prune": cmd_prune, "verify": cmd_verify,
            "distill": cmd_distill, "serve": cmd_serve, "study": cmd_study,
            "finetune": cmd_finetune, "merge": cmd_merge,
            "eval": cmd_eval}


def _fail(message: str) -> int:
    print(f"workbench: error: {' '.join(str(message).split())}", file=sys.stderr)  # one line, always
    return EXIT_BAD_INPUT


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # what --tp/--pp hand on to torchrun
    try:
        status = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return status
    except WorkbenchError as e:
        return _fail(str(e))
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as e:  # an unwritable --output/--save path, a full disk, a missing directory
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except KeyboardInterrupt:
        print("workbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
