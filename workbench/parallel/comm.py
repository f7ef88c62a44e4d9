"""The process group and the only doors to it: collectives and point-to-point sends that count bytes.

Every tensor that leaves a rank goes through a `Comm` method, which records its payload in
`Comm.traffic` (per operation: calls and bytes) before handing it to torch.distributed. That is the
run-time count the formulas of `cost.py` are checked against. A peer that died or stopped answering
surfaces here as a `ParallelError` naming the operation (gloo notices a closed connection at once,
a silent peer after the group's timeout), so no rank hangs on a dead one.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ParallelError

DEFAULT_TIMEOUT_S = 120.0


def backend_for(device: str | torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def under_torchrun() -> bool:
    """True in a process that torchrun (or another launcher setting the same variables) started."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


class Comm:
    """One rank's view of the process group, counting what it sends."""

    def __init__(self, rank: int, world: int, device: torch.device | str = "cpu"):
        self.rank, self.world, self.device = rank, world, torch.device(device)
        self.traffic: Counter = Counter()

    # ---- counting -------------------------------------------------------------------------------
    def _count(self, op: str, tensor: torch.Tensor):
        self.traffic[op + "_calls"] += 1
        self.traffic[op + "_bytes"] += tensor.numel() * tensor.element_size()

    def reset_traffic(self):
        self.traffic.clear()

    def bytes_sent(self) -> int:
        return sum(v for k, v in self.traffic.items() if k.endswith("_bytes"))

    def _guard(self, op: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, dist.DistBackendError) as e:  # a closed connection, a timeout
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ParallelError(f"rank {self.rank}: {op} failed, a peer rank died or stopped answering "
                                f"({first[:200]})") from e

    # ---- operations -----------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (payload counted: the tensor's bytes)."""
        if self.world == 1:
            return tensor
        self._count("all_reduce", tensor)
        self._guard("all_reduce", dist.all_reduce, tensor)
        return tensor

    def all_gather_last(self, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's `tensor` along the last dimension; rank r contributes `sizes[r]`
        columns (padded to the largest so every rank sends the same shape; payload: the padded shard)."""
        if self.world == 1:
            return tensor
        width = max(sizes)
        if tensor.shape[-1] < width:
            tensor = torch.nn.functional.pad(tensor, (0, width - tensor.shape[-1]))
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        self._count("all_gather", tensor)
        self._guard("all_gather", dist.all_gather, parts, tensor)
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        if self.world == 1:
            return tensor
        if self.rank == src:
            self._count("broadcast", tensor)
        self._guard("broadcast", dist.broadcast, tensor, src)
        return tensor

    def isend(self, tensor: torch.Tensor, dst: int):
        """Start sending `tensor` to `dst`; returns a handle whose `wait()` finishes it."""
        tensor = tensor.contiguous()
        self._count("send", tensor)
        work = self._guard("send", dist.isend, tensor, dst)
        return _Pending(self, work, tensor)

    def recv(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        self._guard("recv", dist.recv, tensor, src)
        return tensor

    def barrier(self):
        if self.world > 1:
            self._guard("barrier", dist.barrier)


class _Pending:
    def __init__(self, comm: Comm, work, tensor):
        self.comm, self.work, self.tensor = comm, work, tensor  # keep the tensor alive until sent

    def wait(self):
        self.comm._guard("send", self.work.wait)


def init(rank: int | None = None, world: int | None = None, *, host: str | None = None, port: int | None = None,
         device: str | torch.device = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Comm:
    """Join the process group (from torchrun's environment when `rank`/`world` are None) -> `Comm`.

    A rendezvous port already in use by something else is refused before torch tries to bind it.
    """
    if rank is None:
        if not under_torchrun():
            raise ParallelError("not started by torchrun: RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are unset")
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world == 1:
        return Comm(0, 1, device)
    host = host or "127.0.0.1"
    launched = under_torchrun()  # torchrun hosts the rendezvous; otherwise rank 0 does, on `port`
    if rank == 0 and not launched and not port_is_free(host, port):
        raise ParallelError(f"rendezvous port {port} on {host} is already in use; pick another")
    timeout = timedelta(seconds=timeout_s)
    try:
        if launched:
            dist.init_process_group(backend_for(device), timeout=timeout)
        else:
            store = dist.TCPStore(host, port, world, rank == 0, timeout=timeout)
            dist.init_process_group(backend_for(device), rank=rank, world_size=world, store=store, timeout=timeout)
    except (RuntimeError, dist.DistError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ParallelError(f"rank {rank}: could not join the process group at {host}:{port} ({first[:200]})") from e
    return Comm(rank, world, device)


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
