"""A small trainer for distillation that runs on a 2-core CPU (and on a GPU unchanged).

AdamW, linear warm-up then cosine decay, gradient clipping, gradient accumulation, a seeded data
order, tqdm progress, periodic evaluation with `workbench.eval.perplexity`, and atomic checkpoints
(student, optimizer, scheduler, RNG, step = data position) from which an interrupted run resumes
to exactly the weights an uninterrupted run reaches.

Only parameters that require gradients train: a student with frozen parts (a LoRA adapter on a
frozen base, `workbench.adapters`) trains, and checkpoints, just its trainable tensors. With the
hard-label loss ("ce") no teacher is needed (`teacher=None`): plain next-token fine-tuning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import DistillationError, ResumeError
from ..eval import perplexity
from ..io import append_csv_row, atomic_write_bytes
from .data import TrainingWindows, fingerprint
from .losses import LOSSES, HiddenProjection, distillation_loss, hard_cross_entropy, hidden_mse
from .students import evenly_spaced

CHECKPOINT = "checkpoint.pt"
# Settings that may change between an interrupted run and its resumption: they decide when to
# evaluate, save or show progress, never what is trained.
RESUMABLE_CHANGES = ("eval_every", "checkpoint_every")


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 4           # sequences per micro-batch
    grad_accum: int = 1           # micro-batches per optimizer step
    seq_len: int = 256            # tokens per sequence (seq_len - 1 predictions)
    loss: str = "kl"              # one of losses.LOSSES
    temperature: float = 1.0
    alpha: float = 0.5            # hard-label weight of the "mix" loss
    hidden_weight: float = 0.0    # weight of the hidden-state MSE (0: off)
    lr: float = 3e-4
    min_lr_ratio: float = 0.1     # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 5
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    seed: int = 0
    autocast: str | None = None   # "bfloat16": matmuls in bf16 (about 2x on CPUs with AVX512-BF16), master weights fp32
    eval_every: int = 0           # steps between evaluations (0: only before and after)
    checkpoint_every: int = 0     # steps between checkpoints (0: only at the end or on interruption)

    def __post_init__(self):
        positive = ("steps", "batch_size", "grad_accum", "seq_len")
        for name in positive:
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise DistillationError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.seq_len < 2:
            raise DistillationError(f"seq_len must be at least 2 tokens (one input, one target), got {self.seq_len}")
        if self.loss not in LOSSES:
            raise DistillationError(f"unknown loss {self.loss!r} (accepted: {', '.join(LOSSES)})")
        checks = [(self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
                  (0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}"),
                  (self.hidden_weight >= 0, f"hidden_weight must be >= 0, got {self.hidden_weight}"),
                  (self.lr > 0, f"lr must be > 0, got {self.lr}"),
                  (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
                  (self.warmup_steps >= 0 and self.eval_every >= 0 and self.checkpoint_every >= 0,
                   "warmup_steps, eval_every and checkpoint_every must be >= 0"),
                  (self.clip_norm > 0, f"clip_norm must be > 0, got {self.clip_norm}")]
        if self.autocast not in (None, "bfloat16", "float16"):
            raise DistillationError(f"autocast must be None, 'bfloat16' or 'float16', got {self.autocast!r}")
        for ok, message in checks:
            if not ok:
                raise DistillationError(message)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def needs_teacher(self) -> bool:
        return self.loss != "ce" or self.hidden_weight > 0

    def lr_factor(self, step: int) -> float:
        """Multiplier of `lr` for optimizer step `step` (0-based): linear warm-up, then cosine."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class DistillResult:
    student: nn.Module
    config: TrainConfig
    steps: int
    tokens: int
    ppl_before: float | None
    ppl_after: float | None
    wall_s: float                 # training and evaluation, summed over interrupted parts
    train_s: float                # optimizer steps only
    history: list[dict] = field(default_factory=list)   # one record per step
    evals: list[dict] = field(default_factory=list)     # {"step", "ppl"}

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_s if self.train_s else float("nan")

    def row(self, **extra) -> dict:
        """One results row (the columns of data/results/distillation.csv)."""
        return {"student": extra.pop("student", None), "loss": self.config.loss, "steps": self.steps,
                "tokens": self.tokens, "ppl": self.ppl_after, **extra, "ppl_before": self.ppl_before, "tokens_per_s": self.tokens_per_s,
                "wall_s": self.wall_s, "seq_len": self.config.seq_len,
                "batch": self.config.batch_size * self.config.grad_accum, "lr": self.config.lr,
                "temperature": self.config.temperature, "seed": self.config.seed}


class _HiddenStates:
    """Forward hooks that keep the outputs of some decoder layers during one forward pass."""

    def __init__(self, model, indices: list[int]):
        self.outputs: list[torch.Tensor] = []
        self.handles = [model.model.layers[i].register_forward_hook(lambda m, a, out: self.outputs.append(out))
                        for i in indices]

    def take(self) -> list[torch.Tensor]:
        out, self.outputs = self.outputs, []
        return out


def distill(student, teacher, train_ids: list[int], config: TrainConfig, *, eval_ids: list[int] | None = None,
            eval_window: int = 1024, checkpoint_dir: str | Path | None = None, resume: bool = False,
            progress: bool = True, on_step=None, run_identity: dict | None = None) -> DistillResult:
    """Train `student` (in place) to imitate `teacher` on `train_ids`; see TrainConfig for the knobs.

    `eval_ids`: token ids scored with `perplexity` (window `eval_window`) before, every
    `config.eval_every` steps, and after. `checkpoint_dir`: where checkpoints go (atomically);
    `resume=True` continues from the checkpoint there, refusing one from another run. `on_step`
    is called with each step's record. Ctrl-C (KeyboardInterrupt) saves a checkpoint, then re-raises.
    `teacher` may be None when the loss needs none ("ce"). `run_identity`: more that a resumed run
    must share with the checkpoint (a caller's own settings, such as an adapter's rank and base).
    """
    if teacher is None and config.needs_teacher():
        raise DistillationError(f"loss {config.loss!r}{' with hidden_weight' * (config.hidden_weight > 0)} compares "
                                "with a teacher; give one, or train with the hard-label loss 'ce'")
    if teacher is not None and student.config.vocab_size != teacher.config.vocab_size:
        raise DistillationError(f"student vocabulary ({student.config.vocab_size}) differs from the teacher's "
                                f"({teacher.config.vocab_size}): distillation compares them token for token")
    if config.seq_len > student.config.max_position_embeddings:
        raise DistillationError(f"seq_len {config.seq_len} exceeds the student's context of "
                                f"{student.config.max_position_embeddings} tokens")
    windows = TrainingWindows(train_ids, config.seq_len, config.batch_size, config.seed)
    device = student.device
    projection = pairs = None
    if config.hidden_weight > 0:
        if student.config.num_hidden_layers > teacher.config.num_hidden_layers:
            raise DistillationError(f"hidden-state loss pairs each student layer with a teacher layer: the student "
                                    f"has {student.config.num_hidden_layers}, the teacher only "
                                    f"{teacher.config.num_hidden_layers}")
        projection = HiddenProjection(student.config.hidden_size, teacher.config.hidden_size).to(device)
        pairs = evenly_spaced(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    params = ([p for p in student.parameters() if p.requires_grad]
              + (list(projection.parameters()) if projection is not None else []))
    if not params:
        raise DistillationError("the student has no parameter that requires a gradient: nothing to train")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
    identity = {"student_config": dataclasses.asdict(student.config), "data": fingerprint(train_ids),
                "train_config": {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_CHANGES}}
    if run_identity is not None:
        identity["run"] = run_identity

    def evaluate():
        if eval_ids is None:
            return None
        student.eval()
        ppl = perplexity(student, eval_ids, window=min(eval_window, student.config.max_position_embeddings)).ppl
        student.train()
        return ppl

    state = {"step": 0, "history": [], "evals": [], "wall_s": 0.0, "train_s": 0.0}
    if resume:
        state = _load_checkpoint(checkpoint_dir, identity, student, projection, optimizer, scheduler)
    elif eval_ids is not None:
        state["evals"].append({"step": 0, "ppl": evaluate()})
    start = time.perf_counter() - state["wall_s"]

    def save():
        if checkpoint_dir is not None:
            state["wall_s"] = time.perf_counter() - start
            _save_checkpoint(checkpoint_dir, identity, state, student, projection, optimizer, scheduler)

    student.train()
    if teacher is not None:
        teacher.eval()
    autocast = (torch.autocast(device.type, dtype=getattr(torch, config.autocast)) if config.autocast
                else contextlib.nullcontext())
    student_hidden = _HiddenStates(student, range(student.config.num_hidden_layers)) if pairs else None
    teacher_hidden = _HiddenStates(teacher, pairs) if pairs else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        task = "distill" if teacher is not None else "train"
        bar = tqdm(total=config.steps, initial=state["step"], desc=f"{task} ({config.loss})", unit="step")
    try:
        while state["step"] < config.steps:
            step = state["step"]
            step_start = time.perf_counter()
            record = {"step": step + 1, "loss": 0.0, "ce": 0.0, "lr": scheduler.get_last_lr()[0]}
            for micro in range(config.grad_accum):
                batch = windows[step * config.grad_accum + micro].to(device)
                inputs, targets = batch[:, :-1], batch[:, 1:]
                if pairs:  # drop states that an evaluation pass left behind
                    student_hidden.take(), teacher_hidden.take()
                with autocast:
                    logits = student(inputs)
                    teacher_logits = None
                    if config.needs_teacher():
                        with torch.no_grad():
                            teacher_logits = teacher(inputs)
                loss = distillation_loss(config.loss, logits, targets, teacher_logits,
                                         temperature=config.temperature, alpha=config.alpha)
                if pairs:
                    loss = loss + config.hidden_weight * hidden_mse(student_hidden.take(), teacher_hidden.take(),
                                                                    projection)
                (loss / config.grad_accum).backward()
                with torch.no_grad():
                    record["ce"] += hard_cross_entropy(logits, targets).item() / config.grad_accum
                record["loss"] += loss.item() / config.grad_accum
            record["grad_norm"] = nn.utils.clip_grad_norm_(params, config.clip_norm).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["train_s"] += time.perf_counter() - step_start
            state["step"] = step + 1
            state["history"].append(record)
            if config.eval_every and state["step"] % config.eval_every == 0 and state["step"] < config.steps:
                state["evals"].append({"step": state["step"], "ppl": evaluate()})
            if config.checkpoint_every and state["step"] % config.checkpoint_every == 0:
                save()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", ce=f"{record['ce']:.3f}")
            if on_step is not None:
                on_step(record)
    except KeyboardInterrupt:
        save()  # the last finished step is kept; the half-done one is redone on resume
        raise
    finally:
        if bar is not None:
            bar.close()
        for hooks in (student_hidden, teacher_hidden):
            for h in (hooks.handles if hooks else []):
                h.remove()
    if eval_ids is not None and not (state["evals"] and state["evals"][-1]["step"] == config.steps):
        state["evals"].append({"step": config.steps, "ppl": evaluate()})
    save()
    student.eval()
    before = state["evals"][0]["ppl"] if state["evals"] else None
    after = state["evals"][-1]["ppl"] if state["evals"] else None
    return DistillResult(student, config, state["step"], state["step"] * config.tokens_per_step, before, after,
                         time.perf_counter() - start, state["train_s"], state["history"], state["evals"])


def _save_checkpoint(directory, identity, state, student, projection, optimizer, scheduler):
    payload = {"identity": identity, "state": state, "student": _trained_state(student),
               "projection": projection.state_dict() if projection is not None else None,
               "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "rng": torch.get_rng_state()}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(directory) / CHECKPOINT, buffer.getvalue())


def _load_checkpoint(directory, identity, student, projection, optimizer, scheduler) -> dict:
    path = Path(directory) / CHECKPOINT if directory is not None else None
    if path is None or not path.is_file():
        raise ResumeError(f"nothing to resume: {path or 'no checkpoint directory given'} "
                          f"(a run writes {CHECKPOINT} there with checkpoint_dir=...)")
    try:
        payload = torch.load(path, map_location=student.device, weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ResumeError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from None
    needed = {"identity", "student", "optimizer", "scheduler", "rng", "state"}
    missing = needed - set(payload) if isinstance(payload, dict) else needed
    if missing or not isinstance(payload["identity"], dict) or not identity.keys() <= payload["identity"].keys():
        raise ResumeError(f"{path}: not a workbench distillation checkpoint (missing: "
                          f"{', '.join(sorted(missing)) or 'identity fields'})")
    saved = payload["identity"]
    for key, what in (("student_config", "student"), ("train_config", "training settings"), ("data", "training data"),
                      ("run", "run settings")):
        if key in identity and saved[key] != identity[key]:
            diff = saved[key] if not isinstance(saved[key], dict) else {
                k: (v, identity[key].get(k)) for k, v in saved[key].items() if identity[key].get(k) != v}
            raise ResumeError(f"{path} belongs to another run: its {what} differ(s) "
                              f"(checkpoint vs now: {diff}); resume with the same student, settings and data")
    trained = _trained_state(student)
    if set(payload["student"]) != set(trained):
        raise ResumeError(f"{path} belongs to another run: it holds other trained tensors than this student "
                          f"({len(payload['student'])} vs {len(trained)})")
    student.load_state_dict(payload["student"], strict=len(trained) == len(student.state_dict()))
    if projection is not None:
        projection.load_state_dict(payload["projection"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["rng"])
    return payload["state"]


def _trained_state(student) -> dict:
    """What a checkpoint keeps of the student: everything, or only the trainable tensors when parts are frozen."""
    state = student.state_dict()
    if all(p.requires_grad for p in student.parameters()):
        return state
    names = {name for name, p in student.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def append_results_row(path: str | Path, row: dict):
    """Add one run's row to a results CSV (locked against concurrent runs, written atomically)."""
    append_csv_row(path, row)
