"""Load on a running server over HTTP only (the official `openai` async client): closed-loop streaming
clients, cancellations mid-stream, `/metrics` read back, and the engine's own throughput on the same
workload for comparison. Knows nothing of how the server was started: it is given a URL and a model name.

    records, wall_s = run_load(url, model, workload, concurrency=8)
    summary = load_summary(records, wall_s)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
import urllib.request

import numpy as np

from ..engine import Engine, SamplingParams
from ..settings import now

METHOD = ("Closed loop: `concurrency` clients (one asyncio task each, one openai.AsyncOpenAI client) take the "
          "next request of a seeded workload as soon as their previous one ends, each a streaming "
          "/v1/completions call with the prompt as token ids, temperature 0, ignore_eos, max_tokens as drawn, "
          "stream_options.include_usage. TTFT: call start to the first chunk carrying a choice; latency: call "
          "start to the stream's end; throughput: completion tokens (from usage; chunks for a cancelled stream) "
          "over the wall time from the first call to the last end. A cancelled request closes its stream after "
          "half its tokens. The engine's own throughput: the same requests given at once to Engine.generate "
          "in this process with max_num_seqs = concurrency, generated tokens over the call's wall time.")


def scrape_metrics(url: str) -> dict[str, float]:
    """/metrics as 'name{labels}' -> value, plus 'name' -> the value of its first series."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
            out.setdefault(key.split("{")[0], float(value))
    return out


def wait_blocks_free(url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """Poll /metrics until every KV block is free and nothing runs (or the timeout passes); the last scrape."""
    deadline = now() + timeout_s
    while True:
        m = scrape_metrics(url)
        idle = m["workbench:num_requests_running"] == 0 and m["workbench:num_requests_waiting"] == 0
        if (idle and m["workbench:kv_cache_blocks_free"] == m["workbench:kv_cache_blocks_total"]) or now() > deadline:
            return m
        time.sleep(0.05)


async def stream_one(client, model: str, prompt, max_tokens: int, cancel_after: int | None = None) -> dict:
    """One streaming completion; `cancel_after` chunks in, the client closes the stream (a cancellation)."""
    start = now()
    ttft, chunks, tokens, text, error, cancelled = None, 0, None, [], None, False
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices:
                ttft = now() - start if ttft is None else ttft
                chunks += 1
                text.append(chunk.choices[0].text)
                if cancel_after is not None and chunks >= cancel_after:
                    await stream.close()
                    cancelled = True
                    break
    except Exception as e:  # noqa: BLE001  (a load run counts errors; it does not stop at the first)
        error = f"{type(e).__name__}: {e}"
    return {"ttft_s": ttft, "latency_s": now() - start, "chunks": chunks,
            "completion_tokens": tokens if tokens is not None else chunks, "max_tokens": max_tokens,
            "cancelled": cancelled, "error": error,
            "text": "".join(text), "end_s": now()}


async def _closed_loop(url, model, requests, concurrency, on_done):
    import httpx
    import openai

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600,
                                  http_client=httpx.AsyncClient(limits=limits, timeout=600)) as client:
        queue = list(enumerate(requests))[::-1]
        records = [None] * len(requests)
        done = 0

        async def worker():
            nonlocal done
            while queue:
                i, (prompt, max_tokens, cancel_after) = queue.pop()
                records[i] = await stream_one(client, model, prompt, max_tokens, cancel_after)
                done += 1
                if on_done is not None:
                    on_done(done)

        start = now()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return records, now() - start, start


def run_load(url: str, model: str, requests: list, concurrency: int, on_done=None) -> tuple[list[dict], float]:
    """Run `requests` ((prompt, max_tokens, cancel_after or None) each) with `concurrency` streaming
    clients; the per-request records (end_s relative to the start) and the wall time. `on_done(n)` is
    called after the n-th request ends. Runs its own event loop in a thread, so it works from a notebook."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        records, wall, start = pool.submit(asyncio.run, _closed_loop(url, model, requests, concurrency,
                                                                     on_done)).result()
    for r in records:
        r["end_s"] -= start
    return records, wall


def load_summary(records: list[dict], wall_s: float) -> dict:
    """Throughput and TTFT / latency percentiles of one load run (over requests that ran to their end)."""
    whole = [r for r in records if not r["cancelled"] and r["error"] is None]
    ttft = [r["ttft_s"] for r in whole if r["ttft_s"] is not None]
    lat = [r["latency_s"] for r in whole]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else math.nan  # noqa: E731
    tokens = sum(r["completion_tokens"] for r in records)
    return {"requests": len(records), "completed": len(whole), "cancelled": sum(r["cancelled"] for r in records),
            "errors": sum(r["error"] is not None for r in records), "output_tokens": tokens, "wall_s": wall_s,
            "throughput_tok_s": tokens / wall_s, "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95)}


def engine_throughput(engine: Engine, workload: list) -> dict:
    """The same requests given at once to `Engine.generate` (greedy, ignore_eos, each its max_tokens)."""
    params = [SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True) for r in workload]
    start = now()
    outs = engine.generate([r.prompt_ids for r in workload], params)
    wall = now() - start
    tokens = sum(len(o.token_ids) for o in outs)
    return {"requests": len(workload), "output_tokens": tokens, "wall_s": wall, "throughput_tok_s": tokens / wall}
