"""Distillation losses: what the student is asked to match.

Shapes: logits (..., vocab), targets (...). Every loss is a mean over token positions.

- Forward KL, KL(p_T || q_S): the teacher's distribution weights the student's errors, so the
  student must cover every token the teacher finds plausible ("mean-seeking").
- Reverse KL, KL(q_S || p_T): the student's own distribution weights the errors, so it is punished
  for mass where the teacher has little and may drop some of the teacher's modes ("mode-seeking").
- Both soften the two distributions with a temperature T (softmax(z / T)) and multiply by T^2 so
  the gradient keeps its scale as T changes (d/dz of the softened loss shrinks as 1/T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillationError

LOSSES = ("ce", "kl", "rkl", "mix")


def _check_temperature(temperature: float):
    if not temperature > 0:
        raise DistillationError(f"temperature must be > 0, got {temperature} (1 = the plain distributions, "
                                f"larger = softer targets)")


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over positions of sum_v p_T(v) (log p_T(v) - log q_S(v)), both softened by T."""
    _check_temperature(temperature)
    log_q, log_p = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean() * temperature ** 2


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * mean over positions of sum_v q_S(v) (log q_S(v) - log p_T(v)), both softened by T."""
    _check_temperature(temperature)
    log_q, log_p = _log_probs(student_logits, temperature), _log_probs(teacher_logits, temperature)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return kl.mean() * temperature ** 2


def hard_cross_entropy(student_logits, targets) -> torch.Tensor:
    """Cross-entropy with the data's next tokens (the ordinary language-model loss)."""
    return F.cross_entropy(student_logits.float().flatten(0, -2), targets.flatten())


def distillation_loss(kind: str, student_logits, targets, teacher_logits=None, *, temperature: float = 1.0,
                      alpha: float = 0.5) -> torch.Tensor:
    """One of LOSSES: "ce" (hard labels only), "kl" (forward KL), "rkl" (reverse KL), or "mix":
    alpha * CE + (1 - alpha) * forward KL."""
    if kind not in LOSSES:
        raise DistillationError(f"unknown loss {kind!r} (accepted: {', '.join(LOSSES)})")
    if not 0 <= alpha <= 1:
        raise DistillationError(f"alpha (the hard-label weight of 'mix') must be in [0, 1], got {alpha}")
    _check_temperature(temperature)
    if kind == "ce":
        return hard_cross_entropy(student_logits, targets)
    if teacher_logits is None:
        raise DistillationError(f"loss {kind!r} needs the teacher's logits")
    if kind == "rkl":
        return reverse_kl(student_logits, teacher_logits, temperature)
    kl = forward_kl(student_logits, teacher_logits, temperature)
    if kind == "kl":
        return kl
    return alpha * hard_cross_entropy(student_logits, targets) + (1 - alpha) * kl


class HiddenProjection(nn.Module):
    """Maps student hidden states to the teacher's width for an MSE between them (FitNets-style).

    With equal widths no mapping is needed and the identity is used; a narrower student gets a
    learned linear map up to the teacher's width. A student wider than its teacher would need a map
    that throws information away, which we refuse rather than guess.
    """

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        if student_width > teacher_width:
            raise DistillationError(f"student hidden width {student_width} is wider than the teacher's "
                                    f"{teacher_width}: hidden-state distillation maps a student up to the teacher's "
                                    f"width (accepted: student width <= teacher width)")
        self.proj = None if student_width == teacher_width else nn.Linear(student_width, teacher_width, bias=False)

    def forward(self, student_hidden: torch.Tensor) -> torch.Tensor:
        return student_hidden if self.proj is None else self.proj(student_hidden)


def hidden_mse(student_hidden: list[torch.Tensor], teacher_hidden: list[torch.Tensor],
               projection: HiddenProjection) -> torch.Tensor:
    """Mean over the paired layers of the mean squared error between projected student and teacher states."""
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise DistillationError(f"hidden-state loss needs pairs of layers, got {len(student_hidden)} student "
                                f"and {len(teacher_hidden)} teacher states")
    errors = [F.mse_loss(projection(s.float()), t.float()) for s, t in zip(student_hidden, teacher_hidden)]
    return torch.stack(errors).mean()
