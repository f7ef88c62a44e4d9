"""Calibration sets: which text a calibrated method learns from, named by one spec parsed here.

A spec (`--calib SPEC` on the command line, `calib=SPEC` in Python) is one or more parts joined by
"+", each `SOURCE[:TOKENS]`:

    builtin        the calibration part of the built-in corpus (the default everywhere)
    licenses       the calibration part of another named corpus (any name in `corpus.CORPORA`)
    generated      text the model samples itself from a few neutral prompts (seeded, cached on disk):
                   a remedy when no representative text is at hand, and drawn from no corpus
    file:PATH      a UTF-8 file of the user's (PATH may hold ':'; only a final ':TOKENS' is a count)

TOKENS is an integer, or one with a k suffix (2k = 2048). A part without a count takes an equal
share of the method's default size (GPTQ's 2,048: `builtin+generated` is 1,024 tokens of each).
Examples: `builtin:2048`, `generated:2k`, `file:notes.txt:1024`, `builtin:1024+generated:1024`.

`calibration_token_ids` is the one place every calibrated method (GPTQ, AWQ, SmoothQuant, Wanda,
SparseGPT, structured pruning, sensitivity scans) draws its tokens from. A counted part must give
all its tokens (a short file is an error, not a silently smaller set); an uncounted one gives what
it has up to its share. The model is passed in, never imported: this room sits below the model.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import torch

from ..errors import CalibrationSpecError
from ..io import atomic_write_json
from ..settings import cache_root

GENERATED = "generated"
FILE = "file"
# Neutral openings: no domain of their own, so the model's own distribution fills the text.
PROMPTS = ("The", "In", "A", "When", "It", "One", "This", "There")
SEQUENCE_TOKENS = 256  # new tokens per prompt and round
TOP_P = 0.95
GENERATOR_VERSION = 1  # part of the cache key: bump when the sampling changes
_COUNT = re.compile(r"^(\d+)(k?)$")


def _sources() -> tuple[str, ...]:
    from . import CORPORA

    return (*CORPORA, GENERATED, f"{FILE}:PATH")


@dataclass(frozen=True)
class CalibrationPart:
    source: str             # a corpus name, "generated" or "file"
    tokens: int | None = None
    path: str | None = None  # for "file"

    def __str__(self):
        head = f"{FILE}:{self.path}" if self.source == FILE else self.source
        return head if self.tokens is None else f"{head}:{self.tokens}"


@dataclass(frozen=True)
class CalibrationSet:
    parts: tuple[CalibrationPart, ...]

    def __str__(self):
        return "+".join(str(p) for p in self.parts)

    @property
    def needs_model(self) -> bool:
        return any(p.source == GENERATED for p in self.parts)

    def shares(self, default_tokens: int) -> list[int]:
        """Tokens each part is asked for: its count, or an equal share of what the counts leave."""
        open_parts = [p for p in self.parts if p.tokens is None]
        share = max(1, default_tokens // len(open_parts)) if open_parts else 0
        return [p.tokens if p.tokens is not None else share for p in self.parts]


def _count(text: str, part: str) -> int:
    m = _COUNT.match(text)
    if not m or int(m.group(1)) < 1:
        raise CalibrationSpecError(f"calibration part {part!r}: token count {text!r} is not a positive integer "
                                   "(e.g. 2048 or 2k)")
    return int(m.group(1)) * (1024 if m.group(2) else 1)


def _parse_part(text: str) -> CalibrationPart:
    from . import CORPORA

    if not text:
        raise CalibrationSpecError("empty calibration part (parts are joined by '+', e.g. builtin:1024+generated:1024)")
    if text == FILE or text.startswith(FILE + ":"):
        rest = text[len(FILE) + 1:]
        path, sep, tail = rest.rpartition(":")
        tokens = None
        if sep and _COUNT.match(tail):
            tokens = _count(tail, text)
        else:
            path = rest
        if not path:
            raise CalibrationSpecError(f"calibration part {text!r} names no file (write file:PATH or file:PATH:TOKENS)")
        return CalibrationPart(FILE, tokens, path)
    name, sep, tail = text.partition(":")
    if name not in CORPORA and name != GENERATED:
        raise CalibrationSpecError(f"unknown calibration source {name!r} (accepted: {', '.join(_sources())}; "
                                   "e.g. builtin:2048 or builtin:1024+generated:1024)")
    if sep and not tail:
        raise CalibrationSpecError(f"calibration part {text!r}: a ':' must be followed by a token count "
                                   "(e.g. builtin:2048)")
    return CalibrationPart(name, _count(tail, text) if sep else None)


def parse_calibration(spec) -> CalibrationSet:
    """A `CalibrationSet` from a spec string (None: the built-in calibration part); a set passes through."""
    if isinstance(spec, CalibrationSet):
        return spec
    if spec is None:
        spec = "builtin"
    if not isinstance(spec, str) or not spec.strip():
        raise CalibrationSpecError(f"calibration spec must be a non-empty string, got {spec!r} "
                                   f"(accepted sources: {', '.join(_sources())})")
    return CalibrationSet(tuple(_parse_part(p.strip()) for p in spec.strip().split("+")))


def _part_ids(part: CalibrationPart, tokens: int, tokenizer, model, seed: int) -> list[int]:
    from . import corpus_text, load_text

    if part.source == GENERATED:
        if model is None:
            raise CalibrationSpecError("calibration part 'generated' needs the model that writes it (pass model=...)")
        return generated_token_ids(model, tokenizer, tokens, seed=seed)
    text = load_text(part.path) if part.source == FILE else corpus_text(part.source, "calibration")
    return tokenizer.encode(text, add_special_tokens=False)[:tokens]


def calibration_token_ids(spec, tokenizer, *, model=None, default_tokens: int = 2048, seed: int = 0) -> list[int]:
    """The token ids of calibration set `spec` (a string, a `CalibrationSet` or None for "builtin"),
    its parts in order. `model` writes the "generated" parts (sampled with `seed`)."""
    calib = parse_calibration(spec)
    if tokenizer is None:
        raise CalibrationSpecError(f"calibration set {str(calib)!r} needs the tokenizer to read it (pass tokenizer=...)")
    ids = []
    for part, want in zip(calib.parts, calib.shares(default_tokens)):
        got = _part_ids(part, want, tokenizer, model, seed)
        if part.tokens is not None and len(got) < want:
            raise CalibrationSpecError(f"calibration part {str(part)!r} gives only {len(got)} tokens of the "
                                       f"{want} asked (ask for fewer, or give more text)")
        ids.extend(got)
    return ids


# ------------------------------------------------------------------------------------------------ generated

def _fingerprint(model) -> str:
    """What the generated text depends on: the configuration and every stored tensor (its name, shape
    and the exact values of a strided sample: pruning or quantizing changes them; summing all 135M
    weights would take seconds)."""
    h = hashlib.sha256(json.dumps(model.config.to_hf_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().reshape(-1)[::251].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _sample(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Nucleus sampling at temperature 1 (top-p 0.95), one token per row."""
    probs = torch.softmax(logits.float(), -1)
    sorted_p, order = probs.sort(-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < TOP_P
    sorted_p = sorted_p * keep
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, pick)


@torch.no_grad()
def _generate(model, tokenizer, tokens: int, seed: int) -> list[int]:
    eos = tokenizer.eos_token_id
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    by_length: dict[int, list[list[int]]] = {}
    for p in prompts:  # equal-length prompts share a batch: no padding needed
        by_length.setdefault(len(p), []).append(p)
    new = min(SEQUENCE_TOKENS, max(8, -(-tokens // len(prompts))))
    out: list[int] = []
    round_ = 0
    while len(out) < tokens:
        for length, group in sorted(by_length.items()):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + round_ * 1009 + length)
            cache = model.new_cache(len(group), length + new)
            seqs = torch.tensor(group, dtype=torch.long, device=model.device)
            logits = model(seqs, cache=cache, last_only=True)[:, -1]
            steps = []
            for _ in range(new):
                nxt = _sample(logits.cpu(), generator)
                steps.append(nxt)
                logits = model(nxt.to(model.device), cache=cache, last_only=True)[:, -1]
            generated = torch.cat(steps, 1).tolist()
            for prompt, cont in zip(group, generated):
                if eos is not None and eos in cont:
                    cont = cont[:cont.index(eos)]
                out.extend(prompt + cont + ([eos] if eos is not None else []))
        round_ += 1
    return out[:tokens]


def generated_token_ids(model, tokenizer, tokens: int, *, seed: int = 0, cache: bool = True) -> list[int]:
    """`tokens` ids of text `model` writes from `PROMPTS` (nucleus sampling, seeded: the same model,
    seed and size give the same ids). Read from and written to the cache root, keyed by the model's
    weights, the seed, the size and the sampling, since sampling thousands of tokens takes a while."""
    key = json.dumps({"model": _fingerprint(model), "tokens": tokens, "seed": seed, "prompts": PROMPTS,
                      "sequence": SEQUENCE_TOKENS, "top_p": TOP_P, "version": GENERATOR_VERSION}, sort_keys=True)
    file = cache_root() / "calibration" / f"generated-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cache and file.is_file():
        try:
            return [int(i) for i in json.loads(file.read_text())["ids"]]
        except (ValueError, KeyError):
            pass  # a damaged cache file is written again
    ids = _generate(model, tokenizer, tokens, seed)
    if cache:
        atomic_write_json(file, {"key": json.loads(key), "ids": ids, "text": tokenizer.decode(ids)})
    return ids
