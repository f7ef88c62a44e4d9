"""LoRA against full fine-tuning, and LoRA on a frozen int8 base (QLoRA's idea on a CPU).

Method. Base: the bundled smollm2-135m, loaded afresh for each contender. Contenders: `full` (every
weight trains, float32), `lora` (a LoRA adapter, `--lora` on `--target`, on the frozen float32 base)
and `lora-int8` (the same adapter, float32, on the base quantized to `workbench.quant` int8 weight-only
layers, frozen). Each trains `--steps` steps with the same trainer (`workbench.distill.distill`,
next-token cross-entropy, AdamW, warm-up then cosine, seeded data order: every contender reads the same
tokens of the built-in corpus's train part); full fine-tuning at `--full-lr`, the adapters at `--lr`.
Held-out loss: mean next-token cross-entropy (log of `workbench.eval.perplexity`) on the first
`--eval-tokens` tokens of the evaluation part (never trained on), windows of `--eval-window`, before and
after training. Memory: bytes of the frozen weights, the trainable parameters, their gradients and
AdamW's state, counted from the tensors after real optimizer steps (activations not included; they
are about the same for all three, since LoRA still back-propagates through every layer). Step time:
one optimizer step (forward, backward, AdamW) on one fixed batch, the contenders alternated in
`--rounds` rounds after `--warmup-rounds` (`workbench.bench.timing.alternate`), medians; `vs_full` is
the median of the per-round ratios. The run info records the machine's load.

    .venv/bin/python benchmarks/lora.py            # full mode
    .venv/bin/python benchmarks/lora.py --quick    # smoke run: writes lora_quick.*
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch

import workbench
from workbench.adapters import (LoraConfig, add_lora, lora_layers, parse_lora_spec, save_adapter, trainable_parameters,
                                training_bytes)
from workbench.bench.flags import benchmark_parser, parse_benchmark_args
from workbench.bench.timing import alternate, run_end, run_info
from workbench.corpus import builtin_text
from workbench.distill import TrainConfig, TrainingWindows, distill, hard_cross_entropy, training_ids
from workbench.io import atomic_write_json, atomic_write_text
from workbench.quant import quantize_

CONTENDERS = ("full", "lora", "lora-int8")


def build(name: str, model_name: str, lora: LoraConfig, seed: int):
    model, _ = workbench.load_model(model_name)
    if name == "lora-int8":
        quantize_(model, "int8")
    if name != "full":
        add_lora(model, lora, seed=seed)
    return model


def timed_step(model, optimizer, batch) -> float:
    """Seconds of one optimizer step on `batch`: forward, cross-entropy, backward, AdamW."""
    start = time.perf_counter()
    loss = hard_cross_entropy(model(batch[:, :-1]), batch[:, 1:])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def adapter_file_bytes(model) -> int | None:
    if not lora_layers(model):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        save_adapter(model, tmp)
        return sum(f.stat().st_size for f in Path(tmp).iterdir())


def main(argv=None):
    parser = benchmark_parser(__doc__, "lora", full=dict(
        steps=20, batch_size=2, seq_len=256, eval_tokens=4096, eval_window=1024, rounds=5, warmup_rounds=1),
        quick=dict(steps=2, batch_size=1, seq_len=32, eval_tokens=256, eval_window=256, rounds=1, warmup_rounds=0))
    parser.add_argument("--lora", default="r=8,alpha=16", help="rank, alpha, dropout (default r=8,alpha=16)")
    parser.add_argument("--target", default="q_proj,v_proj", help="projections the adapter wraps (q_proj,v_proj)")
    parser.add_argument("--contenders", nargs="*", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--steps", type=int, default=None, help="training steps per contender (full 20)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (full 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (full 256)")
    parser.add_argument("--lr", type=float, default=1e-3, help="adapter learning rate")
    parser.add_argument("--full-lr", type=float, default=5e-5, help="full fine-tuning learning rate")
    parser.add_argument("--warmup", type=int, default=2, help="learning-rate warm-up steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens (full 4096)")
    parser.add_argument("--eval-window", type=int, default=None, help="perplexity window (full 1024)")
    args = parse_benchmark_args(parser, argv)
    lora = parse_lora_spec(args.lora, args.target)

    tok = workbench.load_tokenizer(args.model)
    train_ids = training_ids(tok)
    eval_ids = tok.encode(builtin_text("evaluation"), add_special_tokens=False)[:args.eval_tokens]
    report = {"method": __doc__, **run_info(bandwidth=args.bandwidth), "settings": vars(args),
              "lora": {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                       "target_modules": list(lora.target_modules)}, "runs": {}}
    models, rows = {}, []
    for name in args.contenders:
        model = build(name, args.model, lora, args.seed)
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, loss="ce",
                             lr=args.full_lr if name == "full" else args.lr, warmup_steps=args.warmup, seed=args.seed)
        torch.manual_seed(args.seed)
        load = os.getloadavg()
        result = distill(model, None, train_ids, config, eval_ids=eval_ids, eval_window=args.eval_window)
        models[name] = model
        rows.append({"contender": name, "trainable_params": sum(p.numel() for p in trainable_parameters(model)),
                     "eval_loss_before": math.log(result.ppl_before), "eval_loss_after": math.log(result.ppl_after),
                     "ppl_before": result.ppl_before, "ppl_after": result.ppl_after, "steps": result.steps,
                     "tokens": result.tokens, "lr": config.lr, "train_s": result.train_s, "loadavg_1m": load[0],
                     "adapter_file_bytes": adapter_file_bytes(model)})
        report["runs"][name] = {"history": result.history, "evals": result.evals, "wall_s": result.wall_s}
        print(f"{name:>9}: held-out loss {rows[-1]['eval_loss_before']:.4f} -> {rows[-1]['eval_loss_after']:.4f} "
              f"after {result.steps} steps ({result.train_s:.0f} s)", flush=True)

    batch = TrainingWindows(train_ids, args.seq_len, args.batch_size, args.seed + 1)[0]
    optimizers = {}
    for name, model in models.items():
        model.train()
        optimizers[name] = torch.optim.AdamW(trainable_parameters(model), lr=1e-12)  # speed only: weights barely move
    timing = alternate({name: partial(timed_step, models[name], optimizers[name], batch) for name in models},
                       args.rounds, args.warmup_rounds)
    for row in rows:
        name = row["contender"]
        memory = training_bytes(models[name], optimizers[name])
        row.update(memory, step_s=timing.median(name), tokens_per_s=batch[:, 1:].numel() / timing.median(name))
        if "full" in models:
            row["step_vs_full"] = timing.ratio(name, "full")
            full_total = training_bytes(models["full"], optimizers["full"])["total_bytes"]
            row["bytes_vs_full"] = memory["total_bytes"] / full_total
    report["timing"] = {"series_s": {name: timing.series(name) for name in models}, "rounds": args.rounds,
                        "warmup_rounds": args.warmup_rounds, "batch": list(batch.shape)}
    report["rows"] = rows
    run_end(report)
    atomic_write_text(Path(args.out + ".csv"), pd.DataFrame(rows).to_csv(index=False))
    atomic_write_json(Path(args.out + ".json"), report)
    columns = ["contender", "trainable_params", "eval_loss_before", "eval_loss_after", "total_bytes", "step_s"]
    print(pd.DataFrame(rows)[columns + [c for c in ("bytes_vs_full", "step_vs_full") if c in rows[0]]]
          .to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
