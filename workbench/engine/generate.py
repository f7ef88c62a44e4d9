"""KV-cached generation: batched prompts, streaming text, stop tokens and stop strings.

The cache is allocated once per call at prompt + max_tokens positions; each step runs the model on
one new token per sequence and writes its keys/values in place. The only host sync per step is
reading the sampled tokens (needed to check for stop tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import ContextLengthError, InvalidParameterError
from .detokenizer import Detokenizer
from .sampling import Sampler, SamplingParams
from .speculative import SpeculativeStats, speculative_ids


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (stop token or string) or "length" (max_tokens reached)
    prompt_tokens: int


@torch.inference_mode()
def generate_ids(model, prompts: list[list[int]], params: SamplingParams,
                 stop_token_ids: set[int] = frozenset()) -> Iterator[list[int | None]]:
    """Yield, per step, one new token id per sequence (None once that sequence has stopped).

    Prompts of unequal length are left-padded; padding is masked out of attention and positions
    count real tokens only, so each sequence decodes as if it were alone.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InvalidParameterError("every prompt needs at least one token")
    batch, longest = len(prompts), max(len(p) for p in prompts)
    context = model.config.max_position_embeddings
    if longest + params.max_tokens > context:
        raise ContextLengthError(f"prompt of {longest} tokens + max_tokens {params.max_tokens} exceeds the "
                                 f"model's context window of {context} tokens")
    device = model.device
    cache = model.new_cache(batch, longest + params.max_tokens)
    ids = torch.zeros(batch, longest, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, longest - len(p):] = torch.tensor(p)
        cache.valid[row, :longest - len(p)] = False
    cache.padded = any(len(p) != longest for p in prompts)
    stops = (set() if params.ignore_eos else set(stop_token_ids)) | set(params.stop_token_ids)
    sampler = Sampler(params, prompts, model.config.vocab_size, device, stop_ids=stops)

    logits = model(ids.to(device), cache, last_only=True)[:, -1]
    done = [False] * batch
    for step in range(params.max_tokens):
        tokens = sampler(logits)
        values = tokens.tolist()
        yield [None if d else t for d, t in zip(done, values)]
        done = [d or t in stops for d, t in zip(done, values)]
        if all(done) or step == params.max_tokens - 1:
            return
        logits = model(tokens[:, None], cache)[:, -1]


def _prompt_ids(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        return tokenizer.encode(tokenizer.apply_chat_template(prompt, add_generation_prompt=True))
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    raise InvalidParameterError("a prompt is a string, a list of chat messages ({'role', 'content'}) "
                                "or a list of token ids")


def _run(model, tokenizer, prompts: list, params: SamplingParams, draft=None, draft_tokens: int = 4,
         stats: SpeculativeStats | None = None):
    """Drive `generate_ids` (or, with a draft model, `speculative_ids`) for several prompts; yields
    (trackers, finished flags) after each step."""
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    if draft is not None and len(ids) != 1:
        raise InvalidParameterError(f"speculative decoding runs one prompt at a time, got {len(ids)}")
    trackers = [Detokenizer(tokenizer, params.stop, params.include_stop_str_in_output) for _ in prompts]
    finished = [None] * len(prompts)
    stop_ids = tokenizer.stop_token_ids
    ends = (set() if params.ignore_eos else set(stop_ids)) | set(params.stop_token_ids)
    if draft is None:
        steps = generate_ids(model, ids, params, stop_ids)
    else:
        steps = ([t] for t in speculative_ids(model, draft, ids[0], params, draft_tokens, stop_ids, stats))
    for step in steps:
        for i, token in enumerate(step):
            if token is None or finished[i]:
                continue
            if token in ends:
                finished[i] = "stop"
                continue
            trackers[i].add(token, check_stop=len(trackers[i].ids) + 1 >= params.min_tokens)
            if trackers[i].stopped:
                finished[i] = "stop"
        yield ids, trackers, finished
        if all(finished):
            return


def generate(model, tokenizer, prompt, params: SamplingParams | None = None, *, draft=None, draft_tokens: int = 4,
             stats: SpeculativeStats | None = None):
    """Complete one prompt (str, chat messages or token ids) -> `Completion`;
    a list of string prompts (or of message lists) -> list of `Completion`, decoded as one batch.

    `draft`: a smaller model with the same tokenizer proposing `draft_tokens` tokens per target pass
    (speculative decoding, `speculative.py`; one prompt only); `stats` collects its acceptance."""
    params = params or SamplingParams()
    batched = isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt)
    prompts = prompt if batched else [prompt]
    ids, trackers, finished = [], [], []
    for ids, trackers, finished in _run(model, tokenizer, prompts, params, draft, draft_tokens, stats):
        pass
    for t in trackers:
        t.finish()
    out = [Completion(t.text, t.ids, f or "length", len(p)) for t, f, p in zip(trackers, finished, ids)]
    return out if batched else out[0]


def stream(model, tokenizer, prompt, params: SamplingParams | None = None, *, draft=None, draft_tokens: int = 4,
           stats: SpeculativeStats | None = None) -> Iterator[str]:
    """Yield pieces of text as they are generated for one prompt (`draft`: as in `generate`)."""
    params = params or SamplingParams()
    tracker = None
    for _, trackers, _ in _run(model, tokenizer, [prompt], params, draft, draft_tokens, stats):
        tracker = trackers[0]
        chunk = tracker.ready()
        if chunk:
            yield chunk
    if tracker is not None:
        tracker.finish()  # flush what was held back
        rest = tracker.ready()
        if rest:
            yield rest
