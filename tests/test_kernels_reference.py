"""The backbone check with our kernels on: decoding one token at a time (every product on the kernel)
still equals transformers' LlamaForCausalLM to 1e-3 in the logits, with the same greedy tokens."""

import copy

import pytest
import torch

pytest.importorskip("transformers")

from workbench import kernels  # noqa: E402
from workbench.engine import SamplingParams, generate_ids  # noqa: E402
from workbench.verify import DEFAULT_PROMPTS, load_reference, reference_greedy  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    return load_reference("smollm2-135m")


@torch.inference_mode()
def stepwise_logits(model, ids):
    """Logits of every prompt position, computed one token per forward call (x has one row)."""
    cache = model.new_cache(1, len(ids))
    return torch.cat([model(torch.tensor([[t]]), cache)[0] for t in ids])


@torch.inference_mode()
def test_decoding_on_kernels_matches_transformers(model_and_tokenizer, reference):
    if not kernels.available():
        pytest.skip(f"kernels unavailable: {kernels.status()['reason']}")
    base, tokenizer = model_and_tokenizer
    model = kernels.enable(copy.deepcopy(base))
    assert kernels.in_use(model)
    diffs = {}
    for prompt in DEFAULT_PROMPTS[:2]:
        ids = tokenizer.encode(prompt)
        theirs = reference(torch.tensor([ids])).logits[0]
        ours = stepwise_logits(model, ids)
        with kernels.disabled():
            plain = stepwise_logits(model, ids)
        diffs[prompt] = ((ours - theirs).abs().max().item(), (plain - theirs).abs().max().item())
        assert diffs[prompt][0] <= 1e-3, diffs
        params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
        assert [s[0] for s in generate_ids(model, [ids], params)] == reference_greedy(reference, ids, 32)
    print("max |logit diff| vs transformers (kernels, PyTorch):", diffs)
