"""Weights in transparent huge pages: decode streams them faster.

A decode step reads every weight once, front to back. On 4 KiB pages the CPU's prefetchers stop at
every page boundary and every page costs a TLB entry; on 2 MiB pages a matrix is a few long runs.
On a 2-core machine like CI's our float32 kernel reads the 113 MB output head at about 29 GB/s from
ordinary pages and about 42 GB/s from huge pages. PyTorch only asks for huge pages when
THP_MEM_ALLOC_ENABLE=1 was set before it started, so we ask ourselves: copy each large weight into
fresh memory marked with madvise(MADV_HUGEPAGE) before anything touches it. Where the kernel does
not offer huge pages (another OS, THP switched off), the copy is harmless: same values, same speed.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import nn

HUGE_PAGE = 2 << 20
MIN_BYTES = HUGE_PAGE  # smaller tensors cannot fill a huge page
MADV_HUGEPAGE = 14  # Linux

_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                _madvise = libc.madvise
            except (OSError, AttributeError):
                pass
    return _madvise


def huge_page_copy(t: torch.Tensor) -> torch.Tensor | None:
    """A contiguous copy of CPU tensor `t` in memory advised for huge pages, or None when that is not possible."""
    madvise = _libc_madvise()
    nbytes = t.numel() * t.element_size()
    if not madvise or t.device.type != "cpu" or nbytes < MIN_BYTES:
        return None
    if t.data_ptr() % HUGE_PAGE == 0 and t.is_contiguous():
        return None  # moved by an earlier call (enable runs again after quantizing): no second copy
    buffer = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)  # fresh pages, not touched yet
    offset = -buffer.data_ptr() % HUGE_PAGE
    if madvise(buffer.data_ptr() + offset, nbytes // 4096 * 4096, MADV_HUGEPAGE) != 0:
        return None
    out = buffer[offset:offset + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)  # the first touch: the kernel backs the advised range with huge pages
    return out


def move_weights_to_huge_pages(model: nn.Module) -> int:
    """Copy every large parameter and buffer of `model` into huge-page memory, in place (tied tensors
    stay tied: a shared tensor is moved once; tensors already moved stay). Returns the bytes moved."""
    moved, done = 0, {}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, t in store.items():
                if t is None:
                    continue
                key = t.data_ptr()
                if key not in done:
                    done[key] = huge_page_copy(t.detach())
                    if done[key] is not None:
                        done[done[key].data_ptr()] = done[key]  # met again through a shared Parameter
                        moved += done[key].numel() * done[key].element_size()
                new = done[key]
                if new is None or new.data_ptr() == t.data_ptr():
                    continue
                if isinstance(t, nn.Parameter):
                    t.data = new  # the same Parameter object: every module sharing it sees the move
                else:
                    store[name] = new
    return moved
