"""Checks of the numbers a caller passes to a search or a probe (``k``, ``nprobe``, ...).

The bounds below are checked before anything is allocated, so an absurd request fails at once
with a ``ValueError`` naming the limit instead of reaching the allocator (``k=10**9`` asked for
~23 GB before it was killed):

* :data:`MAX_K` -- results per query. A top-k of more than 100,000 is an export, not a search;
  iterate ids (``get``) for that.
* :data:`MAX_QUERIES` -- queries in one call: a batch of 10**6 is already far past what one
  call needs to saturate a GPU; split larger sets.
* :data:`MAX_RESULTS` -- ``queries x k`` in one call: 10**8 results are 1.2 GB of int64 ids and
  float32 scores (plus the candidates behind them); split the queries to ask for more.
"""
from __future__ import annotations

import numpy as np

__all__ = ["check_k", "check_positive", "check_queries", "MAX_K", "MAX_QUERIES", "MAX_RESULTS"]

#: Largest ``k`` of one search.
MAX_K = 100_000
#: Most queries in one search call.
MAX_QUERIES = 1_000_000
#: Most results (``queries x k``) of one search call.
MAX_RESULTS = 100_000_000


def check_k(k) -> int:
    """``k`` results per query: an int in ``1..MAX_K``."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if k > MAX_K:
        raise ValueError(f"k={k} exceeds the limit of {MAX_K:,} results per query (lukhas_gpu.util.checks.MAX_K)")
    return int(k)


def check_queries(nq: int, k) -> int:
    """A search of ``nq`` queries for ``k`` results each: ``k`` checked (:func:`check_k`), at most
    :data:`MAX_QUERIES` queries and :data:`MAX_RESULTS` results in all. Returns ``k``."""
    k = check_k(k)
    if nq > MAX_QUERIES:
        raise ValueError(f"{nq:,} queries in one call exceed the limit of {MAX_QUERIES:,} "
                         "(lukhas_gpu.util.checks.MAX_QUERIES); split them into batches")
    if nq * k > MAX_RESULTS:
        raise ValueError(f"{nq:,} queries x k={k:,} = {nq * k:,} results exceed the limit of {MAX_RESULTS:,} "
                         "per call (lukhas_gpu.util.checks.MAX_RESULTS); split the queries into batches")
    return k


def check_positive(name: str, v) -> int:
    """A positive int parameter (``nprobe``, ``rerank``, ``max_queries``)."""
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)
