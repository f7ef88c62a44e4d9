"""Recovery fine-tuning: a short next-token training run that lets the weights left after pruning
make up for the ones removed.

Masks are kept: every decoder matrix's zero pattern is recorded before training, gradients of pruned
weights are zeroed, and the mask is applied again after every optimizer step (AdamW's weight decay
and moments would otherwise revive them), so an unstructured or N:M model stays exactly as sparse.
A structurally pruned model has nothing to mask (its matrices are just smaller).

Data: random windows of `seq_len` tokens from the calibration text (default: the built-in
calibration part, which never overlaps the evaluation part that perplexity is measured on).
The token embedding (tied to the output head) and the norms stay frozen: training only the decoder
matrices is cheaper and keeps the 28M-parameter embedding that every token reads intact.
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from ..corpus import builtin_text
from ..errors import InvalidParameterError
from .masks import decoder_linears


def recover(model, tokenizer, *, steps: int = 200, lr: float = 1e-4, seq_len: int = 256, batch_size: int = 2,
            text=None, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Fine-tune the decoder matrices of `model` in place for `steps` steps; returns a DataFrame of
    (step, loss). Zeros of the pruned matrices stay zero (see the module docstring)."""
    for name, value in (("steps", steps), ("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise InvalidParameterError(f"lr must be positive, got {lr!r}")
    if text is None:
        text = builtin_text("calibration")
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False) if isinstance(text, str) else list(text))
    seq_len = min(seq_len, model.config.max_position_embeddings)
    if ids.numel() <= seq_len:
        raise InvalidParameterError(f"recovery text has {ids.numel()} tokens; more than seq_len={seq_len} needed")

    linears = list(decoder_linears(model).values())
    masks = [m.weight.detach() != 0 for m in linears]
    params = [m.weight for m in linears]
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    g = torch.Generator().manual_seed(seed)
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="recovery", unit="step")
    losses = []
    was_training = model.training
    model.train()
    try:
        for step in iterator:
            starts = torch.randint(0, ids.numel() - seq_len, (batch_size,), generator=g)
            batch = torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()]).to(model.device)
            logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p, mask in zip(params, masks):
                p.grad.mul_(mask)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                for p, mask in zip(params, masks):
                    p.mul_(mask)
            losses.append({"step": step + 1, "loss": loss.item()})
            if progress:
                iterator.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        model.train(was_training)
        for p, flag in frozen:
            p.requires_grad_(flag)
    return pd.DataFrame(losses)
