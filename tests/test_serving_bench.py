"""The serving benchmark's bookkeeping: what counts as throughput and which requests enter the percentiles."""

from __future__ import annotations

import math

import pytest

from workbench.bench.serving import load_summary


def record(latency, ttft=0.1, tokens=10, cancelled=False, error=None):
    return {"ttft_s": ttft, "latency_s": latency, "chunks": tokens, "completion_tokens": tokens, "max_tokens": 10,
            "cancelled": cancelled, "error": error, "text": "", "end_s": latency}


def test_cancelled_and_failed_requests_count_tokens_but_not_percentiles():
    records = [record(1.0), record(2.0), record(3.0, ttft=0.3), record(50.0, tokens=4, cancelled=True),
               record(60.0, ttft=None, tokens=0, error="APIConnectionError: gone")]
    s = load_summary(records, wall_s=8.0)
    assert (s["requests"], s["completed"], s["cancelled"], s["errors"]) == (5, 3, 1, 1)
    assert s["output_tokens"] == 34 and s["throughput_tok_s"] == pytest.approx(34 / 8)
    assert s["latency_p50_s"] == pytest.approx(2.0) and s["latency_p95_s"] == pytest.approx(2.9)
    assert s["ttft_p50_s"] == pytest.approx(0.1)


def test_no_completed_request_gives_nan_percentiles():
    s = load_summary([record(1.0, cancelled=True)], wall_s=1.0)
    assert s["completed"] == 0 and math.isnan(s["latency_p50_s"]) and math.isnan(s["ttft_p95_s"])
