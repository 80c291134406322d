"""What every reader of :mod:`.sources` (and :mod:`.parquet`) yields: :class:`Batch`, and the
:func:`identity` of an input file that a resumed ingest checks. Both readers import it, so
neither imports the other for it."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

__all__ = ["Batch", "identity"]


@dataclasses.dataclass
class Batch:
    """One validated batch: everything :meth:`MemoryIndex.add` takes, plus where it came from.

    Attributes
    ----------
    lines : sequence of int
        Each record's 1-based line (JSONL) or 0-based row (Parquet) number.
    old_ids : list
        The input's ids (None where a record has none), for an id map.
    x : (b, d) float32 ndarray
    contents : list of (str, bytes or None), or None
    tags : list of lists of str, or None
    timestamps : (b,) float64 ndarray
        Epoch seconds, NaN where the record has none (the time of the add is used).
    importance : (b,) float64 ndarray
    sparse : list of (indices, values) pairs, or None
        Sparse vectors (Parquet's ``sparse_indices`` / ``sparse_values`` columns).
    """

    lines: list
    old_ids: list
    x: np.ndarray
    contents: list | None
    tags: list | None
    timestamps: np.ndarray
    importance: np.ndarray
    sparse: list | None = None

    def __len__(self) -> int:
        return len(self.lines)


def identity(path) -> dict:
    """What says a file is still the one an ingest began on: its absolute path, size, mtime."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
