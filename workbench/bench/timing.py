"""The benchmark harness: contenders alternated round by round, medians, and what the run ran on.

Every speed comparison in the project goes through `alternate`: warm-up rounds that are thrown
away, then `rounds` rounds in which every contender runs once, in a fixed order, so a noisy
neighbour on a shared machine slows all of them alike. Ratios are taken round by round (this
round's A over this round's B) before the median, so noise that hits one round cancels out.
`run_info` / `run_end` record the machine, the versions and the load a results file needs.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

from ..errors import InvalidParameterError
from ..settings import now

__all__ = ["CLOCKS", "Rounds", "alternate", "loadavg", "median", "now", "peak_rss_mb", "read_bandwidth_gb_s", "run_end", "run_info"]


# wall: elapsed seconds; cpu: CPU seconds of the process, which a crowded machine does not stretch
# (use it with one thread, so that the CPU seconds are the work of the one thread that waits for them)
CLOCKS = {"wall": now, "cpu": time.process_time}


def median(values) -> float:
    return float(statistics.median(list(values)))


@dataclass
class Rounds:
    """What `alternate` measured: `values[name]` holds what contender `name` returned in each timed
    round (warm-up rounds left out), in round order. A value is a number or a mapping of numbers
    (a `bench_decode` result, say); `key` picks the number out of a mapping."""

    values: dict[Hashable, list[Any]]  # in the order the contenders ran within each round
    rounds: int
    warmup: int

    def series(self, name: Hashable, key: str | None = None) -> list[float]:
        return [float(v if key is None else v[key]) for v in self.values[name]]

    def median(self, name: Hashable, key: str | None = None) -> float:
        return median(self.series(name, key))

    def ratios(self, a: Hashable, b: Hashable, key: str | None = None) -> list[float]:
        """a / b in each round."""
        return [x / y for x, y in zip(self.series(a, key), self.series(b, key))]

    def ratio(self, a: Hashable, b: Hashable, key: str | None = None) -> float:
        """The median of the per-round ratios a / b."""
        return median(self.ratios(a, b, key))

    def summary(self, key: str | None = None, *, baseline: Hashable | None = None) -> dict:
        """Per contender: median, min, max and every round's number; with `baseline`, also `vs_baseline`
        (median of the per-round ratios to the baseline)."""
        out = {}
        for name in self.values:
            s = self.series(name, key)
            out[name] = {"median": median(s), "min": min(s), "max": max(s), "rounds": s}
            if baseline is not None:
                out[name]["vs_baseline"] = self.ratio(name, baseline, key)
        return out


def alternate(contenders: Mapping[Hashable, Callable[[], Any]], rounds: int, warmup: int = 1) -> Rounds:
    """Call every contender once per round, in the mapping's order: `warmup` rounds whose results are
    discarded (first-call allocations, kernel builds, caches), then `rounds` timed rounds.

    A contender takes no arguments and returns its measurement (seconds, tokens/s or a dict of
    them: it times itself, with whatever clock it needs). An exception from a contender stops the
    run and propagates unchanged, with a note naming the contender and the round."""
    if rounds < 1:
        raise InvalidParameterError(f"rounds must be at least 1, got {rounds}")
    if warmup < 0:
        raise InvalidParameterError(f"warmup must be 0 or more, got {warmup}")
    if not contenders:
        raise InvalidParameterError("no contenders to time")
    values = {name: [] for name in contenders}
    for i in range(warmup + rounds):
        phase = f"warm-up round {i + 1} of {warmup}" if i < warmup else f"round {i - warmup + 1} of {rounds}"
        for name, contender in contenders.items():
            try:
                value = contender()
            except Exception as exc:
                exc.add_note(f"raised by benchmark contender {name!r} in {phase}")
                raise
            if i >= warmup:
                values[name].append(value)
    return Rounds(values, rounds, warmup)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def read_bandwidth_gb_s(mib: int = 1024, rounds: int = 5, clock: str = "wall") -> dict:
    """Memory read bandwidth now, with the current torch threads: a float32 buffer of `mib` MiB
    (several times any L3 cache) read `rounds` times by our streaming read kernel
    (`workbench.kernels.stream_read`: each thread sums its own contiguous part with wide loads),
    or by `torch.sum` where the kernels are unavailable; median and best GB/s, and which reader.

    A streaming read is what a decode step's weight reads look like, so this is the ceiling to
    hold a decode's GB/s against on this machine, now. `clock="cpu"` divides by CPU seconds instead
    (with one thread: the bandwidth of a thread while it runs, which other programs on a busy machine
    do not stretch; compare it with a decode timed the same way)."""
    import torch

    from .. import kernels

    if clock not in CLOCKS:
        raise InvalidParameterError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    timer = CLOCKS[clock]

    buffer = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    ours = kernels.stream_read(buffer) is not None  # also touches every page once before timing
    if not ours:
        buffer.sum()
    read_once = kernels.stream_read if ours else torch.sum

    def read():
        start = timer()
        read_once(buffer)
        return buffer.numel() * 4 / (timer() - start) / 1e9

    speeds = alternate({"read": read}, rounds, warmup=0).series("read")
    method = ("our streaming read kernel (workbench.kernels.stream_read)" if ours
              else "torch.sum (our kernels off or unavailable)")
    return {"median": median(speeds), "best": max(speeds), "mib": mib, "rounds": rounds,
            "threads": torch.get_num_threads(), "reader": "workbench" if ours else "torch.sum", "clock": clock,
            "method": f"{method} over a float32 buffer of {mib} MiB, {rounds} reads ({clock} clock), median and best"}


def cpu_facts() -> dict:
    """CPU model, the SIMD flags our kernels care about, physical cores and logical CPUs (Linux's
    /proc/cpuinfo; elsewhere what `platform` knows)."""
    import os
    import platform

    model, flags, cores = None, set(), set()
    try:
        physical = None
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and model is None:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "physical id":
                physical = value
            elif key == "core id":
                cores.add((physical, value))
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model or platform.processor() or platform.machine(),
            "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")),
            "cpu_cores": len(cores) or None, "cpu_threads": os.cpu_count(), "cpus_usable": usable}


def _versions() -> dict:
    """Versions of the libraries a result depends on, read from the installed metadata (no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name, dist in (("torch", "torch"), ("transformers", "transformers"), ("llama_cpp", "llama_cpp_python"),
                       ("numpy", "numpy")):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            out[name] = None
    return out


def _commit() -> str | None:
    """The git commit of the code that ran (with "+dirty" when the work tree has changes), if any."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _command() -> str:
    """The command line, with the script named relative to the repository (no machine paths)."""
    import shlex
    from pathlib import Path

    argv = list(sys.argv) or [""]
    script = Path(argv[0])
    if script.is_absolute():
        root = Path(__file__).resolve().parents[2]
        argv[0] = str(script.relative_to(root)) if script.is_relative_to(root) else script.name
    return " ".join(shlex.quote(a) for a in ["python", *argv])


def loadavg() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the platform has none)."""
    import os

    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def run_info(*, bandwidth: bool = False) -> dict:
    """What a results file records about the run as it starts: command, date, code commit, CPU
    (model, flags, cores, logical CPUs), torch threads, library versions and the load average (the
    machines are shared, so the load says how far to trust the timings). `bandwidth=True` also
    measures the read bandwidth (`read_bandwidth_gb_s`, about a second). Call `run_end` on the
    dict when the measurements are done."""
    import datetime
    import os
    import platform

    import torch

    info = {"command": _command(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _commit(), **cpu_facts(), "threads": torch.get_num_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "platform": platform.platform(), **_versions(), "loadavg_start": loadavg()}
    if bandwidth:
        info["read_bandwidth_gb_s"] = read_bandwidth_gb_s()
    return info


def run_end(info: dict) -> dict:
    """Add the end of the run (date, load average) to a `run_info` dict; returns it."""
    import datetime

    info.update(date_end=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                loadavg_end=loadavg())
    return info
