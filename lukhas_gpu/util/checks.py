"""Checks of the numbers a caller passes to a search or a probe (``k``, ``nprobe``, ...)."""
from __future__ import annotations

import numpy as np

__all__ = ["check_k", "check_positive"]


def check_k(k) -> int:
    """``k`` results per query: a positive int."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    return int(k)


def check_positive(name: str, v) -> int:
    """A positive int parameter (``nprobe``, ``rerank``, ``max_queries``)."""
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)
