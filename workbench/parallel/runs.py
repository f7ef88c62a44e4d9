"""What a rank does: build its part of a model, and generate with it while recording logits and traffic.

These functions are importable so that `launch` (tests, notebooks, benchmarks) and torchrun (the
command line) run the same code. Every rank loads the whole model, quantizes it if asked (the same
deterministic rounding on every rank), then keeps only its shard or stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checkpoints import load_model
from ..engine import SamplingParams, generate_ids
from ..errors import ParallelError
from .comm import Comm
from .pipeline import pipeline_generate_ids, shard_pipeline
from .tensor import shard_tensor_parallel

SCHEMES = ("tp", "pp")


def load_for_rank(model_name: str, *, dtype: str = "float32", device: str = "cpu", quant: str | None = None):
    """The whole model as every rank starts from: loaded, quantized if `quant`, kernels not yet on."""
    model, tokenizer = load_model(model_name, dtype=dtype, device=device)
    if quant:
        from ..quant import quantize_

        quantize_(model, quant, tokenizer=tokenizer)
    return model, tokenizer


def build(comm: Comm, model: nn.Module, scheme: str, *, kernels: bool = False):
    """This rank's tensor-parallel shard or pipeline stage of `model` (consumed), kernels on if asked."""
    if scheme not in SCHEMES:
        raise ParallelError(f"unknown parallel scheme {scheme!r}: choose tp or pp")
    part = shard_tensor_parallel(model, comm) if scheme == "tp" else shard_pipeline(model, comm)
    if kernels:
        from .. import kernels as cpu_kernels

        cpu_kernels.enable(part)
    return part


class LogitRecorder(nn.Module):
    """Wraps a model (whole or tensor-parallel) and keeps each call's last-position logits."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.logits = model, []
        self.config = model.config

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def device(self):
        return self.inner.device

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)

    def forward(self, input_ids, cache=None, last_only: bool = False):
        out = self.inner(input_ids, cache, last_only)
        self.logits.append(out[:, -1].float().clone())
        return out


def greedy(model, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], torch.Tensor]:
    """(tokens per sequence, logits (steps, B, V)) of a greedy run through `generate_ids`."""
    recorder = LogitRecorder(model)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    steps = list(generate_ids(recorder, prompts, params))
    return [list(seq) for seq in zip(*steps)], torch.stack(recorder.logits[:len(steps)])


def pipeline_greedy(stage, prompts: list[list[int]], max_tokens: int, micro_batches: int,
                    stop_token_ids: tuple[int, ...] = ()):
    """Greedy run through the pipeline: on the last stage (tokens per sequence, None once stopped;
    logits per micro-batch (steps, b, V), all steps only without stop tokens); elsewhere (None, None)."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=not stop_token_ids)
    logits: list = []
    steps = list(pipeline_generate_ids(stage, prompts, params, micro_batches, set(stop_token_ids),
                                       logits_out=logits if stage.stage.last else None))
    if not stage.stage.last:
        return None, None
    tokens = [list(seq) for seq in zip(*steps)]
    if stop_token_ids:
        return tokens, None
    return tokens, [torch.stack(logits[m::micro_batches]) for m in range(micro_batches)]


def rank_greedy(comm: Comm, model_name: str, cases: list[dict], prompts: list[list[int]], max_tokens: int,
                kernels: bool = False) -> list[dict]:
    """Run on every rank by `launch`: for each case ({"scheme", "quant", "micro_batches"}) a greedy
    generation of `prompts`, with the tokens, logits, this rank's KV cache shape and what it sent.
    `kernels=False` computes everything, packed layers too, with PyTorch's operators."""
    from .. import kernels as cpu_kernels

    cpu_kernels.set_enabled(kernels)
    results = []
    for case in cases:
        model, _ = load_for_rank(model_name, quant=case.get("quant"))
        part = build(comm, model, case["scheme"], kernels=kernels)
        del model  # a pipeline stage keeps only its layers
        comm.reset_traffic()
        if case["scheme"] == "tp":
            tokens, logits = greedy(part, prompts, max_tokens)
        else:
            tokens, logits = pipeline_greedy(part, prompts, max_tokens, case.get("micro_batches", 1),
                                             tuple(case.get("stop_token_ids", ())))
        results.append({**case, "rank": comm.rank, "tokens": tokens, "logits": logits,
                        "traffic": dict(comm.traffic), "weight_bytes": part.weight_bytes(),
                        "kv_cache_shape": tuple(part.new_cache(1, 1).k.shape)})
    return results


def rank_dies(comm: Comm, victim: int) -> None:
    """For the failure check: rank `victim` exits abruptly; the others then try an all-reduce."""
    import os

    comm.barrier()
    if comm.rank == victim:
        os._exit(3)
    comm.all_reduce(torch.ones(4))
