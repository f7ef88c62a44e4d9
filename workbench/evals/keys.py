"""The names evalscope gives its results, in one table per file (they changed between versions: the
version is pinned in pyproject.toml, and a missing name fails with the file and the name)."""

from __future__ import annotations

from ..errors import WorkbenchError

EVALSCOPE_VERSION = "1.14.1"


class EvalscopeOutputError(WorkbenchError):
    """An evalscope output file lacks a key we read (another evalscope version), or evalscope failed."""


# our column -> key in benchmark_summary.json
PERF_SUMMARY = {
    "parallel": "Concurrency",
    "requests": "Total Requests",
    "succeeded": "Success Requests",
    "failed": "Failed Requests",
    "duration_s": "Test Duration (s)",
    "request_throughput": "Req Throughput (req/s)",
    "output_throughput": "Output Throughput (tok/s)",
    "total_throughput": "Total Throughput (tok/s)",
    "avg_input_tokens": "Avg Input Tokens",
    "avg_output_tokens": "Avg Output Tokens",
    "avg_latency_s": "Avg Latency (s)",
    "avg_ttft_ms": "Avg TTFT (ms)",
    "avg_tpot_ms": "Avg TPOT (ms)",
    "avg_itl_ms": "Avg ITL (ms)",
}
# benchmark_percentile.json: a list of rows, one per percentile, named by this key
PERCENTILE_LABEL = "Percentiles"
PERCENTILES = {"p50": "50%", "p90": "90%", "p99": "99%"}
PERF_PERCENTILE = {"ttft_ms": "TTFT (ms)", "tpot_ms": "TPOT (ms)", "itl_ms": "ITL (ms)", "latency_s": "Latency (s)"}

# reviews/<model>/<dataset>_<subset>.jsonl: one line per question
REVIEW_SCORE = ("sample_score", "score", "value")
REVIEW_PREDICTION = ("sample_score", "score", "prediction")
REVIEW_TARGET = "target"
SCORE_KEYS = {"rouge_l_f": "Rouge-L-F", "rouge_l_r": "Rouge-L-R", "acc": "accuracy"}


def read_key(d: dict, key, where: str):
    """`d[key]` (a tuple: a path of keys), or EvalscopeOutputError naming the key, the file and the version."""
    path = key if isinstance(key, tuple) else (key,)
    value = d
    for k in path:
        if not isinstance(value, dict) or k not in value:
            have = ", ".join(map(str, value)) if isinstance(value, dict) else type(value).__name__
            raise EvalscopeOutputError(f"{where}: no key {'/'.join(path)!r} (evalscope {EVALSCOPE_VERSION} wrote "
                                       f"it; this file has: {have}); is another evalscope version installed?")
        value = value[k]
    return value


def read_keys(d: dict, table: dict, where: str) -> dict:
    return {ours: read_key(d, theirs, where) for ours, theirs in table.items()}
