"""`workbench generate` and `workbench bench decode` with `--tp N` or `--pp N`.

Run plainly, the command checks that the model splits N ways, then hands itself to torch's
launcher: `python -m torch.distributed.run --standalone --nproc-per-node N -m workbench <same
arguments>` (threads per rank: cores / N unless OMP_NUM_THREADS or --threads say otherwise). Run
under torchrun already (`torchrun --nproc-per-node 2 -m workbench generate ... --tp 2`), it joins
the group and runs as one rank. Tensor parallelism prints from rank 0, pipeline parallelism from
the last stage (which samples).
"""

from __future__ import annotations

import json

import torch

from ..errors import ParallelError
from . import comm as comm_mod
from .launch import relaunch_under_torchrun, threads_per_rank
from .plan import pipeline_stages, tensor_shards
from .runs import build, load_for_rank


def requested(args) -> tuple[str, int] | None:
    """("tp" | "pp", ranks) when the command asks for more than one rank, else None."""
    tp, pp = getattr(args, "tp", 1) or 1, getattr(args, "pp", 1) or 1
    if tp < 1 or pp < 1:
        raise ParallelError(f"--tp and --pp must be >= 1, got --tp {tp} --pp {pp}")
    if tp > 1 and pp > 1:
        raise ParallelError("choose --tp or --pp, not both (combining them is not supported)")
    if tp == 1 and pp == 1:
        return None if not comm_mod.under_torchrun() or _world() == 1 else ("tp", _world())
    return ("tp", tp) if tp > 1 else ("pp", pp)


def _world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _check_split(args, scheme: str, ranks: int):
    from ..checkpoints import load_model

    if args.device != "cpu" and not torch.cuda.is_available():
        raise ParallelError(f"--device {args.device} asked for, but no GPU is available")
    config = load_model(args.model, dtype="float32")[0].config  # to refuse a bad split before starting ranks
    (tensor_shards if scheme == "tp" else pipeline_stages)(config, ranks)
    micro, batch = getattr(args, "micro_batches", 1), getattr(args, "batch", 1)
    if not 1 <= micro <= batch:
        raise ParallelError(f"--micro-batches must be between 1 and --batch ({batch}), got {micro}")


def run(args, command) -> int:
    """Entry from the CLI: launch torchrun, or run as one of its ranks. `command` is "generate" or "bench"."""
    scheme, ranks = requested(args)
    if not comm_mod.under_torchrun():
        _check_split(args, scheme, ranks)
        return relaunch_under_torchrun(ranks, args.argv)
    if _world() != ranks:
        raise ParallelError(f"--{scheme} {ranks} but torchrun started {_world()} ranks (--nproc-per-node)")
    torch.set_num_threads(args.threads or threads_per_rank(ranks))
    comm = comm_mod.init(device=args.device)
    try:
        part, tokenizer = _part(args, comm, scheme)
        return (_generate if command == "generate" else _bench)(args, comm, scheme, part, tokenizer) or 0
    finally:
        comm_mod.shutdown()


def _part(args, comm, scheme):
    from .. import kernels

    kernels.set_enabled(args.kernels == "on")
    kernels.set_quantized_activations(None if args.quantized_activations == "auto" else args.quantized_activations)
    model, tokenizer = load_for_rank(args.model, dtype=args.dtype, device=str(comm.device))  # cuda:LOCAL_RANK
    if args.prune:
        from ..prune import prune_

        prune_(model, args.prune, tokenizer=tokenizer, calib=getattr(args, "calib", None))
    if args.quant:
        from ..quant import quantize_

        quantize_(model, args.quant, tokenizer=tokenizer, calib=getattr(args, "calib", None))
    return build(comm, model, scheme, kernels=args.kernels == "on"), tokenizer


def _printer(comm, scheme) -> bool:
    return comm.rank == (0 if scheme == "tp" else comm.world - 1)


def _generate(args, comm, scheme, part, tokenizer):
    from ..engine import SamplingParams, generate, stream
    from ..engine.generate import _prompt_ids

    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, max_tokens=args.max_tokens,
                            stop=args.stop, seed=args.seed)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    if scheme == "tp" and not args.json:  # every rank runs the same loop on the same gathered logits
        for piece in stream(part, tokenizer, prompt, params):
            if _printer(comm, scheme):
                print(piece, end="", flush=True)
        if _printer(comm, scheme):
            print()
        return
    if scheme == "tp":
        c = generate(part, tokenizer, prompt, params)
        text, ids, finish, prompt_tokens = c.text, c.token_ids, c.finish_reason, c.prompt_tokens
    else:
        from .pipeline import pipeline_generate_ids

        prompt_ids = _prompt_ids(tokenizer, prompt)
        ids, finish = [], "length"
        for step in pipeline_generate_ids(part, [prompt_ids], params, 1, tokenizer.stop_token_ids):
            token = step[0] if step else None
            if token is None:
                continue
            if token in tokenizer.stop_token_ids and not params.ignore_eos:
                finish = "stop"
                continue
            ids.append(token)
        text, prompt_tokens = tokenizer.decode(ids, skip_special_tokens=True), len(prompt_ids)
        for s in params.stop:  # stop strings: cut the text (the pipeline ran to the stop token or max_tokens)
            if s in text:
                text, finish = text[:text.index(s)], "stop"
    if _printer(comm, scheme):
        if args.json:
            print(json.dumps({"text": text, "finish_reason": finish, "prompt_tokens": prompt_tokens,
                              "completion_tokens": len(ids), scheme: comm.world}))
        else:
            print(text)


def _bench(args, comm, scheme, part, tokenizer):
    from ..bench.decode import benchmark_prompts
    from ..bench.timing import median
    from .timing import time_parallel_generation

    prompts = benchmark_prompts(tokenizer, args.batch, args.prompt_tokens)
    runs = [time_parallel_generation(part, scheme, prompts, args.new_tokens, micro_batches=args.micro_batches)
            for _ in range(args.warmup + args.repeats)][args.warmup:]
    comm.reset_traffic()
    time_parallel_generation(part, scheme, prompts, 2, micro_batches=args.micro_batches)  # 1 prefill + 1 decode step
    traffic = dict(comm.traffic)
    prefill_s, decode_s = median(r[0] for r in runs), median(r[1] for r in runs)
    result = {"engine": "workbench", "scheme": scheme, "ranks": comm.world, "rank": comm.rank,
              "threads_per_rank": torch.get_num_threads(), "dtype": args.dtype, "quant": args.quant,
              "model": args.model, "batch": args.batch, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "micro_batches": args.micro_batches if scheme == "pp" else None,
              "prefill_tok_s": args.batch * args.prompt_tokens / prefill_s,
              "decode_tok_s": args.batch * (args.new_tokens - 1) / decode_s,
              "weight_bytes_this_rank": part.weight_bytes(), "traffic_prefill_and_one_step": traffic,
              "repeats": args.repeats, "runs_s": [{"prefill_s": p, "decode_s": d} for p, d in runs]}
    if _printer(comm, scheme):
        if args.output:
            from ..io import atomic_write_json

            atomic_write_json(args.output, result)
        print(json.dumps(result) if args.json else
              f"{scheme} x{comm.world} batch {args.batch}: prefill {result['prefill_tok_s']:.1f} tok/s, "
              f"decode {result['decode_tok_s']:.1f} tok/s ({result['threads_per_rank']} threads per rank)")
