"""Measure one cell: the same code for every cell, whichever executor runs it."""

from __future__ import annotations

import gc
import os

import torch

from ..bench import bench_decode
from ..bench.timing import median, now, run_info
from ..corpus import builtin_text, load_text
from ..eval import weight_only_perplexity
from .spec import code_version, parse_bytes

METHOD = (
    "Each cell loads its model afresh (workbench.checkpoints.load_model, in the study's dtype), prunes "
    "(workbench.prune.prune_; calibrated methods read the built-in calibration text), then quantizes "
    "(workbench.quant.quantize_; auto:BYTES = workbench.study.mixed: a per-matrix sensitivity scan and a "
    "greedy allocation of tiers under the byte budget) and puts the layers on the CPU kernels "
    "(workbench.kernels.enable), as the command line's --prune/--quant do. weight_bytes: every stored "
    "tensor (packed integers, scales, norms; a tied embedding once); bits_per_weight: weight_bytes x 8 / "
    "the parameters of the model as loaded. ppl: workbench.eval.perplexity on the first `tokens` tokens of "
    "the built-in evaluation text (and ppl_<name> per user text) in non-overlapping windows of `window`; "
    "kv=int8 scores through int8 keys/values (workbench.engine.kv_quant.Int8KVModel). Speed: "
    "workbench.bench.bench_decode (greedy, end of sequence ignored; batch b = b different slices of the "
    "evaluation text of `prompt_tokens` tokens, `new_tokens` generated; kv=int8 decodes with the int8 "
    "contiguous cache); one untimed round, then `rounds` rounds that alternate the batch sizes (each "
    "round runs every batch once), medians per batch: decode_tok_s_b<b> and prefill_tok_s_b<b>. Cells "
    "run one after another (local) or as Ray tasks, so speed is compared across cells measured at "
    "different times: see loadavg_start/loadavg_end per cell. peak_rss_mb: the peak resident memory "
    "of the cell (Linux resets the process's peak before each cell through /proc/self/clear_refs; "
    "elsewhere it is the process's peak so far, peak_rss_scope says which)."
)


def reset_peak_rss() -> str:
    """'cell' when the kernel let us reset the peak resident set size, else 'process'."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "cell"
    except OSError:
        return "process"


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    from ..bench.timing import peak_rss_mb as process_peak

    return process_peak()


def compress(cell: dict, *, cache_dir=None, progress: bool = False):
    """(model, tokenizer, row) for the cell's model after its prune and quant specs; the row holds
    the parameters as loaded, the time compression took and, for auto:BYTES, the plan's tier counts."""
    from .. import kernels
    from ..checkpoints import load_model
    from ..variant import compress_
    from .mixed import quantize_auto_

    model, tokenizer = load_model(cell["model"], dtype=cell["dtype"])
    row = {"parameters": model.num_parameters()}
    start = now()
    quant = cell["quant"]
    compress_(model, tokenizer, prune=None if cell["prune"] == "none" else cell["prune"],
              quant=None if quant == "none" or quant.startswith("auto:") else quant)
    if quant.startswith("auto:"):
        key = {k: cell[k] for k in ("model", "dtype", "prune")}
        plan = quantize_auto_(model, tokenizer, parse_bytes(quant.removeprefix("auto:")), cell["mixed"],
                              cache_dir=cache_dir, key={**key, "code": code_version()}, progress=progress)
        row.update({f"matrices_{t}": sum(v == t for v in plan.values()) for t in cell["mixed"]["tiers"]})
        row["budget_bytes"] = parse_bytes(quant.removeprefix("auto:"))
    row["compress_s"] = now() - start
    if cell.get("kernels", True):
        kernels.enable(model)
    return model, tokenizer, row


def measure_cell(cell: dict, *, cache_dir=None, progress: bool = False) -> dict:
    """Every measure the cell asks for, as one flat row (no key columns: the runner adds them)."""
    from tqdm.auto import tqdm

    if cell.get("threads"):
        torch.set_num_threads(int(cell["threads"]))
    stages = ["load + compress"] + [m for m in ("perplexity", "speed") if m in cell["measures"]]
    bar = tqdm(total=len(stages), desc="cell", leave=False, disable=not progress)
    scope = reset_peak_rss()
    started, load_start = now(), list(os.getloadavg())
    bar.set_postfix_str(stages[0])
    model, tokenizer, row = compress(cell, cache_dir=cache_dir, progress=progress)
    bar.update()
    row["weight_bytes"] = model.weight_bytes()
    row["bits_per_weight"] = row["weight_bytes"] * 8 / row["parameters"]
    if "perplexity" in cell["measures"]:
        bar.set_postfix_str("perplexity")
        row.update(measure_perplexity(model, tokenizer, cell))
        bar.update()
    if "speed" in cell["measures"]:
        bar.set_postfix_str("speed")
        row.update(measure_speed(model, tokenizer, cell))
        bar.update()
    bar.close()
    row.update(peak_rss_mb=peak_rss_mb(), peak_rss_scope=scope, threads=torch.get_num_threads(),
               kernels=_kernels_in_use(model), loadavg_start=load_start[0], loadavg_end=os.getloadavg()[0],
               cell_s=now() - started, cpu=run_info()["cpu"], host_cpus=os.cpu_count())
    del model
    gc.collect()
    return row


def _kernels_in_use(model) -> str:
    from .. import kernels

    return kernels.in_use(model) or "off"


def scorer(model, kv: str):
    """What perplexity calls: the model, or the model through int8 keys/values."""
    if kv == "int8":
        from ..engine.kv_quant import Int8KVModel

        return Int8KVModel(model)
    return model


def measure_perplexity(model, tokenizer, cell: dict) -> dict:
    settings = cell["perplexity"]
    texts = [("", builtin_text("evaluation"))] + [(t["name"], load_text(t["path"])) for t in settings["texts"]]
    out = {}
    for name, text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)[:settings["tokens"]]
        r = weight_only_perplexity(scorer(model, cell["kv"]), ids, window=settings["window"])
        suffix = f"_{name}" if name else ""
        out[f"ppl{suffix}"], out[f"predictions{suffix}"] = r.ppl, r.predictions
    return out


def _int8_cache(model):
    from ..engine.kv_quant import Int8KVCache

    def new_cache(batch_size: int, max_len: int | None = None):
        return Int8KVCache(model.config, batch_size, max_len or model.config.max_position_embeddings,
                           model.dtype, model.device)
    return new_cache


def measure_speed(model, tokenizer, cell: dict) -> dict:
    s = cell["speed"]
    if cell["kv"] == "int8":
        model.new_cache = _int8_cache(model)  # generation allocates its cache through this seam
    runs = {b: [] for b in s["batches"]}
    try:
        for round_ in range(s["rounds"] + 1):  # round 0 warms up
            for b in s["batches"]:
                r = bench_decode(model, tokenizer, batch=b, prompt_tokens=s["prompt_tokens"],
                                 new_tokens=s["new_tokens"], repeats=1, warmup=0)
                if round_:
                    runs[b].append(r)
    finally:
        model.__dict__.pop("new_cache", None)
    out = {}
    for b, rs in runs.items():
        out[f"decode_tok_s_b{b}"] = median(r["decode_tok_s"] for r in rs)
        out[f"prefill_tok_s_b{b}"] = median(r["prefill_tok_s"] for r in rs)
    return out

