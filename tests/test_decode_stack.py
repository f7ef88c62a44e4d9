"""The native decode stack (`kernels/stack.py`, `csrc/stack.h`: every layer of a decode step in one
call) against the layers run one by one, for each kind of product, batch, padding and dtype; and the
cases where it must step aside (hooks, unsupported layers, replaced modules, kernels off)."""

import copy

import pytest
import torch

from workbench import kernels, load_model
from workbench.config import ModelConfig
from workbench.kernels import choice, stack
from workbench.quant import quantize_


@pytest.fixture(scope="module")
def ops():
    if not kernels.available():
        pytest.skip(f"kernels unavailable: {kernels.status()['reason']}")
    return kernels.build.load()


@pytest.fixture(autouse=True)
def native_wherever_it_applies():
    """Take the native stack wherever it applies (no speed measurement), restore afterwards."""
    choice.set_mode("kernel")
    yield
    choice.set_mode(None)
    choice.reset()


def small_model(head_dim=64, **overrides):
    """Random weights with the bundled model's head size (the attention kernel covers it) or another."""
    config = ModelConfig.tiny(vocab_size=1024, hidden_size=4 * head_dim, intermediate_size=8 * head_dim,
                              num_hidden_layers=3, **overrides)
    torch.manual_seed(0)
    model, _ = load_model(config)
    return model


@torch.inference_mode()
def decode_both_ways(model, prompts, steps=5):
    """Greedy decoding of left-padded `prompts` with the native stack and with the layers one by one:
    (tokens, logits) for each, and how many steps the native stack served."""
    served = []
    native = lambda *a: served.append(stack.native_stack(*a)) or served[-1]  # noqa: E731
    runs = []
    for fn in (native, None):
        model.decode_stack_fn = fn
        longest = max(len(p) for p in prompts)
        cache = model.new_cache(len(prompts), longest + steps + 1)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, longest - len(p):] = torch.tensor(p)
            cache.valid[row, :longest - len(p)] = False
        cache.padded = any(len(p) != longest for p in prompts)
        logits = model(ids, cache, last_only=True)[:, -1]
        tokens, seen = [], []
        for _ in range(steps):
            nxt = logits.argmax(-1)
            tokens.append(nxt.tolist())
            logits = model(nxt[:, None], cache)[:, -1]
            seen.append(logits.float())
        runs.append((tokens, torch.stack(seen), cache))
    model.decode_stack_fn = kernels.decode_stack
    return runs[0], runs[1], sum(s is not None for s in served)


def assert_native_matches(model, prompts, steps=5, **tolerance):
    """The native stack served every step, with the layers' greedy tokens and (within `tolerance`) logits."""
    (native_tokens, native_logits, _), (tokens, logits, _), served = decode_both_ways(model, prompts, steps)
    assert served == steps, "the native stack should have served every decode step"
    assert native_tokens == tokens
    torch.testing.assert_close(native_logits, logits, **(tolerance or dict(rtol=1e-4, atol=1e-4)))


def tolerance(quant):
    """4-bit layers round activations to int8 where tiles run: a last-bit difference upstream
    (exp, summation order) can move one rounding step of 1/127 of a block's largest activation."""
    rounds = quant and quant.startswith(("int4", "q4_")) and kernels.quantized_activations() == "int8"
    return dict(rtol=1e-2, atol=1e-2) if rounds else dict(rtol=1e-4, atol=1e-4)


PROMPTS = [[5, 17, 300, 400, 12, 9, 99]]
BATCH = [[5, 17, 300, 400, 12, 9, 99], [8, 1000, 3], [7, 7, 7, 7, 7, 7, 7], [200, 11, 12, 13]]


@pytest.mark.parametrize("quant", [None, "int8", "int4-g64", "q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("prompts", [PROMPTS, BATCH], ids=["batch1", "padded-batch4"])
def test_native_stack_computes_what_the_layers_compute(ops, threads, quant, prompts):
    model = small_model()
    if quant:
        quantize_(model, quant)
    kernels.enable(model)
    (native_tokens, native_logits, native_cache), (tokens, logits, cache), served = decode_both_ways(model, prompts)
    assert served == 5, "the native stack should have served every decode step"
    assert native_tokens == tokens
    torch.testing.assert_close(native_logits, logits, **tolerance(quant))
    end = cache.length
    kv = tolerance(quant) if tolerance(quant)["rtol"] > 1e-4 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(native_cache.k[:, :, :, :end], cache.k[:, :, :, :end], **kv)
    torch.testing.assert_close(native_cache.v[:, :, :, :end], cache.v[:, :, :, :end], **kv)


@pytest.mark.parametrize("quant", ["int4-g64", "q4_0", "q4_1", "q8_0", "int8"])
@torch.inference_mode()
def test_a_prompt_in_one_pass_is_its_chunks_bit_for_bit(ops, threads, quant):
    """On the kernels a prompt's logits do not depend on how it is split: one pass, chunks of 16 and
    of 5 through the KV cache, and one token per step through the native stack compute every position
    alike (quantized layers round activations to int8 on weight tiles, attention takes every query as a
    decode step would, the stack uses PyTorch's silu), so a perplexity through the decode path is the
    whole-window one."""
    if not ops.decode_attention_fits(64, 2) or not ops.tiles_fit():
        pytest.skip("the attention kernel and weight tiles need AVX2")
    kernels.set_quantized_activations("int8")
    model = small_model()
    if quant:
        quantize_(model, quant)
    kernels.enable(model)
    ids = torch.randint(0, 1024, (2, 70), generator=torch.Generator().manual_seed(1))
    whole = model(ids)
    for size in (16, 5, 1):
        cache = model.new_cache(2, 70)
        chunks = torch.cat([model(ids[:, i:i + size], cache) for i in range(0, 70, size)], 1)
        assert torch.equal(chunks, whole), size
    kernels.set_quantized_activations(None)


@pytest.mark.parametrize("mode", ["int8", "float"])
def test_int4_follows_the_activation_mode(ops, mode):
    model = small_model()
    quantize_(model, "int4-g64")
    kernels.enable(model)
    with kernels.using_quantized_activations(mode):
        assert_native_matches(model, BATCH, **tolerance("int4-g64"))


def test_bfloat16_rounds_like_the_layers(ops):
    model = small_model().to(torch.bfloat16)
    kernels.enable(model)
    (native_tokens, native_logits, _), (tokens, logits, _), served = decode_both_ways(model, BATCH)
    assert served == 5 and native_tokens == tokens
    # every elementwise result is rounded to bfloat16 where PyTorch rounds it; the products sum in
    # another order, which moves a bfloat16 rounding now and then
    torch.testing.assert_close(native_logits, logits, rtol=0.03, atol=0.03)


def test_heads_the_attention_kernel_does_not_cover(ops):
    model = small_model(head_dim=16)  # PyTorch's attention inside the native stack
    kernels.enable(model)
    assert_native_matches(model, BATCH)


def test_the_bundled_model_decodes_the_same_tokens(ops, model_and_tokenizer):
    model = copy.deepcopy(model_and_tokenizer[0])
    kernels.enable(model)
    prompt = [model_and_tokenizer[1].encode("The Python language reference says that")]
    assert_native_matches(model, prompt, steps=8, rtol=1e-4, atol=2e-4)


@torch.inference_mode()
def test_a_replaced_module_rebuilds_the_plan(ops):
    model = small_model()
    kernels.enable(model)
    decode_both_ways(model, PROMPTS, steps=2)  # builds the float plan
    quantize_(model, "int8")  # replaces every projection
    assert_native_matches(model, PROMPTS, steps=3)


def test_weights_written_in_place_rebuild_the_tiles(ops):
    """The stack holds a copy of 4-bit weights (tiles): writing the blocks in place must reach it."""
    if not ops.tiles_fit():
        pytest.skip("weight tiles need AVX2")
    model = small_model()
    quantize_(model, "q4_0")
    kernels.enable(model)
    with kernels.using_quantized_activations("int8"):
        decode_both_ways(model, PROMPTS, steps=2)  # builds the plan on tiles
        raw = model.model.layers[1].mlp.down_proj.raw
        with torch.no_grad():
            raw.copy_(model.model.layers[2].mlp.down_proj.raw)
        with torch.inference_mode():
            assert_native_matches(model, PROMPTS, steps=3, rtol=1e-2, atol=1e-2)
        before = stack._plans[model]
        with torch.inference_mode():
            decode_both_ways(model, PROMPTS, steps=1)
        assert stack._plans[model] is before  # unchanged weights: the same plan


@torch.inference_mode()
def test_steps_aside_where_it_does_not_apply(ops):
    model = small_model()
    kernels.enable(model)
    cache = model.new_cache(1, 16)
    model(torch.tensor([[5, 6, 7]]), cache)
    x = model.model.embed_tokens(torch.tensor([[8]]))

    def step():
        positions = cache.prepare(torch.tensor([[8]]))
        cos, sin = model.rotary(positions, model.dtype)
        return stack.native_stack(model, x, cos, sin, cache)

    assert step() is not None
    handle = model.model.layers[1].mlp.down_proj.register_forward_hook(lambda *a: None)
    assert step() is None, "a forward hook must see its calls"
    handle.remove()
    assert step() is not None
    with kernels.disabled():
        assert step() is None
    quantize_(model, "w8a8")  # int8 activations: not a product the kernels compute
    assert step() is None
    with torch.enable_grad():
        assert step() is None


def test_disable_removes_the_seam(ops):
    model = small_model()
    kernels.enable(model)
    assert model.decode_stack_fn is kernels.decode_stack
    kernels.disable(model)
    assert model.decode_stack_fn is None
