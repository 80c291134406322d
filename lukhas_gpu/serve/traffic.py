"""The recent searches of one server: a ring of per-second counts by latency bucket.

The one source of the dashboard's QPS and latency percentiles and of the windowed gauges on
``/metrics`` (``rest_search_qps``, ``rest_search_latency_seconds``), so the two agree. Bounded:
:data:`WINDOW_S` seconds x (buckets + 1) int64 counts (~80 KiB), whatever the traffic. It is fed
on the event loop (one thread) and read there too; with ``--workers N`` each worker has its own.
"""
from __future__ import annotations

import bisect
import math
import time

import numpy as np

__all__ = ["Traffic", "WINDOW_S", "quantile"]

#: Seconds of history kept (the dashboard's chart spans them).
WINDOW_S = 600


def quantile(bounds: np.ndarray, counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile of a histogram (``counts`` per bucket, the last one past
    ``bounds[-1]``), interpolated linearly inside its bucket as Prometheus' ``histogram_quantile``
    does; NaN with no observation. A quantile in the overflow bucket is ``bounds[-1]``.

    >>> quantile(np.array([1.0, 2.0]), np.array([0, 4, 0]), 0.5)
    1.5
    """
    total = int(counts.sum())
    if total == 0:
        return math.nan
    rank = q * total
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, rank, side="left"))
    if b >= len(bounds):
        return float(bounds[-1])
    lo = 0.0 if b == 0 else float(bounds[b - 1])
    below = 0 if b == 0 else int(cum[b - 1])
    inside = int(counts[b])
    return lo + (float(bounds[b]) - lo) * ((rank - below) / inside if inside else 1.0)


class Traffic:
    """Per-second counts of responses by latency bucket, and of errors (status >= 400), for the
    last :data:`WINDOW_S` seconds. ``clock``: monotonic seconds (tests pass their own)."""

    def __init__(self, bounds, *, window_s: int = WINDOW_S, clock=time.monotonic):
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self._bounds = self.bounds.tolist()  # bisect on a list: a numpy call costs more than the search
        self.window_s = int(window_s)
        self._clock = clock
        self._counts = np.zeros((self.window_s, len(self.bounds) + 1), dtype=np.int64)
        self._errors = np.zeros(self.window_s, dtype=np.int64)
        self._second = np.full(self.window_s, -1, dtype=np.int64)  # which second each slot holds

    def observe(self, seconds: float, *, error: bool = False) -> None:
        now = int(self._clock())
        slot = now % self.window_s
        if self._second[slot] != now:  # a slot from a window ago: start it over
            self._counts[slot] = 0
            self._errors[slot] = 0
            self._second[slot] = now
        self._counts[slot, bisect.bisect_left(self._bounds, seconds)] += 1  # numpy's searchsorted(side="left")
        if error:
            self._errors[slot] += 1

    def _slots(self, last_s: int, now: int) -> np.ndarray:
        """Which slots hold the ``last_s`` complete seconds before ``now``."""
        return (self._second >= now - last_s) & (self._second < now)

    def summary(self, last_s: int = 60) -> dict:
        """``qps``, ``errors_per_s`` and latency ``p50``/``p90``/``p99`` (seconds, NaN without
        traffic) over the last ``last_s`` complete seconds (at most the window)."""
        last_s = max(1, min(int(last_s), self.window_s - 1))
        now = int(self._clock())
        sel = self._slots(last_s, now)
        counts = self._counts[sel].sum(axis=0)
        return {"window_s": last_s, "requests": int(counts.sum()), "qps": float(counts.sum()) / last_s,
                "errors_per_s": float(self._errors[sel].sum()) / last_s,
                **{f"p{q}": quantile(self.bounds, counts, q / 100) for q in (50, 90, 99)}}

    def series(self, step_s: int = 10) -> list[dict]:
        """The window in steps of ``step_s`` seconds, oldest first: ``t`` (seconds before now, the
        step's end), ``qps``, ``p50``, ``p99``."""
        now = int(self._clock())
        out = []
        for i in range((self.window_s - 1) // step_s, 0, -1):
            lo = now - i * step_s
            sel = (self._second >= lo) & (self._second < lo + step_s)
            counts = self._counts[sel].sum(axis=0)
            out.append({"t": -(i - 1) * step_s, "qps": float(counts.sum()) / step_s,
                        "p50": quantile(self.bounds, counts, 0.5), "p99": quantile(self.bounds, counts, 0.99)})
        return out
