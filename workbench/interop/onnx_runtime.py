"""An exported file on ONNX Runtime: prefill, then greedy decode step by step through its KV cache.

`OnnxRunner(path, expect=model)` opens an `InferenceSession` and, given the model the file should
come from, compares the file's metadata with it first: another configuration (named field by
field) or other weights raise `OnnxModelMismatchError` before a single token runs. The runner is
also a callable of token ids -> logits with `config` and `device`, so `workbench.eval.perplexity`
scores it exactly as it scores our model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import InvalidParameterError, OnnxModelMismatchError
from .onnx_export import FORMAT, identity, read_metadata, require
from .graph import input_names


def check_identity(path: str | Path, meta: dict[str, str], model, name: str | None = None):
    """Raise `OnnxModelMismatchError` naming what differs when the file at `path` (metadata `meta`)
    was not exported from `model`."""
    if meta.get("workbench.format") != FORMAT:
        found = meta.get("workbench.format", "none")
        raise OnnxModelMismatchError(f"{path}: not a workbench ONNX export (format {found}, expected {FORMAT}); "
                                     f"write one with `workbench export FILE.onnx`")
    ours = identity(model, name or "this model")
    source = meta.get("workbench.model", "?")
    theirs_cfg, ours_cfg = json.loads(meta["workbench.config"]), json.loads(ours["workbench.config"])
    differs = [f"{k} {theirs_cfg.get(k)} (file) vs {ours_cfg.get(k)} (model)"
               for k in sorted(set(theirs_cfg) | set(ours_cfg)) if theirs_cfg.get(k) != ours_cfg.get(k)]
    if differs:
        raise OnnxModelMismatchError(f"{path} was exported from {source!r}, another model than {ours['workbench.model']!r}: "
                                     + "; ".join(differs))
    if meta["workbench.weights_sha256"] != ours["workbench.weights_sha256"]:
        raise OnnxModelMismatchError(f"{path} was exported from {source!r}: same configuration as "
                                     f"{ours['workbench.model']!r} but other weights (fingerprint "
                                     f"{meta['workbench.weights_sha256']} vs {ours['workbench.weights_sha256']})")


class OnnxRunner:
    """One ONNX Runtime session over a file written by `export_onnx` (float32 or int8)."""

    def __init__(self, path: str | Path, *, expect=None, expect_name: str | None = None, threads: int | None = None):
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxModelMismatchError(f"{path}: no such ONNX file")
        self.metadata = read_metadata(self.path)
        if expect is not None:
            check_identity(self.path, self.metadata, expect, expect_name)
        elif self.metadata.get("workbench.format") != FORMAT:
            raise OnnxModelMismatchError(f"{path}: not a workbench ONNX export (no {FORMAT} metadata)")
        self.config = ModelConfig(**json.loads(self.metadata["workbench.config"]))
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._past_names = input_names(self.config.num_hidden_layers)[2:]
        self._present_names = [o.name for o in self.session.get_outputs()][1:]

    @property
    def quantization(self) -> str:
        return self.metadata.get("workbench.quantization", "float32")

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        c = self.config
        shape = (batch, c.num_key_value_heads, 0, c.head_dim)
        return {name: np.zeros(shape, dtype=np.float32) for name in self._past_names}

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: dict[str, np.ndarray]):
        """One forward pass: (logits (B, T, V), the next step's past) for T new tokens per sequence."""
        outputs = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask, **past})
        return outputs[0], dict(zip(self._past_names, outputs[1:]))

    def __call__(self, input_ids: torch.Tensor, cache=None) -> torch.Tensor:
        """Logits of every position of `input_ids` (B, T), from an empty cache (what perplexity calls)."""
        if cache is not None:
            raise InvalidParameterError("the ONNX runner keeps its cache itself: call step() or generate()")
        ids = input_ids.cpu().numpy().astype(np.int64)
        logits, _ = self.step(ids, np.ones_like(ids), self.empty_past(ids.shape[0]))
        return torch.from_numpy(logits)

    def generate(self, prompts: list[list[int]], max_new_tokens: int, on_token=None) -> list[list[int]]:
        """Greedy continuations (stop tokens ignored) of the prompts, left-padded like our engine, so each
        sequence decodes as if it were alone. `on_token()` is called as each step's tokens are picked."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise InvalidParameterError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise InvalidParameterError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.config.max_position_embeddings:
            raise InvalidParameterError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                                        f"model's context of {self.config.max_position_embeddings}")
        ids = np.zeros((len(prompts), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, p in enumerate(prompts):
            ids[row, longest - len(p):], mask[row, longest - len(p):] = p, 1
        logits, past = self.step(ids, mask, self.empty_past(len(prompts)))
        out = []
        for i in range(max_new_tokens):
            tokens = logits[:, -1].argmax(-1).astype(np.int64)
            out.append(tokens)
            if on_token is not None:
                on_token()
            if i == max_new_tokens - 1:
                break
            mask = np.concatenate([mask, np.ones((len(prompts), 1), dtype=np.int64)], axis=1)
            logits, past = self.step(tokens[:, None], mask, past)
        return np.stack(out, axis=1).tolist()

