"""Ids at the public boundary: integers of any shape, as int64 numpy (no torch import here, so
the read paths -- ``get``, ``contains``, the CLI -- start without it)."""
from __future__ import annotations

import numpy as np

from .bounds import MAX_ID, MIN_ID

__all__ = ["as_ids"]


def as_ids(ids, name: str = "ids") -> np.ndarray:
    """Validate ids: integers (a Python int, numpy or torch), any shape (flattened), returned as
    ``(n,)`` int64 numpy."""
    if hasattr(ids, "detach"):  # a torch tensor, on any device
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        ids = np.array([ids])
    a = np.asarray(ids)
    if a.size == 0:
        return np.empty(0, dtype=np.int64)
    if a.dtype == object:  # Python ints beyond int64 (numpy could not pick an integer dtype)
        for v in a.ravel():
            if isinstance(v, int) and not isinstance(v, bool) and not MIN_ID <= v <= MAX_ID:
                raise ValueError(f"{name}: {v} is outside int64 (no memory has that id)")
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and int(a.max()) > MAX_ID:
        raise ValueError(f"{name}: {int(a.max())} is outside int64 (no memory has that id)")
    return a.astype(np.int64, copy=False).ravel()
