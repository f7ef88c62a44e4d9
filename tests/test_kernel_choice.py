"""Kernel or PyTorch per shape: the choice follows the measured timings (injected here, so the test
is deterministic), each key is measured once, and both paths compute the real product."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench import kernels, load_model
from workbench.kernels import choice


@pytest.fixture
def timings():
    """Install a fake timer: `rule(key) -> True` when the kernel should be the faster; records the keys."""
    def install(rule):
        seen = []

        def timer(key, kernel, fallback):
            seen.append(key)
            kernel(), fallback()  # the real paths still run
            return (1.0, 2.0) if rule(key) else (2.0, 1.0)
        choice.set_timer(timer)
        return seen
    if not kernels.available():
        pytest.skip("our kernels are not built here")
    yield install
    choice.set_timer(None)
    choice.set_mode(None)


def test_bucket():
    assert [choice.bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]


@torch.inference_mode()
def test_a_linear_layer_takes_the_path_measured_faster_for_its_batch(timings):
    seen = timings(lambda key: key[-1] <= 2 or key[-1] >= 32)  # the kernels win at 1-2 rows and prompts
    layer = kernels.KernelLinear.from_linear(nn.Linear(1000, 300, bias=False))
    w = layer.weight
    x1, x8, x40 = torch.randn(1, 1000), torch.randn(8, 1000), torch.randn(40, 1000)
    assert not torch.equal(kernels.dense_linear(x8, w), F.linear(x8, w))  # the two paths are distinguishable
    gemm = kernels.gemm_linear(x40, w)
    for _ in range(3):
        assert torch.equal(layer(x1), kernels.dense_linear(x1, w))
        assert torch.equal(layer(x8), F.linear(x8, w))
        if gemm is not None:  # our float32 GEMM (AVX-512) for a prompt's rows
            assert torch.equal(layer(x40), gemm)
    keys = [("linear", torch.float32, 300, 1000, rows) for rows in (1, 8, 64)]
    assert seen == (keys if gemm is not None else keys[:2])  # once each
    chosen = choice.choices()
    assert chosen[seen[0]]["kernel"] and not chosen[seen[1]]["kernel"]
    reference = x8.double() @ w.double().T
    assert (layer(x8).double() - reference).abs().max() < 1e-4


@torch.inference_mode()
@pytest.mark.parametrize("batch", [1, 8])
def test_a_decode_step_on_the_chosen_paths_equals_that_path_everywhere(timings, batch):
    model, _ = load_model("tiny-random")
    kernels.enable(model)
    ids = torch.randint(0, 1000, (batch, 5))

    def decode():  # one token at a time (a prompt of several runs on the kernels whatever was measured)
        cache = model.new_cache(batch, 16)
        out = [model(ids[:, t:t + 1], cache) for t in range(5)]
        return torch.cat([o[:, -1] for o in out])

    with kernels.disabled():
        pytorch = decode()
    choice.set_mode("kernel")
    kernel = decode()
    assert not torch.equal(kernel, pytorch)
    choice.set_mode("measure")
    timings(lambda key: False)  # PyTorch measured faster everywhere: exactly PyTorch's numbers
    assert torch.equal(decode(), pytorch)
    seen = timings(lambda key: True)  # the kernels measured faster everywhere: exactly the kernels' numbers
    assert torch.equal(decode(), kernel)
    assert {"linear", "rms_norm", "rope"} <= {key[0] for key in seen}  # attention too where its kernel fits
    assert len(seen) == len(set(seen))


@torch.inference_mode()
def test_real_measurements_are_recorded_once_per_key(timings):
    choice.set_timer(None)
    model, _ = load_model("tiny-random")
    kernels.enable(model)
    cache = model.new_cache(2, 8)
    for t in range(3):
        model(torch.randint(0, 1000, (2, 1)), cache)
    measured = choice.choices()
    assert measured and all(m["kernel_s"] > 0 and m["pytorch_s"] > 0 for m in measured.values())
    assert all(m["kernel"] == (m["kernel_s"] <= m["pytorch_s"]) for m in measured.values())


def test_kernel_mode_measures_nothing(timings):
    seen = timings(lambda key: False)
    choice.set_mode("kernel")
    layer = kernels.KernelLinear.from_linear(nn.Linear(64, 32, bias=False))
    x = torch.randn(8, 64)
    with torch.inference_mode():
        assert torch.equal(layer(x), kernels.dense_linear(x, layer.weight))
    assert seen == [] and choice.choices() == {}


def test_bad_mode(monkeypatch):
    from workbench.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError):
        choice.set_mode("fastest")
    monkeypatch.setenv("WORKBENCH_KERNEL_PATHS", "nope")
    choice.set_mode(None)
    with pytest.raises(InvalidParameterError, match="WORKBENCH_KERNEL_PATHS"):
        choice.mode()
    monkeypatch.delenv("WORKBENCH_KERNEL_PATHS")
    choice.set_mode(None)
