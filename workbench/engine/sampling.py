"""Sampling settings (vLLM-style `SamplingParams`) and the sampler that applies them.

The sampler turns a row of the model's logits into the next token in vLLM's order:
logit bias and min_tokens (stop tokens masked), then penalties (repetition on prompt + output,
presence and frequency on output tokens), then greedy argmax, or temperature, min_p, top_k, top_p
and a draw. Logprobs returned to the caller are `log_softmax` of the model's raw logits, before
any of this processing (as vLLM returns them by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import InvalidParameterError

MAX_LOGPROBS = 20


@dataclass
class SamplingParams:
    """How to pick each next token. `temperature == 0` is greedy (argmax), and ignores top_k/top_p/min_p.

    - n: independent choices for the same prompt (the prompt is computed once; see `Engine`).
    - top_k: keep the k most likely tokens (0: all). top_p: keep the smallest set of tokens whose
      probability sums to at least p (1.0: all). min_p: keep tokens with p >= min_p * p_max (0: off).
    - repetition_penalty: divide positive logits (multiply negative ones) of tokens already in the
      prompt or output by this factor (1.0: off), as in CTRL / Hugging Face.
    - presence_penalty / frequency_penalty: subtract presence once, frequency once per occurrence,
      from the logit of every token already in the output (OpenAI's definition; 0: off).
    - logit_bias: token id -> value added to its logit (ids are checked against the vocabulary
      when the request is added).
    - max_tokens: new tokens at most. min_tokens: stop tokens, EOS and stop strings are ignored
      until this many tokens were generated.
    - stop: strings that end the output (not included in it unless include_stop_str_in_output).
      stop_token_ids: extra token ids that end it (never included).
    - logprobs: None (off) or k in 0..20: each new token's logprob plus the k most likely.
    - seed: makes sampling reproducible (choice i of a request with n > 1 uses seed + i).
      ignore_eos: keep going past end-of-sequence tokens (stop_token_ids still stop).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    max_tokens: int = 128
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    n: int = 1
    logprobs: int | None = None
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self):
        if self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop) if isinstance(self.stop, (list, tuple)) else self.stop
        self.stop_token_ids = (list(self.stop_token_ids) if isinstance(self.stop_token_ids, (list, tuple, set))
                               else self.stop_token_ids)
        if self.logit_bias is not None and isinstance(self.logit_bias, dict):
            self.logit_bias = {_token_key(k): v for k, v in self.logit_bias.items()}
        checks = [
            (_number(self.temperature) and self.temperature >= 0,
             f"temperature must be >= 0, got {self.temperature!r}"),
            (_integer(self.top_k) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}"),
            (_number(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (_number(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}"),
            (_number(self.repetition_penalty) and self.repetition_penalty > 0,
             f"repetition_penalty must be > 0, got {self.repetition_penalty!r}"),
            (_number(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty!r}"),
            (_number(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty!r}"),
            (_integer(self.max_tokens) and self.max_tokens >= 1,
             f"max_tokens must be an integer >= 1, got {self.max_tokens!r}"),
            (_integer(self.min_tokens) and 0 <= self.min_tokens,
             f"min_tokens must be an integer >= 0, got {self.min_tokens!r}"),
            (isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
             "stop must hold non-empty strings"),
            (isinstance(self.stop_token_ids, list) and all(_integer(t) and t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids must be a list of token ids >= 0, got {self.stop_token_ids!r}"),
            (_integer(self.n) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}"),
            (self.logprobs is None or (_integer(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
             f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}"),
            (self.seed is None or _integer(self.seed), f"seed must be None or an integer, got {self.seed!r}"),
            (self.logit_bias is None or isinstance(self.logit_bias, dict),
             f"logit_bias must be a dict of token id -> bias, got {type(self.logit_bias).__name__}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidParameterError(message)
        if self.min_tokens > self.max_tokens:
            raise InvalidParameterError(f"min_tokens ({self.min_tokens}) must be <= max_tokens ({self.max_tokens})")
        for token, bias in (self.logit_bias or {}).items():
            if not (_integer(token) and token >= 0):
                raise InvalidParameterError(f"logit_bias keys must be token ids >= 0, got {token!r}")
            if not (_number(bias) and -100 <= bias <= 100):
                raise InvalidParameterError(f"logit_bias values must be in [-100, 100], got {bias!r} for token {token}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def processes_logits(self) -> bool:
        """Whether anything but the temperature touches the logits (else greedy is a plain argmax)."""
        return bool(self.repetition_penalty != 1.0 or self.presence_penalty or self.frequency_penalty
                    or self.logit_bias or self.min_tokens)

    def check_vocabulary(self, vocab_size: int):
        """Token ids in logit_bias and stop_token_ids must exist in the model's vocabulary."""
        for name, ids in (("logit_bias", self.logit_bias or {}), ("stop_token_ids", self.stop_token_ids)):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise InvalidParameterError(f"{name} holds token id {bad[0]}, outside the vocabulary of {vocab_size}")


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _token_key(key):
    """JSON object keys are strings: accept "42" for token 42."""
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return key


def nan_rows(logits: torch.Tensor, argmax: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool: the rows of (B, V) `logits` that hold a NaN. Given their argmax, only the picked
    logits are read: argmax propagates NaN (it picks one wherever a row holds one)."""
    if argmax is None:
        return torch.isnan(logits).any(-1)
    return torch.isnan(logits.gather(-1, argmax[:, None]))[:, 0]


class SamplingError(RuntimeError):
    """The logits of one sequence cannot be sampled (NaN); the engine fails that request alone."""


class Sampler:
    """Picks the next token for a batch (one row per sequence); keeps what the penalties need.

    `stop_ids`: tokens masked while fewer than min_tokens were generated (EOS and stop_token_ids).
    """

    def __init__(self, params: SamplingParams, prompts: list[list[int]], vocab_size: int, device,
                 stop_ids=(), seed: int | None = None):
        self.params = params
        self.vocab_size = vocab_size
        self.num_generated = 0
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            seed = params.seed if seed is None else seed
            if seed is not None:
                self.generator.manual_seed(seed)
            else:
                self.generator.seed()
        rows = len(prompts)
        self.seen = self.counts = self.bias = self.stop_mask = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(rows, vocab_size, dtype=torch.bool, device=device)
            for row, ids in enumerate(prompts):
                self.seen[row, torch.tensor(ids, dtype=torch.long, device=device)] = True
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(rows, vocab_size, dtype=torch.float32, device=device)
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=device)
            self.bias[ids] = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32, device=device)
        stops = sorted(t for t in stop_ids if 0 <= t < vocab_size)
        if params.min_tokens and stops:
            self.stop_mask = torch.tensor(stops, dtype=torch.long, device=device)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) raw logits -> the logits greedy argmax picks from (before temperature and truncation)."""
        p = self.params
        logits = logits.float()
        if self.bias is not None:
            logits = logits + self.bias
        if self.stop_mask is not None and self.num_generated < p.min_tokens:
            logits = logits.index_fill(-1, self.stop_mask, float("-inf"))
        if self.seen is not None:
            penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(self.seen, penalised, logits)
        if self.counts is not None:
            logits = logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0)
        return logits

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) token ids. Raises SamplingError on NaN logits."""
        p = self.params
        logits = self.process(logits)
        if p.greedy:
            tokens = logits.argmax(-1)
        if nan_rows(logits, tokens if p.greedy else None).any():
            raise SamplingError("the model produced NaN logits")
        if not p.greedy:
            tokens = self._sample(logits / p.temperature)
        self.record(tokens)
        return tokens

    def record(self, tokens: torch.Tensor):
        """Note sampled tokens (B,) for the penalties and min_tokens."""
        self.num_generated += 1
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        if self.counts is not None:
            self.counts.scatter_add_(1, tokens[:, None], torch.ones(len(tokens), 1, device=self.counts.device))

    def truncate(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled logits -> -inf outside min_p, top_k and top_p."""
        p = self.params
        if p.min_p > 0:
            probs = logits.softmax(-1)
            logits = logits.masked_fill(probs < p.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
        if 0 < p.top_k < logits.shape[-1]:
            kth = logits.topk(p.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # drop a token when the tokens ranked above it already reach top_p
            drop = probs.cumsum(-1) - probs >= p.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        return logits

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        probs = self.truncate(logits).softmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


@dataclass
class TokenLogprob:
    """A generated token's log-probability and the `top` most likely (id, logprob), best first.

    Log-probabilities are `log_softmax` of the model's raw logits for that position, before
    penalties, bias, temperature or truncation (what vLLM returns by default).
    """
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, tokens: list[int], k: list[int]) -> list[TokenLogprob]:
    """(B, V) raw logits, the B chosen tokens and how many alternatives each wants."""
    logp = torch.log_softmax(logits.float(), -1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
    widest = max(k, default=0)
    top_v, top_i = (logp.topk(widest, -1) if widest else (logp[:, :0], logp[:, :0].long()))
    top_v, top_i = top_v.tolist(), top_i.tolist()
    return [TokenLogprob(t, c, list(zip(top_i[r][:k[r]], top_v[r][:k[r]])))
            for r, (t, c) in enumerate(zip(tokens, chosen))]
