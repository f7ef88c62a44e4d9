"""Per-request latency metrics and their summary, as a pandas DataFrame.

- TTFT: time to first token, arrival -> first output token (queueing + prefill).
- TPOT: time per output token after the first, (last token - first token) / (output tokens - 1),
  i.e. the mean inter-token latency.
- latency: arrival -> last token (end to end).
Overall: output tokens/s and requests/s over the span from the first arrival to the last token.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def request_metrics(outputs) -> pd.DataFrame:
    """One row per finished `RequestOutput`."""
    rows = []
    for o in outputs:
        m, n = o.metrics, len(o.token_ids)
        rows.append({
            "request_id": o.request_id, "prompt_tokens": len(o.prompt_token_ids), "output_tokens": n,
            "arrival": m.arrival_time, "finish": m.last_token_time,
            "queue_s": m.first_scheduled_time - m.arrival_time,
            "ttft_s": m.first_token_time - m.arrival_time,
            "tpot_s": (m.last_token_time - m.first_token_time) / (n - 1) if n > 1 else np.nan,
            "latency_s": m.last_token_time - m.arrival_time,
            "preemptions": m.num_preemptions, "cached_prompt_tokens": m.cached_prompt_tokens,
        })
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame) -> dict:
    """Throughput and p50/p95/p99 of TTFT, TPOT and latency for a `request_metrics` frame."""
    span = df["finish"].max() - df["arrival"].min()
    out = {"requests": len(df), "output_tokens": int(df["output_tokens"].sum()), "duration_s": float(span),
           "throughput_tok_s": float(df["output_tokens"].sum() / span), "requests_s": float(len(df) / span)}
    for col in ("ttft_s", "tpot_s", "latency_s"):
        values = df[col].dropna()
        for q in (50, 95, 99):
            out[f"{col[:-2]}_p{q}_s"] = float(np.percentile(values, q)) if len(values) else float("nan")
        out[f"{col[:-2]}_mean_s"] = float(values.mean()) if len(values) else float("nan")
    return out
