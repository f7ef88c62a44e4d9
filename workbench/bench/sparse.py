"""Time of a sparse weight: the dense product against the same weight as a CSR tensor."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .timing import alternate, now


@torch.no_grad()
def matmul_timing(weight: torch.Tensor, tokens: int = 1, repeats: int = 50) -> dict:
    """Median microseconds of y = x W^T for the dense tensor and for its CSR copy (torch.sparse.mm),
    alternated call by call (`alternate`, one warm-up call each) so that machine noise hits both;
    `csr_over_dense` is the median of the per-call ratios."""
    x = torch.randn(tokens, weight.shape[1], dtype=weight.dtype, device=weight.device)
    with warnings.catch_warnings():  # torch calls its CSR support beta
        warnings.simplefilter("ignore", UserWarning)
        csr = weight.detach().to_sparse_csr()
    dense_y, sparse_y = F.linear(x, weight), torch.sparse.mm(csr, x.T).T

    def timed(fn):
        def run():
            start = now()
            fn()
            return (now() - start) * 1e6
        return run

    rounds = alternate({"dense": timed(lambda: F.linear(x, weight)), "csr": timed(lambda: torch.sparse.mm(csr, x.T))},
                       rounds=repeats, warmup=1)
    return {"dense_us": rounds.median("dense"), "csr_us": rounds.median("csr"),
            "csr_over_dense": rounds.ratio("csr", "dense"), "max_abs_diff": float((dense_y - sparse_y).abs().max())}
