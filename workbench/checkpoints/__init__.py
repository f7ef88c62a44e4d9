"""Loading and saving models: bundled names, GGUF files, Hugging Face directories, random configs."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import kernels as cpu_kernels
from ..config import ModelConfig
from ..errors import CheckpointError, InvalidParameterError, UnknownModelError
from ..io import atomic_write_json
from ..model import LlamaModel, RotaryEmbedding
from ..quant.serialize import (HF_QUANTIZATION_CONFIG, MANIFEST, install_quantized_layers, quantization_manifest,
                               read_manifest)
from ..tokenizer import Tokenizer
from .cache import cached_dir
from .gguf_file import GGUFCheckpoint
from .hf_dir import read_state_dict, write_model_dir
from .registry import BUNDLED, DEFAULT_MODEL, bundled_path

TINY_RANDOM = "tiny-random"


def resolve(name_or_path: str | Path) -> Path:
    """A bundled model name or a path -> the file or directory to read."""
    if isinstance(name_or_path, str) and name_or_path in BUNDLED:
        return bundled_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    raise UnknownModelError(f"unknown model {str(name_or_path)!r}: not a file or directory, and not a known "
                            f"name (known: {', '.join(list(BUNDLED) + [TINY_RANDOM])})")


def load_model(name_or_path: str | Path | ModelConfig = DEFAULT_MODEL, dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", *, use_cache: bool = True, seed: int = 0, kernels: bool = False):
    """Our `LlamaModel` (eval mode) and its `Tokenizer`.

    `name_or_path`: a bundled name ("smollm2-135m"), a `.gguf` file, a Hugging Face directory
    (config.json + safetensors, sharded or not), "tiny-random" or a `ModelConfig` (random weights,
    seeded, with the bundled tokenizer: for fast tests). GGUF weights are dequantized to float32
    once and cached as safetensors (see `cache.py`); `use_cache=False` always re-parses.
    `kernels=True` runs decode-sized float32/bfloat16 products on our CPU kernels (`workbench.kernels.enable`).
    """
    if kernels:
        model, tokenizer = load_model(name_or_path, dtype, device, use_cache=use_cache, seed=seed)
        return cpu_kernels.enable(model), tokenizer
    dtype = _as_dtype(dtype)
    if isinstance(name_or_path, ModelConfig) or name_or_path == TINY_RANDOM:
        config = name_or_path if isinstance(name_or_path, ModelConfig) else ModelConfig.tiny()
        return random_model(config, dtype, device, seed), load_tokenizer(DEFAULT_MODEL)
    path = resolve(name_or_path)
    if path.is_dir():
        config = ModelConfig.from_json_file(path / "config.json")
        prepare = None
        if (path / "quantization.json").is_file():
            manifest = read_manifest(path)
            prepare = lambda model: install_quantized_layers(model, manifest, str(path))  # noqa: E731
        model = model_from_state(config, read_state_dict(path), dtype, device, source=str(path), prepare=prepare)
        return model, Tokenizer.from_dir(path)
    if path.suffix.lower() != ".gguf":
        raise CheckpointError(f"{path}: unsupported file (accepted: a .gguf file or a Hugging Face model "
                              f"directory; .pt/.bin files load as part of a directory with config.json)")
    if use_cache:
        return load_model(cached_dir(path, lambda tmp: _convert_gguf(path, tmp)), dtype, device)
    ckpt = GGUFCheckpoint(path)
    return model_from_state(ckpt.config, ckpt.state_dict(), dtype, device, str(path)), Tokenizer.from_gguf(ckpt)


def load_tokenizer(name_or_path: str | Path = DEFAULT_MODEL) -> Tokenizer:
    path = resolve(name_or_path)
    if path.is_dir():
        return Tokenizer.from_dir(path)
    return Tokenizer.from_dir(cached_dir(path, lambda tmp: _convert_gguf(path, tmp)))


def _convert_gguf(path: Path, out_dir: Path):
    ckpt = GGUFCheckpoint(path)
    write_model_dir(out_dir, ckpt.config, ckpt.state_dict(), Tokenizer.from_gguf(ckpt))


def save_pretrained(model: LlamaModel, path: str | Path, tokenizer: Tokenizer | None = None,
                    max_shard_bytes: int | None = None):
    """Write a Hugging Face directory that `AutoModelForCausalLM.from_pretrained` and `load_model` read.

    A quantized model keeps its packed integers: the directory also gets `quantization.json`, and
    `load_model` rebuilds the same layers (transformers cannot read such a directory; see
    `workbench.quant.serialize`).
    """
    path = Path(path)
    manifest = quantization_manifest(model)
    extra = {"quantization_config": HF_QUANTIZATION_CONFIG} if manifest else None
    write_model_dir(path, model.config, model.state_dict(), tokenizer, max_shard_bytes, extra_config=extra)
    if manifest:
        atomic_write_json(path / MANIFEST, manifest)
    else:
        (path / MANIFEST).unlink(missing_ok=True)  # a float model saved over a quantized one


def model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], dtype=torch.float32,
                     device="cpu", source: str = "checkpoint", prepare=None) -> LlamaModel:
    """Build a model around existing tensors (no random init), checking names and shapes.

    `prepare(model)` may swap modules of the empty model first (quantized layers). Parameters take
    `dtype`; buffers (packed integers, their scales) keep the dtype they were saved in.
    """
    with torch.device("meta"):
        model = LlamaModel(config)
    if prepare is not None:
        prepare(model)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    float_params = {k for k, _ in model.named_parameters()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not match the config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, "
                                  f"the config implies {tuple(shape)}")
    model.load_state_dict({k: v.to(device=device, dtype=dtype if k in float_params else v.dtype)
                           for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings and isinstance(model.lm_head, torch.nn.Linear):
        model.lm_head.weight = model.model.embed_tokens.weight
    model.rotary = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta).to(device)
    return model.eval()


def random_model(config: ModelConfig, dtype=torch.float32, device="cpu", seed: int = 0) -> LlamaModel:
    """Random weights (normal, std 0.02; norms at 1), reproducible from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaModel(config).state_dict().items()}
    state = {k: torch.ones(s) if k.endswith("norm.weight") else torch.randn(s, generator=gen) * 0.02
             for k, s in shapes.items()}
    return model_from_state(config, state, dtype, device, source="random")


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise InvalidParameterError(f"unknown dtype {dtype!r} (accepted: {', '.join(names)})")
    return names[dtype]
