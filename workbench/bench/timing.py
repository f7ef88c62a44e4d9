"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import resource
import statistics
import sys

from ..settings import now  # noqa: F401  (the one clock, part of the harness API)



def median(values) -> float:
    return float(statistics.median(values))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_info() -> dict:
    """What a results file records about the run: command, date, machine, threads and load at the start
    (the machines are shared, so the load says how far to trust the timings)."""
    import datetime
    import os
    import platform

    import torch

    return {"command": " ".join(sys.argv), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
