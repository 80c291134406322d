"""What every reader of :mod:`.sources` (and :mod:`.parquet`) yields: :class:`Batch`, and the
:func:`identity` of an input file that a resumed ingest checks. Both readers import it, so
neither imports the other for it."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

__all__ = ["Batch", "identity", "scope_columns"]


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
    namespace : list of str, or None
        Each memory's namespace (``""`` where a record names none); None: every one in ``""``.
    valid_from, valid_to : (b,) float64 ndarray, or None
        Validity windows (-inf / inf where open); None when no record of the batch has one.
    """

    lines: list
    old_ids: list
    x: np.ndarray
    contents: list | None
    tags: list | None
    timestamps: np.ndarray
    importance: np.ndarray
    sparse: list | None = None
    namespace: list | None = None
    valid_from: np.ndarray | None = None
    valid_to: np.ndarray | None = None

    def scope(self) -> dict:
        """The ``add`` keywords of the batch's namespaces and windows (None where absent)."""
        return {"namespace": self.namespace, "valid_from": self.valid_from, "valid_to": self.valid_to}

    def __len__(self) -> int:
        return len(self.lines)


def identity(path) -> dict:
    """What says a file is still the one an ingest began on: its absolute path, size, mtime."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def scope_columns(names: list, starts: list, ends: list) -> tuple:
    """A batch's ``(namespace, valid_from, valid_to)`` from one value per record (None where a
    record has none): each None when no record gives it (a store without them stays so), else
    ``""`` / -inf / inf fill the records without one."""
    ns = None if all(v is None for v in names) else ["" if v is None else v for v in names]
    if all(v is None for v in starts) and all(v is None for v in ends):
        return ns, None, None
    vf = np.array([-np.inf if v is None else v for v in starts], dtype=np.float64)
    vt = np.array([np.inf if v is None else v for v in ends], dtype=np.float64)
    return ns, vf, vt
