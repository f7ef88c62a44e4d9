"""ONNX Runtime against our engine on the same prompts: logits at every prompt position, greedy tokens.

Two runtimes add float32 products in different orders, so their logits differ in the last bits. The
check reports the largest |onnx - ours| over every prompt position and, for scale, the largest
difference between two paths of our own model (one pass over the prompt, and one token at a time
through its KV cache: `ours_paths_max_abs_diff`, about 1.3e-4 on the reference prompts with logits
up to 33). It passes at TOLERANCE = 2e-4; the share of logits within 1e-4 is reported too. The
exported graph run by torch equals our forward exactly (`graph_max_abs_diff`), so any difference
comes from the runtime's arithmetic. Greedy tokens must be identical, one prompt at a time and all
prompts in one left-padded batch.
"""

from __future__ import annotations

import torch

from ..engine import SamplingParams, generate_ids
from .graph import CachedLM

TOLERANCE = 2e-4


def ours_greedy(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Our engine's greedy continuations (stop tokens ignored), one list per prompt."""
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    return [list(row) for row in zip(*generate_ids(model, prompts, params))]


@torch.inference_mode()
def compare(runner, model, tokenizer, prompts, new_tokens: int = 16) -> dict:
    """Logit differences and greedy agreement of `runner` (an `OnnxRunner`) with `model` on `prompts` (text)."""
    ids = [tokenizer.encode(p) for p in prompts]
    c = model.config
    max_abs = graph_max = own = 0.0
    within = total = 0
    for row in ids:
        x = torch.tensor([row])
        ours = model(x)
        past = [torch.zeros(1, c.num_key_value_heads, 0, c.head_dim) for _ in range(2 * c.num_hidden_layers)]
        graph = CachedLM(model)(x, torch.ones_like(x), *past)[0]
        cache = model.new_cache(1, len(row))
        stepwise = torch.cat([model(x[:, i:i + 1], cache) for i in range(len(row))], dim=1)
        diff = (runner(x) - ours).abs()
        max_abs = max(max_abs, diff.max().item())
        within, total = within + int((diff <= 1e-4).sum()), total + diff.numel()
        graph_max = max(graph_max, (graph - ours).abs().max().item())
        own = max(own, (stepwise - ours).abs().max().item())
    ours_alone = [ours_greedy(model, [row], new_tokens)[0] for row in ids]
    onnx_alone = [runner.generate([row], new_tokens)[0] for row in ids]
    ours_batch, onnx_batch = ours_greedy(model, ids, new_tokens), runner.generate(ids, new_tokens)
    return {
        "prompts": len(ids), "new_tokens": new_tokens, "max_abs_logit_diff": max_abs, "tolerance": TOLERANCE,
        "logits_close": max_abs <= TOLERANCE, "share_within_1e-4": within / total, "graph_max_abs_diff": graph_max,
        "ours_paths_max_abs_diff": own,
        "greedy_match": onnx_alone == ours_alone, "batch_greedy_match": onnx_batch == ours_batch,
        "onnx_tokens": onnx_alone, "ours_tokens": ours_alone,
    }
