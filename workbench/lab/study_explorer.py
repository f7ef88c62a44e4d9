"""An ipywidgets explorer over a study's results: filter by method, bits per weight and sparsity, and
the Pareto front redraws. The filtering and the front are `workbench.study.filter_cells` and
`workbench.study.pareto_front` (tested there); the widget only calls them through `draw`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from ..study.analysis import filter_cells, ok_cells
from ..study.report import plot_front, speed_column


def draw(frame: pd.DataFrame, *, methods=None, bits=None, sparsity=None, x: str = "weight_bytes"):
    """The front of the filtered cells against `x` ("weight_bytes" or a decode_tok_s column); returns
    (figure, the filtered cells)."""
    cells = filter_cells(frame, methods=methods, bits=bits, sparsity=sparsity)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if cells.empty:
        ax.set_title("no cell matches the filters")
    else:
        plot_front(cells, x, maximize_x=x != "weight_bytes", ax=ax)
    return fig, cells


def study_explorer(frame: pd.DataFrame):
    """Checkboxes per method, range sliders for bits and sparsity, a choice of x axis."""
    import ipywidgets as widgets
    from IPython.display import display

    cells = ok_cells(frame)
    methods = sorted(cells["method"].unique())
    boxes = {m: widgets.Checkbox(value=True, description=m, indent=False) for m in methods}
    lo, hi = float(cells["bits_per_weight"].min()), float(cells["bits_per_weight"].max())
    bits = widgets.FloatRangeSlider(value=(lo, hi), min=lo, max=hi, step=0.1, description="bits/weight")
    sparsity = widgets.FloatRangeSlider(value=(0.0, 1.0), min=0.0, max=1.0, step=0.05, description="sparsity")
    axes = ["weight_bytes"] + ([speed_column(cells)] if speed_column(cells) else [])
    x = widgets.Dropdown(options=axes, value="weight_bytes", description="x axis")
    out = widgets.Output()

    def redraw(_=None):
        with out:
            out.clear_output(wait=True)
            fig, _ = draw(frame, methods=[m for m, b in boxes.items() if b.value], bits=bits.value,
                          sparsity=sparsity.value, x=x.value)
            display(fig)
            plt.close(fig)

    for w in [*boxes.values(), bits, sparsity, x]:
        w.observe(redraw, names="value")
    redraw()
    panel = widgets.VBox([widgets.HBox(list(boxes.values())), bits, sparsity, x, out])
    display(panel)
    return panel
