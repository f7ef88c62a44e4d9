"""Write a model as a GGUF file (llama.cpp's format) with Q8_0, Q4_0, Q4_1, F16, BF16 or F32 weights.

Matrices are stored in the chosen block type (norms stay F32, as llama.cpp does); layers already
quantized to that GGUF type are written from their own bytes, so the file holds exactly what the
model computes with. q/k rows go back to llama.cpp's rotary order. The tokenizer (byte-level BPE),
its special tokens and chat template go into the `tokenizer.*` fields, so `gguf`'s reader,
transformers and llama.cpp can all load the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import InvalidParameterError
from ..io import atomic_path
from ..formats import gguf_blocks
from ..quant.linear import GGUFBlockLinear, QuantizedEmbedding, QuantizedLinear

EXPORT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

_LAYER_NAMES = {  # our module name -> llama.cpp tensor name
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face row order -> llama.cpp's (the inverse of `gguf_file.unpermute_rope_rows`)."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _matrices(model):
    """(gguf name, module) for every weight matrix, in file order."""
    yield "token_embd.weight", model.model.embed_tokens
    for i, layer in enumerate(model.model.layers):
        for ours, theirs in _LAYER_NAMES.items():
            yield f"blk.{i}.{theirs}.weight", layer.get_submodule(ours)
    yield "output_norm.weight", model.model.norm
    if not model.config.tie_word_embeddings:
        yield "output.weight", model.lm_head


def _tensor_data(module, type_name: str, n_rope_heads: int | None):
    """(numpy array, raw dtype or None) for one module's weight in `type_name`."""
    if isinstance(module, QuantizedEmbedding):
        module = module.head[0]
    if isinstance(module, GGUFBlockLinear) and module.type_name == type_name:
        data = module.raw  # the layer's own blocks: exported bit for bit
    else:
        weight = module.dequantized_weight() if isinstance(module, QuantizedLinear) else module.weight.detach()
        weight = weight.float().cpu()
        if weight.dim() == 1 or type_name == "F32":
            data = weight
        elif type_name == "F16":
            data = weight.half()
        elif type_name == "BF16":  # numpy has no bfloat16: the raw bytes, which gguf takes with their type
            data = weight.bfloat16().view(torch.uint8)
        else:
            data = gguf_blocks.quantize_raw(weight, type_name)
    if n_rope_heads is not None:
        data = permute_rope_rows(data, n_rope_heads)
    raw_type = type_name if data.dtype == torch.uint8 else None
    return data.contiguous().numpy(), raw_type


def export_gguf(model, tokenizer, path: str | Path, type_name: str = "Q8_0", name: str = "workbench export"):
    """Write `model` and `tokenizer` to `path` as a GGUF file with matrices in `type_name`."""
    import gguf

    if type_name not in EXPORT_TYPES:
        raise InvalidParameterError(f"cannot export GGUF type {type_name!r} (accepted: {', '.join(EXPORT_TYPES)})")
    path = Path(path)
    with atomic_path(path) as tmp:  # a unique temporary name beside the target: readers never see half a file
        _write_gguf(gguf, tmp, model, tokenizer, type_name, name)
    return path


def _write_gguf(gguf, tmp: Path, model, tokenizer, type_name: str, name: str):
    cfg = model.config
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    file_types = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}  # llama.cpp's LLAMA_FTYPE values
    writer.add_file_type(file_types[type_name])
    _add_tokenizer(writer, tokenizer)
    for gguf_name, module in _matrices(model):
        heads = None
        if gguf_name.endswith("attn_q.weight"):
            heads = cfg.num_attention_heads
        elif gguf_name.endswith("attn_k.weight"):
            heads = cfg.num_key_value_heads
        data, raw = _tensor_data(module, type_name, heads)
        if raw is None:
            writer.add_tensor(gguf_name, data)
        else:
            writer.add_tensor(gguf_name, data, raw_dtype=gguf.GGMLQuantizationType[raw])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_tokenizer(writer, tokenizer):
    spec = json.loads(tokenizer.backend.to_str())
    bpe = spec["model"]
    if bpe.get("type") != "BPE":
        raise InvalidParameterError("GGUF export supports byte-level BPE tokenizers only")
    vocab = sorted(bpe["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer.gguf_pre or "default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in special else 1 for t, _ in vocab])  # 3: control token
    writer.add_token_merges(merges)
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_pad_token_id, tokenizer.token_to_id(tokenizer.pad_token))):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(tokenizer.add_bos_token)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
