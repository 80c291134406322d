"""Checks of the numbers a caller passes to a search or a probe (``k``, ``nprobe``, ...).

The bounds (:data:`MAX_K`, :data:`MAX_QUERIES`, :data:`MAX_RESULTS`, ``MAX_NPROBE``,
``MAX_RERANK``) are owned by :mod:`lukhas_gpu.util.bounds` and checked here before anything is
allocated, so an absurd request fails at once with a ``ValueError`` naming the limit
(``k=10**9`` asked for ~23 GB before it was killed). A bool is not an int: ``k=True`` is refused.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .bounds import MAX_K, MAX_NPROBE, MAX_QUERIES, MAX_RERANK, MAX_RESULTS, is_int

__all__ = ["check_k", "check_positive", "check_queries", "check_int", "check_real", "MAX_K", "MAX_QUERIES",
           "MAX_RESULTS"]

#: The upper bound of each parameter :func:`check_positive` knows by name.
_UPPER = {"nprobe": MAX_NPROBE, "rerank": MAX_RERANK}


def check_k(k) -> int:
    """``k`` results per query: an int in ``1..MAX_K``."""
    if not is_int(k):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    if k > MAX_K:
        raise ValueError(f"k={k} exceeds the limit of {MAX_K:,} results per query (lukhas_gpu.util.bounds.MAX_K)")
    return int(k)


def check_queries(nq: int, k) -> int:
    """A search of ``nq`` queries for ``k`` results each: ``k`` checked (:func:`check_k`), at most
    :data:`MAX_QUERIES` queries and :data:`MAX_RESULTS` results in all. Returns ``k``."""
    k = check_k(k)
    if nq > MAX_QUERIES:
        raise ValueError(f"{nq:,} queries in one call exceed the limit of {MAX_QUERIES:,} "
                         "(lukhas_gpu.util.bounds.MAX_QUERIES); split them into batches")
    if nq * k > MAX_RESULTS:
        raise ValueError(f"{nq:,} queries x k={k:,} = {nq * k:,} results exceed the limit of {MAX_RESULTS:,} "
                         "per call (lukhas_gpu.util.bounds.MAX_RESULTS); split the queries into batches")
    return k


def check_positive(name: str, v) -> int:
    """A positive int parameter (``nprobe``, ``rerank``, ``max_queries``), at most its bound in
    :mod:`lukhas_gpu.util.bounds` where it has one."""
    if not is_int(v) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    hi = _UPPER.get(name)
    if hi is not None and v > hi:
        raise ValueError(f"{name}={v:,} exceeds the limit of {hi:,} (lukhas_gpu.util.bounds.MAX_{name.upper()})")
    return int(v)


def check_int(name: str, value, lo: int) -> int:
    """An int parameter ``>= lo`` (the planners' counts and sizes); TypeError for a bool or float."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def check_real(name: str, value, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); TypeError for a bool."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < lo or (lo_open and v == lo) or v > hi:
        bound = f"{'(' if lo_open else '['}{lo}, {hi}]" if math.isfinite(hi) else f"{'>' if lo_open else '>='} {lo}"
        raise ValueError(f"{name} must be {'in ' if math.isfinite(hi) else ''}{bound}, got {value!r}")
    return v
