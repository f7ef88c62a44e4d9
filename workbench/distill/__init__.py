"""Knowledge distillation: losses, students built from a teacher, training data and a CPU trainer."""

from .data import TrainingWindows, teacher_written_ids, training_ids
from .losses import LOSSES, HiddenProjection, distillation_loss, forward_kl, hard_cross_entropy, hidden_mse, reverse_kl
from .students import build_student, evenly_spaced, parse_spec, size_report
from .trainer import DistillResult, TrainConfig, append_results_row, distill

__all__ = ["TrainingWindows", "teacher_written_ids", "training_ids", "LOSSES", "HiddenProjection", "distillation_loss",
           "forward_kl", "hard_cross_entropy", "hidden_mse", "reverse_kl", "build_student", "evenly_spaced",
           "parse_spec", "size_report", "DistillResult", "TrainConfig", "append_results_row", "distill"]
