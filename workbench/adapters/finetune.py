"""Fine-tuning a LoRA adapter with the distillation trainer: next-token cross-entropy on text.

The trainer (`workbench.distill.distill`, with no teacher and the hard-label loss) trains only the
tensors that require gradients, which after `add_lora` are the adapters' A and B; it checkpoints
them with the optimizer into the output directory, so `resume=True` continues an interrupted run to
exactly the adapter an uninterrupted one reaches. The base may be float or weight-only quantized
(QLoRA's idea: a frozen int8 base, a float32 adapter).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from ..distill import DistillResult, TrainConfig, distill
from ..errors import AdapterError
from ..model import weight_bytes
from .lora import LoraConfig, add_lora, lora_layers, trainable_parameters
from .peft_layout import save_adapter


def base_fingerprint(model) -> str:
    """A hash of the base's tensors (every weight but an adapter's): a resumed run checks that it adapts
    the same base."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if ".lora_" in name:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def finetune(model, train_ids: list[int], lora: LoraConfig, config: TrainConfig, *, out_dir: str | Path,
             eval_ids: list[int] | None = None, eval_window: int = 1024, resume: bool = False,
             base_model: str | None = None, progress: bool = True, on_step=None) -> DistillResult:
    """Add a LoRA adapter to `model` (in place), train it on `train_ids` and save it to `out_dir`.

    `out_dir` receives the trainer's checkpoint (every `config.checkpoint_every` steps and at the end)
    and the adapter in PEFT's layout, named after `base_model`. `eval_ids` are scored before and after;
    `on_step` is called with each step's record (see `distill`).
    """
    if config.loss != "ce":
        raise AdapterError(f"LoRA fine-tuning trains on next-token cross-entropy (loss 'ce'), got {config.loss!r}")
    if lora_layers(model):
        raise AdapterError("this model already carries a LoRA adapter; fine-tune a fresh base")
    base = base_fingerprint(model)  # before the adapters exist: only the base's tensors
    add_lora(model, lora, seed=config.seed)
    identity = {"lora": dataclasses.asdict(lora), "base": base}
    if not resume:  # dropout draws from torch's global generator: seed it so a run repeats (resume restores it)
        torch.manual_seed(config.seed)
    result = distill(model, None, train_ids, config, eval_ids=eval_ids, eval_window=eval_window,
                     checkpoint_dir=out_dir, resume=resume, progress=progress, on_step=on_step,
                     run_identity=identity)
    save_adapter(model, out_dir, base_model)
    return result


def training_bytes(model, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Memory a training step holds besides activations, in bytes: the frozen weights, the trainable
    parameters, their gradients and the optimizer's state. With `optimizer` (after a step) its state
    is counted from its tensors; without, AdamW's two float32 moments per trainable value are assumed."""
    trainable = trainable_parameters(model)
    trainable_bytes = sum(p.numel() * p.element_size() for p in trainable)
    if optimizer is not None:
        optimizer_bytes = sum(t.numel() * t.element_size() for state in optimizer.state.values()
                              for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    else:
        optimizer_bytes = sum(2 * p.numel() * 4 for p in trainable)
    frozen = weight_bytes(model) - trainable_bytes
    return {"trainable_params": sum(p.numel() for p in trainable), "frozen_bytes": frozen,
            "trainable_bytes": trainable_bytes, "gradient_bytes": trainable_bytes, "optimizer_bytes": optimizer_bytes,
            "total_bytes": frozen + 2 * trainable_bytes + optimizer_bytes}
