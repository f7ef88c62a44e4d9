"""workbench.lab.anatomy: parameter tables, size breakdowns, weight statistics, memory and decode arithmetic."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from workbench import ModelConfig, load_model, save_pretrained
from workbench.errors import UnsupportedTensorTypeError
from workbench.lab import anatomy


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_model("tiny-random")
    return model


def test_parameter_table_counts_every_weight_once(tiny):
    table = anatomy.parameter_table(tiny)
    assert table["numel"].sum() == tiny.num_parameters() == tiny.config.num_parameters()
    assert table["bytes"].sum() == tiny.weight_bytes()
    assert "lm_head.weight" not in set(table["name"])  # tied: listed once, as the embedding
    assert set(table["group"]) == set(anatomy.GROUPS)


def test_parameter_table_one_layer(tiny):
    cfg = tiny.config
    layer = anatomy.parameter_table(tiny, layer=1)
    assert len(layer) == 9 and layer["name"].str.startswith("model.layers.1.").all()
    shapes = dict(zip(layer["name"], layer["shape"]))
    assert shapes["model.layers.1.self_attn.k_proj.weight"] == (cfg.kv_dim, cfg.hidden_size)
    assert shapes["model.layers.1.mlp.down_proj.weight"] == (cfg.hidden_size, cfg.intermediate_size)


def test_untied_head_is_its_own_row():
    model, _ = load_model(ModelConfig.tiny(tie_word_embeddings=False))
    table = anatomy.parameter_table(model)
    assert "lm_head.weight" in set(table["name"])
    breakdown = anatomy.size_breakdown(model).set_index("group")
    cfg = model.config
    assert breakdown.loc["embedding/head", "params"] == 2 * cfg.vocab_size * cfg.hidden_size


def test_size_breakdown_matches_the_formula(tiny):
    cfg = tiny.config
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    b = anatomy.size_breakdown(tiny).set_index("group")
    assert list(b.index) == list(anatomy.GROUPS)
    assert b.loc["embedding/head", "params"] == cfg.vocab_size * d
    assert b.loc["attention", "params"] == layers * (2 * d * cfg.q_dim + 2 * d * cfg.kv_dim)
    assert b.loc["mlp", "params"] == layers * 3 * d * cfg.intermediate_size
    assert b.loc["norms", "params"] == layers * 2 * d + d
    assert b["share"].sum() == pytest.approx(1.0)
    assert (b["bytes"] == 4 * b["params"]).all()


def test_param_group_rejects_unknown_names():
    with pytest.raises(ValueError):
        anatomy.param_group("model.rotary.cos")


def test_excess_kurtosis_of_known_distributions():
    gen = torch.Generator().manual_seed(0)
    assert anatomy.excess_kurtosis(torch.randn(400_000, generator=gen)) == pytest.approx(0.0, abs=0.05)
    assert anatomy.excess_kurtosis(torch.rand(400_000, generator=gen)) == pytest.approx(-1.2, abs=0.02)
    assert anatomy.excess_kurtosis(torch.tensor([-1.0, 1.0] * 50)) == pytest.approx(-2.0)


def test_weight_stats(tiny):
    stats = anatomy.weight_stats(tiny)
    assert len(stats) == 1 + 7 * tiny.config.num_hidden_layers  # every matrix, tied head once
    w = tiny.model.layers[0].mlp.up_proj.weight.detach()
    row = stats.set_index("name").loc["model.layers.0.mlp.up_proj.weight"]
    assert row["std"] == pytest.approx(float(w.std()), rel=1e-3)
    assert row["max_abs"] == pytest.approx(float(w.abs().max()))
    assert row["max_abs_over_std"] == pytest.approx(row["max_abs"] / row["std"])
    assert abs(row["kurtosis"]) < 0.3  # random normal init
    one = anatomy.weight_stats(tiny, ["model.norm.weight"])
    assert len(one) == 1 and one["max_abs"].iloc[0] == 1.0 and one["std"].iloc[0] == 0.0  # norms start at 1
    assert np.isnan(one["max_abs_over_std"].iloc[0]) and np.isnan(one["kurtosis"].iloc[0])


def test_outlier_channels_finds_a_planted_column():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=gen)
    w[:, 7] *= 10
    w[:, 3] *= 4
    top = anatomy.outlier_channels(w, top=2)
    assert top["channel"].tolist() == [7, 3]
    assert top["x_median"].iloc[0] > 8


def test_strongest_input_channel(tiny):
    with torch.no_grad():
        saved = [layer.mlp.gate_proj.weight[:, 5].clone() for layer in tiny.model.layers]
        for layer in tiny.model.layers:
            layer.mlp.gate_proj.weight[:, 5] *= 20
        try:
            top = anatomy.strongest_input_channel(tiny, "mlp.gate_proj")
        finally:
            for layer, col in zip(tiny.model.layers, saved):
                layer.mlp.gate_proj.weight[:, 5] = col
    assert top["layer"].tolist() == list(range(tiny.config.num_hidden_layers))
    assert (top["channel"] == 5).all() and (top["x_median"] > 10).all()


def test_dtype_memory_table():
    table = anatomy.dtype_memory_table(3200).set_index("format")
    assert table.loc["fp32", "bytes"] == 12800 and table.loc["bf16", "bytes"] == 6400
    assert table.loc["int8", "bytes"] == 3200 and table.loc["int4", "bytes"] == 1600
    # 100 blocks of 32 weights: Q8_0 34 bytes, Q4_1 20, Q4_0 18 each
    assert table.loc["Q8_0", "bytes"] == 3400 and table.loc["Q4_1", "bytes"] == 2000
    assert table.loc["Q4_0", "bytes"] == 1800 and table.loc["Q4_0", "bits_per_weight"] == 4.5
    custom = anatomy.dtype_memory_table(10, {"x": 3.0})
    assert custom["bytes"].tolist() == [30.0]


def test_decode_ceiling():
    assert anatomy.decode_ceiling_tok_s(500e6, 50) == pytest.approx(100.0)
    table = anatomy.decode_ceiling_table(1_000_000_000, [10, 40], {"fp32": 4.0, "int4": 0.5})
    assert table.columns.tolist() == ["format", "MB", "tok/s @ 10 GB/s", "tok/s @ 40 GB/s"]
    assert table["tok/s @ 10 GB/s"].tolist() == pytest.approx([2.5, 20.0])
    assert table["tok/s @ 40 GB/s"].tolist() == pytest.approx([10.0, 80.0])


def test_safetensors_header_and_tensor_by_hand(tiny, tmp_path):
    save_pretrained(tiny, tmp_path)
    path = tmp_path / "model.safetensors"
    header = anatomy.read_safetensors_header(path)
    state = {k: v for k, v in tiny.state_dict().items() if k != "lm_head.weight"}
    assert set(header) - {"__metadata__"} == set(state)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    last = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert 8 + n + last == path.stat().st_size
    entry = header["model.layers.0.self_attn.q_proj.weight"]
    assert entry["dtype"] == "F32" and entry["shape"] == list(state["model.layers.0.self_attn.q_proj.weight"].shape)
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        np.testing.assert_array_equal(anatomy.read_safetensors_tensor(path, name), state[name].numpy())


def test_read_safetensors_tensor_rejects_unmapped_dtype(tmp_path):
    model, _ = load_model("tiny-random", dtype="bfloat16")
    save_pretrained(model, tmp_path)
    with pytest.raises(UnsupportedTensorTypeError, match="BF16"):
        anatomy.read_safetensors_tensor(tmp_path / "model.safetensors", "model.norm.weight")


def test_gguf_tensor_bytes_of_the_bundled_file(bundled_gguf):
    from workbench.checkpoints.gguf_file import GGUFCheckpoint

    table = anatomy.gguf_tensor_bytes(GGUFCheckpoint(bundled_gguf)).set_index("type")
    assert table["tensors"].to_dict() == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert table["params"].sum() == 134_515_008
    assert table.loc["Q4_1", "bytes"] == table.loc["Q4_1", "params"] * 20 // 32
    assert table.loc["Q8_0", "bits_per_weight"] == 8.5
    assert table["bytes"].sum() < bundled_gguf.stat().st_size


def test_real_model_breakdown(model_and_tokenizer):
    model, _ = model_and_tokenizer
    b = anatomy.size_breakdown(model).set_index("group")
    assert b["params"].to_dict() == {"embedding/head": 28_311_552, "attention": 26_542_080,
                                     "mlp": 79_626_240, "norms": 35_136}
    assert b.loc["embedding/head", "share"] == pytest.approx(0.2105, abs=1e-3)
