"""Starting ranks: our own spawner (tests, notebooks, benchmarks) and handing a command to torchrun.

`launch(fn, world)` starts `world` fresh processes on this machine (the "spawn" start method, a free
rendezvous port), runs `fn(comm, *args)` in each and returns every rank's result. It always cleans
up: when a rank fails the others get `grace_s` to stop on their own (they notice the lost peer in
their next collective), then every process still alive is killed; the call as a whole is bounded by
`timeout_s`. The command line instead runs under torch's own launcher (`relaunch_under_torchrun`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ..errors import ParallelError
from . import comm as comm_mod


def threads_per_rank(world: int) -> int:
    """The machine's cores shared out evenly between the ranks (at least one each)."""
    return max(1, (os.cpu_count() or 1) // world)


def _worker(fn, rank: int, world: int, port: int, args: tuple, out_dir: str, threads: int, comm_timeout_s: float):
    torch.set_num_threads(threads)
    try:
        comm = comm_mod.init(rank, world, port=port, timeout_s=comm_timeout_s)
        try:
            result = fn(comm, *args)
        finally:
            comm_mod.shutdown()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        Path(out_dir, f"rank{rank}.err").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        sys.stderr.flush()
        os._exit(1)


def launch(fn, world: int, args: tuple = (), *, threads: int | None = None, timeout_s: float = 300.0,
           grace_s: float = 15.0, comm_timeout_s: float = 60.0, port: int | None = None) -> list:
    """Run `fn(comm, *args)` on `world` new processes; returns their results in rank order.

    `fn` must be importable (a module-level function). Raises `ParallelError` with each failed rank's
    message when any rank fails, or when the whole run passes `timeout_s`.
    """
    if world < 1:
        raise ParallelError(f"world size must be >= 1, got {world}")
    threads = threads or threads_per_rank(world)
    if port is not None and not comm_mod.port_is_free("127.0.0.1", port):
        raise ParallelError(f"rendezvous port {port} on 127.0.0.1 is already in use; pick another")
    port = port or comm_mod.free_port()
    ctx = mp.get_context("spawn")
    out_dir = tempfile.mkdtemp(prefix="workbench-ranks-")
    procs = [ctx.Process(target=_worker, args=(fn, r, world, port, args, out_dir, threads, comm_timeout_s),
                         daemon=True) for r in range(world)]
    try:
        for p in procs:
            p.start()
        deadline, failed_at = time.monotonic() + timeout_s, None
        while any(p.is_alive() for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now > failed_at + grace_s):
                break
            time.sleep(0.05)
        timed_out = any(p.is_alive() for p in procs) and failed_at is None
        _stop(procs)
        errors = []
        for r, p in enumerate(procs):
            err = Path(out_dir, f"rank{r}.err")
            if err.exists():
                errors.append(f"rank {r}: {err.read_text().splitlines()[0]}")
            elif p.exitcode != 0:
                errors.append(f"rank {r}: exited with code {p.exitcode}" + (" (killed)" if p.exitcode and p.exitcode < 0 else ""))
        if timed_out:
            raise ParallelError(f"{world} ranks did not finish within {timeout_s:g} s; stopped them")
        if errors:
            raise ParallelError("; ".join(errors))
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
    finally:
        _stop(procs)
        shutil.rmtree(out_dir, ignore_errors=True)


def _stop(procs):
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        if p.pid is not None:
            p.join(timeout=5)


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> int:
    """Run `python -m workbench ARGV` on `nproc` ranks through torchrun (its own rendezvous on a free
    port); returns torchrun's exit status. Threads per rank: cores / ranks unless OMP_NUM_THREADS is set."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "workbench", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode
