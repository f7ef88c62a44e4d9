"""Our C++ decode kernels against the float64 product of the weights they store.

Tolerance: |y - y_ref| <= 1e-5 * (|W| @ |x|) + 1e-6 elementwise, where W is the dequantized weight
(for int4 and the GGUF 4-bit formats, |W| is replaced by |q| * scale plus the zero/minimum term, the
magnitudes the kernel really sums). float32 accumulation of K products errs by about sqrt(K) * 6e-8
of that sum, so the bound is loose enough for any summation order and tight enough to catch a wrong
nibble, scale, group or row (each of which moves the result by percents).
"""

import copy
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench import kernels, load_model
from workbench.bench.timing import cpu_facts
from workbench.errors import InvalidParameterError
from workbench.kernels import build
from workbench.quant import quantize_
from workbench.quant.linear import GGUFBlockLinear, Int4WeightOnlyLinear, Int8WeightOnlyLinear


@pytest.fixture(scope="module")
def ops():
    reason = build._missing_tool()
    if reason:
        pytest.skip(f"cannot build the kernels here: {reason}")
    module = build.load()
    assert module is not None, build.status()
    return module


def bound(abs_w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return 1e-5 * (x.double().abs() @ abs_w.double().T) + 1e-6


def check(y: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor, abs_w: torch.Tensor | None = None):
    ref = x.double() @ w_hat.double().T
    err = (y.double() - ref).abs()
    assert y.shape == ref.shape
    assert (err <= bound(w_hat.abs() if abs_w is None else abs_w, x)).all(), err.max().item()


def int4_magnitudes(layer: Int4WeightOnlyLinear) -> torch.Tensor:
    """|q| * scale + zero * scale per weight: what the kernel's two sums add up."""
    packed = layer.packed
    q = torch.stack([packed & 15, packed >> 4], -1).reshape(packed.shape[0], -1).float()
    g = layer.group_size
    s = layer.scale.repeat_interleave(g, 1)
    z = layer.zero_point.float().repeat_interleave(g, 1)
    return ((q + z) * s)[:, :layer.in_features]


def int8_rounded(x: torch.Tensor, padded_in: int) -> torch.Tensor:
    """x as the int4 x int8 kernel sees it: rounded per block of 32 inputs to q * max|x| / 127."""
    rows, K = x.shape
    blocks = torch.nn.functional.pad(x.float(), (0, padded_in - K)).reshape(rows, -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(blocks * inv).clamp(-127, 127)
    return (q * d).reshape(rows, -1)[:, :K]


def layer_input(layer, x: torch.Tensor) -> torch.Tensor:
    """What a layer's kernel route multiplies: x, or x rounded to int8 where the layer does that (on
    its weight tiles, and 4-bit layers on their row kernels)."""
    ops, Kp = build.load(), layer.packed.shape[1] * 2 if isinstance(layer, Int4WeightOnlyLinear) else x.shape[-1]
    rounds = kernels.quantized_activations() == "int8" and (
        kernels.weight_tiles(layer) is not None
        or isinstance(layer, Int4WeightOnlyLinear) and ops.int4_q8_fits(layer.group_size, Kp)
        or isinstance(layer, GGUFBlockLinear) and layer.type_name in ("Q4_0", "Q4_1"))
    return int8_rounded(x, Kp) if rounds else x


def gguf_magnitudes(layer: GGUFBlockLinear) -> torch.Tensor:
    if layer.type_name == "Q8_0":
        return layer.dequantized_weight().abs()
    raw = layer.raw.reshape(-1, 18 if layer.type_name == "Q4_0" else 20)
    d = raw[:, :2].contiguous().view(torch.float16).float().abs()
    extra = 8 * d if layer.type_name == "Q4_0" else raw[:, 2:4].contiguous().view(torch.float16).float().abs()
    return (15 * d + extra).repeat_interleave(32, 1).reshape(layer.out_features, -1)


# Odd rows and inputs (100 and 1100 are no multiples of 8, 16 or 32); 203x1100 is large enough for
# the rows to be split over threads in every format.
SHAPES = [(37, 100), (13, 1536), (203, 1100)]


@pytest.fixture
def each_backend(ops):
    """Run the body once per instruction set this CPU supports (AVX-512, AVX2, scalar)."""
    before = ops.backend()

    def run(body):
        for name in ops.supported_backends():
            ops.set_backend(name)
            body(name)
        ops.set_backend(before)
    yield run
    ops.set_backend(before)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@torch.inference_mode()
def test_dense_formats_match_float64(ops, each_backend, threads, shape):
    gen = torch.Generator().manual_seed(shape[0])
    w = torch.randn(*shape, generator=gen)
    int8 = Int8WeightOnlyLinear(w)

    def body(_):
        for rows in (1, 3, 5):  # 5 rows: one pass of 4 and one of 1
            x = torch.randn(rows, shape[1], generator=gen)
            check(ops.dense(x, w), w, x)
            check(ops.dense(x, w.bfloat16()), w.bfloat16().float(), x)
            check(ops.dense(x, int8.qweight, int8.scale), int8.dequantized_weight(), x)
    each_backend(body)


@pytest.mark.parametrize("shape", SHAPES + [(64, 45)], ids=lambda s: f"{s[0]}x{s[1]}")  # 45: an odd row length
@torch.inference_mode()
def test_bfloat16_activations_meet_bfloat16_weights_on_dot_products(ops, each_backend, threads, shape):
    if "avx512_bf16" in cpu_facts()["cpu_flags"] and "avx512" in ops.supported_backends():
        assert ops.bf16_dot()  # this CPU has the instruction: the bfloat16 model's products use it
    gen = torch.Generator().manual_seed(shape[1])
    w = torch.randn(*shape, generator=gen).bfloat16()
    x = torch.randn(5, shape[1], generator=gen).bfloat16()
    ref = x.double() @ w.double().T

    def body(_):
        for dot in (True, False):
            ops.set_bf16_dot(dot)
            y = ops.dense(x, w)
            assert y.dtype == torch.bfloat16
            # float32 sums, then one rounding to bfloat16 (half a step: 2 ** -8 of the value)
            err = (y.double() - ref).abs()
            assert (err <= bound(w.float().abs(), x.float()) + 2 ** -8 * ref.abs()).all(), err.max().item()
            # a row's answer does not depend on how many rows share the pass over the weight
            for rows in (1, 2, 3, 4):
                assert torch.equal(ops.dense(x[:rows], w), y[:rows])
        ops.set_bf16_dot(True)
    each_backend(body)


@pytest.mark.parametrize("group_size", [32, 128, 50])  # 50: groups that are no multiple of 32
@pytest.mark.parametrize("shape", SHAPES[::2], ids=lambda s: f"{s[0]}x{s[1]}")
@torch.inference_mode()
def test_int4_matches_float64(ops, each_backend, threads, shape, group_size):
    gen = torch.Generator().manual_seed(group_size)
    layer = Int4WeightOnlyLinear(torch.randn(*shape, generator=gen), group_size)  # ragged last groups too

    def body(_):
        for rows in (1, 2, 4):
            x = torch.randn(rows, shape[1], generator=gen)
            y = ops.int4(x, layer.packed, layer.scale, layer.zero_point, group_size, shape[1])
            check(y, layer.dequantized_weight(), x, int4_magnitudes(layer))
    each_backend(body)


# (out, in, group): a last unit of 64 inputs (576, 1088), padded rows (1000 -> 1024; 1010: a last block
# of 18 real inputs), groups of 32 to 256
Q8_CASES = [(37, 576, 32), (37, 576, 64), (203, 1088, 32), (203, 1000, 128), (11, 1010, 128), (13, 1536, 256),
            (9, 128, 32)]


@pytest.mark.parametrize("case", Q8_CASES, ids=lambda c: f"{c[0]}x{c[1]}g{c[2]}")
@torch.inference_mode()
def test_int4_with_int8_activations_matches_the_rounded_product(ops, each_backend, threads, case):
    """VNNI (avx512 backend) and the portable loop (the others) against float64 on rounded activations."""
    out, K, G = case
    gen = torch.Generator().manual_seed(out + G)
    layer = Int4WeightOnlyLinear(torch.randn(out, K, generator=gen), G)
    Kp = layer.packed.shape[1] * 2
    assert ops.int4_q8_fits(G, Kp)

    def body(_):
        for rows in (1, 2, 4, 5):
            x = torch.randn(rows, K, generator=gen) * torch.rand(1, K, generator=gen) * 8  # uneven blocks
            x[0, :40] = 0  # an all-zero block: scale 0, no division by it
            y = ops.int4_q8(x, layer.packed, layer.scale, layer.zero_point, G, K)
            check(y, layer.dequantized_weight(), int8_rounded(x, Kp), int4_magnitudes(layer))
    each_backend(body)


def test_int4_activation_modes_route_and_validate(ops):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    fits, ragged = Int4WeightOnlyLinear(w, 128), Int4WeightOnlyLinear(w[:, :96], 16)  # groups of 16: no fit
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode(), kernels.using_quantized_activations("int8"):
        check(fits(x), fits.dequantized_weight(), int8_rounded(x, 256), int4_magnitudes(fits))
        check(ragged(x[:, :96]), ragged.dequantized_weight(), x[:, :96], int4_magnitudes(ragged))  # float kernel
    with torch.inference_mode(), kernels.using_quantized_activations("float"):
        check(fits(x), fits.dequantized_weight(), x, int4_magnitudes(fits))
    with pytest.raises(InvalidParameterError, match="quantized activations"):
        kernels.set_quantized_activations("int2")
    assert kernels.quantized_activations() == ("int8" if ops.tiles_fit() else "float")
    with pytest.raises(RuntimeError, match="group size"):
        ops.int4_q8(x[:, :96], ragged.packed, ragged.scale, ragged.zero_point, 16, 96)


def test_quantized_activations_from_the_environment(monkeypatch):
    monkeypatch.setattr(kernels, "_quantized_activations", None)
    monkeypatch.setenv("WORKBENCH_QUANTIZED_ACTIVATIONS", "float")
    assert kernels.quantized_activations() == "float"
    monkeypatch.setattr(kernels, "_quantized_activations", None)
    monkeypatch.setenv("WORKBENCH_QUANTIZED_ACTIVATIONS", "int3")
    with pytest.raises(InvalidParameterError, match="WORKBENCH_QUANTIZED_ACTIVATIONS"):
        kernels.quantized_activations()


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1"])
@torch.inference_mode()
def test_gguf_blocks_match_float64(ops, each_backend, threads, type_name):
    gen = torch.Generator().manual_seed(1)
    layer = GGUFBlockLinear(torch.randn(203, 1088, generator=gen), type_name)

    def body(_):
        for rows in (1, 3):
            x = torch.randn(rows, 1088, generator=gen)
            check(ops.gguf(x, layer.raw, kernels.GGUF_TYPES[type_name], 1088), layer.dequantized_weight(), x,
                  gguf_magnitudes(layer))
    each_backend(body)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1"])
@torch.inference_mode()
def test_gguf_4bit_with_int8_activations_matches_the_rounded_product(ops, each_backend, threads, type_name):
    """VNNI (avx512 backend) and the portable loop (the others) against float64 on rounded activations;
    18 blocks per row (an odd last pair) and 48."""
    gen = torch.Generator().manual_seed(2)
    type_id = kernels.GGUF_TYPES[type_name]
    assert not ops.gguf_q8_fits(kernels.GGUF_TYPES["Q8_0"], 576) and not ops.gguf_q8_fits(type_id, 100)
    for out, K in ((203, 576), (37, 1536)):
        layer = GGUFBlockLinear(torch.randn(out, K, generator=gen), type_name)

        def body(_):
            for rows in (1, 2, 5):
                x = torch.randn(rows, K, generator=gen) * torch.rand(1, K, generator=gen) * 8  # uneven blocks
                x[0, :40] = 0  # an all-zero block: scale 0, no division by it
                y = ops.gguf_q8(x, layer.raw, type_id, K)
                check(y, layer.dequantized_weight(), int8_rounded(x, K), gguf_magnitudes(layer))
        each_backend(body)


@torch.inference_mode()
def test_real_weights(ops, model_and_tokenizer, threads):
    """The bundled model's own matrices (a projection, the down projection, the output head)."""
    model = model_and_tokenizer[0]
    layer = model.model.layers[3]
    x = torch.randn(2, 1536, generator=torch.Generator().manual_seed(0))
    for w in (layer.self_attn.q_proj.weight, layer.mlp.down_proj.weight, model.lm_head.weight):
        xs = x[:, :w.shape[1]].contiguous()
        check(ops.dense(xs, w), w, xs)
    w = layer.mlp.down_proj.weight
    for make, mags in ((lambda: Int8WeightOnlyLinear(w), lambda m: m.dequantized_weight().abs()),
                       (lambda: Int4WeightOnlyLinear(w, 32), int4_magnitudes),
                       (lambda: Int4WeightOnlyLinear(w, 128), int4_magnitudes),
                       (lambda: GGUFBlockLinear(w, "Q4_1"), gguf_magnitudes),
                       (lambda: GGUFBlockLinear(w, "Q8_0"), gguf_magnitudes)):
        q = make()
        check(q(x), q.dequantized_weight(), layer_input(q, x), mags(q))  # through the layer's forward (kernel route)


@torch.inference_mode()
def test_layers_route_small_batches_to_kernels_and_large_ones_to_pytorch(ops):
    """Float activations: above the row limit every layer runs PyTorch's operators. (With int8
    activations quantized layers take every size to their tiles: the next test.)"""
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(2))
    for layer in (Int8WeightOnlyLinear(w), Int4WeightOnlyLinear(w, 32), GGUFBlockLinear(w, "Q4_0")):
        small, large = torch.randn(1, 1, 96), torch.randn(2, kernels.MAX_ROWS_QUANTIZED, 96)
        with kernels.disabled():
            small_ref, large_ref = layer(small), layer(large)
        with kernels.using_quantized_activations("float"):
            assert torch.equal(layer(large), large_ref)  # above the row limit: the PyTorch path, bit for bit
        out = layer(small)
        assert out.shape == small_ref.shape and not torch.equal(out, small_ref)  # another summation order
        check(out.reshape(1, -1), layer.dequantized_weight(), layer_input(layer, small.reshape(1, -1)),
              int4_magnitudes(layer) if isinstance(layer, Int4WeightOnlyLinear) else
              gguf_magnitudes(layer) if isinstance(layer, GGUFBlockLinear) else None)


@pytest.mark.parametrize("make", [lambda w: GGUFBlockLinear(w, "Q4_0"), lambda w: GGUFBlockLinear(w, "Q4_1"),
                                  lambda w: Int4WeightOnlyLinear(w, 32), lambda w: Int4WeightOnlyLinear(w, 128),
                                  lambda w: GGUFBlockLinear(w, "Q8_0"), lambda w: Int8WeightOnlyLinear(w)],
                         ids=["q4_0", "q4_1", "int4-g32", "int4-g128", "q8_0", "int8"])
@torch.inference_mode()
def test_tiles_compute_a_prompt_exactly_as_decode_steps(ops, threads, make):
    """Int8 activations on weight tiles (16 rows each, AVX-512 VNNI or AVX2): against the 4-bit row kernels
    and the float64 product of the rounded x with the dequantized weights, for any number of rows, and
    each row of a prompt bit for bit what it is alone; 203 rows (a part tile), 576 inputs (int4-g128:
    a short last group)."""
    if not ops.tiles_fit():
        pytest.skip("weight tiles need AVX2")
    gen = torch.Generator().manual_seed(5)
    layer = make(torch.randn(203, 576, generator=gen) * 0.02)
    x = torch.randn(37, 576, generator=gen) * torch.rand(1, 576, generator=gen) * 8
    x[3, :64] = 0  # all-zero blocks
    with kernels.using_quantized_activations("int8"):
        tiles = kernels.weight_tiles(layer)
        assert tiles is not None and kernels.weight_tiles(layer) is tiles  # built once
        prompt = layer(x)
        rows = torch.cat([layer(x[i:i + 1]) for i in range(len(x))])
    assert torch.equal(prompt, rows)
    exact = (int8_rounded(x, 576).double() @ layer.dequantized_weight().double().T).float()
    refs = [exact]
    if isinstance(layer, GGUFBlockLinear) and layer.type_name != "Q8_0":
        refs.append(ops.gguf_q8(x, layer.raw, kernels.GGUF_TYPES[layer.type_name], 576))
    elif isinstance(layer, Int4WeightOnlyLinear):
        refs.append(ops.int4_q8(x, layer.packed, layer.scale, layer.zero_point, layer.group_size, 576))
    for ref in refs:
        torch.testing.assert_close(prompt, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    with kernels.using_quantized_activations("float"):
        assert kernels.weight_tiles(layer) is None
    names = {GGUFBlockLinear: ("raw",), Int8WeightOnlyLinear: ("qweight", "scale")}.get(type(layer), ("packed", "scale"))
    with torch.inference_mode(False):  # replacing or writing the weights rebuilds the tiles
        for name in names:
            setattr(layer, name, getattr(layer, name).clone())
            with kernels.using_quantized_activations("int8"):
                assert kernels.weight_tiles(layer) is not tiles
                tiles = kernels.weight_tiles(layer)
                getattr(layer, name).add_(0)
                assert kernels.weight_tiles(layer) is not tiles
                tiles = kernels.weight_tiles(layer)


@torch.inference_mode()
def test_8bit_tiles_are_exact_at_the_ends_of_their_integers(ops, threads):
    """Weights -128 and 127 against inputs that round to -127 and 127: AVX2 has no vpdpbusd, and its
    byte products (vpmaddubsw) saturate at 32767 for a pair unless taken as |q| times the sign-moved
    input. The integer sums are then exact, so the product is the float64 one to float32 rounding."""
    if not ops.tiles_fit():
        pytest.skip("weight tiles need AVX2")
    layer = Int8WeightOnlyLinear(torch.randn(24, 64))
    q = torch.full((24, 64), -128, dtype=torch.int8)
    q[1::2] = 127
    q[2::3, 1::2] = -127
    layer.qweight = q
    x = torch.ones(3, 64)
    x[1] = -1
    x[2, ::2] = -1
    with kernels.using_quantized_activations("int8"):
        y = layer(x)
    exact = x.double() @ (q.double() * layer.scale.double()).T  # x rounds to +-127 * (1 / 127) exactly
    torch.testing.assert_close(y.double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("rows, N, K", [(1, 5, 32), (37, 203, 576), (200, 64, 96), (600, 40, 1536)])
@torch.inference_mode()
def test_float32_gemm_matches_float64_and_a_row_does_not_depend_on_its_prompt(ops, threads, rows, N, K):
    """Our GEMM for float32 prompts: part panels (N not a multiple of 32), row tails (not a multiple
    of 12) and more than one block of 192 rows."""
    if not ops.gemm_fits():
        pytest.skip("our float32 GEMM needs AVX-512")
    gen = torch.Generator().manual_seed(rows)
    w, x = torch.randn(N, K, generator=gen), torch.randn(rows, K, generator=gen)
    y = ops.gemm(x, w)
    check(y, w, x)
    for i in {0, rows // 2, rows - 1}:
        assert torch.equal(ops.gemm(x[i:i + 1], w), y[i:i + 1])
    assert torch.equal(kernels.gemm_linear(x, w), y)
    assert kernels.gemm_linear(x, w.bfloat16()) is None  # bfloat16: PyTorch's GEMM


def test_kernels_do_not_take_autograd_or_unsupported_dtypes(ops):
    w = torch.randn(8, 32, requires_grad=True)
    x = torch.randn(1, 32)
    assert kernels.dense_linear(x, w) is None  # grad mode and a weight that wants gradients
    with torch.no_grad():
        assert kernels.dense_linear(x, w) is not None
        assert kernels.dense_linear(x, w.half()) is None  # float16 weights: PyTorch's path
        assert kernels.dense_linear(torch.randn(kernels.MAX_ROWS + 1, 32), w) is None


def test_bad_arguments_raise_not_compute(ops):
    with pytest.raises(RuntimeError, match="not supported"):
        ops.set_backend("avx1024")
    with pytest.raises(RuntimeError, match="x must be"):
        ops.dense(torch.randn(1, 31), torch.randn(8, 32))
    layer = Int4WeightOnlyLinear(torch.randn(8, 64), 32)
    with pytest.raises(RuntimeError, match="group size"):
        ops.int4(torch.randn(1, 64), layer.packed, layer.scale, layer.zero_point, 48, 64)


@torch.inference_mode()
def test_enable_swaps_float_linears_and_keeps_the_model(ops):
    model, _ = load_model("tiny-random")
    plain = copy.deepcopy(model)
    kernels.enable(model)
    swapped = [m for m in model.modules() if isinstance(m, kernels.KernelLinear)]
    assert len(swapped) == sum(type(m) is nn.Linear for m in plain.modules())
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied weights stay tied
    assert model.state_dict().keys() == plain.state_dict().keys()
    ids = torch.randint(0, 1000, (1, 6))
    cache_a, cache_b = model.new_cache(1, 16), plain.new_cache(1, 16)
    for t in range(6):  # one token at a time: the kernel path (where it is measured faster)
        a, b = model(ids[:, t:t + 1], cache_a), plain(ids[:, t:t + 1], cache_b)
        assert (a - b).abs().max() <= 1e-4
    long = torch.randint(0, 1000, (1, kernels.MAX_ROWS + 1))  # more rows than the float kernels take:
    torch.testing.assert_close(model(long), plain(long), rtol=1e-5, atol=1e-5)  # PyTorch's GEMM (a prompt's
    # attention and RMSNorm still run on our kernels, which agree to the last bits)
    kernels.disable(model)
    assert not any(isinstance(m, kernels.KernelLinear) for m in model.modules())


@torch.inference_mode()
def test_bfloat16_model_through_the_kernel_rounds_like_pytorch(ops):
    model, _ = load_model("tiny-random", dtype=torch.bfloat16)
    lin = model.model.layers[0].mlp.down_proj
    x = torch.randn(1, lin.in_features).bfloat16()
    y = kernels.dense_linear(x, lin.weight)
    assert y.dtype == torch.bfloat16
    # both accumulate in float32 and round once to bfloat16: at most one bfloat16 step apart
    assert ((y.float() - F.linear(x, lin.weight).float()).abs() <= 2 ** -7 * y.float().abs() + 1e-6).all()


def test_quantized_model_after_enable(ops):
    model, tok = load_model("tiny-random")
    kernels.enable(model)
    quantize_(model, "int8")  # KernelLinear is an nn.Linear: quantize_ replaces it as usual
    assert not any(isinstance(m, kernels.KernelLinear) for m in model.modules())


def test_no_compiler_means_a_warning_and_the_pytorch_path(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(build.KernelsUnavailableWarning, match="no C.. compiler"):
        assert build.load() is None
    layer = Int8WeightOnlyLinear(torch.randn(8, 32))
    x = torch.randn(1, 32)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not at every call
        assert torch.allclose(layer(x), x @ layer.dequantized_weight().T)
    assert kernels.status()["available"] is False and "compiler" in kernels.status()["reason"]


def test_a_failed_build_falls_back(monkeypatch, tmp_path):
    if build._missing_tool():
        pytest.skip("no compiler")
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in build.SOURCES:
        (csrc / name).write_text("#error deliberately broken\n")
    monkeypatch.setattr(build, "CSRC", csrc)
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.warns(build.KernelsUnavailableWarning, match="failed"):
        assert build.load() is None


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(build, "_state", {})
    monkeypatch.setenv("WORKBENCH_KERNELS", "0")
    assert build.load() is None and "WORKBENCH_KERNELS" in build.status()["reason"]


@torch.inference_mode()
def test_enable_moves_large_weights_to_huge_pages_and_keeps_values_and_ties(ops):
    from workbench.kernels.memory import HUGE_PAGE, move_weights_to_huge_pages

    model, _ = load_model("smollm2-135m")
    before = {n: t.clone() for n, t in model.state_dict().items()}
    head = model.lm_head.weight
    moved = move_weights_to_huge_pages(model)
    if not sys.platform.startswith("linux"):
        assert moved == 0
        return
    assert moved >= head.numel() * 4  # the tied head/embedding, once
    assert model.lm_head.weight is model.model.embed_tokens.weight is head  # same Parameter, new memory
    assert head.data_ptr() % HUGE_PAGE == 0
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    assert move_weights_to_huge_pages(model) == 0 and head.data_ptr() % HUGE_PAGE == 0  # moved once, not again
    tiny = load_model("tiny-random")[0]
    small = [t.data_ptr() for t in tiny.state_dict().values() if t.numel() * t.element_size() < HUGE_PAGE]
    move_weights_to_huge_pages(tiny)
    assert small == [t.data_ptr() for t in tiny.state_dict().values()
                     if t.numel() * t.element_size() < HUGE_PAGE]  # tensors under a huge page stay put


def test_a_lock_left_by_a_killed_build_does_not_block_loading():
    """torch's build lock is a plain file; a build killed mid-way leaves it, and torch then waits forever."""
    import subprocess

    if not kernels.available():
        pytest.skip(f"kernels unavailable: {kernels.status()['reason']}")
    (build.build_dir() / "lock").write_text("")  # as a killed build leaves it
    code = "from workbench.kernels import build; m, why = build._compile(False); assert m is not None, why"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert not (build.build_dir() / "lock").exists()
