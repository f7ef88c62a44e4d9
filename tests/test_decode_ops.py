"""Our decode kernels for the rest of a step (RMSNorm, rotary embedding, one-query attention; float32
and bfloat16) against the model's PyTorch functions, and the seams `kernels.enable` sets and
`kernels.disable` undoes."""

import copy

import pytest
import torch

from workbench import kernels
from workbench.kernels import KernelRMSNorm, build
from workbench.model import Attention, RMSNorm, apply_rope, attention


@pytest.fixture(scope="module")
def ops():
    if not kernels.available():
        pytest.skip(f"kernels unavailable: {kernels.status()['reason']}")
    return build.load()


@pytest.fixture(scope="module")
def attention_ops(ops):
    """The attention kernel has AVX-512 and AVX2 bodies; elsewhere `kernels.decode_attention` uses PyTorch's."""
    if not ops.decode_attention_fits(64, 3):
        pytest.skip(f"the attention kernel needs AVX2 (this CPU runs: {', '.join(ops.supported_backends())})")
    return ops


# (batch, query heads, KV heads, head size, cached positions): the bundled model's heads, chunk
# edges (63/64/65 positions), one position, plain multi-head attention, head sizes 32 and 128
CASES = [(1, 9, 3, 64, 600), (1, 9, 3, 64, 1), (2, 9, 3, 64, 65), (3, 8, 2, 128, 64), (2, 4, 4, 32, 63),
         (1, 16, 1, 64, 200)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}H{}KV{}hd{}S{}".format(*c))
@pytest.mark.parametrize("layout", ["contiguous", "paged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@torch.inference_mode()
def test_decode_attention_matches_pytorch(attention_ops, threads, case, layout, dtype):
    ops = attention_ops
    B, H, KVH, hd, S = case
    gen = torch.Generator().manual_seed(S + hd)
    q = torch.randn(B, H, 1, hd, generator=gen).to(dtype)
    if layout == "contiguous":  # a preallocated cache, read up to S: positions hd apart, heads max_len * hd
        k, v = (torch.randn(B, KVH, S + 37, hd, generator=gen).to(dtype)[:, :, :S] for _ in range(2))
    else:  # the paged pool's blocks gathered as (B, S, KVH, hd), then transposed
        k, v = (torch.randn(B, S, KVH, hd, generator=gen).to(dtype).transpose(1, 2) for _ in range(2))
    assert ops.decode_attention_fits(hd, H // KVH)
    mask = torch.rand(B, 1, 1, S, generator=gen) > 0.3
    mask[..., -1] = True  # a query always sees itself
    # float32: PyTorch's answer to 1e-5; bfloat16: the float64 answer on the same inputs to the
    # output's own rounding (half a bfloat16 step of values up to ~4)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0, atol=2 ** -7)
    for m in (None, mask, mask[:1]):
        got = ops.decode_attention(q, k, v, m)
        assert got.dtype == dtype
        expected = attention(q, k, v, m) if dtype == torch.float32 else attention(q.double(), k.double(), v.double(), m)
        torch.testing.assert_close(got.to(expected.dtype), expected, **tol)
        # the model's attention takes whichever of the two is faster here, and returns its answer unchanged
        chosen = kernels.decode_attention(q, k, v, m)
        assert torch.equal(chosen, got) or torch.equal(chosen, attention(q, k, v, m))


# (batch, query heads, KV heads, head size, queries, cached positions before them)
PREFILL_CASES = [(1, 9, 3, 64, 130, 0), (2, 9, 3, 64, 17, 63), (1, 4, 4, 32, 5, 1), (2, 8, 2, 128, 66, 70)]


@pytest.mark.parametrize("case", PREFILL_CASES, ids=lambda c: "B{}H{}KV{}hd{}T{}start{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@torch.inference_mode()
def test_prefill_attention_is_each_query_decoded_alone(attention_ops, threads, case, dtype):
    """Every query of a prompt bit for bit what decode_attention gives it alone at its position (over
    the keys up to it, its mask row); against PyTorch's causal attention to 1e-5 (float32)."""
    ops = attention_ops
    B, H, KVH, hd, T, start = case
    S = start + T
    gen = torch.Generator().manual_seed(T + start)
    q = torch.randn(B, T, H, hd, generator=gen).to(dtype).transpose(1, 2)  # as the model's view: strided
    k, v = (torch.randn(B, KVH, S + 9, hd, generator=gen).to(dtype)[:, :, :S] for _ in range(2))
    causal = torch.ones(T, S, dtype=torch.bool).tril(start)
    padded = (causal & (torch.rand(B, 1, 1, S, generator=gen) > 0.3)) | causal.triu(start)
    for mask in (None, causal, padded):
        got = ops.prefill_attention(q, k, v, mask)
        assert got.shape == (B, T, H * hd) and got.dtype == dtype
        for i in range(T):
            row = None if mask is None else (mask if mask.dim() == 4 else mask[None, None])[..., i:i + 1, :start + i + 1]
            alone = ops.decode_attention(q[:, :, i:i + 1], k[:, :, :start + i + 1], v[:, :, :start + i + 1], row)
            assert torch.equal(got[:, i:i + 1], alone), (mask is None, i)
        if dtype == torch.float32:
            expected = attention(q, k, v, causal if mask is None else mask)
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(kernels.decode_attention(q, k, v, mask), got, rtol=0, atol=0)


@torch.inference_mode()
def test_decode_attention_edges_and_fallbacks(attention_ops):
    ops = attention_ops
    q, k, v = torch.randn(2, 4, 1, 32), torch.randn(2, 2, 10, 32), torch.randn(2, 2, 10, 32)
    hidden = torch.zeros(2, 1, 1, 10, dtype=torch.bool)
    hidden[1, ..., 3] = True  # sequence 0 sees no key: zeros, like PyTorch
    torch.testing.assert_close(ops.decode_attention(q, k, v, hidden), attention(q, k, v, hidden))
    # shapes the kernel does not cover go to PyTorch with the same answer: head size 48, two queries
    odd = torch.randn(1, 2, 1, 48), torch.randn(1, 1, 5, 48), torch.randn(1, 1, 5, 48)
    assert not ops.decode_attention_fits(48, 2)
    torch.testing.assert_close(kernels.decode_attention(*odd, None), attention(*odd, None))
    two = torch.randn(2, 4, 2, 32)  # two queries, the last two positions: the prompt kernel
    last_two = torch.ones(2, 10, dtype=torch.bool).tril(8)
    torch.testing.assert_close(kernels.decode_attention(two, k, v, last_two), attention(two, k, v, last_two))
    torch.testing.assert_close(kernels.decode_attention(two, k, v, None), attention(two, k, v, last_two))
    with pytest.raises(RuntimeError, match="mask"):
        ops.decode_attention(q, k, v, torch.ones(2, 1, 1, 9, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="head size 48"):
        ops.decode_attention(*odd)


@torch.inference_mode()
def test_rms_norm_and_rope_match_pytorch(ops):
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(576, 1e-5)
    norm.weight.copy_(torch.randn(576, generator=gen))
    fast = KernelRMSNorm.from_norm(norm)
    for rows in (1, 3):
        x = torch.randn(1, rows, 576, generator=gen) * 3
        torch.testing.assert_close(fast(x), norm(x), rtol=2e-6, atol=1e-6)
    bf_norm = RMSNorm(576, 1e-5).to(torch.bfloat16)
    bf_norm.weight.copy_(norm.weight)
    x = (torch.randn(1, 3, 576, generator=gen) * 3).bfloat16()
    torch.testing.assert_close(KernelRMSNorm.from_norm(bf_norm)(x), bf_norm(x), rtol=2 ** -7, atol=0)  # 1 step at most
    for dtype in (torch.float32, torch.bfloat16):  # the same operations in order, each rounded alike
        x = torch.randn(2, 1, 9, 64, generator=gen).to(dtype).transpose(1, 2)  # as the model makes q
        cos, sin = (torch.randn(2, 1, 1, 64, generator=gen).to(dtype) for _ in range(2))
        assert torch.equal(ops.rope(x, cos, sin), apply_rope(x, cos, sin))
        assert torch.equal(kernels.rope(x, cos, sin), apply_rope(x, cos, sin))
        prompt = torch.randn(2, 5, 9, 64, generator=gen).to(dtype).transpose(1, 2)  # five tokens, as q
        cos5, sin5 = (torch.randn(2, 1, 5, 64, generator=gen).to(dtype) for _ in range(2))
        assert torch.equal(ops.rope(prompt, cos5, sin5), apply_rope(prompt, cos5, sin5))
        assert ops.rope(prompt, cos5, sin5).stride() == apply_rope(prompt, cos5, sin5).stride()  # x's layout
        assert torch.equal(kernels.rope(prompt, cos5, sin5), apply_rope(prompt, cos5, sin5))
        long = torch.randn(2, 9, 300, 64, generator=gen).to(dtype)  # a prompt split over threads
        cos300, sin300 = (torch.randn(2, 1, 300, 64, generator=gen).to(dtype) for _ in range(2))
        assert torch.equal(ops.rope(long, cos300, sin300), apply_rope(long, cos300, sin300))


def test_decode_ops_leave_autograd_and_mixed_dtypes_to_pytorch(ops):
    norm = KernelRMSNorm.from_norm(RMSNorm(64, 1e-6))
    x = torch.randn(1, 1, 64, requires_grad=True)
    norm(x).sum().backward()  # PyTorch's path: a gradient flows
    assert x.grad is not None
    half = torch.randn(1, 1, 64, dtype=torch.float16)  # float16: not ours, PyTorch's answer
    with torch.inference_mode():
        torch.testing.assert_close(norm(half), RMSNorm.forward(norm, half))
        q, k = torch.randn(1, 2, 1, 32), torch.randn(1, 1, 5, 32, dtype=torch.bfloat16)
        torch.testing.assert_close(kernels.decode_attention(q, k.float(), k.float(), None),
                                   attention(q, k.float(), k.float(), None))
        with pytest.raises(RuntimeError, match="one dtype"):
            ops.decode_attention(q, k, k)


def test_enable_sets_the_seams_and_disable_restores_them(ops, model_and_tokenizer):
    base, _ = model_and_tokenizer
    model = kernels.enable(copy.deepcopy(base))
    keys = set(base.state_dict())
    assert set(model.state_dict()) == keys
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert norms and all(type(m) is KernelRMSNorm for m in norms)
    attn = [m for m in model.modules() if isinstance(m, Attention)]
    assert all(m.rope_fn is kernels.rope and m.attention_fn is kernels.decode_attention for m in attn)
    kernels.disable(model)
    assert all(type(m) is RMSNorm for m in model.modules() if isinstance(m, RMSNorm))
    assert all(m.rope_fn is apply_rope and m.attention_fn is attention for m in attn)
    assert set(model.state_dict()) == keys
