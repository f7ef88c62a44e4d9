"""`/metrics` in Prometheus' text format, with names in vLLM's style, each labelled with the model name.

The engine's state (running and waiting requests, KV-cache use, token counters) is read from
`EngineLoop.stats()` at scrape time; latencies are observed per choice as its outputs come.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..settings import now as clock

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# vLLM's buckets (seconds), trimmed: a CPU engine's first tokens take longer than a GPU's
TTFT_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0)


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _EngineCollector:
    """Gauges and counters read from the engine loop when /metrics is scraped."""

    def __init__(self, model_name: str, stats: Callable[[], dict | None], batch_sizes: Callable[[], dict | None]):
        self.model_name, self.stats, self.batch_sizes = model_name, stats, batch_sizes

    def collect(self):
        s = self.stats()
        if s is None:  # still loading
            return
        sizes = self.batch_sizes()
        if sizes is not None:
            yield self._batch_histogram(sizes)
        label = [self.model_name]

        def gauge(name, doc, value):
            g = GaugeMetricFamily(f"workbench:{name}", doc, labels=["model_name"])
            g.add_metric(label, value)
            return g

        def counter(name, doc, value):
            c = CounterMetricFamily(f"workbench:{name}", doc, labels=["model_name"])
            c.add_metric(label, value)
            return c

        total = s["kv_blocks_total"]
        yield gauge("num_requests_running", "Sequences in the engine's running batch.", s["num_running"])
        yield gauge("num_requests_waiting", "Sequences waiting to be scheduled.", s["num_waiting"])
        yield gauge("kv_cache_usage_perc", "KV-cache usage: 1 means every block is in use.",
                    (total - s["kv_blocks_free"]) / total if total else 0.0)
        yield gauge("kv_cache_blocks_total", "KV blocks in the pool.", total)
        yield gauge("kv_cache_blocks_free", "KV blocks no running sequence holds.", s["kv_blocks_free"])
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      s["prefix_cache_queried_tokens"])
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s["prefix_cache_hit_tokens"])
        yield counter("prompt_tokens", "Prompt tokens processed.", s["prompt_tokens_total"])
        yield counter("generation_tokens", "Tokens generated.", s["generation_tokens_total"])

    def _batch_histogram(self, sizes: dict) -> HistogramMetricFamily:
        """Sequences per engine step, over every step (more than 1: requests are batched)."""
        h = HistogramMetricFamily("workbench:iteration_batch_size", "Sequences run together in one engine step.",
                                  labels=["model_name"])
        buckets = [(str(b), sum(n for size, n in sizes.items() if size <= b)) for b in BATCH_BUCKETS]
        buckets.append(("+Inf", sum(sizes.values())))
        h.add_metric([self.model_name], buckets, sum(size * n for size, n in sizes.items()))
        return h


class ServerMetrics:
    """The registry behind /metrics, and the per-choice latency bookkeeping that feeds it."""

    def __init__(self, model_name: str, stats: Callable[[], dict | None],
                 batch_sizes: Callable[[], dict | None] = lambda: None):
        self.model_name = model_name
        disable_created_metrics()  # no `_created` series beside each counter and histogram (as vLLM)
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.ttft = Histogram("workbench:time_to_first_token_seconds", "Arrival to first token.", labels,
                              registry=self.registry, buckets=TTFT_BUCKETS).labels(model_name)
        self.itl = Histogram("workbench:inter_token_latency_seconds", "Time between a choice's tokens.", labels,
                             registry=self.registry, buckets=ITL_BUCKETS).labels(model_name)
        self.e2e = Histogram("workbench:e2e_request_latency_seconds", "Arrival to last token.", labels,
                             registry=self.registry, buckets=E2E_BUCKETS).labels(model_name)
        self.success = Counter("workbench:request_success", "Choices finished, by reason.",
                               labels + ["finished_reason"], registry=self.registry)
        for reason in ("stop", "length"):
            self.success.labels(model_name, reason)  # shown at 0 before the first request
        self.registry.register(_EngineCollector(model_name, stats, batch_sizes))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def tracker(self) -> "ChoiceTimes":
        return ChoiceTimes(self)


class ChoiceTimes:
    """Observes one request's outputs: TTFT at a choice's first token, the gaps after it, e2e at its end."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self.last: dict = {}  # choice key -> time of its latest token

    def observe(self, key, out):
        m = out.metrics
        now = getattr(m, "last_token_time", None) or clock()
        if key not in self.last:
            first = getattr(m, "first_token_time", None)
            if first is not None:  # (an aborted choice may end before its first token)
                self.metrics.ttft.observe(max(first - m.arrival_time, 0.0))
        elif out.new_token_ids:
            self.metrics.itl.observe(max(now - self.last[key], 0.0))
        self.last[key] = now
        if out.finished:
            end = getattr(m, "finish_time", None) or now
            self.metrics.e2e.observe(max(end - m.arrival_time, 0.0))
            self.metrics.success.labels(self.metrics.model_name, out.finish_reason).inc()
