"""The CSR arena: every sparse vector stored once, append-only, in numpy columns.

A *slot* is one stored vector: ``indptr[s]:indptr[s + 1]`` of ``indices`` (uint32) and
``values`` (float32 or float16). Slots are appended in the order vectors arrive; a memory's
current slot is ``doc_slot[row]`` (``NONE`` if it has no vector) and ``slot_doc[slot]`` the way
back. Replacing a memory's vector (an update of a text memory's content) appends a new slot and
marks the old one ``dead``, as a delete does, so posting lists built from older slots stay valid
as they are (they skip dead slots). Nothing per memory is a Python object.

A store's arena is memory-mapped on open (``from_arrays`` wraps the maps); the first append
copies a column into memory of its own, as the content arena does.
"""
from __future__ import annotations

import numpy as np

from .sparse_input import PackedSparse

__all__ = ["SparseArena", "Column", "NONE"]

#: ``doc_slot`` of a memory without a sparse vector.
NONE = np.uint32(0xFFFFFFFF)
_MIN_CAPACITY = 1024


class Column:
    """A growable 1-D numpy column (capacity doubles; untouched capacity is not resident)."""

    def __init__(self, dtype, data: np.ndarray | None = None):
        self.dtype = np.dtype(dtype)
        self._data = np.zeros(0, self.dtype) if data is None else data
        self._n = 0 if data is None else len(data)

    def __len__(self) -> int:
        return self._n

    def append(self, values) -> None:
        values = np.asarray(values).astype(self.dtype, copy=False).ravel()
        stop = self._n + len(values)
        if stop > len(self._data) or not self._data.flags.writeable:
            new = np.empty(max(stop, 2 * len(self._data), _MIN_CAPACITY), self.dtype)  # np.empty: lazily resident
            new[: self._n] = self._data[: self._n]
            self._data = new
        self._data[self._n: stop] = values
        self._n = stop

    def view(self) -> np.ndarray:
        return self._data[: self._n]

    def writable(self) -> np.ndarray:
        """The rows, writable (a mapped column is copied into memory first)."""
        if not self._data.flags.writeable:
            self._data = np.array(self._data[: self._n], dtype=self.dtype)
        return self._data[: self._n]

    @property
    def mapped(self) -> bool:
        return isinstance(self._data, np.memmap)

    def nbytes(self) -> int:
        return self._n * self.dtype.itemsize

    def slack(self) -> int:
        return (len(self._data) - self._n) * self.dtype.itemsize


class SparseArena:
    """Sparse vectors of the memories of one index, in CSR slots (see the module docstring).

    Parameters
    ----------
    keep_lengths : bool
        Keep each slot's value sum (a text's token count: BM25's document length).
    """

    def __init__(self, *, keep_lengths: bool = False):
        self.indptr = Column(np.int64)
        self.indptr.append([0])
        self.indices = Column(np.uint32)
        self.values: Column | None = None  # its dtype is the first batch's (float32 or float16)
        self.slot_doc = Column(np.uint32)
        self.doc_slot = Column(np.uint32)
        self.dead = Column(np.uint8)
        self.lengths = Column(np.float32) if keep_lengths else None
        self.n_dead = 0

    # -- sizes --------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return len(self.slot_doc)

    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def live_slots(self) -> int:
        return self.slots - self.n_dead

    @property
    def value_dtype(self):
        return self.values.dtype if self.values is not None else np.dtype(np.float32)

    # -- writes ---------------------------------------------------------------------------------------
    def extend_docs(self, n: int) -> None:
        """Room for ``n`` more memories without a vector (every add calls this or :meth:`append`)."""
        self.doc_slot.append(np.full(n, NONE, np.uint32))

    def append(self, rows: np.ndarray, packed: PackedSparse) -> None:
        """Store ``packed`` as the vectors of memories ``rows`` (int64, new or existing); an
        existing memory's old slot is marked dead. ``rows`` beyond the known memories extend
        ``doc_slot`` (the add path)."""
        rows = np.asarray(rows, np.int64)
        lengths = _row_sums(packed) if self.lengths is not None else None  # before anything changes
        if self.values is None:
            self.values = Column(packed.values.dtype if packed.nnz else np.float32)
        known = len(self.doc_slot)
        if len(rows) and rows.max() >= known:
            self.extend_docs(int(rows.max()) + 1 - known)
        doc_slot = self.doc_slot.writable()
        old = doc_slot[rows]
        self.kill_slots(old[old != NONE])
        base = self.nnz
        start = self.slots
        self.indices.append(packed.indices)
        with np.errstate(over="ignore"):
            vals = packed.values.astype(self.values.dtype)
        if not np.isfinite(vals).all():
            raise ValueError(f"sparse values overflow this index's {self.values.dtype} values")
        self.values.append(vals)
        self.indptr.append(packed.indptr[1:] + base)
        self.slot_doc.append(rows.astype(np.uint32))
        self.dead.append(np.zeros(len(rows), np.uint8))
        if lengths is not None:
            self.lengths.append(lengths)
        doc_slot[rows] = np.arange(start, start + len(rows), dtype=np.uint32)

    def kill_slots(self, slots: np.ndarray) -> None:
        if len(slots):
            self.dead.writable()[slots] = 1
            self.n_dead += len(slots)

    def delete_docs(self, rows: np.ndarray) -> np.ndarray:
        """Mark the slots of memories ``rows`` dead; returns those slots."""
        rows = np.asarray(rows, np.int64)
        rows = rows[rows < len(self.doc_slot)]
        ds = self.doc_slot.writable()
        slots = ds[rows]
        slots = slots[slots != NONE].astype(np.int64)
        self.kill_slots(slots)
        ds[rows] = NONE
        return slots

    # -- reads ----------------------------------------------------------------------------------------
    def slot_rows(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR of the given slots: ``(indptr, indices, values)``."""
        slots = np.asarray(slots, np.int64)
        ptr = self.indptr.view()
        starts, stops = ptr[slots], ptr[slots + 1]
        lens = stops - starts
        out_ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        pos = np.repeat(starts - out_ptr[:-1], lens) + np.arange(out_ptr[-1])
        return out_ptr, self.indices.view()[pos], self.values.view()[pos] if self.values is not None else \
            np.zeros(0, np.float32)

    def get(self, rows) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(indices, values)`` of each memory (empty arrays for one without a vector)."""
        rows = np.asarray(rows, np.int64)
        ds = self.doc_slot.view()
        out = []
        for r in rows.tolist():
            s = int(ds[r]) if r < len(ds) else int(NONE)
            if s == int(NONE):
                out.append((np.zeros(0, np.uint32), np.zeros(0, self.value_dtype)))
                continue
            a, b = self.indptr.view()[s], self.indptr.view()[s + 1]
            out.append((self.indices.view()[a:b].copy(), self.values.view()[a:b].copy()))
        return out

    def slot_lengths(self) -> np.ndarray:
        return self.lengths.view() if self.lengths is not None else np.zeros(0, np.float32)

    # -- persistence and accounting ----------------------------------------------------------------
    def to_arrays(self) -> dict:
        out = {"indptr": self.indptr.view(), "indices": self.indices.view(),
               "values": self.values.view() if self.values is not None else np.zeros(0, np.float32),
               "slot_doc": self.slot_doc.view(), "doc_slot": self.doc_slot.view(), "dead": self.dead.view()}
        return out

    @classmethod
    def from_arrays(cls, a: dict, *, keep_lengths: bool = False) -> "SparseArena":
        """Rebuild from :meth:`to_arrays` (the bulk arrays may be read-only memory maps);
        ValueError for arrays that do not fit together."""
        arena = cls(keep_lengths=False)
        indptr, indices, values = a["indptr"], a["indices"], a["values"]
        slot_doc, doc_slot, dead = a["slot_doc"], a["doc_slot"], a["dead"]
        slots = len(slot_doc)
        if len(indptr) != slots + 1 or len(dead) != slots or (slots and int(indptr[-1]) != len(indices)) \
                or len(values) != len(indices) or int(indptr[0]) != 0:
            raise ValueError("sparse arena arrays do not fit together")
        if slots and (np.diff(indptr) < 0).any():
            raise ValueError("sparse arena offsets decrease")
        if slots and int(slot_doc.max()) >= len(doc_slot):
            raise ValueError("sparse arena names a memory beyond its rows")
        live = doc_slot[doc_slot != NONE]
        if len(live) and int(live.max()) >= slots:
            raise ValueError("sparse arena names a slot beyond its slots")
        arena.indptr = Column(np.int64, np.asarray(indptr, np.int64))
        arena.indices = Column(np.uint32, indices)
        arena.values = Column(values.dtype, values)
        arena.slot_doc = Column(np.uint32, np.array(slot_doc, np.uint32))
        arena.doc_slot = Column(np.uint32, np.array(doc_slot, np.uint32))
        arena.dead = Column(np.uint8, np.array(dead, np.uint8))
        arena.n_dead = int(arena.dead.view().sum(dtype=np.int64))
        if keep_lengths:
            arena.lengths = Column(np.float32)
            if slots:
                ptr = arena.indptr.view()
                v = arena.values.view().astype(np.float64)
                sums = np.add.reduceat(v, np.minimum(ptr[:-1], max(len(v) - 1, 0))) if len(v) else np.zeros(slots)
                sums[np.diff(ptr) == 0] = 0.0
                arena.lengths.append(sums)
        return arena

    def columns(self) -> dict:
        cols = {"indptr": self.indptr, "indices": self.indices, "slot_doc": self.slot_doc,
                "doc_slot": self.doc_slot, "dead": self.dead}
        if self.values is not None:
            cols["values"] = self.values
        if self.lengths is not None:
            cols["lengths"] = self.lengths
        return cols


def _row_sums(packed: PackedSparse) -> np.ndarray:
    """Each row's sum of values (float32; 0 for an empty row). ``reduceat`` is given the starts of
    the non-empty rows only: an empty row's start may equal ``nnz`` (rows at the end without a
    term), an index ``reduceat`` refuses."""
    counts = np.diff(packed.indptr)
    sums = np.zeros(len(counts), np.float64)
    full = counts > 0
    if full.any():
        sums[full] = np.add.reduceat(packed.values.astype(np.float64), packed.indptr[:-1][full])
    return sums.astype(np.float32)
