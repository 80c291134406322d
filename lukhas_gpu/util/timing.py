"""The one rule of a timed measurement: the fastest of a few runs."""
from __future__ import annotations

import time

__all__ = ["fastest"]


def fastest(fn, repeat: int = 5) -> float:
    """Seconds of the fastest of ``repeat`` runs of ``fn()``: what the work costs, with other
    processes' interference (which only ever adds time) left out as far as possible."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
