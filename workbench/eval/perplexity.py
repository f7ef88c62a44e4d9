"""Perplexity over fixed windows, the method published numbers use."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import EmptyTextError, InvalidParameterError


@dataclass
class PerplexityResult:
    ppl: float
    nll: float          # mean negative log-likelihood per scored token (nats)
    tokens: int         # tokens of text used
    predictions: int    # tokens scored
    window: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def perplexity(model, text_or_ids, tokenizer=None, *, window: int = 1024, stride: int | None = None,
               max_tokens: int | None = None, batch_size: int = 1, chunk_tokens: int | None = None,
               progress: bool = False) -> PerplexityResult:
    """exp(mean NLL) of the text's tokens, each predicted from the tokens before it in its window.

    Method: the text is tokenized without special tokens and cut to its first `max_tokens`.
    Windows of `window` tokens start at 0, stride, 2*stride, ... (the last may be shorter).
    - stride == window (default): non-overlapping windows; every token of a window except the
      first is scored, given the tokens before it in that window (as llama.cpp's and transformers'
      published numbers do). A text of N tokens gives N - ceil(N / window) predictions.
    - stride < window: overlapping windows; the first window scores all its tokens after the
      first, each later one only its last `stride` tokens, so every token is scored once with up
      to window - stride tokens of extra context.
    Logits are computed in float32 for the loss. Each window is one forward pass without a KV
    cache, batched `batch_size` windows at a time when they have equal length. With `chunk_tokens`,
    a window is fed through a KV cache that many tokens at a time instead: the decode path, where
    few rows per product send every layer to the CPU decode kernels (up to 4 rows for float
    weights, 16 for packed ones), so this scores what generation really computes.
    """
    stride = stride or window
    if window < 2:
        raise InvalidParameterError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise InvalidParameterError(f"stride must be between 1 and window ({window}), got {stride}")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise InvalidParameterError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if window > model.config.max_position_embeddings:
        raise InvalidParameterError(f"window {window} exceeds the model's context of "
                                    f"{model.config.max_position_embeddings} tokens")
    if isinstance(text_or_ids, str):
        if tokenizer is None:
            raise InvalidParameterError("perplexity of a text needs its tokenizer")
        ids = tokenizer.encode(text_or_ids, add_special_tokens=False)
    else:
        ids = [int(i) for i in text_or_ids]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise EmptyTextError(f"perplexity needs at least 2 tokens of text, got {len(ids)}")

    # (start, first scored target index within the window)
    spans, scored_until = [], 0  # targets below `scored_until` were scored by an earlier window
    for start in range(0, len(ids) - 1, stride):
        end = min(start + window, len(ids))
        skip = max(0, scored_until - start - 1)  # this window's first targets are start+1, start+2, ...
        if skip < end - start - 1:
            spans.append((start, end, skip))
        scored_until = end
        if end == len(ids):
            break
    data = torch.tensor(ids, dtype=torch.long)
    total_nll, count = 0.0, 0
    groups = _group_equal_lengths(spans, batch_size)
    iterator = groups
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(groups, desc="perplexity", unit="batch")
    for group in iterator:
        batch = torch.stack([data[s:e] for s, e, _ in group]).to(model.device)
        if chunk_tokens:
            cache = model.new_cache(batch.shape[0], batch.shape[1])
            logits = torch.cat([model(batch[:, i:i + chunk_tokens], cache).float()
                                for i in range(0, batch.shape[1], chunk_tokens)], dim=1)
        else:
            logits = model(batch).float()
        for row, (s, e, skip) in enumerate(group):
            targets = batch[row, 1 + skip:]
            nll = F.cross_entropy(logits[row, skip:-1], targets, reduction="sum")
            total_nll += nll.item()
            count += targets.numel()
    mean = total_nll / count
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=len(ids), predictions=count,
                            window=window, stride=stride)


def _group_equal_lengths(spans, batch_size):
    groups, current = [], []
    for span in spans:
        if current and (len(current) == batch_size or span[1] - span[0] != current[0][1] - current[0][0]):
            groups.append(current)
            current = []
        current.append(span)
    return groups + [current] if current else groups


def weight_only_perplexity(model, text_or_ids, tokenizer=None, **kwargs) -> PerplexityResult:
    """`perplexity` with quantized layers multiplying float activations: the quality of the weights
    alone, the same on every CPU. (Where the CPU has AVX2 our kernels round quantized layers'
    activations to int8 by default; `benchmarks/quantization_ppl.py --decode-chunks` measures that arithmetic.)
    The quantization tables and the study record this figure."""
    from .. import kernels

    with kernels.using_quantized_activations("float"):
        return perplexity(model, text_or_ids, tokenizer, **kwargs)
