"""Training data for distillation: token ids cut into fixed-length windows, read in a seeded order.

Sources: the built-in corpus's *train* part (never its evaluation part; see `workbench.corpus`),
the user's UTF-8 text files, or text the teacher writes itself (sequence-level distillation).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..engine import SamplingParams, generate_ids
from ..errors import EmptyTextError
from ..corpus import builtin_text, load_text

BUILTIN = "builtin"


def training_ids(tokenizer, source: str | Path | list = BUILTIN) -> list[int]:
    """Token ids (no special tokens) of "builtin" (the corpus's train part), a text file, or a list of
    files (joined with an end-of-sequence token, so no document runs into the next)."""
    sources = source if isinstance(source, (list, tuple)) else [source]
    if not sources:
        raise EmptyTextError("no training text given (accepted: 'builtin' or UTF-8 text files)")
    ids: list[int] = []
    for item in sources:
        text = builtin_text("train") if str(item) == BUILTIN else load_text(item)
        if ids and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
    return ids


def teacher_written_ids(teacher, tokenizer, prompt_ids: list[int], *, samples: int = 8, prompt_tokens: int = 32,
                        new_tokens: int = 128, temperature: float = 1.0, seed: int = 0) -> list[int]:
    """Sequence-level distillation data: the teacher continues `samples` prompts cut from `prompt_ids`
    (evenly spread over them), sampling at `temperature`; prompt + continuation pairs are joined with
    an end-of-sequence token. Training on them teaches the student what the teacher *writes*."""
    if len(prompt_ids) < samples * prompt_tokens:
        raise EmptyTextError(f"{samples} prompts of {prompt_tokens} tokens need {samples * prompt_tokens} tokens "
                             f"of text, got {len(prompt_ids)}")
    stride = len(prompt_ids) // samples
    prompts = [prompt_ids[i * stride:i * stride + prompt_tokens] for i in range(samples)]
    params = SamplingParams(temperature=temperature, max_tokens=new_tokens, seed=seed, ignore_eos=True)
    continuations = [[] for _ in prompts]
    for step in generate_ids(teacher, prompts, params):
        for row, token in enumerate(step):
            continuations[row].append(token)
    ids: list[int] = []
    for prompt, continuation in zip(prompts, continuations):
        ids.extend(prompt + continuation + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
    return ids


def fingerprint(ids: list[int]) -> str:
    """A short hash of the token ids: a resumed run checks it trains on the same data."""
    return hashlib.sha256(torch.tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()[:16]


class TrainingWindows:
    """Non-overlapping windows of `seq_len` tokens, served `batch_size` at a time in a seeded order.

    Batch number k is a pure function of (ids, seq_len, batch_size, seed, k): each epoch draws its
    own permutation from a generator seeded with (seed, epoch), so a resumed run that knows how many
    batches it has read gets exactly the batches an uninterrupted run would have.
    """

    def __init__(self, ids: list[int], seq_len: int, batch_size: int, seed: int = 0):
        count = len(ids) // seq_len
        if count < batch_size:
            raise EmptyTextError(f"training text of {len(ids)} tokens makes {count} window(s) of {seq_len} tokens; "
                                 f"a batch needs {batch_size} (give more text, or a smaller seq_len / batch_size)")
        self.data = torch.tensor(ids[:count * seq_len], dtype=torch.long).view(count, seq_len)
        self.batch_size, self.seed = batch_size, seed
        self.per_epoch = count // batch_size  # a last partial batch is left out: every batch is full

    def __getitem__(self, k: int) -> torch.Tensor:
        epoch, index = divmod(k, self.per_epoch)
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return self.data[order[index * self.batch_size:(index + 1) * self.batch_size]]
