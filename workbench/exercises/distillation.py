"""Exercises of notebook 05 (distillation): the temperature-scaled KL loss, its gradient, and a
shallower student's decode speed-up predicted from bytes."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..distill.losses import forward_kl
from .checking import Exercise, Verdict, bundled_config, call_answer, expect_close, expect_tensor_close


def _cases():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(2, 3, 7, generator=g) * 2, torch.randn(2, 3, 7, generator=g) * 2, t) for t in (1.0, 2.0, 4.0)]


def check_kl_loss(fn) -> Verdict:
    """`fn(student_logits, teacher_logits, T)`: logits (batch, positions, vocab) -> the distillation loss
    T^2 * mean over positions of KL(p_T || q_T), a scalar."""
    for s, t, temperature in _cases():
        got, verdict = call_answer(fn, s.clone(), t.clone(), temperature)
        if verdict is not None:
            return verdict
        try:
            value = float(got)
        except (TypeError, ValueError, RuntimeError):
            return Verdict(False, f"the loss should be one number (a scalar), got {getattr(got, 'shape', type(got).__name__)}.")
        v = expect_close(value, forward_kl(s, t, temperature).item(), f"loss at T={temperature:g}", rel=1e-4,
                         hint="softmax both logits divided by T; KL(teacher || student) summed over the vocabulary, "
                              "averaged over the batch and positions, times T^2.")
        if not v:
            return v
    return Verdict(True, "your loss matches `workbench.distill.forward_kl` at T = 1, 2 and 4.")


def check_kl_gradient(fn) -> Verdict:
    """`fn(student_logits, teacher_logits, T)`: one position's logits (vocab,) -> the gradient of the
    loss above with respect to the student's logits (vocab,), by the formula (no autograd needed)."""
    for s, t, temperature in _cases():
        s0, t0 = s[0, 0], t[0, 0]
        got, verdict = call_answer(fn, s0.clone(), t0.clone(), temperature)
        if verdict is not None:
            return verdict
        z = s0.clone().requires_grad_()
        forward_kl(z, t0, temperature).backward()
        v = expect_tensor_close(got, z.grad, f"gradient at T={temperature:g}", rtol=1e-4, atol=1e-6,
                                hint="d/dz_i of T^2 KL(p_T || softmax(z/T)) = T (q_i - p_i).")
        if not v:
            return v
    return Verdict(True, "your gradient matches autograd's through `forward_kl` at T = 1, 2 and 4.")


def depth_speedup(layers: int) -> float:
    """Decode speed-up from bytes of a student keeping `layers` of the teacher's layers (batch 1)."""
    teacher = bundled_config()
    return teacher.num_parameters() / dataclasses.replace(teacher, num_hidden_layers=layers).num_parameters()


def check_depth_speedup(answer) -> Verdict:
    """The decode speed-up of a `layers:10` student over the 30-layer teacher, predicted from bytes."""
    return expect_close(answer, depth_speedup(10), "predicted layers:10 speed-up", rel=0.005, unit="x",
                        hint="every token reads the tied 49152 x 576 head and the final norm in both models; "
                             "only the layers shrink.")


def _kl(s, t, temperature, square=True, reverse=False, mean=True):
    log_q, log_p = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1) if reverse else (log_p.exp() * (log_p - log_q)).sum(-1)
    return (kl.mean() if mean else kl.sum()) * (temperature ** 2 if square else 1)


EXERCISES = [
    Exercise("kl_loss", check_kl_loss, solution=lambda: _kl,
             wrong_answers=lambda: [lambda s, t, T: _kl(s, t, T, square=False), lambda s, t, T: _kl(s, t, T, reverse=True),
                                    lambda s, t, T: _kl(s, t, T, mean=False), lambda s, t, T: _kl(s, t, 1.0),
                                    lambda s, t, T: (T ** 2) * (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1)
                                                                - F.log_softmax(s / T, -1)))]),
    Exercise("kl_gradient", check_kl_gradient,
             solution=lambda: lambda s, t, T: T * (torch.softmax(s / T, -1) - torch.softmax(t / T, -1)),
             wrong_answers=lambda: [lambda s, t, T: torch.softmax(s / T, -1) - torch.softmax(t / T, -1),
                                    lambda s, t, T: T * (torch.softmax(t / T, -1) - torch.softmax(s / T, -1)),
                                    lambda s, t, T: T ** 2 * (torch.softmax(s / T, -1) - torch.softmax(t / T, -1))]),
    Exercise("depth_speedup", check_depth_speedup, solution=lambda: depth_speedup(10),
             wrong_answers=lambda: [3.0, 1 / depth_speedup(10), depth_speedup(15)]),
]
