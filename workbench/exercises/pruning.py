"""Exercises of notebook 04 (pruning): the Wanda score of one matrix, a 2:4 mask, and the `mlp:0.25`
decode speed-up predicted from bytes."""

from __future__ import annotations

import math

import torch

from ..prune.masks import nm_mask, row_mask
from ..prune.wanda import wanda_scores
from .checking import Exercise, Verdict, bundled_config, call_answer, expect_close, expect_tensor_close


def _cases():
    g = torch.Generator().manual_seed(4)
    out = []
    for rows, cols, tokens in ((6, 8, 20), (3, 16, 5), (12, 4, 64)):
        x = torch.randn(tokens, cols, generator=g) * torch.logspace(0, 1.5, cols)   # some channels much louder
        out.append((torch.randn(rows, cols, generator=g), x))
    return out


def check_wanda_score(fn) -> Verdict:
    """`fn(W, X)`: weight W (out, in), calibration inputs X (tokens, in) -> scores (out, in),
    |W_ij| * ||X_:,j||_2."""
    for w, x in _cases():
        got, verdict = call_answer(fn, w.clone(), x.clone())
        if verdict is not None:
            return verdict
        rms = x.pow(2).mean(0).sqrt()   # what `collect_activations` records per input channel
        expected = wanda_scores(w, rms) * math.sqrt(x.shape[0])
        what = f"scores for W {tuple(w.shape)}, X {tuple(x.shape)}"
        v = expect_tensor_close(got, expected, what, rtol=1e-4, atol=1e-6,
                                hint="one norm per input channel j: over the tokens (dim 0 of X), then broadcast "
                                     "along the rows of |W|.")
        if not v:
            if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.allclose(
                    got.double() * math.sqrt(x.shape[0]), expected.double(), rtol=1e-4):
                return Verdict(False, f"{what}: off by a factor sqrt(tokens): you used the rms of each channel; "
                                      "the score uses its L2 norm (same ranking, different values).")
            return v
        if not torch.equal(row_mask(got, 0.5), row_mask(wanda_scores(w, rms), 0.5)):
            return Verdict(False, f"{what}: the values match but the 50% per-row mask does not (ties?).")
    return Verdict(True, "your scores match `workbench.prune.wanda.wanda_scores` (with L2 norms), and so do "
                         "the masks they give.")


def check_two_four_mask(fn) -> Verdict:
    """`fn(W)` -> boolean mask (out, in) keeping the 2 largest |w| of every 4 consecutive inputs of a row."""
    for w, _ in _cases():
        got, verdict = call_answer(fn, w.clone())
        if verdict is not None:
            return verdict
        if isinstance(got, torch.Tensor) and got.dtype != torch.bool:
            return Verdict(False, f"the mask should be a bool tensor (True = keep), got {got.dtype}.")
        v = expect_tensor_close(got, nm_mask(w.abs(), 2, 4), f"2:4 mask of W {tuple(w.shape)}",
                                hint="reshape each row into groups of 4 consecutive inputs, keep the top 2 |w| "
                                     "of each group (topk along the last dimension).")
        if not v:
            return v
    return Verdict(True, "your mask matches `workbench.prune.masks.nm_mask` on every test matrix.")


def mlp_speedup(fraction: float) -> float:
    """Decode speed-up from bytes when `fraction` of every layer's MLP channels go (float32, batch 1)."""
    cfg = bundled_config()
    total = cfg.num_parameters()
    mlp = cfg.num_hidden_layers * 3 * cfg.hidden_size * cfg.intermediate_size
    return total / (total - fraction * mlp)


def check_mlp_speedup(answer) -> Verdict:
    """The `mlp:0.25` decode speed-up over the dense model predicted from the bytes a token reads."""
    return expect_close(answer, mlp_speedup(0.25), "predicted mlp:0.25 speed-up", rel=0.005, unit="x",
                        hint="a quarter of the MLP's 3 x 576 x 1536 weights per layer go; attention, norms and "
                             "the tied output head are still read at every step.")


EXERCISES = [
    Exercise("wanda_score", check_wanda_score,
             solution=lambda: lambda w, x: w.abs() * x.norm(dim=0),
             wrong_answers=lambda: [lambda w, x: w.abs() * x.pow(2).mean(0).sqrt(), lambda w, x: w * x.norm(dim=0),
                                    lambda w, x: w.abs() * x.norm(dim=1)[: w.shape[1]], lambda w, x: w.abs(),
                                    lambda w, x: (w.abs() * x.norm(dim=0)).T]),
    Exercise("two_four_mask", check_two_four_mask,
             solution=lambda: lambda w: nm_mask(w.abs(), 2, 4),
             wrong_answers=lambda: [lambda w: row_mask(w.abs(), 0.5), lambda w: nm_mask(-w.abs(), 2, 4),
                                    lambda w: nm_mask(w, 2, 4), lambda w: w.abs() > w.abs().median()]),
    Exercise("mlp_speedup", check_mlp_speedup, solution=lambda: mlp_speedup(0.25),
             wrong_answers=lambda: [1 / 0.75, 1.25, mlp_speedup(0.5)]),
]
