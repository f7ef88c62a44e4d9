"""Loading, caching and saving checkpoints, and the errors bad checkpoints raise."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest
import torch

import workbench.checkpoints as checkpoints
from workbench import load_model, save_pretrained
from workbench.checkpoints.cache import FORMAT_VERSION, cached_dir, file_sha256
from workbench.checkpoints.gguf_file import GGUFCheckpoint
from workbench.checkpoints.registry import bundled_path
from workbench.errors import CheckpointError, ConfigError, UnknownModelError, UnsupportedTensorTypeError

PROBE_TEXT = "Hello <|im_start|>user\n  def f(x):\n\treturn 3.14159 # 机器 🤗<|im_end|>"


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


def assert_same_model(a, b):
    """Two (model, tokenizer) pairs hold the same config, weights (bit-exact) and tokenizer."""
    (ma, ta), (mb, tb) = a, b
    assert ma.config == mb.config
    assert_same_weights(ma, mb)
    assert ta.encode(PROBE_TEXT) == tb.encode(PROBE_TEXT)
    assert ta.chat_template == tb.chat_template
    assert (ta.bos_token, ta.eos_token, ta.pad_token) == (tb.bos_token, tb.eos_token, tb.pad_token)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


@pytest.fixture
def tiny_dir(tiny, tmp_path):
    """A fresh Hugging Face directory of the tiny random model (tests may damage it)."""
    path = tmp_path / "tiny"
    save_pretrained(tiny[0], path, tiny[1])
    return path


# ---- the bundled model --------------------------------------------------------------------------
def test_bundled_config_and_parameter_count(model_and_tokenizer):
    model, _ = model_and_tokenizer
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.head_dim == 64
    assert c.rope_theta == 100000.0
    assert c.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert c.num_parameters() == model.num_parameters() == 134_515_008
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32 and not model.training


# ---- the dequantized-weight cache ---------------------------------------------------------------
@pytest.fixture
def big_tmp_path(tmp_path):
    """A tmp dir emptied after the test: pytest keeps three runs' tmp dirs, and these hold ~540 MB."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_cache_entry_reload_and_uncached_load_agree(bundled_gguf, big_tmp_path, monkeypatch):
    """First load builds an entry named by the file's SHA-256; the second reads it without parsing the
    GGUF again; both equal `use_cache=False`. The GGUF's weights are decoded once (memoized below) so
    the test parses the 100 MB file a single time: what is compared is everything after the decoding
    (safetensors round trip, config.json round trip, tokenizer.json round trip)."""
    import gguf

    monkeypatch.setenv("WORKBENCH_CACHE", str(big_tmp_path / "cache"))
    readers, original_reader = {}, gguf.GGUFReader

    def memoized_reader(path, mode="r"):  # read-only memory map: safe to share
        key = (str(path), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    monkeypatch.setattr(gguf, "GGUFReader", memoized_reader)
    decoded = {}
    original_state_dict = GGUFCheckpoint.state_dict

    def memoized_state_dict(self):
        if self.path not in decoded:
            decoded[self.path] = original_state_dict(self)
        return dict(decoded[self.path])

    monkeypatch.setattr(GGUFCheckpoint, "state_dict", memoized_state_dict)

    first = load_model(bundled_gguf)
    digest = file_sha256(bundled_gguf)
    entries = list((big_tmp_path / "cache" / "gguf").iterdir())
    assert [p.name for p in entries] == [f"{bundled_gguf.stem}-{digest[:16]}-v{FORMAT_VERSION}"]
    assert json.loads((entries[0] / "source.json").read_text())["sha256"] == digest
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in entries[0].iterdir()}

    def no_reparse(*args, **kwargs):
        raise AssertionError("a cached GGUF was converted again")

    monkeypatch.setattr(checkpoints, "_convert_gguf", no_reparse)
    second = load_model(bundled_gguf)
    assert_same_model(first, second)

    uncached = load_model(bundled_gguf, use_cache=False)
    assert len(decoded) == 1 and len(readers) == 1
    assert_same_model(first, uncached)
    ids = torch.tensor([first[1].encode("The capital of France is")])
    with torch.no_grad():
        assert torch.equal(first[0](ids), uncached[0](ids))


def test_cached_dir_keys_on_content(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "m.gguf"
    source.write_bytes(b"version one")
    calls = []

    def build(out):
        calls.append(out)
        (out / "payload").write_bytes(source.read_bytes())

    a = cached_dir(source, build)
    assert cached_dir(source, build) == a and len(calls) == 1
    source.write_bytes(b"version two")
    b = cached_dir(source, build)
    assert b != a and len(calls) == 2 and (b / "payload").read_bytes() == b"version two"

    def failing_build(out):
        (out / "half").write_bytes(b"x")
        raise RuntimeError("interrupted")

    source.write_bytes(b"version three")
    with pytest.raises(RuntimeError):
        cached_dir(source, failing_build)
    assert sorted(p.name for p in (tmp_path / "cache" / "gguf").iterdir()) == sorted([a.name, b.name])


# ---- save_pretrained ----------------------------------------------------------------------------
def test_save_tiny_round_trip(tiny, tiny_dir):
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in tiny_dir.iterdir()}
    assert_same_model(tiny, load_model(tiny_dir))


def test_save_bundled_round_trip(model_and_tokenizer, big_tmp_path):
    save_pretrained(model_and_tokenizer[0], big_tmp_path / "smollm2", model_and_tokenizer[1])
    assert_same_model(model_and_tokenizer, load_model(big_tmp_path / "smollm2"))


def test_saved_tiny_model_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model, tokenizer = load_model("tiny-random", seed=1)
    with torch.no_grad():  # std 0.02 leaves attention nearly uniform; sharpen it so RoPE/GQA errors show
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(5)
    save_pretrained(model, tmp_path, tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode("The quick brown fox jumps over the lazy dog again and again.")])
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == theirs.shape == (1, ids.shape[1], 49152)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert ours.std().item() > 0.1  # the comparison is not between two near-zero tensors


def test_sharded_save_round_trip(tiny, tmp_path):
    save_pretrained(tiny[0], tmp_path, tiny[1], max_shard_bytes=1_000_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)
    assert not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(tiny[0].state_dict()) - {"lm_head.weight"}
    assert_same_model(tiny, load_model(tmp_path))


def test_sharded_missing_shard(tiny, tmp_path):
    save_pretrained(tiny[0], tmp_path, tiny[1], max_shard_bytes=1_000_000)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(tmp_path)


def test_pytorch_bin_loads_with_weights_only(tiny, tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    torch.save(tiny[0].state_dict(), tiny_dir / "pytorch_model.bin")
    assert_same_model(tiny, load_model(tiny_dir))


class _Payload:
    """Unpickling this touches a file: what a malicious checkpoint would do (with os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_pytorch_bin_with_pickled_object_is_refused(tiny, tiny_dir, tmp_path):
    (tiny_dir / "model.safetensors").unlink()
    marker = tmp_path / "executed"
    state = dict(tiny[0].state_dict())
    state["model.norm.weight"] = _Payload(marker)
    torch.save(state, tiny_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_model(tiny_dir)
    assert not marker.exists()
    torch.load(tiny_dir / "pytorch_model.bin", weights_only=False)  # the payload is live ...
    assert marker.exists()                                            # ... had it been unpickled


# ---- bad input ----------------------------------------------------------------------------------
def test_unknown_name_or_missing_path(tmp_path):
    with pytest.raises(UnknownModelError, match="smollm2-135m") as e:
        load_model("no-such-model")
    assert "no-such-model" in str(e.value)
    missing = tmp_path / "absent.gguf"
    with pytest.raises(UnknownModelError, match="absent.gguf"):
        load_model(missing)
    with pytest.raises(UnknownModelError, match="smollm2-135m"):
        bundled_path("no-such-model")
    with pytest.raises(CheckpointError, match="absent.gguf"):
        GGUFCheckpoint(missing)


def test_unsupported_file_kind(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_model(path)


def test_non_gguf_file_renamed(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "notes.gguf"
    path.write_text("this is a text file, not a model\n" * 10)
    with pytest.raises(CheckpointError, match="notes.gguf.*not a GGUF"):
        load_model(path, use_cache=False)
    with pytest.raises(CheckpointError, match="notes.gguf"):
        load_model(path)  # through the cache: the failed build leaves no entry behind
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


@pytest.mark.parametrize("kilobytes", [100, 3 << 10, 60 << 10])
def test_truncated_gguf(bundled_gguf, tmp_path, kilobytes):
    """100 KB cuts the metadata (tokenizer arrays, ~1.7 MB in all); 3 MB and 60 MB cut the tensor data."""
    path = tmp_path / f"cut{kilobytes}k.gguf"
    with open(bundled_gguf, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(kilobytes << 10))
    with pytest.raises(CheckpointError, match=f"cut{kilobytes}k.gguf.*(truncated|corrupt)"):
        load_model(path, use_cache=False)


def test_truncated_safetensors(tiny_dir):
    weights = tiny_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tiny_dir)


def test_corrupt_safetensors_header(tiny_dir):
    (tiny_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json!!!}" + b"\0" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tiny_dir)


def test_no_weights_in_dir(tiny_dir):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(tiny_dir)


@pytest.mark.parametrize("field", ["hidden_size", "num_attention_heads", "vocab_size"])
def test_config_missing_field(tiny_dir, field):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    del cfg[field]
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=field) as e:
        load_model(tiny_dir)
    assert "config.json" in str(e.value)


def test_config_not_json(tiny_dir):
    (tiny_dir / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match="config.json"):
        load_model(tiny_dir)


def test_weights_with_wrong_shape(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["intermediate_size"] = 128  # the saved MLP weights are 160 wide
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"mlp\.(gate|up|down)_proj\.weight.*160") as e:
        load_model(tiny_dir)
    assert str(tiny_dir) in str(e.value)


def test_weights_missing_tensor(tiny, tiny_dir):
    from safetensors.torch import save_file

    state = {k: v for k, v in tiny[0].state_dict().items()
             if k not in ("lm_head.weight", "model.layers.1.self_attn.k_proj.weight")}
    save_file(state, str(tiny_dir / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing \['model\.layers\.1\.self_attn\.k_proj\.weight'\]"):
        load_model(tiny_dir)


def _write_gguf(path, tensors):
    """A small llama-architecture GGUF: (name, uint8 bytes array, GGML type) tensors."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_vocab_size(8)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_feed_forward_length(64)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, data, qtype in tensors:
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_unsupported_tensor_type(tmp_path):
    """Q8_1 is a real GGML type that neither blocks.py nor gguf.quants can decode."""
    import gguf

    qtype = gguf.GGMLQuantizationType.Q8_1
    assert gguf.quants._type_traits.get(qtype) is None  # premise: gguf has no decoder for it
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    path = tmp_path / "q8_1.gguf"
    _write_gguf(path, [("token_embd.weight", np.zeros((8, block_bytes), dtype=np.uint8), qtype)])
    ckpt = GGUFCheckpoint(path)
    assert ckpt.tensor_types() == {"token_embd.weight": "Q8_1"}
    with pytest.raises(UnsupportedTensorTypeError, match="q8_1.gguf.*token_embd.weight.*Q8_1"):
        ckpt.dequantize("token_embd.weight")
    with pytest.raises(UnsupportedTensorTypeError, match="q8_1.gguf"):
        load_model(path, use_cache=False)


def test_gguf_falls_back_to_gguf_quants(tmp_path):
    """A type we do not decode ourselves (Q5_0) but gguf.quants does loads through the fallback."""
    import gguf

    qtype = gguf.GGMLQuantizationType.Q5_0
    values = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    raw = gguf.quants.quantize(values, qtype)
    path = tmp_path / "q5_0.gguf"
    _write_gguf(path, [("token_embd.weight", raw, qtype)])
    out = GGUFCheckpoint(path).dequantize("token_embd.weight")
    assert torch.equal(out, torch.from_numpy(gguf.quants.dequantize(raw, qtype)))
    assert (out - torch.from_numpy(values)).abs().max() < 0.1
