"""ModelConfig: the few numbers that define a Llama-family transformer."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-family decoder (names follow Hugging Face's `LlamaConfig`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        def require(ok: bool, what: str):
            if not ok:
                raise ConfigError(f"invalid model config: {what}")

        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        require(self.num_attention_heads % self.num_key_value_heads == 0,
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim is None:
            require(self.hidden_size % self.num_attention_heads == 0,
                    f"hidden_size ({self.hidden_size}) must divide by num_attention_heads "
                    f"({self.num_attention_heads}) when head_dim is not given")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        require(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        require(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")
        require(self.rms_norm_eps > 0, f"rms_norm_eps must be positive, got {self.rms_norm_eps}")

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    def num_parameters(self) -> int:
        """Parameter count derived from the shapes alone (a tied head counts once)."""
        d, f, layers = self.hidden_size, self.intermediate_size, self.num_hidden_layers
        attention = d * self.q_dim + 2 * d * self.kv_dim + self.q_dim * d
        mlp = 3 * d * f
        norms = 2 * d
        embedding = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return embedding + layers * (attention + mlp + norms) + d + head

    def kv_bytes_per_token(self, bytes_per_value: int = 4) -> int:
        """KV cache bytes per position: 2 (K and V) x layers x kv heads x head_dim x bytes."""
        return 2 * self.num_hidden_layers * self.kv_dim * bytes_per_value

    # ---- Hugging Face config.json ------------------------------------------------------------
    REQUIRED_HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads")

    @classmethod
    def from_hf_dict(cls, cfg: dict, source: str = "config.json") -> "ModelConfig":
        missing = [k for k in cls.REQUIRED_HF_FIELDS if k not in cfg]
        if missing:
            raise ConfigError(f"{source}: missing required field(s) {', '.join(missing)} "
                              f"(a Llama-family config.json needs {', '.join(cls.REQUIRED_HF_FIELDS)})")
        model_type = cfg.get("model_type", "llama")
        if model_type not in ("llama", "mistral", "qwen2", "smollm3") and cfg.get("architectures") != ["LlamaForCausalLM"]:
            raise ConfigError(f"{source}: model_type {model_type!r} is not a Llama-family model "
                              f"(supported: llama)")
        scaling = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {})
        rope_type = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
        if rope_type not in ("default", None):
            raise ConfigError(f"{source}: rope scaling {rope_type!r} is not supported (only plain RoPE)")
        theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        eos = cfg.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in cfg.items() if k in names}
        values.update(rope_theta=float(theta), eos_token_id=eos,
                      num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: not found (a Hugging Face model directory needs config.json)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(cfg, source=str(path))

    def to_hf_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d = {k: v for k, v in d.items() if v is not None}
        d.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
                 attention_bias=False, mlp_bias=False, torch_dtype="float32")
        return d

    @classmethod
    def tiny(cls, **overrides) -> "ModelConfig":
        """A few-hundred-thousand-parameter config for fast unit tests (random weights)."""
        base = dict(vocab_size=49152, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    bos_token_id=1, eos_token_id=2)
        base.update(overrides)
        return cls(**base)
