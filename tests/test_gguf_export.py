"""GGUF export: the file holds exactly what the quantized model computes, and other readers load it."""

import copy

import pytest
import torch

from workbench import kernels, load_model
from workbench.checkpoints.gguf_export import export_gguf
from workbench.errors import InvalidParameterError
from workbench.quant import quantize_


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1"])
def test_export_reloads_to_the_quantized_weights(tmp_path, type_name):
    model, tok = load_model("tiny-random")
    quantized = quantize_(copy.deepcopy(model), type_name.lower())
    path = export_gguf(quantized, tok, tmp_path / "m.gguf", type_name)
    back, tok2 = load_model(path, use_cache=False)
    x = torch.tensor([tok.encode("Hello, 2024 world")])
    with torch.inference_mode(), kernels.disabled():  # bit for bit needs the same arithmetic on both sides
        assert torch.equal(back(x), quantized(x))
    assert tok2.encode("<|im_start|>user 123") == tok.encode("<|im_start|>user 123")
    assert tok2.chat_template == tok.chat_template


def test_gguf_reader_and_transformers_load_the_export(tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    model, tok = load_model("tiny-random")
    path = export_gguf(model, tok, tmp_path / "tiny-q8.gguf", "Q8_0")
    reader = gguf.GGUFReader(path)
    types = {t.tensor_type.name for t in reader.tensors}
    assert types == {"Q8_0", "F32"}
    ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ours, _ = load_model(path, use_cache=False)
    x = torch.tensor([tok.encode("The capital of France is")])
    with torch.inference_mode():
        assert (ref(x).logits - ours(x)).abs().max() < 1e-4


def test_bf16_export_reloads_to_the_bfloat16_weights(tmp_path):
    model, tok = load_model("tiny-random")
    path = export_gguf(model, tok, tmp_path / "m.gguf", "BF16")
    back, _ = load_model(path, use_cache=False)
    for (name, ours), theirs in zip(model.state_dict().items(), back.state_dict().values()):
        expected = ours.bfloat16().float() if ours.dim() == 2 else ours  # norms stay F32
        assert torch.equal(theirs.float(), expected), name


def test_bad_export_type(tmp_path):
    model, tok = load_model("tiny-random")
    with pytest.raises(InvalidParameterError, match="Q4_1"):
        export_gguf(model, tok, tmp_path / "x.gguf", "Q5_K")
