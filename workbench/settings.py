"""Switches every room reads (floor 0): quick mode, the cache root, the clock."""

from __future__ import annotations

import os
import time
from pathlib import Path

# The one clock for durations (monotonic, high resolution): timings, request metrics, build times.
now = time.perf_counter


def quick_mode() -> bool:
    return os.environ.get("WORKBENCH_QUICK", "0").lower() not in ("", "0", "false", "no")


def pick(quick, full):
    """`quick` in quick mode, else `full`: notebooks size their experiments with this."""
    return quick if quick_mode() else full


def cache_root() -> Path:
    """Where built kernels and dequantized weights are cached: $WORKBENCH_CACHE or ~/.cache/workbench."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))
