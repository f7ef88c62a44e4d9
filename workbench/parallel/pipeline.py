"""Pipeline parallelism: contiguous runs of layers on successive ranks, activations passed with send/recv.

Rank 0 embeds and runs the first layers, each next rank receives the hidden states, runs its layers
and sends them on; the last rank applies the final norm and the head, samples, and sends the new
tokens back to rank 0, which needs them for the next step. One sequence alone leaves all but one
stage idle; with several *micro-batches* (groups of sequences) in flight each stage works on one
while the next stage works on the one before (GPipe's schedule): prefill runs micro-batch after
micro-batch through the stages, and decoding keeps all of them cycling. Each micro-batch has its
own KV cache per stage, holding that stage's layers only.

Every message is non-blocking on the sending side (`isend`), so a stage never waits for a
receiver to be ready; a one-number header ahead of each activation says whether the micro-batch
still runs (0 once all its sequences stopped), so every stage knows when a micro-batch is done.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch
from torch import nn

from ..engine.sampling import Sampler, SamplingParams
from ..errors import ContextLengthError, InvalidParameterError
from ..model import KVCache, LlamaModel
from .comm import Comm
from .plan import PipelineStage, even_split, pipeline_stages


class PipelineStageModel(nn.Module):
    """One rank's stage of a `LlamaModel`: its layers (and the embedding or the head at the ends)."""

    def __init__(self, model: LlamaModel, stage: PipelineStage, comm: Comm):
        super().__init__()
        self.stage, self.comm, self.config = stage, comm, model.config
        a, b = stage.layers
        self.layers = nn.ModuleList(model.model.layers[a:b])
        self.embed_tokens = model.model.embed_tokens if stage.first else None
        self.norm = model.model.norm  # small; its dtype is the model's
        self.lm_head = model.lm_head if stage.last else None
        self.rotary = model.rotary
        self.local_config = dataclasses.replace(model.config, num_hidden_layers=b - a)

    @property
    def dtype(self):
        return self.norm.weight.dtype

    @property
    def device(self):
        return self.norm.weight.device

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(self.local_config, batch_size, max_len, self.dtype, self.device)

    def run(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Token ids (first stage) or hidden states (B, T, d) in -> hidden states out; logits (B, 1, V) of
        each sequence's last position on the last stage."""
        shape = x.shape[:2]
        positions = cache.prepare(torch.empty(shape, dtype=torch.long, device=self.device))
        cos, sin = self.rotary(positions, self.dtype)
        if self.stage.first:
            x = self.embed_tokens(x).to(self.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache, i)
        cache.advance()
        if self.stage.last:
            return self.lm_head(self.norm(cache.last(x)))
        return x

    def weight_bytes(self) -> int:
        from ..model import weight_bytes

        return weight_bytes(self)


def shard_pipeline(model: LlamaModel, comm: Comm) -> PipelineStageModel:
    """Rank `comm.rank`'s stage of `model` (the other layers are dropped from this process)."""
    stage = pipeline_stages(model.config, comm.world)[comm.rank]
    part = PipelineStageModel(model, stage, comm)
    model.model.layers = nn.ModuleList()  # the other stages' layers go with the caller's reference
    return part


@dataclasses.dataclass
class _MicroBatch:
    prompts: list[list[int]]
    cache: KVCache
    ids: torch.Tensor           # the next input: padded prompts, then one token per sequence
    sampler: Sampler | None     # last stage only
    done: list[bool]
    running: bool = True


@torch.inference_mode()
def pipeline_generate_ids(stage: PipelineStageModel, prompts: list[list[int]], params: SamplingParams,
                          micro_batches: int = 1, stop_token_ids: set[int] = frozenset(),
                          logits_out: list | None = None) -> Iterator[list[int | None] | None]:
    """Yield, per step, one token id per sequence (None once stopped) on the last stage, which
    samples, like `generate_ids`; the other stages yield None. Every rank of the pipeline calls this with the
    same prompts. `micro_batches` groups of sequences are in flight; `logits_out`, a list on the
    last stage, receives each step's (B, V) logits of every micro-batch (for checks)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InvalidParameterError("every prompt needs at least one token")
    if not 1 <= micro_batches <= len(prompts):
        raise InvalidParameterError(f"micro_batches must be between 1 and the {len(prompts)} prompts, "
                                    f"got {micro_batches}")
    longest = max(len(p) for p in prompts)
    if longest + params.max_tokens > stage.config.max_position_embeddings:
        raise ContextLengthError(f"prompt of {longest} tokens + max_tokens {params.max_tokens} exceeds the "
                                 f"model's context window of {stage.config.max_position_embeddings} tokens")
    comm, s = stage.comm, stage.stage
    prev, nxt, last_rank = s.rank - 1, s.rank + 1, s.world - 1
    stops = set() if params.ignore_eos else set(stop_token_ids)
    d, dtype, device = stage.config.hidden_size, stage.dtype, stage.device  # NCCL sends device tensors only
    groups = []
    for a, b in even_split(len(prompts), micro_batches):
        group = prompts[a:b]
        cache = stage.new_cache(len(group), longest + params.max_tokens)
        ids = torch.zeros(len(group), longest, dtype=torch.long, device=device)
        for row, p in enumerate(group):
            ids[row, longest - len(p):] = torch.tensor(p, device=device)
            cache.valid[row, :longest - len(p)] = False
        cache.padded = any(len(p) != longest for p in group)
        sampler = Sampler(params, group, stage.config.vocab_size, stage.device) if s.last else None
        groups.append(_MicroBatch(group, cache, ids, sampler, [False] * len(group)))
    pending, older = [], []  # sends in flight: this step's, and the step before's (finished a step late)
    header = torch.zeros(1, dtype=torch.long, device=device)
    for step in range(params.max_tokens):
        older, pending = pending, []
        tokens_this_step = []
        for m, g in enumerate(groups):
            T = g.ids.shape[1] if step == 0 else 1
            if s.first:
                if step > 0 and g.running:
                    tokens = g.ids[:, 0] if s.world == 1 else \
                        comm.recv(torch.empty(len(g.prompts), dtype=torch.long, device=device), last_rank)
                    g.done = [dn or int(t) in stops for dn, t in zip(g.done, tokens.tolist())]
                    g.running = not all(g.done)
                    g.ids = tokens[:, None]
                if s.world > 1:
                    pending.append(comm.isend(torch.tensor([int(g.running)], device=device), nxt))
            else:
                g.running = bool(comm.recv(header, prev)[0])
                if not s.last:
                    pending.append(comm.isend(header.clone(), nxt))
            if not g.running:
                tokens_this_step.append(None)
                continue
            x = g.ids if s.first else comm.recv(torch.empty(len(g.prompts), T, d, dtype=dtype, device=device), prev)
            out = stage.run(x, g.cache)
            if not s.last:
                pending.append(comm.isend(out, nxt))
                tokens_this_step.append(None)
                continue
            logits = out[:, -1]
            if logits_out is not None:
                logits_out.append(logits.clone())
            tokens = g.sampler(logits)
            values = tokens.tolist()
            tokens_this_step.append([None if dn else t for dn, t in zip(g.done, values)])
            g.done = [dn or t in stops for dn, t in zip(g.done, values)]
            if s.world > 1:
                pending.append(comm.isend(tokens, 0))
            else:
                g.ids = tokens[:, None]
                g.running = not all(g.done)
        for p in older:
            p.wait()
        yield _flatten(groups, tokens_this_step) if s.last else None
        if not any(g.running for g in groups) and s.world == 1:
            break
    # The last stage sent one round of tokens rank 0 never asked for: take them, so that no send is
    # left half-way when the group shuts down.
    if s.world > 1 and s.first:
        for g in groups:
            if g.running:
                comm.recv(torch.empty(len(g.prompts), dtype=torch.long, device=device), last_rank)
    for p in pending:
        p.wait()


def _flatten(groups, tokens_this_step) -> list[int | None]:
    out = []
    for g, toks in zip(groups, tokens_this_step):
        out += toks if toks is not None else [None] * len(g.prompts)
    return out
