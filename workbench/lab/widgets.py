"""Seeing quantization error: a report (numbers), a figure, and an interactive explorer for notebooks.

All three take any float tensor (a weight matrix, a sample of activations) and one quantization
setting: bits 2..8, scheme "sym" or "asym", granularity "tensor" / "channel" / "group" (with a
group size), and an observer "minmax" / "percentile" / "mse" (see `workbench.quant.math` and
`workbench.quant.observers` for the formulas). A 1-D tensor is treated as one row; a tensor with
more than 2 dimensions as rows of its last dimension.

`quant_explorer` needs ipywidgets and a live kernel: its sliders re-run `plot_quant_error`. A
notebook executed headless (CI) never moves the sliders, so notebooks call `plot_quant_error` and
`quant_error_report` directly as well.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..errors import InvalidParameterError, WorkbenchError
from ..quant.math import calc_qparams, dequantize, group_view, quantization_error, quantize

SCHEMES = {"sym": True, "symmetric": True, "asym": False, "asymmetric": False}
OBSERVER_NAMES = ("minmax", "percentile", "mse")
GROUP_SIZES = (32, 64, 128)
_PLOT_POINTS = 200_000  # values drawn in the scatter / histogram (a seeded subsample of larger tensors)


def _as_matrix(tensor) -> torch.Tensor:
    x = torch.as_tensor(tensor).detach().float().cpu()
    if x.dim() == 0 or x.numel() == 0:
        raise InvalidParameterError(f"need a non-empty tensor with at least one dimension, got shape {tuple(x.shape)}")
    return x.reshape(1, -1) if x.dim() == 1 else x.reshape(-1, x.shape[-1])


def _symmetric(scheme) -> bool:
    if isinstance(scheme, bool):
        return scheme
    if scheme not in SCHEMES:
        raise InvalidParameterError(f"unknown scheme {scheme!r} (accepted: sym, asym)")
    return SCHEMES[scheme]


def _fake_quantize(x, bits, scheme, granularity, group_size, observer):
    symmetric = _symmetric(scheme)
    group_size = group_size if granularity == "group" else None
    qp = calc_qparams(x, bits, symmetric, granularity, group_size, observer)
    q = quantize(x, qp)
    return qp, q, dequantize(q, qp)


def quant_error_report(tensor, bits: int = 4, scheme="sym", granularity: str = "channel", group_size: int = 64,
                       observer="minmax") -> dict:
    """Quantize-dequantize `tensor` with one setting and measure the damage.

    Returns a dict: the setting (bits, scheme, granularity, group_size or None, observer), numel,
    mse, sqnr_db (10 log10 of mean x^2 over mse), max_abs_error, mean_abs_error, rel_rmse (RMS error
    over RMS value), scale_count (how many (scale, zero-point) pairs), bits_per_value (bits plus the
    amortised float32 scale and, for asym, the zero-point), clipped_fraction (share of values that
    the observer's range left outside the grid: saturated, error beyond half a step).
    """
    x = _as_matrix(tensor)
    qp, q, x_hat = _fake_quantize(x, bits, scheme, granularity, group_size, observer)
    return _report(x, qp, q, x_hat, observer)


def _report(x, qp, q, x_hat, observer) -> dict:
    err = quantization_error(x, x_hat)
    # a value is clipped when it was saturated at qmin/qmax and its error exceeds half a step
    half_step = (group_view(torch.ones_like(x), qp.granularity, qp.group_size) * qp.scale / 2).reshape(x.shape)
    saturated = (q == qp.qmin) | (q == qp.qmax)
    beyond = (x_hat - x).abs() > half_step * (1 + 1e-5)
    scales = qp.scale.numel()
    overhead = scales * (32 + (0 if qp.symmetric else qp.bits))
    name = observer if isinstance(observer, str) else getattr(observer, "name", type(observer).__name__)
    signal = x.pow(2).mean().item()
    return {"bits": qp.bits, "scheme": "sym" if qp.symmetric else "asym", "granularity": qp.granularity,
            "group_size": qp.group_size, "observer": name, "numel": x.numel(),
            "mse": err["mse"], "sqnr_db": err["sqnr_db"], "max_abs_error": err["max_abs_error"],
            "mean_abs_error": (x_hat - x).abs().mean().item(),
            "rel_rmse": (err["mse"] / signal) ** 0.5 if signal > 0 else float("nan"),
            "scale_count": scales, "bits_per_value": qp.bits + overhead / x.numel(),
            "clipped_fraction": (saturated & beyond).float().mean().item()}


def plot_quant_error(tensor, bits: int = 4, scheme="sym", granularity: str = "channel", group_size: int = 64,
                     observer="minmax", *, title: str | None = None, seed: int = 0):
    """A two-panel matplotlib Figure for one setting: reconstructed vs original values (the staircase
    of the grid, with y = x for reference) and the histogram of errors x_hat - x (log scale).

    Large tensors are drawn from a seeded random subsample of about 200,000 values (plus the 500
    largest values and the 500 largest errors); the numbers in the title (SQNR, MSE, max error) are
    over the whole tensor. The figure is returned, not shown.
    """
    x = _as_matrix(tensor)
    qp, q, x_hat = _fake_quantize(x, bits, scheme, granularity, group_size, observer)
    report = _report(x, qp, q, x_hat, observer)
    flat, flat_hat = x.flatten(), x_hat.flatten()
    if flat.numel() > _PLOT_POINTS:
        # a seeded random subsample, plus the largest values and errors so that the extremes show
        extremes = torch.cat([flat.abs().topk(500).indices, (flat_hat - flat).abs().topk(500).indices])
        idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(seed))[:_PLOT_POINTS - 1000]
        idx = torch.cat([idx, extremes]).unique()
        flat, flat_hat = flat[idx], flat_hat[idx]
    err = (flat_hat - flat).numpy()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    lo, hi = float(flat.min()), float(flat.max())
    ax1.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--", label="y = x")
    ax1.scatter(flat.numpy(), flat_hat.numpy(), s=2, alpha=0.3, color="tab:blue", rasterized=True,
                label="reconstructed")
    ax1.set_xlabel("original value x")
    ax1.set_ylabel("reconstructed x_hat")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.hist(err, bins=120, color="tab:orange", log=True)
    ax2.set_ylim(bottom=0.5)
    ax2.set_xlabel("error x_hat - x")
    ax2.set_ylabel("count (log)")
    setting = (f"{bits}-bit {report['scheme']}, {granularity}"
               + (f" (g={report['group_size']})" if granularity == "group" else "") + f", {report['observer']}")
    ax2.set_title(f"SQNR {report['sqnr_db']:.1f} dB, MSE {report['mse']:.3g}, max |err| {report['max_abs_error']:.3g}",
                  fontsize=10)
    ax1.set_title(title or setting, fontsize=10)
    fig.tight_layout()
    return fig


def quant_explorer(tensor, *, bits: int = 4, scheme: str = "sym", granularity: str = "channel",
                   group_size: int = 64, observer: str = "minmax"):
    """An ipywidgets UI over `plot_quant_error`: a bits slider (2..8) and dropdowns for scheme,
    granularity, group size (those of 32/64/128 that divide the row length) and observer. Returns the `ipywidgets.interactive` box
    (display it, or leave it as a cell's last expression). Each change re-draws the figure; the box's
    `.result` holds the error summary of the current setting (or why it cannot be quantized)."""
    import ipywidgets as W
    from IPython.display import display

    x = _as_matrix(tensor)

    def show(bits, scheme, granularity, group_size, observer):
        try:
            fig = plot_quant_error(x, bits, scheme, granularity, group_size, observer)
        except WorkbenchError as e:  # e.g. a group size that does not divide the row length
            message = f"cannot quantize with this setting: {e}"
            print(message)
            return message
        display(fig)
        plt.close(fig)
        return fig.axes[-1].get_title()  # "SQNR ... dB, MSE ...": kept as the box's .result

    # only the group sizes that divide the row length (576 = 4.5 x 128: no groups of 128 there)
    sizes = [g for g in GROUP_SIZES if x.shape[-1] % g == 0] or list(GROUP_SIZES)
    group_size = group_size if group_size in sizes else sizes[0]
    controls = dict(
        bits=W.IntSlider(value=bits, min=2, max=8, step=1, description="bits", continuous_update=False),
        scheme=W.Dropdown(options=["sym", "asym"], value=scheme, description="scheme"),
        granularity=W.Dropdown(options=["tensor", "channel", "group"], value=granularity, description="granularity"),
        group_size=W.Dropdown(options=sizes, value=group_size, description="group size"),
        observer=W.Dropdown(options=list(OBSERVER_NAMES), value=observer, description="observer"),
    )
    return W.interactive(show, **controls)
