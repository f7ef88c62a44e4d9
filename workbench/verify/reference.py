"""The reference implementation: transformers' `LlamaForCausalLM` on the same weights.

Our engine must agree with it (the project's backbone check). transformers is used here only as a
reference and for interop, never as the engine.
"""

from __future__ import annotations

import tempfile

import torch

from ..checkpoints import TINY_RANDOM, load_model, resolve, save_pretrained
from ..config import ModelConfig
from ..engine import SamplingParams, generate_ids

DEFAULT_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is a KV cache, in one sentence?<|im_end|>\n<|im_start|>assistant\n",
    "Quantization maps floating-point weights to a small set of integers so that",
)


def load_reference(name_or_path, model=None, tokenizer=None):
    """transformers' model (float32, eval) for the same checkpoint as ours."""
    from transformers import AutoModelForCausalLM

    if isinstance(name_or_path, ModelConfig) or name_or_path == TINY_RANDOM:
        # random weights exist only in our model: hand them over through a saved directory
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp, tokenizer)
            return AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    path = resolve(name_or_path)
    if path.is_dir():
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype=torch.float32).eval()


@torch.inference_mode()
def reference_greedy(ref, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation with transformers' own forward and KV cache (no stop tokens)."""
    x = torch.tensor([ids])
    out = ref(x, use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        nxt = out.logits[0, -1].argmax()
        tokens.append(int(nxt))
        out = ref(nxt.view(1, 1), past_key_values=out.past_key_values, use_cache=True)
    return tokens


@torch.inference_mode()
def verify(name_or_path="smollm2-135m", prompts=DEFAULT_PROMPTS, new_tokens: int = 64,
           tolerance: float = 1e-3) -> dict:
    """Compare our float32 model with transformers' on the same checkpoint.

    For each prompt: the max |logit difference| over every position of the prompt, and whether the
    greedy `new_tokens`-token continuations are identical token for token.
    """
    model, tokenizer = load_model(name_or_path, dtype=torch.float32)
    ref = load_reference(name_or_path, model, tokenizer)
    max_diff, matches, first_mismatch = 0.0, [], []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        ours = model(torch.tensor([ids]))
        theirs = ref(torch.tensor([ids])).logits
        max_diff = max(max_diff, (ours - theirs).abs().max().item())
        params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
        our_tokens = [step[0] for step in generate_ids(model, [ids], params)]
        ref_tokens = reference_greedy(ref, ids, new_tokens)
        matches.append(our_tokens == ref_tokens)
        first_mismatch.append(next((i for i, (a, b) in enumerate(zip(our_tokens, ref_tokens)) if a != b), None))
    return {
        "model": str(name_or_path) if not isinstance(name_or_path, ModelConfig) else "random-config",
        "max_abs_logit_diff": max_diff,
        "tolerance": tolerance,
        "greedy_match": all(matches),
        "greedy_tokens": new_tokens,
        "prompts": len(prompts),
        "per_prompt_greedy_match": matches,
        "first_mismatch_at": first_mismatch,
        "passed": max_diff <= tolerance and all(matches),
        "reference": "transformers LlamaForCausalLM, float32",
    }
