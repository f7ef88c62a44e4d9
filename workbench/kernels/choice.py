"""Kernel or PyTorch operator, per shape, from a measurement made on this machine at first use.

Our kernels win where PyTorch's per-call overhead dominates (one or two rows of activations) and can
lose where PyTorch's GEMM reads a weight once for many rows. Which one wins depends on the CPU, the
threads, the shape and the batch, so it is measured rather than guessed: the first time an
operation meets a key (operation, dtype, shape, batch bucket 1/2/4/8/16, and for attention the
context bucket), both paths run `REPEATS` times on the real input, alternated, and the faster
(smallest time of each) is kept for the rest of the process. Later calls with that key cost a dict
look-up. Both paths compute the same product, so the choice changes speed, never results beyond
rounding.

`set_mode("kernel")` (or WORKBENCH_KERNEL_PATHS=kernel) skips the measurement and takes the kernel
wherever it applies; `set_timer` is the seam tests use to inject timings; `choices()` shows what
was measured and chosen.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import torch

from ..errors import InvalidParameterError

REPEATS = 5
MODES = ("measure", "kernel")

_choices: dict[tuple, bool] = {}  # key -> True: the kernel, False: PyTorch's operator
_measured: dict[tuple, dict] = {}  # key -> the seconds behind the choice
_mode: str | None = None  # None: from the environment on first use


def bucket(n: int) -> int:
    """The power of two at or above n: the batch (or context) size class a choice is made for."""
    return 1 << max(int(n) - 1, 0).bit_length()


def time_alternated(key: tuple, kernel: Callable, fallback: Callable, repeats: int = REPEATS) -> tuple[float, float]:
    """(kernel seconds, fallback seconds) for `key`: the fastest of `repeats` alternated calls of each."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((kernel, fallback)):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0], best[1]


Timer = Callable[[tuple, Callable, Callable], tuple[float, float]]
_timer: Timer = time_alternated


def set_timer(timer: Timer | None):
    """Measure with `timer(key, kernel, fallback) -> (kernel_s, fallback_s)` (None: `time_alternated`);
    forgets earlier choices."""
    global _timer
    _timer = timer or time_alternated
    reset()


def set_mode(mode: str | None):
    """"measure" (the default): the faster path per key; "kernel": the kernel wherever it applies."""
    global _mode
    if mode is not None and mode not in MODES:
        raise InvalidParameterError(f"kernel path mode must be one of {MODES} or None, got {mode!r}")
    _mode = mode


def mode() -> str:
    global _mode
    if _mode is None:
        env = os.environ.get("WORKBENCH_KERNEL_PATHS", "measure").lower()
        if env not in MODES:
            raise InvalidParameterError(f"WORKBENCH_KERNEL_PATHS must be one of {MODES}, got {env!r}")
        _mode = env
    return _mode


def reset():
    """Forget every choice (they are measured again at next use)."""
    _choices.clear()
    _measured.clear()


def choices() -> dict[tuple, dict]:
    """key -> {"kernel": chosen?, "kernel_s", "pytorch_s"} for every key measured so far."""
    return {key: {"kernel": _choices[key], **_measured.get(key, {})} for key in _choices}


def run_faster(key: tuple, kernel: Callable[[], torch.Tensor | None], fallback: Callable[[], torch.Tensor]):
    """kernel() or fallback(), whichever was measured faster for `key`. `kernel()` returns None where
    it does not apply (kernels off, autograd, an unsupported layout): then fallback(), nothing learned."""
    use = _choices.get(key) if (_mode or mode()) == "measure" else True
    if use is False:
        return fallback()
    y = kernel()
    if y is None:
        return fallback()
    if use is None:
        kernel_s, fallback_s = _timer(key, kernel, fallback)
        _measured[key] = {"kernel_s": kernel_s, "pytorch_s": fallback_s}
        _choices[key] = kernel_s <= fallback_s
        # from the first call on, the numbers of the path chosen, and its side effects last (the decode
        # stack and the layers write the same cache slots, with results that differ in the last bit)
        return kernel() if _choices[key] else fallback()
    return y
