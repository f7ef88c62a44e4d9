"""The paged KV cache's block pool, drawn: which request holds which physical block, which are shared.

`pool_grid` is the logic (one number per block), `draw_block_pool` the picture; both read a
`workbench.engine.trace.StepRecord`, so any step of a trace can be drawn.
"""

from __future__ import annotations

import numpy as np

FREE = -1
# matplotlib's default colour cycle without red (C3), which marks shared blocks
HOLDER_COLOURS = [("C0", "blue"), ("C1", "orange"), ("C2", "green"), ("C4", "purple"), ("C5", "brown"),
                  ("C6", "pink"), ("C8", "olive"), ("C9", "cyan")]


def pool_grid(record) -> np.ndarray:
    """Per physical block: FREE (-1), the row of the one running request that holds it (in the
    record's table order), or len(tables) when several hold it (shared)."""
    grid = np.full(len(record.ref_counts), FREE)
    shared = len(record.tables)
    for row, blocks in enumerate(record.tables.values()):
        for b in blocks:
            grid[b] = row if grid[b] in (FREE, row) else shared
    return grid


def draw_block_pool(record, ax=None, title: str | None = None):
    """One row of cells, a cell per physical block, coloured by holder (red: shared, grey: free),
    each labelled with its reference count. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    grid = pool_grid(record)
    holders = len(record.tables)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 1.6))
    holder = [HOLDER_COLOURS[i % len(HOLDER_COLOURS)] for i in range(holders)]
    colours = ["#eeeeee"] + [c for c, _ in holder] + ["C3"]
    ax.imshow(grid[None], cmap=ListedColormap(colours), vmin=FREE - 0.5, vmax=holders + 0.5, aspect="auto")
    for b, count in enumerate(record.ref_counts):
        ax.text(b, 0, count or "", ha="center", va="center", fontsize=8)
    names = ", ".join(f"{rid} {name}" for rid, (_, name) in zip(record.tables, holder))
    ax.set(yticks=[], xlabel="physical block (number = reference count; red = shared, grey = free)",
           title=title or f"block pool after step {record.step}: request {names}")
    return ax
