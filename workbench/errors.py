"""Specific exceptions: every bad input names what was wrong and what is accepted.

The CLI turns any `WorkbenchError` into a one-line message on stderr and a non-zero exit.
"""


class WorkbenchError(Exception):
    """Base class for errors caused by bad input (files, names, arguments), not by bugs."""


class CheckpointError(WorkbenchError):
    """A checkpoint file is missing, truncated, corrupt or of an unsupported kind."""


class UnsupportedTensorTypeError(CheckpointError):
    """A checkpoint holds a tensor type we cannot decode."""


class ConfigError(WorkbenchError):
    """A model configuration is missing a field or holds an invalid value."""


class UnknownModelError(WorkbenchError):
    """A model name is neither a bundled model nor an existing path."""


class ContextLengthError(WorkbenchError):
    """A prompt (plus the tokens asked for) does not fit in the model's context window."""


class EmptyTextError(WorkbenchError):
    """Text given for evaluation holds too few tokens to score."""


class InvalidParameterError(WorkbenchError, ValueError):
    """An argument is out of its accepted range (sampling settings, windows, sizes)."""


class PruningError(InvalidParameterError):
    """A pruning request that cannot be met: sparsity out of range, a bad N:M pattern, an unknown
    method or layer, or a structured cut that would remove every head or channel of a layer."""


class DistillationError(InvalidParameterError):
    """A distillation request that cannot be met: a student spec the teacher cannot supply (more
    layers than it has, a width needing a mapping), a bad loss or temperature, or too little data."""


class ResumeError(CheckpointError):
    """A training checkpoint that does not belong to this run (another student, loss or data)."""


class CapacityError(WorkbenchError):
    """The KV cache cannot hold a request: a block pool too small for a single request's prompt
    plus max_tokens, or no blocks at all."""


class MissingDependencyError(WorkbenchError):
    """An optional package that this feature needs is not installed (the message says which, and how)."""


class ParallelError(WorkbenchError):
    """A parallel run that cannot go ahead or was cut short: a split the model does not allow (more
    ranks than KV heads or layers, a packed layer whose groups straddle a shard), a rendezvous port
    in use, or a rank that died or stopped answering."""


class RequestFailedError(WorkbenchError):
    """A request failed inside an engine step (NaN logits, a tokenizer error, a failed forward
    pass); the engine freed its blocks and kept serving the others."""


class EngineClosedError(WorkbenchError):
    """A request was submitted to an engine loop that has been shut down."""


class StudyError(InvalidParameterError):
    """A study that cannot run: a malformed study file (named by line), an unknown spec (named with its
    cell), an unreachable Ray cluster, or a results file written by another code version."""


class DraftModelError(WorkbenchError):
    """A draft model that cannot draft for the target: another vocabulary or tokenizer (named by the
    first token that differs), or another device."""


class AdapterError(InvalidParameterError):
    """A LoRA request or adapter that does not fit the model: a bad rank/alpha/dropout, an unknown target
    name, or an adapter whose target names, layers or matrix shapes differ from the model's (named)."""


class CalibrationSpecError(InvalidParameterError):
    """A calibration set that cannot be drawn: a malformed `--calib` spec (an unknown source, a bad
    token count), or a part that gives fewer tokens than it asks for."""


class OnnxModelMismatchError(CheckpointError):
    """An ONNX file that was not exported from the model it is loaded for (another configuration, other
    weights, or no workbench metadata at all); the message names what differs."""
