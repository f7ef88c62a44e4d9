"""Shared fixtures. Session-scoped so the expensive loads (the bundled model, transformers) happen once.

The dequantized-weight cache is left where the user has it ($WORKBENCH_CACHE or ~/.cache/workbench);
tests that need a private cache set WORKBENCH_CACHE themselves with monkeypatch.
"""

from __future__ import annotations

import pytest
import torch

BUNDLED_MODEL = "smollm2-135m"


@pytest.fixture(scope="session")
def bundled_gguf():
    """Path of the bundled SmolLM2-135M-Instruct Q4_1 GGUF file."""
    from workbench.checkpoints.registry import bundled_path

    return bundled_path(BUNDLED_MODEL)


@pytest.fixture(scope="session")
def bundled_checkpoint(bundled_gguf):
    """The bundled file opened as a `GGUFCheckpoint` (parsed fresh, not read from the cache). Read only."""
    from workbench.checkpoints.gguf_file import GGUFCheckpoint

    return GGUFCheckpoint(bundled_gguf)


@pytest.fixture(scope="session")
def model_and_tokenizer():
    """(LlamaModel, Tokenizer) of the bundled model in float32, via `workbench.load_model`. Do not mutate."""
    from workbench import load_model

    return load_model(BUNDLED_MODEL, dtype=torch.float32)


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(bundled_gguf):
    """The transformers tokenizer built from the same GGUF file (the reference)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(bundled_gguf.parent), gguf_file=bundled_gguf.name)


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    """Run the test with 1 and with 2 torch threads (the kernels split rows or positions over threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
