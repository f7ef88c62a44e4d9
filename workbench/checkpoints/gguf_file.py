"""Read a GGUF file: metadata, config and float32 weights under Hugging Face names."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError, UnsupportedTensorTypeError
from ..formats.gguf_blocks import dequantize_raw

SUPPORTED_ARCHITECTURES = ("llama",)

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_name(gguf_name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise CheckpointError(f"unexpected tensor {gguf_name!r} for a Llama-family model")


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order for q/k projections.

    llama.cpp interleaves the two halves of each head's rotary pairs (rotating x[2i], x[2i+1]);
    Hugging Face and this model rotate x[i] with x[i + head_dim/2]. Same weights, other row order.
    """
    rows = weight.shape[0]
    return weight.reshape(n_heads, rows // n_heads // 2, 2, -1).transpose(1, 2).reshape(weight.shape)


class GGUFCheckpoint:
    """A GGUF file opened read-only (memory-mapped); tensors decode on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: GGUF file not found")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CheckpointError(f"{self.path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
        import gguf

        try:
            self.reader = gguf.GGUFReader(self.path, "r")
        except Exception as e:  # the reader raises assorted errors on truncated/corrupt files
            raise CheckpointError(f"{self.path}: corrupt or truncated GGUF file ({type(e).__name__}: {e})") from None
        size = self.path.stat().st_size
        for t in self.reader.tensors:
            if t.data_offset + t.n_bytes > size:
                raise CheckpointError(f"{self.path}: truncated GGUF file (tensor {t.name} ends at byte "
                                      f"{t.data_offset + t.n_bytes}, file has {size})")

    # ---- metadata ----------------------------------------------------------------------------
    @cached_property
    def metadata(self) -> dict:
        """Every key/value field except the tokenizer's big arrays (read those with `field`)."""
        skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.ggml.scores"}
        return {k: self.field(k) for k in self.reader.fields if k not in skip and not k.startswith("GGUF.")}

    def field(self, key: str, default=None):
        f = self.reader.fields.get(key)
        if f is None:
            return default
        value = f.contents()
        return value

    @property
    def architecture(self) -> str:
        return self.field("general.architecture", "?")

    @cached_property
    def config(self) -> ModelConfig:
        arch = self.architecture
        if arch not in SUPPORTED_ARCHITECTURES:
            raise CheckpointError(f"{self.path}: architecture {arch!r} is not supported "
                                  f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")

        def need(key):
            value = self.field(f"{arch}.{key}")
            if value is None:
                raise ConfigError(f"{self.path}: metadata field {arch}.{key} is missing")
            return value

        heads = int(need("attention.head_count"))
        names = {t.name for t in self.reader.tensors}
        if "rope_freqs.weight" in names:
            raise CheckpointError(f"{self.path}: scaled RoPE (rope_freqs) is not supported")
        tokens = self.reader.fields.get("tokenizer.ggml.tokens")
        vocab = self.field(f"{arch}.vocab_size") or (len(tokens.data) if tokens else None)
        if vocab is None:
            raise ConfigError(f"{self.path}: neither {arch}.vocab_size nor tokenizer.ggml.tokens is present")
        return ModelConfig(
            vocab_size=int(vocab),
            hidden_size=int(need("embedding_length")),
            intermediate_size=int(need("feed_forward_length")),
            num_hidden_layers=int(need("block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(self.field(f"{arch}.attention.head_count_kv", heads)),
            max_position_embeddings=int(need("context_length")),
            rope_theta=float(self.field(f"{arch}.rope.freq_base", 10000.0)),
            rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            tie_word_embeddings="output.weight" not in names,
            head_dim=self.field(f"{arch}.attention.key_length"),
            bos_token_id=self.field("tokenizer.ggml.bos_token_id"),
            eos_token_id=self.field("tokenizer.ggml.eos_token_id"),
        )

    # ---- tensors -----------------------------------------------------------------------------
    def tensor_types(self) -> dict[str, str]:
        return {t.name: t.tensor_type.name for t in self.reader.tensors}

    def raw_tensor(self, name: str):
        """(raw numpy data as stored, type name, torch-order shape) of one tensor."""
        for t in self.reader.tensors:
            if t.name == name:
                return t.data, t.tensor_type.name, tuple(int(n) for n in reversed(t.shape))
        raise KeyError(name)

    def dequantize(self, name: str) -> torch.Tensor:
        data, type_name, shape = self.raw_tensor(name)
        return self._dequantize(name, data, type_name, shape)

    def _dequantize(self, name, data, type_name, shape) -> torch.Tensor:
        out = dequantize_raw(data, type_name, shape)
        if out is not None:
            return out
        # Formats we do not teach (K-quants, IQ...) still load through gguf's own decoder.
        import gguf

        try:
            values = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[type_name])
        except (NotImplementedError, KeyError, gguf.quants.QuantError) as e:
            raise UnsupportedTensorTypeError(
                f"{self.path}: tensor {name} has type {type_name}, which cannot be decoded "
                f"(decoded here: F32, F16, BF16, Q8_0, Q4_0, Q4_1, and what gguf.quants supports)") from e
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """float32 weights under Hugging Face names, q/k rows in Hugging Face order."""
        cfg = self.config
        out = {}
        for t in self.reader.tensors:
            name = hf_name(t.name)
            w = self._dequantize(t.name, t.data, t.tensor_type.name, tuple(int(n) for n in reversed(t.shape)))
            if name.endswith("q_proj.weight"):
                w = unpermute_rope_rows(w, cfg.num_attention_heads)
            elif name.endswith("k_proj.weight"):
                w = unpermute_rope_rows(w, cfg.num_key_value_heads)
            out[name] = w
        return out
