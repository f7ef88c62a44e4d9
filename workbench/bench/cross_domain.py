"""Cross-domain quality: each compression method x calibration set x evaluation corpus.

Method: the float model is left untouched; each cell compresses a deep copy (`quantize_` or `prune_`
with `calib=` the cell's calibration set, `workbench.corpus.calibration`), then `perplexity` scores
the first `eval_tokens` tokens of every corpus's evaluation part in non-overlapping windows of
`window` (the prefill path). A data-free method (round to nearest, magnitude) has one calibration
set, "none". Each calibrated method is compared with its data-free peer on the same corpus:
    gap_closed = (ppl_peer - ppl) / (ppl_peer - ppl_float)     int4 methods: 1 = float, 0 = RTN, < 0 worse
    of_peer_increase = (ppl - ppl_float) / (ppl_peer - ppl_float)   pruning: share of magnitude's increase
    worse_than_peer  = ppl > ppl_peer                         flagged: calibration that hurts
`calib_in_corpus` says whether the calibration set was drawn from the scored corpus (its
calibration part: disjoint text, same domain), the condition the cross-domain targets exclude.
"""

from __future__ import annotations

import copy

import pandas as pd

from ..corpus import CORPORA, corpus_text, parse_calibration
from ..eval import weight_only_perplexity as perplexity
from ..settings import now

METHOD = __doc__
FLOAT = "float32"
NONE = "none"


def _gptq_head(head_method: str, act_order: bool = True):
    def build(model, tokenizer, calib):
        from ..quant import quantize_
        from ..quant.gptq import GPTQConfig

        return quantize_(model, GPTQConfig(128, act_order=act_order, head_method=head_method), tokenizer=tokenizer,
                         calib=calib)
    return build


def _int8_clipped(model, tokenizer, calib):
    """int8 per channel with each row's clipping range searched for the least squared weight error."""
    from ..quant import quantize_
    from ..quant.api import Int8WeightOnlyConfig

    return quantize_(model, Int8WeightOnlyConfig(observer="mse"))


def _int4_clipped(model, tokenizer, calib):
    """int4-g128 with each group's range searched for the least squared *weight* error (no data)."""
    from ..quant import quantize_
    from ..quant.api import Int4WeightOnlyConfig

    return quantize_(model, Int4WeightOnlyConfig(128, observer="mse"))


def _quant(spec):
    def build(model, tokenizer, calib):
        from ..quant import quantize_

        return quantize_(model, spec, tokenizer=tokenizer, calib=calib)
    return build


def _prune(spec):
    def build(model, tokenizer, calib):
        from ..prune import prune_

        return prune_(model, spec, tokenizer=tokenizer, calib=calib)
    return build


# label -> (family, data-free peer (None: it is one), builder)
METHODS = {
    FLOAT: ("float", None, None),
    "int8": ("int8", None, _quant("int8")),
    "int8-mse": ("int8", None, _int8_clipped),
    "q8_0": ("int8", None, _quant("q8_0")),
    "int4-g128": ("int4", None, _quant("int4-g128")),
    "int4-g128-mse": ("int4", None, _int4_clipped),
    "int4-g128-gptq": ("int4", "int4-g128", _quant("int4-g128-gptq")),
    "int4-g128-gptq-actorder": ("int4", "int4-g128", _quant("int4-g128-gptq-actorder")),
    "int4-g128-gptq-actorder/head-rtn": ("int4", "int4-g128", _gptq_head("rtn")),
    "int4-g128-gptq-actorder/head-int8": ("int4", "int4-g128", _gptq_head("int8")),
    "int4-g128-awq": ("int4", "int4-g128", _quant("int4-g128-awq")),
    "int4-g128-clip": ("int4", "int4-g128", _quant("int4-g128-clip")),
    "int4-g128-gptq-clip": ("int4", "int4-g128", _quant("int4-g128-gptq-clip")),
    "int4-g128-gptq-actorder-clip": ("int4", "int4-g128", _quant("int4-g128-gptq-actorder-clip")),
    "w8a8": ("w8a8", None, _quant("w8a8")),
    "w8a8-smoothquant": ("w8a8", "w8a8", _quant("w8a8-smoothquant")),
    "magnitude:0.5": ("prune", None, _prune("magnitude:0.5")),
    "wanda:0.5": ("prune", "magnitude:0.5", _prune("wanda:0.5")),
    "sparsegpt:0.5": ("prune", "magnitude:0.5", _prune("sparsegpt:0.5")),
}


def calibrated(label: str) -> bool:
    return METHODS[label][1] is not None


def _source_corpora(calib: str) -> set[str]:
    return {p.source for p in parse_calibration(calib).parts if p.source in CORPORA}


def cross_domain_table(model, tokenizer, cells, *, corpora=tuple(CORPORA), eval_tokens: int = 4096,
                       window: int = 1024, on_row=None, done: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (method, calibration set, corpus) of `cells` [(method label, calib spec or "none")]:
    ppl, ppl_vs_float32, compress_s, and the peer columns of `add_comparisons`. `on_row(rows)` is
    called after each cell (to save partial results). The float32 reference is always scored, unless
    `done` (rows of an earlier run with the same sizes) holds it; cells in `done` are kept, not re-run."""
    ids = {c: tokenizer.encode(corpus_text(c, "evaluation"), add_special_tokens=False)[:eval_tokens] for c in corpora}
    keep = ["method", "calib", "corpus", "ppl", "compress_s", "tokens"]
    rows = [] if done is None else done[keep].to_dict("records")
    finished = {(r["method"], r["calib"]) for r in rows}
    if (FLOAT, NONE) not in finished:
        rows = [{"method": FLOAT, "calib": NONE, "corpus": c, "ppl": perplexity(model, ids[c], window=window).ppl,
                 "compress_s": 0.0, "tokens": len(ids[c])} for c in corpora] + rows
    for label, calib in cells:
        if label == FLOAT or (label, calib) in finished:
            continue
        build = METHODS[label][2]
        start = now()
        compressed = build(copy.deepcopy(model), tokenizer, None if calib == NONE else calib)
        seconds = now() - start
        for c in corpora:
            rows.append({"method": label, "calib": calib, "corpus": c, "ppl": perplexity(compressed, ids[c],
                         window=window).ppl, "compress_s": seconds, "tokens": len(ids[c])})
        del compressed
        if on_row is not None:
            on_row(add_comparisons(pd.DataFrame(rows)))
    return add_comparisons(pd.DataFrame(rows))


def add_comparisons(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ppl_vs_float32, peer, ppl_peer, gap_closed, of_peer_increase, worse_than_peer, calib_in_corpus."""
    frame = frame.reset_index(drop=True)  # joined parts repeat index labels: `targets` looks rows up by label
    ref = frame[frame.method == FLOAT].set_index("corpus").ppl
    data_free = frame[frame.calib == NONE].groupby(["method", "corpus"]).ppl.first()
    frame["ppl_vs_float32"] = frame.ppl / frame.corpus.map(ref) - 1
    frame["peer"] = frame.method.map(lambda m: METHODS[m][1] or "")
    frame["ppl_peer"] = [data_free.get((p, c), float("nan")) if p else float("nan")
                         for p, c in zip(frame.peer, frame.corpus)]
    span = frame.ppl_peer - frame.corpus.map(ref)
    frame["gap_closed"] = (frame.ppl_peer - frame.ppl) / span
    frame["of_peer_increase"] = (frame.ppl - frame.corpus.map(ref)) / span
    frame["worse_than_peer"] = frame.ppl > frame.ppl_peer
    frame["calib_in_corpus"] = [c in _source_corpora(k) if k != NONE else False
                                for c, k in zip(frame.corpus, frame.calib)]
    return frame


def targets(frame: pd.DataFrame) -> list[dict]:
    """The cross-domain targets, each with its worst case over the corpora and whether it is met."""
    out = []
    corpora = sorted(frame.corpus.unique())
    int8 = frame[frame.method.isin(["int8", "int8-mse", "q8_0"])]
    for m, g in int8.groupby("method"):
        worst = float(g.ppl_vs_float32.max())
        out.append({"target": f"{m}: ppl within +0.5% of float32 on every corpus", "worst": worst,
                    "met": worst <= 0.005})
    int4 = frame[(frame.method.str.startswith("int4-g128-")) & ~frame.calib_in_corpus & (frame.calib != NONE)
                 & frame.gap_closed.notna()]
    if len(int4):
        # One method must hold on every corpus: per method, its best calibration set on each corpus
        # (never one drawn from that corpus), then its worst corpus; the best method by that worst.
        per = int4.loc[int4.groupby(["method", "corpus"]).gap_closed.idxmax()]
        covered = per.groupby("method").corpus.nunique() == len(corpora)
        worst = per.groupby("method").gap_closed.min()[covered]
        target = {"target": "best calibrated int4-g128 method closes >= 50% of RTN's gap on every corpus "
                            "(calibration set not drawn from that corpus)", "worst": float("nan"), "met": False}
        if len(worst):
            method = worst.idxmax()
            target.update(worst=float(worst.max()), met=bool(worst.max() >= 0.5), method=method,
                          best_per_corpus={r.corpus: {"gap_closed": float(r.gap_closed), "calib": r.calib}
                                           for r in per[per.method == method].itertuples()})
        out.append(target)
    for m in ("wanda:0.5", "sparsegpt:0.5"):
        g = frame[(frame.method == m) & frame.of_peer_increase.notna()]
        if len(g):
            worst = float(g.of_peer_increase.max())
            out.append({"target": f"{m}: within half of magnitude:0.5's ppl increase on every corpus and calibration set",
                        "worst": worst, "met": worst <= 0.5})
    worse = frame[frame.worse_than_peer]
    out.append({"target": "no calibrated method worse than its data-free peer on any corpus", "worst": len(worse),
                "met": len(worse) == 0, "flagged": worse[["method", "calib", "corpus", "ppl", "ppl_peer"]]
                .to_dict("records")})
    return out


def gap_matrix(frame: pd.DataFrame, method: str, value: str = "gap_closed") -> pd.DataFrame:
    """calibration set x corpus of one method's `value` (the cross-domain table of one method)."""
    g = frame[frame.method == method]
    return g.pivot_table(index="calib", columns="corpus", values=value, aggfunc="first")


def read_cross_domain(path="data/results/cross_domain.csv") -> pd.DataFrame:
    """The benchmark's rows (benchmarks/cross_domain.py), as written."""
    return pd.read_csv(path)


def plot_cross_domain(frame: pd.DataFrame, methods=None, ax=None, value: str = "gap_closed"):
    """Bars of `value` per method and calibration set, one group of bars per corpus."""
    import matplotlib.pyplot as plt

    methods = methods or [m for m in frame.method.unique() if m in METHODS and calibrated(m)
                          and METHODS[m][0] == "int4"]
    g = frame[frame.method.isin(methods)]
    table = g.pivot_table(index=["method", "calib"], columns="corpus", values=value, aggfunc="first")
    ax = ax or plt.subplots(figsize=(9, 4))[1]
    table.plot.barh(ax=ax)
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel(value.replace("_", " ") + (" (1 = float32, 0 = round to nearest)" if value == "gap_closed" else ""))
    ax.set_ylabel("")
    return ax


__all__ = ["METHOD", "METHODS", "cross_domain_table", "add_comparisons", "targets", "gap_matrix",
           "read_cross_domain", "plot_cross_domain"]
