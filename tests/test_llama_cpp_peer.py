"""llama.cpp as a same-run peer: batched greedy generation through its low-level API, on a fresh cache."""

import pytest

from workbench import load_model
from workbench.bench import llama_cpp_peer
from workbench.checkpoints.gguf_export import export_gguf
from workbench.engine import SamplingParams, generate_ids

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (an optional peer)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = load_model("tiny-random")
    path = export_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "F32")
    prompts = [tok.encode(text) for text in ("The capital of France is", "1, 2, 3, 4,", "Hello, my name")]
    prompts = [p[:5] for p in prompts]  # one length: the benchmark's prompts are all the same length
    return model, path, prompts


def ours(model, prompts, n):
    steps = generate_ids(model, prompts, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
    return [list(row) for row in zip(*steps)]


def test_batched_sequences_match_one_at_a_time_and_our_engine(tiny):
    model, path, prompts = tiny
    with llama_cpp_peer.LlamaCppBatchRunner(path, threads=1, context_per_sequence=32, n_batch=4) as runner:
        prefill_s, decode_s, batched = runner.generate(prompts, 6)  # n_batch 4 < 15 prompt tokens: chunked
        assert prefill_s > 0 and decode_s > 0
        alone = [runner.generate([p], 6)[2][0] for p in prompts]
        again = runner.generate(prompts, 6)[2]  # the cache is cleared: the same prompts give the same tokens
    assert [len(r) for r in batched] == [6] * 3
    assert batched == alone == again
    assert batched == ours(model, prompts, 6)  # same weights in F32, same greedy tokens


def test_too_long_for_the_context_is_refused(tiny):
    _, path, prompts = tiny
    with llama_cpp_peer.LlamaCppBatchRunner(path, threads=1, context_per_sequence=8) as runner:
        with pytest.raises(ValueError, match="exceed the context"):
            runner.generate(prompts, 6)
