"""Speculative decoding: a small draft model proposes k tokens, the target checks them in one pass.

Each round the draft decodes k tokens one at a time over its own KV cache; the target then runs
once over its last token and the k drafts (k + 1 positions, one forward pass over its KV cache)
and keeps the longest prefix it agrees with, plus one token of its own: the correction at the
first rejected draft, or a bonus token when all k were accepted. Both caches are then truncated
to the kept tokens, so rejected drafts leave no trace.

- Greedy: a draft is kept while it equals the target's argmax, so the output is the target's own
  greedy decoding token for token (up to float rounding of the (k + 1)-position pass, which only
  matters at exact ties).
- Sampling: draft token d, drawn from the draft's distribution q, is kept with probability
  min(1, p(d) / q(d)) under the target's distribution p; at the first rejection the token is drawn
  from normalize(max(0, p - q)), and after k acceptances the bonus from p. Every output token is
  then distributed exactly as the target alone would draw it (Leviathan et al. 2023, Chen et al.
  2023). p and q are the processed distributions (logit bias, temperature, min_p, top_k, top_p).

Batch 1 only (one prompt per call): the caches are the contiguous `model.KVCache`. Penalties
(repetition, presence, frequency) and min_tokens depend on every token before a position, drafts
included, and are refused here.

Why it pays: with a per-token acceptance probability alpha, a round yields on average
(1 - alpha^(k+1)) / (1 - alpha) tokens for k draft steps and one verify pass; with c the draft's
step time over the target's and v the verify pass's time over one target step, the speed-up over
plain decoding is that over (k c + v). `expected_tokens` and `expected_speedup` compute it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import ContextLengthError, DraftModelError, InvalidParameterError
from ..settings import now as clock
from .sampling import Sampler, SamplingError, SamplingParams


@dataclass
class SpeculativeStats:
    """What one or more speculative runs did; `accepted_per_round` holds each round's accepted drafts."""
    draft_tokens: int = 0                  # k asked for (rounds near the end draft fewer)
    rounds: int = 0                        # verify passes of the target
    drafted: int = 0                       # draft tokens proposed
    accepted: int = 0                      # of those, kept
    reached: int = 0                       # draft positions checked: the accepted ones and the first rejected
    accepted_per_round: list[int] = field(default_factory=list)
    draft_calls: int = 0                   # draft forward passes (after the prompt)
    draft_s: float = 0.0                   # seconds in them
    verify_s: float = 0.0                  # seconds in the target's verify passes
    prefill_s: float = 0.0                 # seconds in both models' prompt passes
    clock: Callable[[], float] = field(default=clock, repr=False)  # what the seconds are counted with

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts over proposed drafts."""
        return self.accepted / max(self.drafted, 1)

    @property
    def alpha(self) -> float:
        """Per-token acceptance probability: accepted over checked draft positions (the estimate
        under which a round's accepted count is geometric, cut at k)."""
        return self.accepted / max(self.reached, 1)

    @property
    def tokens_per_round(self) -> float:
        """Tokens each verify pass yields (accepted drafts + the target's own token)."""
        return (self.accepted + self.rounds) / max(self.rounds, 1)


def expected_tokens(alpha: float, k: int) -> float:
    """Tokens per round for k drafts accepted each with probability alpha: (1 - alpha^(k+1)) / (1 - alpha)."""
    return float(k + 1) if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def expected_speedup(alpha: float, k: int, c: float, verify_cost: float = 1.0) -> float:
    """Speed-up over plain decoding: expected_tokens / (k c + verify_cost), with c the draft's step
    time over the target's and verify_cost the verify pass's time in target steps."""
    return expected_tokens(alpha, k) / (k * c + verify_cost)


def check_draft(target, draft, target_tokenizer=None, draft_tokenizer=None):
    """Raise DraftModelError unless `draft` can draft for `target`: the same vocabulary (size and,
    with tokenizers, every token), the same device."""
    t, d = target.config.vocab_size, draft.config.vocab_size
    if t != d:
        raise DraftModelError(f"the draft model's vocabulary has {d} tokens, the target's {t}: speculative "
                              f"decoding needs a draft with the target's tokenizer")
    if target_tokenizer is not None and draft_tokenizer is not None:
        tv, dv = target_tokenizer.backend.get_vocab(), draft_tokenizer.backend.get_vocab()
        if tv != dv:
            target_ids = {i: s for s, i in tv.items()}
            draft_ids = {i: s for s, i in dv.items()}
            i = min(i for i in set(target_ids) | set(draft_ids) if target_ids.get(i) != draft_ids.get(i))
            raise DraftModelError(f"the draft model's tokenizer differs from the target's at token id {i} "
                                  f"({draft_ids.get(i)!r} vs {target_ids.get(i)!r}): speculative decoding "
                                  f"needs a draft with the target's tokenizer")
    if target.device != draft.device:
        raise DraftModelError(f"the draft model is on {draft.device}, the target on {target.device}: put both "
                              f"on one device")


def check_params(params: SamplingParams, draft_tokens: int):
    if not (isinstance(draft_tokens, int) and not isinstance(draft_tokens, bool) and draft_tokens >= 1):
        raise InvalidParameterError(f"draft_tokens must be an integer >= 1, got {draft_tokens!r}")
    history = [name for name, on in (("repetition_penalty", params.repetition_penalty != 1.0),
                                     ("presence_penalty", params.presence_penalty),
                                     ("frequency_penalty", params.frequency_penalty),
                                     ("min_tokens", params.min_tokens)) if on]
    if history:
        raise InvalidParameterError(f"speculative decoding does not take {', '.join(history)} (they depend on "
                                    f"every earlier token, drafts included); decode without a draft model")


def distribution(sampler: Sampler, logits: torch.Tensor) -> torch.Tensor:
    """(T, V) raw logits -> what a token is chosen from: processed logits (greedy, argmax) or the
    probabilities after bias, temperature, min_p, top_k and top_p."""
    logits = sampler.process(logits)
    if torch.isnan(logits).any():
        raise SamplingError("the model produced NaN logits")
    if sampler.params.greedy:
        return logits
    return sampler.truncate(logits / sampler.params.temperature).softmax(-1)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """normalize(max(0, p - q)): what a token is drawn from after a rejection (p itself where p <= q
    everywhere, which a rejection rules out up to rounding)."""
    r = (p - q).clamp(min=0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), p)


def accept_rule(p: torch.Tensor, q: torch.Tensor, drafts: list[int], generator=None) -> tuple[int, int]:
    """The sampling check: p (k+1, V) target probabilities, q (k, V) draft probabilities, `drafts`
    the k tokens drawn from q. -> (accepted drafts, the next token from the target's side)."""
    k = len(drafts)
    ids = torch.tensor(drafts, device=p.device)
    rows = torch.arange(k, device=p.device)
    ratio = (p[rows, ids] / q[rows, ids]).clamp(max=1).tolist() if k else []
    draws = torch.rand(k, generator=generator, device=p.device).tolist() if k else []
    for i in range(k):
        if draws[i] >= ratio[i]:
            return i, int(torch.multinomial(residual(p[i], q[i]), 1, generator=generator))
    return k, int(torch.multinomial(p[k], 1, generator=generator))


def accept_greedy(p: torch.Tensor, drafts: list[int]) -> tuple[int, int]:
    """The greedy check: drafts kept while each equals the target's argmax; then the target's argmax."""
    best = p.argmax(-1).tolist()
    a = 0
    while a < len(drafts) and drafts[a] == best[a]:
        a += 1
    return a, best[a]


@torch.inference_mode()
def speculative_ids(target, draft, prompt: list[int], params: SamplingParams, draft_tokens: int = 4,
                    stop_token_ids: set[int] = frozenset(), stats: SpeculativeStats | None = None) -> Iterator[int]:
    """Yield the target's new token ids for one prompt, `draft` proposing `draft_tokens` per round.

    Stops after a stop token (yielded, as `generate_ids` does) or max_tokens. `stats` (if given)
    accumulates rounds, acceptance and the time spent in each model.
    """
    check_draft(target, draft)
    check_params(params, draft_tokens)
    if not prompt:
        raise InvalidParameterError("every prompt needs at least one token")
    positions = len(prompt) + params.max_tokens
    context = min(target.config.max_position_embeddings, draft.config.max_position_embeddings)
    if positions > context:
        raise ContextLengthError(f"prompt of {len(prompt)} tokens + max_tokens {params.max_tokens} exceeds the "
                                 f"context window of {context} tokens")
    stats = stats if stats is not None else SpeculativeStats()
    stats.draft_tokens = draft_tokens
    stops = (set() if params.ignore_eos else set(stop_token_ids)) | set(params.stop_token_ids)
    device = target.device
    sampler = Sampler(params, [prompt], target.config.vocab_size, device)
    target_cache, draft_cache = target.new_cache(1, positions), draft.new_cache(1, positions)
    start = stats.clock()
    if len(prompt) > 1:  # both caches hold every token but the last, which each round feeds in
        head = torch.tensor([prompt[:-1]], device=device)
        target(head, target_cache, last_only=True)
        draft(head, draft_cache, last_only=True)
    stats.prefill_s += stats.clock() - start
    tokens = list(prompt)

    def pick(dist: torch.Tensor) -> int:
        if params.greedy:
            return int(dist.argmax(-1))
        return int(torch.multinomial(dist, 1, generator=sampler.generator))

    generated = 0
    while True:
        k = min(draft_tokens, params.max_tokens - generated - 1)  # never draft past max_tokens
        drafts, qs = [], []
        start = stats.clock()
        feed = tokens[draft_cache.length:]  # the 1 or 2 kept tokens the draft has not seen
        for _ in range(k):
            logits = draft(torch.tensor([feed], device=device), draft_cache, last_only=True)[0]
            q = distribution(sampler, logits)[0]
            drafts.append(pick(q))
            qs.append(q)
            feed = drafts[-1:]
        stats.draft_s += stats.clock() - start
        stats.draft_calls += k
        start = stats.clock()
        logits = target(torch.tensor([tokens[-1:] + drafts], device=device), target_cache)[0]
        p = distribution(sampler, logits)
        if params.greedy:
            accepted, bonus = accept_greedy(p, drafts)
        else:
            accepted, bonus = accept_rule(p, torch.stack(qs) if qs else p[:0], drafts, sampler.generator)
        stats.verify_s += stats.clock() - start
        kept = len(tokens) + accepted  # positions both caches keep: every kept token but the new last
        target_cache.truncate(kept)
        draft_cache.truncate(min(kept, draft_cache.length))
        stats.rounds += 1
        stats.drafted += k
        stats.accepted += accepted
        stats.reached += accepted + (accepted < k)
        stats.accepted_per_round.append(accepted)
        for token in drafts[:accepted] + [bonus]:
            tokens.append(token)
            generated += 1
            yield token
            if token in stops or generated == params.max_tokens:
                return
