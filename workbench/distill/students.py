"""Students built from a teacher: fewer layers, narrower MLPs, or a small config from scratch.

A student is an ordinary `LlamaModel` with a consistent `ModelConfig`, so it generates, saves with
`save_pretrained`, loads with `load_model` and quantizes like any other model. It always keeps the
teacher's vocabulary and tokenizer: distillation compares the two distributions token for token.

Specs (joined with "+", applied left to right):
- `layers:N`    keep N evenly spaced teacher layers (always the first and the last), weights copied;
- `mlp:F`       remove a fraction F of every MLP's intermediate channels (structured pruning,
                `workbench.prune.structured.prune_mlp`);
- `scratch:k=v,...`  a fresh random model with the teacher's vocabulary; keys `layers`, `hidden`,
                `ffn`, `heads`, `kv` (defaults: the teacher's value).
"""

from __future__ import annotations

import copy
import dataclasses

from ..checkpoints import model_from_state, random_model
from ..errors import DistillationError
from ..model import LlamaModel

SPEC_HELP = "layers:N, mlp:F, scratch:layers=L,hidden=D,ffn=F,heads=H,kv=K, or several joined with '+'"
SCRATCH_KEYS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "ffn": "intermediate_size",
                "heads": "num_attention_heads", "kv": "num_key_value_heads"}


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` indices out of range(total), evenly spaced, always including the first and the last."""
    if not 1 <= keep <= total:
        raise DistillationError(f"cannot keep {keep} of {total} layers: a student built from the teacher has "
                                f"between 1 and {total} layers (it has no weights to copy for more)")
    if keep == 1:
        return [total - 1]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def keep_layers(model: LlamaModel, indices: list[int]) -> LlamaModel:
    """A new model made of copies of `model`'s layers `indices` (embedding, final norm and head kept)."""
    config = dataclasses.replace(model.config, num_hidden_layers=len(indices))
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.layers."):
            _, _, index, rest = name.split(".", 3)
            for new_index, old_index in enumerate(indices):
                if int(index) == old_index:
                    state[f"model.layers.{new_index}.{rest}"] = tensor.detach().clone()
        else:
            state[name] = tensor.detach().clone()
    return model_from_state(config, state, model.dtype, model.device, source="layer-dropped student")


def prune_mlp_channels(model: LlamaModel, fraction: float, **prune_kwargs) -> LlamaModel:
    """Structured MLP pruning (`workbench.prune.structured.prune_mlp`) on a copy; its config follows."""
    from ..prune.structured import prune_mlp

    return prune_mlp(copy.deepcopy(model), fraction, **prune_kwargs)


def scratch_student(teacher: LlamaModel, options: dict[str, int], seed: int = 0) -> LlamaModel:
    """A randomly initialised model with the teacher's vocabulary and the given shape."""
    unknown = set(options) - set(SCRATCH_KEYS)
    if unknown:
        raise DistillationError(f"unknown scratch key(s) {', '.join(sorted(unknown))} "
                                f"(accepted: {', '.join(SCRATCH_KEYS)})")
    fields = {SCRATCH_KEYS[k]: v for k, v in options.items()}
    if "hidden_size" in fields or "num_attention_heads" in fields:
        fields["head_dim"] = None  # derived again: hidden_size / num_attention_heads
    config = dataclasses.replace(teacher.config, **fields)
    return random_model(config, teacher.dtype, teacher.device, seed)


def parse_spec(spec: str) -> list[tuple[str, object]]:
    """"layers:15+mlp:0.25" -> [("layers", 15), ("mlp", 0.25)], with a clear error for anything else."""
    steps = []
    for part in str(spec).split("+"):
        kind, _, value = part.strip().partition(":")
        try:
            if kind == "layers":
                steps.append((kind, int(value)))
            elif kind == "mlp":
                steps.append((kind, float(value)))
            elif kind == "scratch":
                pairs = [p.split("=") for p in value.split(",") if p]
                steps.append((kind, {k.strip(): int(v) for k, v in pairs}))
            else:
                raise ValueError
        except ValueError:
            raise DistillationError(f"bad student spec {part!r} in {spec!r} (accepted: {SPEC_HELP})") from None
    if any(kind == "scratch" for kind, _ in steps[1:]):
        raise DistillationError(f"scratch:... starts from nothing, so it must come first in {spec!r}")
    return steps


def build_student(teacher: LlamaModel, spec: str, *, seed: int = 0, **prune_kwargs) -> LlamaModel:
    """A student for `teacher` from a spec (see the module docstring); the teacher is not changed.

    `prune_kwargs` go to `prune_mlp`: with `tokenizer=` it ranks channels by their activations on the
    built-in calibration text, without it by weight magnitude.
    """
    model = teacher
    for kind, value in parse_spec(spec):
        if kind == "layers":
            if value > model.config.num_hidden_layers:
                raise DistillationError(f"layers:{value} asks for more layers than the teacher's "
                                        f"{model.config.num_hidden_layers}: a student built from the teacher copies "
                                        f"its layers, so N must be between 1 and {model.config.num_hidden_layers}")
            model = keep_layers(model, evenly_spaced(model.config.num_hidden_layers, value))
        elif kind == "mlp":
            model = prune_mlp_channels(model, value, **prune_kwargs)
        else:
            model = scratch_student(teacher, value, seed)
    if model is teacher:
        model = copy.deepcopy(teacher)
    return model.eval()


def size_report(model: LlamaModel) -> dict:
    """Parameters and float32 bytes of a model, split into the per-layer part and the embedding/head."""
    cfg = model.config
    embedding = cfg.vocab_size * cfg.hidden_size
    params = model.num_parameters()
    return {"layers": cfg.num_hidden_layers, "intermediate_size": cfg.intermediate_size, "parameters": params,
            "embedding_head_parameters": embedding, "layer_parameters": params - embedding - cfg.hidden_size,
            "weight_bytes": model.weight_bytes()}
