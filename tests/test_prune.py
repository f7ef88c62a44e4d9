"""Pruning: masks against torch's own pruning, N:M patterns, Wanda and SparseGPT on synthetic data,
structured pruning equal to zeroing the same channels, round trips, recovery, sensitivity and errors."""

import copy
import json
import math

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import workbench
from workbench.config import ModelConfig
from workbench.errors import PruningError
from workbench.prune import (magnitude_prune_, nm_mask, parse_spec, prune_, prune_heads, prune_mlp,
                             row_mask, sparsegpt_prune_weight, sparsity_report, tensor_mask)
from workbench.prune.masks import decoder_linears, mask_for
from workbench.prune.recovery import recover
from workbench.prune.sensitivity import sensitivity
from workbench.prune.storage import storage_report, tensor_storage
from workbench.prune.wanda import wanda_scores
from workbench.quant import collect_activations, quantize_
from workbench.quant.gptq import hessian


@pytest.fixture(scope="module")
def tiny_and_tok():
    # random weights, small layers; grouped-query attention like the bundled model's (3 KV groups)
    config = ModelConfig.tiny(hidden_size=96, intermediate_size=256, num_attention_heads=6, num_key_value_heads=3,
                              head_dim=16)
    return workbench.load_model(config)


@pytest.fixture(scope="module")
def tiny(tiny_and_tok):
    return tiny_and_tok[0]


@pytest.fixture(scope="module")
def tok(tiny_and_tok):
    return tiny_and_tok[1]


@pytest.fixture(scope="module")
def correlated():
    g = torch.Generator().manual_seed(0)
    cols = 256
    mix = torch.eye(cols) + 2 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    x = torch.randn(1024, cols, generator=g) @ mix
    x[:, :4] *= 8  # a few loud channels, as in real activations
    return x, torch.randn(48, cols, generator=g) * 0.05


def _rel_err(x, w, w_hat):
    return ((x @ w.T - x @ w_hat.T).norm() / (x @ w.T).norm()).item()


def _ids(n=300, seed=1):
    return torch.randint(0, 2000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("amount", [0.1, 0.5, 0.73])
def test_tensor_mask_equals_torch_l1_unstructured(amount):
    w = torch.randn(96, 160, generator=torch.Generator().manual_seed(3))
    ref = nn.Linear(160, 96, bias=False)
    ref.weight.data.copy_(w)
    torch_prune.l1_unstructured(ref, "weight", amount=amount)
    assert torch.equal(tensor_mask(w.abs(), amount), ref.weight_mask.bool())


def test_magnitude_layer_and_global_scopes_equal_torch(tiny):
    layer_model = magnitude_prune_(copy.deepcopy(tiny), 0.5)
    small = copy.deepcopy(tiny)
    with torch.no_grad():
        small.model.layers[0].self_attn.q_proj.weight.mul_(0.3)  # one matrix of small weights
    global_model = magnitude_prune_(copy.deepcopy(small), 0.5, scope="global")
    reference = copy.deepcopy(small)
    params = [(m, "weight") for m in decoder_linears(reference).values()]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.5)
    for (name, mine), theirs in zip(decoder_linears(global_model).items(), decoder_linears(reference).values()):
        assert torch.equal(mine.weight != 0, theirs.weight_mask.bool()), name
    assert (sparsity_report(layer_model)["sparsity"] == 0.5).all()  # every matrix loses exactly half
    report = sparsity_report(global_model)
    assert report["zeros"].sum() == report["numel"].sum() // 2 and report["sparsity"].iloc[0] > 0.9


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_masks_keep_exactly_n_of_every_m(n, m):
    scores = torch.rand(24, 64, generator=torch.Generator().manual_seed(n * 10 + m))
    mask = nm_mask(scores, n, m)
    groups, kept = scores.reshape(24, -1, m), mask.reshape(24, -1, m)
    assert (kept.sum(-1) == n).all()
    # the kept ones are the largest of their group
    assert (groups.masked_fill(~kept, float("inf")).amin(-1) >= groups.masked_fill(kept, -1).amax(-1)).all()


def test_row_mask_prunes_each_row_equally():
    mask = row_mask(torch.rand(10, 40, generator=torch.Generator().manual_seed(0)), 0.3)
    assert (mask.sum(1) == 28).all()


def test_wanda_beats_magnitude_on_loud_channels(correlated):
    x, w = correlated
    rms = x.pow(2).mean(0).sqrt()
    wanda = w * row_mask(wanda_scores(w, rms), 0.5)
    magnitude = w * row_mask(w.abs(), 0.5)
    assert _rel_err(x, w, wanda) < 0.9 * _rel_err(x, w, magnitude)


def test_wanda_uses_input_norms_of_each_layer(tiny, tok):
    text = tok.decode(_ids(400))
    model = prune_(copy.deepcopy(tiny), "wanda:0.5", tokenizer=tok, calibration_text=text)
    stats = collect_activations(tiny, tok, text, layers="model.layers.1.mlp.down_proj")
    w = tiny.model.layers[1].mlp.down_proj.weight
    expected = row_mask(w.abs() * stats["model.layers.1.mlp.down_proj"].rms, 0.5)  # |W| x ||X_j||, per row
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight != 0, expected)


@pytest.mark.parametrize("pattern", [dict(sparsity=0.5), dict(nm=(2, 4))])
def test_sparsegpt_reconstructs_better_than_masking(correlated, pattern):
    x, w = correlated
    pruned, mask = sparsegpt_prune_weight(w, hessian(x, torch.float32), block_size=64, **pattern)
    assert torch.equal(pruned != 0, mask) and (mask.float().mean() == 0.5)
    if "nm" in pattern:
        assert (mask.reshape(48, -1, 4).sum(-1) == 2).all()
    else:
        assert (mask.reshape(48, -1, 64).sum(-1) == 32).all()  # half of each row in every block
    magnitude = w * mask_for(w.abs(), 0.5, pattern.get("nm"), per_row=True)
    wanda = w * mask_for(wanda_scores(w, x.pow(2).mean(0).sqrt()), 0.5, pattern.get("nm"), per_row=True)
    err = _rel_err(x, w, pruned)
    assert err < 0.8 * _rel_err(x, w, w * mask)        # the update, not only the mask, helps
    assert err < _rel_err(x, w, magnitude)
    if "nm" not in pattern:  # (2:4 caps what Wanda can do here: the 4 loud inputs share one group)
        assert err < _rel_err(x, w, wanda) < _rel_err(x, w, magnitude)


def test_sparsegpt_model_is_sparse_and_wanda_nm(tiny, tok):
    model = prune_(copy.deepcopy(tiny), "sparsegpt:0.5", tokenizer=tok, calibration_text=_ids(256))
    assert (sparsity_report(model)["sparsity"] == 0.5).all()
    nm = prune_(copy.deepcopy(tiny), "wanda:4:8", tokenizer=tok, calibration_text=tok.decode(_ids(256)))
    for linear in decoder_linears(nm).values():
        assert ((linear.weight != 0).reshape(linear.out_features, -1, 8).sum(-1) == 4).all()


def test_structured_mlp_equals_zeroing_the_same_channels(tiny):
    model = prune_mlp(copy.deepcopy(tiny), 0.5, multiple_of=8)
    assert model.config.intermediate_size == 128 and model.model.layers[0].mlp.gate_proj.weight.shape == (128, 96)
    zeroed = copy.deepcopy(tiny)
    with torch.no_grad():
        for small, big in zip(model.model.layers, zeroed.model.layers):
            # channels kept: rows of gate_proj found in the pruned one
            kept = (big.mlp.gate_proj.weight[:, None, :] == small.mlp.gate_proj.weight[None]).all(-1).any(1)
            assert kept.sum() == 128
            big.mlp.gate_proj.weight[~kept] = 0
    x = torch.tensor([_ids(40)])
    torch.testing.assert_close(model(x), zeroed(x), rtol=1e-5, atol=1e-5)


def test_structured_heads_equal_zeroing_the_same_groups(tiny):
    model = prune_heads(copy.deepcopy(tiny), 0.34)  # one of 3 KV groups, with its 2 query heads
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 16)
    zeroed = copy.deepcopy(tiny)
    with torch.no_grad():
        for small, big in zip(model.model.layers, zeroed.model.layers):
            heads = big.self_attn.o_proj.weight.reshape(96, 6, 16)
            kept = [h for h in range(6) if any(torch.equal(heads[:, h], s)
                                               for s in small.self_attn.o_proj.weight.reshape(96, 4, 16).unbind(1))]
            assert len(kept) == 4 and kept[0] // 2 == kept[1] // 2  # whole groups of the same KV head
            for h in set(range(6)) - set(kept):
                heads[:, h] = 0
    x = torch.tensor([_ids(40)])
    torch.testing.assert_close(model(x), zeroed(x), rtol=1e-5, atol=1e-5)


def test_structured_model_generates_saves_loads_and_quantizes(tiny, tmp_path, tok):
    from workbench.engine import SamplingParams, generate

    model = prune_heads(prune_mlp(copy.deepcopy(tiny), 0.25, tokenizer=tok, calibration_text=tok.decode(_ids(128))), 0.4)
    assert model.weight_bytes() < tiny.weight_bytes()
    out = generate(model, tok, "Hello", SamplingParams(max_tokens=8, ignore_eos=True))
    assert len(out.token_ids) == 8
    workbench.save_pretrained(model, tmp_path, tok)
    loaded, _ = workbench.load_model(tmp_path)
    assert loaded.config == model.config
    x = torch.tensor([_ids(30)])
    assert torch.equal(loaded(x), model(x))
    quantize_(loaded, "int8")
    assert (loaded(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_recovery_keeps_masks_and_lowers_loss(tiny, tok):
    model = magnitude_prune_(copy.deepcopy(tiny), 0.5)
    before = {n: m.weight != 0 for n, m in decoder_linears(model).items()}
    history = recover(model, tok, steps=6, lr=3e-3, seq_len=32, batch_size=2, text=_ids(200) * 3, progress=False)
    assert len(history) == 6 and history["loss"].iloc[-3:].mean() < history["loss"].iloc[:3].mean()
    for name, linear in decoder_linears(model).items():
        assert torch.equal(linear.weight != 0, before[name]), name
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_sensitivity_table(tiny, tok):
    before = tiny.model.layers[1].mlp.up_proj.weight.clone()
    frame = sensitivity(tiny, tok, sparsities=(0.2, 0.9), layers=[1], unit="matrix", text=tok.decode(_ids(200)),
                        max_tokens=128, window=64, progress=False)
    assert len(frame) == 14 and set(frame["matrix"]) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                          "mlp.down_proj"}
    assert torch.equal(tiny.model.layers[1].mlp.up_proj.weight, before)  # restored after every run
    assert frame["ppl"].notna().all() and (frame["ppl_increase"] != 0).all()  # every cut changed the model


def test_storage_50_percent_dense_is_not_smaller(tiny):
    model = magnitude_prune_(copy.deepcopy(tiny), 0.5, nm=(2, 4))
    report = storage_report(model, nm=(2, 4)).set_index("format")["bytes"]
    assert report["dense"] == tiny.weight_bytes() == model.weight_bytes()
    assert report["csr"] > report["dense"] * 0.95 and report["2:4"] <= report["bitmask"] < report["dense"]
    one = tensor_storage(model.model.layers[0].mlp.up_proj.weight, (2, 4))
    assert one["nonzeros"] == one["numel"] // 2 and one["2:4"] == one["numel"] // 2 * 4 + one["numel"] // 2 // 4


@pytest.mark.parametrize("spec,message", [
    ("wanda:1.0", "[0, 1)"), ("magnitude:-0.1", "[0, 1)"), ("wanda:4:2", "0 < N <= M"),
    ("attention:0.5", "unknown pruning method"), ("mlp:2:4", "takes no N:M"), ("wanda:half", "cannot read"),
    ("heads:0.9", "every attention head"), ("magnitude:3:5", "divisible by M"),
])
def test_bad_specs_are_clear_errors(tiny, spec, message, tok):
    with pytest.raises(PruningError, match=message.replace("[", r"\[").replace(")", r"\)")):
        prune_(copy.deepcopy(tiny), spec, tokenizer=tok)


def test_unknown_layer_and_missing_tokenizer_are_errors(tiny):
    with pytest.raises(PruningError, match="no prunable layer matches"):
        prune_(copy.deepcopy(tiny), "magnitude:0.5", layers="*.experts.*")
    with pytest.raises(PruningError, match="needs calibration text"):
        prune_(copy.deepcopy(tiny), "wanda:0.5")
    with pytest.raises(PruningError, match="prune before quantizing"):
        prune_(quantize_(copy.deepcopy(tiny), "int8"), "magnitude:0.5")
    assert parse_spec("sparsegpt:2:4").pattern == "2:4" and parse_spec("mlp:0.3").pattern == "structured-mlp"


def test_cli_prune_then_quant_and_list(capsys):
    from workbench.cli import main

    assert main(["prune", "list", "--json"]) == 0
    assert {"magnitude", "wanda", "sparsegpt", "mlp", "heads"} <= set(json.loads(capsys.readouterr().out)["methods"])
    common = ["ppl", "--model", "tiny-random", "--max-tokens", "64", "--window", "32", "--threads", "1", "--json"]
    assert main(common) == 0
    dense = json.loads(capsys.readouterr().out)["ppl"]
    assert main(common + ["--prune", "wanda:2:4", "--quant", "int8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prune"] == "wanda:2:4" and out["quant"] == "int8"
    assert math.isfinite(out["ppl"]) and out["ppl"] != dense and 0.5 < out["ppl"] / dense < 2  # changed, not broken
    assert main(["ppl", "--model", "tiny-random", "--prune", "wanda:1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error:") and "[0, 1)" in err
