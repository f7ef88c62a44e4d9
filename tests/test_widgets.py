"""quant_error_report numbers, plot_quant_error figures and the quant_explorer widget (constructed headless)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from workbench.errors import InvalidParameterError  # noqa: E402
from workbench.quant import PercentileObserver, fake_quantize, quantization_error  # noqa: E402
from workbench.lab.widgets import plot_quant_error, quant_error_report, quant_explorer  # noqa: E402


@pytest.fixture
def w():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 256, generator=g)
    x[5, 7] = 12.0  # one outlier
    return x


def test_report_matches_the_math(w):
    r = quant_error_report(w, bits=4, scheme="asym", granularity="group", group_size=64, observer="minmax")
    ref = quantization_error(w, fake_quantize(w, 4, False, "group", 64, "minmax"))
    assert r["mse"] == pytest.approx(ref["mse"]) and r["sqnr_db"] == pytest.approx(ref["sqnr_db"])
    assert r["max_abs_error"] == pytest.approx(ref["max_abs_error"])
    assert r["scale_count"] == 32 * 256 // 64 and r["group_size"] == 64 and r["scheme"] == "asym"
    assert r["bits_per_value"] == pytest.approx(4 + (32 + 4) / 64)
    assert r["clipped_fraction"] == 0  # min/max never clips
    assert r["numel"] == w.numel() and 0 < r["rel_rmse"] < 1


def test_report_granularity_counts_and_ordering(w):
    reports = {g: quant_error_report(w, 4, "sym", g, 32) for g in ("tensor", "channel", "group")}
    assert [reports[g]["scale_count"] for g in ("tensor", "channel", "group")] == [1, 32, 32 * 8]
    assert reports["tensor"]["group_size"] is None and reports["channel"]["group_size"] is None
    # the outlier stretches the one per-tensor scale: finer granularity is better
    assert reports["tensor"]["mse"] > reports["channel"]["mse"] > reports["group"]["mse"]


def test_report_bits_and_clipping(w):
    sqnr = [quant_error_report(w, b, "sym", "channel")["sqnr_db"] for b in range(2, 9)]
    assert sqnr == sorted(sqnr)
    clipped = quant_error_report(w, 4, "sym", "tensor", observer="percentile")
    assert clipped["clipped_fraction"] > 0 and clipped["observer"] == "percentile"
    custom = quant_error_report(w, 4, "sym", "tensor", observer=PercentileObserver(99.0))
    assert custom["clipped_fraction"] > clipped["clipped_fraction"]


def test_report_shapes_and_errors():
    v = torch.linspace(-1, 1, 64)
    r = quant_error_report(v, 8, "sym", "channel")
    assert r["scale_count"] == 1 and r["sqnr_db"] > 40  # a 1-D tensor is one row
    r3 = quant_error_report(torch.randn(2, 3, 64), 8, "asym", "channel")
    assert r3["scale_count"] == 6
    with pytest.raises(InvalidParameterError, match="scheme"):
        quant_error_report(v, 4, "signed")
    with pytest.raises(InvalidParameterError, match="does not divide"):
        quant_error_report(torch.randn(4, 48), 4, "sym", "group", 32)
    with pytest.raises(InvalidParameterError, match="2 to 8"):
        quant_error_report(v, 9)


def test_plot_returns_a_figure(w):
    fig = plot_quant_error(w, bits=3, scheme="asym", granularity="group", group_size=32, observer="mse")
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    assert "SQNR" in fig.axes[1].get_title() and "3-bit asym" in fig.axes[0].get_title()
    plt.close(fig)
    big = torch.randn(600, 1000)  # more values than the plot draws: subsampled, still fine
    fig = plot_quant_error(big, 8, "sym", "tensor", title="big")
    assert fig.axes[0].get_title() == "big"
    plt.close(fig)


def test_explorer_builds_with_all_controls(w):
    pytest.importorskip("ipywidgets")
    ui = quant_explorer(w)
    values = {c.description: c for c in ui.children if hasattr(c, "description") and hasattr(c, "value")}
    assert values["bits"].min == 2 and values["bits"].max == 8 and values["bits"].value == 4
    assert list(values["scheme"].options) == ["sym", "asym"]
    assert list(values["granularity"].options) == ["tensor", "channel", "group"]
    assert list(values["group size"].options) == [32, 64, 128]
    assert list(values["observer"].options) == ["minmax", "percentile", "mse"]
    # moving a control re-runs the callback: fewer bits, lower SQNR; an invalid setting gives a message
    sqnr = lambda: float(ui.result.split("SQNR ")[1].split(" dB")[0])  # noqa: E731
    values["granularity"].value = "group"
    values["bits"].value = 8
    at_8 = sqnr()
    values["bits"].value = 2
    assert sqnr() < at_8 - 20  # about 6 dB per bit
    narrow = quant_explorer(torch.randn(4, 576), group_size=128)  # 576 = 4.5 x 128
    sizes = [c for c in narrow.children if getattr(c, "description", "") == "group size"][0]
    assert list(sizes.options) == [32, 64] and sizes.value == 32
    odd = quant_explorer(torch.randn(4, 48), granularity="group", group_size=32)  # no size divides 48
    assert odd.result.startswith("cannot quantize with this setting")
    plt.close("all")
