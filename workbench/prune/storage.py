"""What sparsity buys in bytes, and what it does not (the time: `workbench.bench.sparse`).

Unstructured pruning leaves zeros in dense tensors: the file, the memory and the matrix multiply
are exactly as large as before. Savings need a format that stores only the kept weights plus where
they are, and a kernel that reads it:
- CSR (compressed sparse rows, `torch.sparse_csr`): values + a column index per value + row
  pointers; measured here from real tensors. With int64 indices it is larger than dense at 50%.
- bitmask: values + 1 bit per position (a layout some sparse kernels use).
- N:M compressed (NVIDIA's 2:4 sparse tensor cores): N values per group of M plus log2(M) bits
  of position each; only valid when every group holds at most N nonzeros.
"""

from __future__ import annotations

import math
import warnings

import pandas as pd
import torch

from ..errors import PruningError
from .masks import decoder_linears


def tensor_storage(weight: torch.Tensor, nm: tuple[int, int] | None = None) -> dict:
    """Bytes of one weight in each format (dense, csr measured from a real CSR tensor, bitmask, N:M)."""
    w = weight.detach()
    size = w.element_size()
    with warnings.catch_warnings():  # torch calls its CSR support beta; only the layout's sizes are read here
        warnings.simplefilter("ignore", UserWarning)
        csr = w.to_sparse_csr()
    nnz = int(csr.values().numel())
    out = {"numel": w.numel(), "nonzeros": nnz, "dense": w.numel() * size,
           "csr": sum(t.numel() * t.element_size() for t in (csr.values(), csr.col_indices(), csr.crow_indices())),
           "bitmask": nnz * size + math.ceil(w.numel() / 8)}
    if nm is not None:
        n, m = nm
        groups = w.reshape(w.shape[0], -1, m)
        if int((groups != 0).sum(-1).max()) > n:
            raise PruningError(f"weight is not {n}:{m} sparse")
        kept = w.numel() // m * n
        out[f"{n}:{m}"] = kept * size + math.ceil(kept * math.ceil(math.log2(m)) / 8)
    return out


def storage_report(model, nm: tuple[int, int] | None = None) -> pd.DataFrame:
    """Whole-model bytes per format: decoder matrices in that format, every other tensor (embedding,
    norms) dense. Columns: format, bytes, vs_dense."""
    totals: dict[str, int] = {}
    pruned = 0
    for linear in decoder_linears(model).values():
        for key, value in tensor_storage(linear.weight, nm).items():
            if key not in ("numel", "nonzeros"):
                totals[key] = totals.get(key, 0) + value
        pruned += linear.weight.numel() * linear.weight.element_size()
    rest = model.weight_bytes() - pruned
    rows = [{"format": k, "bytes": v + rest} for k, v in totals.items()]
    dense = rows[0]["bytes"]
    return pd.DataFrame(rows).assign(vs_dense=lambda f: f["bytes"] / dense)

