"""collect_activations: hooks see the real inputs, stats are exact, sampling is bounded and seeded, hooks go away."""

import pytest
import torch
from torch import nn

from workbench import load_model
from workbench.errors import EmptyTextError, InvalidParameterError
from workbench.quant import quantize_
from workbench.quant.calibration import ActivationStats, activation_summary, collect_activations

TEXT = ("The quick brown fox jumps over the lazy dog. " * 40).strip()


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_every_linear_layer_by_default(tiny):
    model, tok = tiny
    stats = collect_activations(model, tok, TEXT, max_tokens=200, window=64)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert list(stats) == linears and "lm_head" in stats
    n = len(tok.encode(TEXT, add_special_tokens=False)[:200])
    for name, s in stats.items():
        assert isinstance(s, ActivationStats) and s.tokens == n
        module = model.get_submodule(name)
        assert s.abs_max.shape == s.abs_mean.shape == (module.in_features,)
        assert s.sample.shape == (min(128, n), module.in_features)
        assert (s.abs_max >= s.abs_mean).all() and (s.sample.abs() <= s.abs_max).all()
    assert _hook_count(model) == 0


def test_stats_match_a_manual_capture(tiny):
    """abs_max / abs_mean equal what a plain hook capturing every input computes."""
    model, tok = tiny
    name = "model.layers.1.mlp.down_proj"
    ids = tok.encode(TEXT, add_special_tokens=False)[:100]
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, m.in_features)))
    with torch.no_grad():
        for start in range(0, 100, 32):
            model(torch.tensor([ids[start:start + 32]]))
    h.remove()
    full = torch.cat(seen)
    s = collect_activations(model, tok, TEXT, max_tokens=100, window=32, layers=name, sample_tokens=1000)[name]
    assert s.tokens == 100 and torch.equal(s.abs_max, full.abs().amax(0))
    torch.testing.assert_close(s.abs_mean, full.abs().mean(0))
    assert torch.equal(s.sample, full)  # sample bigger than the text: every row, in order


def test_window_does_not_change_the_sample_rows_positions(tiny):
    """Same seed, same text: the sampled token positions do not depend on the window (only their context does)."""
    model, tok = tiny
    a = collect_activations(model, tok, TEXT, max_tokens=120, window=120, layers="*.q_proj", sample_tokens=10, seed=3)
    b = collect_activations(model, tok, TEXT, max_tokens=120, window=120, layers="*.q_proj", sample_tokens=10, seed=3)
    c = collect_activations(model, tok, TEXT, max_tokens=120, window=120, layers="*.q_proj", sample_tokens=10, seed=4)
    name = "model.layers.0.self_attn.q_proj"
    assert torch.equal(a[name].sample, b[name].sample)
    assert not torch.equal(a[name].sample, c[name].sample)
    # layer 0's q_proj input depends only on the token itself and its norm, not on context
    d = collect_activations(model, tok, TEXT, max_tokens=120, window=16, layers=name, sample_tokens=10, seed=3)
    torch.testing.assert_close(a[name].sample, d[name].sample)


def test_layer_patterns_and_quantized_layers(tiny):
    model, tok = tiny
    stats = collect_activations(model, tok, TEXT, max_tokens=64, window=64, layers=["*.q_proj", "lm_head"])
    assert list(stats) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "lm_head"]
    with pytest.raises(InvalidParameterError, match="no linear layer matches"):
        collect_activations(model, tok, TEXT, max_tokens=64, layers="nope.*")
    import copy

    q = quantize_(copy.deepcopy(model), "int8")
    qstats = collect_activations(q, tok, TEXT, max_tokens=64, window=64, layers="model.layers.0.*")
    assert len(qstats) == 7 and _hook_count(q) == 0


def test_default_text_and_summary(tiny):
    model, tok = tiny
    stats = collect_activations(model, tok, max_tokens=96, window=48, layers="model.layers.0.mlp.*")
    assert all(s.tokens == 96 for s in stats.values())
    table = activation_summary(stats)
    assert list(table["name"]) == list(stats)
    assert (table["outlier_ratio"] >= 1).all() and (table["max_abs"] > 0).all()
    top = stats["model.layers.0.mlp.down_proj"].top_channels(3)
    assert len(top) == 3 and top["abs_max"].is_monotonic_decreasing


def test_short_text_and_bad_arguments(tiny):
    model, tok = tiny
    with pytest.raises(EmptyTextError, match="calibration text too short"):
        collect_activations(model, tok, "hi there")
    with pytest.raises(EmptyTextError, match="too short"):
        collect_activations(model, tok, "")
    for kwargs in ({"window": 1}, {"max_tokens": 4}, {"sample_tokens": 0}):
        with pytest.raises(InvalidParameterError):
            collect_activations(model, tok, TEXT, **kwargs)
    # a text shorter than one window runs as one window
    s = collect_activations(model, tok, TEXT, max_tokens=40, window=256, layers="lm_head")["lm_head"]
    assert s.tokens == 40
    # a window longer than the context (tiny-random: 256) is cut to it
    s = collect_activations(model, tok, TEXT, max_tokens=300, window=10_000, layers="lm_head")["lm_head"]
    assert s.tokens == 300


def test_hooks_removed_when_forward_fails(tiny):
    model, tok = tiny
    boom = model.model.layers[1].mlp.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        before = _hook_count(model)
        with pytest.raises(RuntimeError, match="boom"):
            collect_activations(model, tok, TEXT, max_tokens=64, window=64)
        assert _hook_count(model) == before
    finally:
        boom.remove()
    assert _hook_count(model) == 0


# ------------------------------------------------------------------ calibration sets: every method reads `calib`

import copy  # noqa: E402
import dataclasses  # noqa: E402

from workbench.corpus import calibration_token_ids, licenses_text  # noqa: E402
from workbench.errors import CalibrationSpecError, PruningError  # noqa: E402
from workbench.prune import prune_  # noqa: E402
from workbench.quant import config_from_spec  # noqa: E402
from workbench.quant.linear import QuantizedLinear  # noqa: E402

CALIB = "licenses:128"


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("spec", ["int4-g128-gptq", "int4-g128-awq", "w8a8-smoothquant"])
def test_every_calibrated_quant_method_reads_the_calibration_set(tiny, spec):
    """calib=SPEC gives the model calibration_text=<its tokens> gives, and not the default (built-in) one."""
    model, tok = tiny
    ids = calibration_token_ids(CALIB, tok)
    config = dataclasses.replace(config_from_spec(spec), calibration_tokens=len(ids), window=64)
    via_spec = quantize_(copy.deepcopy(model), config, tokenizer=tok, calib=CALIB)
    via_ids = quantize_(copy.deepcopy(model), config, tokenizer=tok, calibration_text=ids)
    default = quantize_(copy.deepcopy(model), config, tokenizer=tok)
    assert _same_weights(via_spec, via_ids)
    assert not _same_weights(via_spec, default)
    with pytest.raises(InvalidParameterError, match="not both"):
        quantize_(copy.deepcopy(model), config, tokenizer=tok, calib=CALIB, calibration_text=ids)


def test_uncounted_parts_share_the_methods_size(tiny):
    model, tok = tiny
    config = dataclasses.replace(config_from_spec("w8a8-smoothquant"), calibration_tokens=128, window=64)
    ids = calibration_token_ids("licenses:64+builtin:64", tok)
    a = quantize_(copy.deepcopy(model), config, tokenizer=tok, calib="licenses+builtin")
    b = quantize_(copy.deepcopy(model), config, tokenizer=tok, calibration_text=ids)
    assert _same_weights(a, b)
    with pytest.raises(CalibrationSpecError, match="unknown calibration source"):
        quantize_(copy.deepcopy(model), config, tokenizer=tok, calib="wikipedia")
    plain = quantize_(copy.deepcopy(model), "int8", calib="wikipedia")  # data-free: the set is not read
    assert isinstance(plain.lm_head, QuantizedLinear)


@pytest.mark.parametrize("spec", ["wanda:0.5", "sparsegpt:0.5", "mlp:0.25"])
def test_every_calibrated_pruning_method_reads_the_calibration_set(tiny, spec):
    model, tok = tiny
    ids = calibration_token_ids(CALIB, tok)
    extra = {} if spec.startswith("mlp") else {"window": 64}
    via_spec = prune_(copy.deepcopy(model), spec, tokenizer=tok, calib=CALIB, **extra)
    via_ids = prune_(copy.deepcopy(model), spec, tokenizer=tok, calibration_text=ids, calibration_tokens=len(ids),
                     **extra)
    default = prune_(copy.deepcopy(model), spec, tokenizer=tok, calibration_tokens=len(ids), **extra)
    assert _same_weights(via_spec, via_ids) and not _same_weights(via_spec, default)
    with pytest.raises(PruningError, match="not both"):
        prune_(copy.deepcopy(model), spec, tokenizer=tok, calib=CALIB, calibration_text=ids)


def test_sensitivity_scans_score_on_the_calibration_set(tiny):
    """Pruning sensitivity and the mixed-precision scan measure on the calibration set, never evaluation text."""
    from workbench.eval import perplexity
    from workbench.prune.sensitivity import sensitivity
    from workbench.study.mixed import sensitivity_scan

    model, tok = tiny
    kwargs = dict(sparsities=(0.5,), layers=[0], method="magnitude", max_tokens=128, window=64, progress=False)
    via_spec = sensitivity(model, tok, calib=CALIB, **kwargs)
    via_text = sensitivity(model, tok, text=licenses_text("calibration"), **kwargs)
    assert via_spec.ppl.tolist() == via_text.ppl.tolist()
    assert sensitivity(model, tok, **kwargs).ppl.tolist() != via_spec.ppl.tolist()  # default: evaluation text
    wanda = dict(kwargs, method="wanda")
    assert sensitivity(model, tok, calib=CALIB, **wanda).ppl.tolist() != \
        sensitivity(model, tok, text=licenses_text("calibration"), **wanda).ppl.tolist()  # wanda reads calib too
    with pytest.raises(PruningError, match="not both"):
        sensitivity(model, tok, calib=CALIB, text="x", **kwargs)
    scan = sensitivity_scan(model, tok, tokens=64, window=64, calib="licenses:64", matrices=["lm_head"])
    ids = calibration_token_ids("licenses:64", tok)
    assert scan.ppl_base.iloc[0] == perplexity(model, ids, window=64).ppl


def test_the_variant_loader_passes_calib_on(tiny):
    from workbench.variant import compress_

    model, tok = tiny
    config = "w8a8-smoothquant"
    a = compress_(copy.deepcopy(model), tok, quant=config, calib=CALIB)
    b = quantize_(copy.deepcopy(model), config, tokenizer=tok, calib=CALIB)
    c = compress_(copy.deepcopy(model), tok, quant=config)
    assert _same_weights(a, b) and not _same_weights(a, c)


@pytest.mark.parametrize("head_method, head_type", [("gptq", "Int4WeightOnlyLinear"), ("rtn", "Int4WeightOnlyLinear"),
                                                    ("int8", "Int8WeightOnlyLinear")])
def test_gptq_tied_head_choice_is_explicit(tiny, head_method, head_type):
    from workbench.quant.gptq import GPTQConfig
    from workbench.quant.linear import Int4WeightOnlyLinear, QuantizedEmbedding

    model, tok = tiny
    config = GPTQConfig(calibration_tokens=128, window=64, head_method=head_method)
    q = quantize_(copy.deepcopy(model), config, tokenizer=tok, calib=CALIB)
    assert type(q.lm_head).__name__ == head_type
    assert isinstance(q.model.layers[0].mlp.down_proj, Int4WeightOnlyLinear)
    assert isinstance(q.model.embed_tokens, QuantizedEmbedding) and q.model.embed_tokens.head[0] is q.lm_head
    rtn_head = Int4WeightOnlyLinear(model.lm_head.weight.detach(), 128).dequantized_weight()
    assert torch.equal(q.lm_head.dequantized_weight(), rtn_head) == (head_method == "rtn")
