"""The backbone check: our engine equals transformers' LlamaForCausalLM on the same checkpoint."""

import pytest

pytest.importorskip("transformers")

from workbench.verify import DEFAULT_PROMPTS, verify  # noqa: E402


def test_bundled_model_matches_transformers():
    result = verify("smollm2-135m", prompts=DEFAULT_PROMPTS, new_tokens=64)
    assert result["max_abs_logit_diff"] <= 1e-3, result
    assert result["greedy_match"], result
    assert result["prompts"] >= 4 and result["passed"]


def test_random_config_matches_transformers():
    result = verify("tiny-random", new_tokens=32)
    assert result["passed"], result
