"""Calibration: run text through a model and record what each linear layer sees at its input.

Quantizing activations (W8A8, SmoothQuant, AWQ...) needs their ranges *before* deployment, so they are
measured once on a small representative text: the calibration set. `collect_activations` does that
with forward pre-hooks on every `nn.Linear` (or `QuantizedLinear`) of the model:

    for each window of `window` tokens of the text (non-overlapping, the first `max_tokens` tokens):
        one forward pass; each hooked layer sees its input X of shape (tokens, in_features)
        abs_max[c]  = max over tokens of |X[t, c]|      per input channel c, running max
        abs_mean[c] = mean over tokens of |X[t, c]|     per input channel c, running mean
        sample      = the full rows X[t, :] of a fixed random subset of token positions t

The sample keeps whole token vectors (not scattered scalars) so that any granularity can be studied
on it afterwards: per tensor, per token (rows), per input channel (columns), per group of channels.
Its token positions are drawn once, seeded, and are the same for every layer; its size is bounded
by `sample_tokens` whatever the text length. Hooks are always removed, even if a forward fails.

The default text is the calibration half of the built-in corpus (`builtin_text("calibration")`),
which never overlaps the evaluation half that perplexity is measured on.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from ..corpus import calibration_token_ids
from ..errors import EmptyTextError, InvalidParameterError
from .linear import QuantizedLinear
from .math import excess_kurtosis

MIN_TOKENS = 16


@dataclass
class ActivationStats:
    """What one linear layer saw at its input during calibration.

    abs_max   (in_features,) float32: max |x| per input channel over every calibration token
    abs_mean  (in_features,) float32: mean |x| per input channel
    sample    (sample_tokens, in_features) float32: the input rows of a seeded random subset of tokens
    tokens    how many token positions the layer saw
    rms       (in_features,) float32: sqrt(mean x^2) per input channel (Wanda's norm, up to sqrt(tokens))
    """

    name: str
    abs_max: torch.Tensor
    abs_mean: torch.Tensor
    sample: torch.Tensor
    tokens: int
    rms: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.abs_max.numel()

    def outlier_ratio(self) -> float:
        """Largest channel abs max over the median channel abs max: how far the strongest channel sits out."""
        median = float(self.abs_max.median())
        return float(self.abs_max.max()) / median if median > 0 else float("nan")

    def top_channels(self, top: int = 5) -> pd.DataFrame:
        """The input channels with the largest abs max, and how many times the median channel's each is."""
        median = float(self.abs_max.median())
        values, channels = self.abs_max.topk(min(top, self.in_features))
        return pd.DataFrame({"channel": channels.tolist(), "abs_max": values.tolist(),
                             "x_median": (values / median).tolist() if median > 0 else [float("nan")] * len(values)})


def _select_layers(model: nn.Module, layers) -> dict[str, nn.Module]:
    """Linear (or quantized linear) modules of `model`, filtered by names or glob patterns."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear))}
    if layers is None:
        return linears
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen = {}
    for pattern in patterns:
        matched = [n for n in linears if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            examples = ", ".join(list(linears)[:3])
            raise InvalidParameterError(f"no linear layer matches {pattern!r} (names look like {examples}; "
                                        "glob patterns such as 'model.layers.3.*' are accepted)")
        chosen.update((n, linears[n]) for n in matched)
    return {n: linears[n] for n in linears if n in chosen}  # model order


@torch.no_grad()
def collect_activations(model, tokenizer, text: str | None = None, *, max_tokens: int = 2048, window: int = 512,
                        layers=None, sample_tokens: int = 128, seed: int = 0) -> dict[str, ActivationStats]:
    """Per-layer input statistics over calibration text: {layer name: `ActivationStats`}.

    `text` (a string or token ids) defaults to the built-in calibration text; a string is tokenized
    without special tokens; the ids are cut
    to its first `max_tokens` tokens, which run in non-overlapping windows of `window` tokens (the
    last one may be shorter, a text shorter than one window runs as a single window, and a window
    longer than the model's context is cut to the context). `layers` is None (every linear layer,
    the output head included) or layer names / glob patterns such as ``"model.layers.0.*"`` or
    ``["*.q_proj", "*.down_proj"]``. `sample_tokens` bounds the token rows kept per layer for
    histograms and observer studies (the same positions for every layer, drawn with `seed`).

    Raises `EmptyTextError` when the text gives fewer than 16 tokens.
    """
    if not isinstance(window, int) or window < 2:
        raise InvalidParameterError(f"window must be an integer of at least 2 tokens, got {window!r}")
    window = min(window, model.config.max_position_embeddings)
    if not isinstance(max_tokens, int) or max_tokens < MIN_TOKENS:
        raise InvalidParameterError(f"max_tokens must be an integer of at least {MIN_TOKENS}, got {max_tokens!r}")
    if not isinstance(sample_tokens, int) or sample_tokens < 1:
        raise InvalidParameterError(f"sample_tokens must be a positive integer, got {sample_tokens!r}")
    if text is None:
        ids = calibration_token_ids("builtin", tokenizer, default_tokens=max_tokens)
    elif isinstance(text, str):
        ids = tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
    else:
        ids = [int(i) for i in text][:max_tokens]
    if len(ids) < MIN_TOKENS:
        raise EmptyTextError(f"calibration text too short: it gives {len(ids)} tokens, at least {MIN_TOKENS} "
                             "are needed (pass more text, or text=None for the built-in calibration text)")
    modules = _select_layers(model, layers)

    n = len(ids)
    g = torch.Generator().manual_seed(seed)
    sampled = torch.randperm(n, generator=g)[:min(sample_tokens, n)].sort().values  # global token positions
    state = {"start": 0, "end": 0}
    acc: dict[str, dict] = {}

    def make_hook(name, in_features):
        acc[name] = {"abs_max": torch.zeros(in_features), "abs_sum": torch.zeros(in_features, dtype=torch.float64),
                     "sq_sum": torch.zeros(in_features, dtype=torch.float64), "rows": [], "tokens": 0}

        def hook(module, args):
            x = args[0].detach().reshape(-1, in_features).float().cpu()
            a = acc[name]
            ax = x.abs()
            torch.maximum(a["abs_max"], ax.amax(0), out=a["abs_max"])
            a["abs_sum"] += ax.sum(0, dtype=torch.float64)
            a["sq_sum"] += ax.double().pow(2).sum(0)
            a["tokens"] += x.shape[0]
            lo, hi = state["start"], state["end"]
            local = sampled[(sampled >= lo) & (sampled < hi)] - lo
            if local.numel():
                a["rows"].append(x[local].clone())

        return hook

    handles = []
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(make_hook(name, module.in_features)))
        data = torch.tensor(ids, dtype=torch.long)
        for start in range(0, n, window):
            chunk = data[start:start + window]
            state["start"], state["end"] = start, start + chunk.numel()
            model(chunk.unsqueeze(0).to(model.device))
    finally:
        for h in handles:
            h.remove()

    out = {}
    for name, a in acc.items():
        in_features = a["abs_max"].numel()
        sample = torch.cat(a["rows"]) if a["rows"] else torch.zeros(0, in_features)
        tokens = max(a["tokens"], 1)
        out[name] = ActivationStats(name=name, abs_max=a["abs_max"], abs_mean=(a["abs_sum"] / tokens).float(),
                                    sample=sample, tokens=a["tokens"], rms=(a["sq_sum"] / tokens).sqrt().float())
    return out


def activation_summary(stats: dict[str, ActivationStats]) -> pd.DataFrame:
    """One row per layer: tokens, max |x|, median channel abs max, their ratio, the strongest channel,
    and the excess kurtosis of the sampled values (0 for a Gaussian, large for heavy tails)."""
    rows = []
    for name, s in stats.items():
        rows.append({"name": name, "in_features": s.in_features, "tokens": s.tokens,
                     "max_abs": float(s.abs_max.max()), "median_channel_max": float(s.abs_max.median()),
                     "outlier_ratio": s.outlier_ratio(), "top_channel": int(s.abs_max.argmax()),
                     "kurtosis": excess_kurtosis(s.sample) if s.sample.numel() > 1 else float("nan")})
    return pd.DataFrame(rows)
