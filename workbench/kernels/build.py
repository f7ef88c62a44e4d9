"""Compile the C++ kernels on first use and cache the build; never crash when that is impossible.

The extension is built with `torch.utils.cpp_extension.load` (ninja drives the compiler) into
`<workbench cache>/kernels/<hash>/`, where the hash covers the C++ sources, the compiler flags and the
torch version: an edit or an upgrade builds afresh, everything else loads the cached library in well
under a second. Without a C++ compiler, without ninja, or when the build fails, `load()` returns
None and warns once, saying why; callers then use PyTorch's own operators. `WORKBENCH_KERNELS=0`
switches the kernels off without trying.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

from ..io import locked
from ..settings import cache_root

SOURCES = ("matvec.cpp", "matvec_body.h", "vec.h", "int4_q8.h", "attention.h", "stack.h", "gguf_q8.h", "gemm_f32.h",
           "bf16_dot.h", "tiles.h", "tiles_avx2.h", "attention_avx2.h")
CFLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno"]  # instruction sets: per function, see vec.h
LDFLAGS = ["-fopenmp"]
CSRC = Path(__file__).with_name("csrc")


class KernelsUnavailableWarning(RuntimeWarning):
    """The C++ kernels could not be built or loaded; PyTorch's operators are used instead."""


_state: dict = {}  # "module", "reason", "build_s": filled by the first load()


def disabled_by_env() -> bool:
    return os.environ.get("WORKBENCH_KERNELS", "1").lower() in ("0", "off", "false", "no")


def source_hash() -> str:
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    h.update(" ".join(CFLAGS + LDFLAGS).encode() + torch.__version__.encode() + sys.version.encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    return cache_root() / "kernels" / source_hash()


def _missing_tool() -> str | None:
    """Why a build cannot even start, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler found ({compiler!r} is not on PATH; install g++ or clang++, or set CXX)"
    try:  # the `ninja` wheel puts its binary beside its module, not always on PATH
        import ninja

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def load(verbose: bool = False):
    """The compiled extension module, building it on first use; None (with one warning) if impossible."""
    try:
        return _state["module"]
    except KeyError:  # the first call: build or load
        pass
    module, reason = None, None
    if disabled_by_env():
        reason = "switched off by WORKBENCH_KERNELS=0"
    elif (reason := _missing_tool()) is None:
        module, reason = _compile(verbose)
    _state.update(module=module, reason=reason)
    if module is None and not disabled_by_env():
        warnings.warn(f"workbench CPU kernels unavailable: {reason}. Using PyTorch's operators instead "
                      f"(correct, slower at decode).", KernelsUnavailableWarning, stacklevel=2)
    return module


def _compile(verbose: bool):
    from torch.utils.cpp_extension import load as cpp_load

    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    name = f"workbench_kernels_{out.name}"
    fresh = not any(out.glob(f"{name}*.so"))
    if fresh:
        print(f"workbench: compiling the CPU kernels once into {out} (about a minute on 2 cores) ...",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        with locked(out / "build"):  # an flock: released by the kernel even when a builder is killed
            # torch's own lock is a plain file that a killed build leaves behind, after which every later
            # load waits forever; holding ours, no other workbench process is building here, so it is stale
            (out / "lock").unlink(missing_ok=True)
            module = cpp_load(name, [str(CSRC / "matvec.cpp")], extra_cflags=list(CFLAGS),  # copies: load() appends
                              extra_ldflags=list(LDFLAGS),
                              extra_include_paths=[str(CSRC)], build_directory=str(out), verbose=verbose)
    except Exception as e:  # a compiler error, a missing header, a broken toolchain: fall back, say why
        detail = str(e).strip().splitlines()
        return None, f"the build in {out} failed ({detail[-1] if detail else type(e).__name__})"
    _state["build_s"] = time.perf_counter() - start if fresh else 0.0
    return module, None


def status() -> dict:
    """What `load()` found: available, backend, the reason when unavailable, build seconds, and the build's
    id (its directory's name under the cache root: results files name no machine's paths)."""
    module = load()
    return {"available": module is not None, "backend": module.backend() if module else None,
            "supported_backends": module.supported_backends() if module else [],
            "reason": _state.get("reason"), "build_s": _state.get("build_s"), "build": build_dir().name}
