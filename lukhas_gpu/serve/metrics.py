"""The server's Prometheus metrics (``GET /metrics``), named in the style of Qdrant's.

One registry per application (not the process-global one), so two apps in a process do not
collide. With ``--workers N`` each worker answers ``/metrics`` for itself (the one that took
the connection).
"""
from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .traffic import Traffic

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: The searches the traffic ring (dashboard, windowed gauges) counts: the API's.
SEARCH_ENDPOINT = ("POST", "/v1/search")
#: The window of the windowed gauges on /metrics (the dashboard's headline figures too).
RECENT_S = 60
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class Metrics:
    """Every metric of one server application."""

    def __init__(self):
        disable_created_metrics()  # the *_created series double the output for nothing a scraper needs
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.responses = Counter("rest_responses", "HTTP responses by endpoint and status",
                                 ["method", "endpoint", "status"], registry=r)
        self.duration = Histogram("rest_responses_duration_seconds", "HTTP response time by endpoint",
                                  ["method", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("rest_rejected_requests", "requests refused before any work, by reason",
                                ["reason"], registry=r)
        self.batch_queries = Histogram("search_batch_queries", "queries per batched search call",
                                       buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("search_batch_requests", "requests merged into one search call",
                                        buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("search_batch_duration_seconds", "time of one batched search call",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("search_queue_depth", "queries waiting for a batch", registry=r)
        self.memories = Gauge("collection_memories", "live memories in the store", registry=r)
        self.bytes = Gauge("collection_memory_bytes", "bytes of the index by place (stats()['memory'])",
                           ["place"], registry=r)
        self.rss_anon = Gauge("process_rss_anon_bytes", "the server process's anonymous resident memory",
                              registry=r)
        self.recall = Gauge("collection_recall_estimate", "estimated recall@10 (MemoryIndex.quality; NaN: not "
                            "measured yet)", registry=r)
        self.recall_target = Gauge("collection_recall_target", "the recall target the store holds (its tuning's, "
                                   "else config.target_recall; NaN: none)", registry=r)
        self.reader_lag = Gauge("reader_lag_seconds", "seconds since a reader's last successful refresh began "
                                "(the figure /readyz judges; 0 for the writer)", registry=r)
        self.reader_generation = Gauge("reader_generation", "the store generation this server shows", registry=r)
        self.refreshes = Counter("reader_refreshes", "refreshes by outcome", ["outcome"], registry=r)
        self.search_qps = Gauge("rest_search_qps", f"searches a second over the last {RECENT_S} s (the "
                                "dashboard's figure)", registry=r)
        self.search_latency = Gauge("rest_search_latency_seconds", f"search response time quantiles over the "
                                    f"last {RECENT_S} s (from the buckets of rest_responses_duration_seconds)",
                                    ["quantile"], registry=r)
        #: per-second searches by latency bucket: the one source of the two gauges above and the dashboard
        self.traffic = Traffic(_LATENCY_BUCKETS)
        self.recall.set(math.nan)
        self.recall_target.set(math.nan)
        self._children: dict[tuple, tuple] = {}

    def observe_response(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        key = (method, endpoint, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the update: once per label set
            children = self._children[key] = (self.responses.labels(method, endpoint, str(status)),
                                               self.duration.labels(method, endpoint))
        children[0].inc()
        children[1].observe(seconds)
        if (method, endpoint) == SEARCH_ENDPOINT:
            self.traffic.observe(seconds, error=status >= 400)

    def reject(self, reason: str) -> None:
        """One request (or connection) refused before any work, for ``reason``."""
        child = self._children.get(reason)
        if child is None:
            child = self._children[reason] = self.rejected.labels(reason)
        child.inc()

    def observe_batch(self, n_queries: int, n_requests: int, seconds: float) -> None:
        self.batch_queries.observe(n_queries)
        self.batch_requests.observe(n_requests)
        self.batch_seconds.observe(seconds)

    def update_from_stats(self, stats: dict, *, generation: int | None) -> None:
        """Gauges read from ``MemoryIndex.stats()`` at scrape time."""
        memory = stats.get("memory") or {}
        for place in ("anon", "mapped", "gpu", "disk"):
            if f"{place}_bytes" in memory:
                self.bytes.labels(place).set(memory[f"{place}_bytes"])
        rss = (stats.get("process") or {}).get("rss_anon")
        if rss is not None:
            self.rss_anon.set(rss)
        if generation is not None:
            self.reader_generation.set(generation)

    def recent(self) -> dict:
        """The searches of the last :data:`RECENT_S` seconds (``Traffic.summary``); sets the gauges."""
        out = self.traffic.summary(RECENT_S)
        self.search_qps.set(out["qps"])
        for q in (50, 90, 99):
            self.search_latency.labels(f"0.{q}").set(out[f"p{q}"])
        return out

    def render(self) -> bytes:
        self.recent()
        return generate_latest(self.registry)
