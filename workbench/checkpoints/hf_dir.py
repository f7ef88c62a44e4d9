"""Hugging Face model directories: config.json + safetensors (single or sharded) + tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from ..io import atomic_write_bytes, atomic_write_json


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of a model directory, from whichever file layout it uses.

    Pickled `.bin` files load with `weights_only=True`: plain tensors only, never arbitrary objects.
    """
    path = Path(path)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = path / index_name
        if index_file.is_file():
            try:
                shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index_file}: malformed shard index ({e})") from None
            state = {}
            for shard in shards:
                if not (path / shard).is_file():
                    raise CheckpointError(f"{path / shard}: shard named in {index_name} is missing")
                state.update(_read_weight_file(path / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return _read_weight_file(path / name)
    raise CheckpointError(f"{path}: no weights found (expected model.safetensors, a sharded "
                          "model.safetensors.index.json, or pytorch_model.bin)")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an unpickling refusal or a damaged zip both land here
        raise CheckpointError(f"{path}: cannot load safely with weights_only=True ({type(e).__name__}: {e})") from None


def write_model_dir(path: str | Path, config: ModelConfig, state: dict[str, torch.Tensor], tokenizer=None,
                    max_shard_bytes: int | None = None, extra_config: dict | None = None):
    """Write config.json (plus `extra_config` keys), safetensors weights (sharded above
    `max_shard_bytes`) and tokenizer files."""
    from safetensors.torch import save

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # stored once, as the embedding
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = str(next(iter(dtypes))).removeprefix("torch.") if len(dtypes) == 1 else "float32"
    hf_config.update(extra_config or {})
    shards = _split_shards(state, max_shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = {"model.safetensors"} if len(shards) == 1 else {*names, "model.safetensors.index.json"}
    # an old index would point the loader at old shards: every index goes first and the new one is written
    # last (a save cut short then fails to load, loudly, instead of reading old weights); old weight files
    # go once the new ones are in
    _remove_stale_weights(path, set(), INDEX_NAMES)
    meta = {"format": "pt"}
    if len(shards) == 1:
        atomic_write_bytes(path / "model.safetensors", save(shards[0], metadata=meta))
    else:
        weight_map, total = {}, 0
        for name, shard in zip(names, shards):
            atomic_write_bytes(path / name, save(shard, metadata=meta))
            weight_map.update({k: name for k in shard})
            total += sum(t.numel() * t.element_size() for t in shard.values())
        atomic_write_json(path / "model.safetensors.index.json",
                          {"metadata": {"total_size": total}, "weight_map": weight_map})
    _remove_stale_weights(path, written)
    atomic_write_json(path / "config.json", hf_config)
    gen = {k: v for k, v in (("bos_token_id", config.bos_token_id), ("eos_token_id", config.eos_token_id)) if v is not None}
    atomic_write_json(path / "generation_config.json", gen)
    if tokenizer is not None:
        tokenizer.save(path)


INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin", *INDEX_NAMES)


def _remove_stale_weights(path: Path, written: set[str], patterns=WEIGHT_PATTERNS):
    """Delete weight files a previous save left that this one did not write: a loader would read an
    old index or old shards instead of the new weights."""
    for pattern in patterns:
        for old in path.glob(pattern):
            if old.name not in written:
                old.unlink()


def _split_shards(state: dict, max_bytes: int | None) -> list[dict]:
    if not max_bytes:
        return [state]
    shards, current, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[k], size = v, size + nbytes
    return shards + [current] if current else shards
