"""Growable 1-D numpy columns: the per-memory state of the payload lives in these.

Capacity doubles (each element is copied once on average); capacity never written is never
resident, so the slack costs no RAM. ``view()`` returns the filled part without copying.

Large buffers are private anonymous memory maps rather than ``np.empty``: numpy advises huge
pages for arrays of 4 MiB and more, and with transparent huge pages a column's untouched slack
then becomes resident 2 MiB at a time (measured: the content arena of 117k memories held 94 B
per memory for 52 B of records and offsets). A private map keeps 4 KiB granularity and is still
counted as anonymous memory.

A column wrapping a file's memory map (:meth:`GrowableArray.wrap`, a store's append-only content
records) grows into a private overlay (:func:`~lukhas_gpu.util.cowmap.private_map`): the file's
rows stay page cache, only the rows appended are anonymous memory.
"""
from __future__ import annotations

import mmap

import numpy as np

from ..util.cowmap import private_map

__all__ = ["GrowableArray", "allocate"]

_MIN_CAPACITY = 1024
_MAP_FROM = 1 << 16  # bytes; smaller buffers come from the ordinary allocator


def allocate(n: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of ``n`` elements whose untouched pages stay non-resident."""
    dtype = np.dtype(dtype)
    nbytes = n * dtype.itemsize
    if nbytes < _MAP_FROM:
        return np.empty(n, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype=dtype, count=n)


class GrowableArray:
    """An append-only 1-D array of a fixed dtype, with in-place writes to existing rows."""

    def __init__(self, dtype, capacity: int = 0):
        self.dtype = np.dtype(dtype)
        self._n = 0
        self._data = allocate(max(capacity, 0), self.dtype)
        self._file = None  # (path, rows): the file's rows mapped copy-on-write at the start of _data

    @classmethod
    def wrap(cls, array: np.ndarray) -> "GrowableArray":
        """A column whose rows are ``array`` itself (no copy; e.g. a read-only memory map).

        The first append that outgrows it copies the rows into a growable buffer of its own --
        or, for a whole file's memory map, maps the file copy-on-write at the start of one, so
        they stay page cache (a file that is never rewritten in place: a store's generation).
        """
        a = np.asarray(array).ravel() if not isinstance(array, np.memmap) else array
        col = cls(a.dtype)
        col._data = a
        col._n = len(a)
        return col

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return int(self._data.shape[0])

    def reserve(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        data = self._data
        if isinstance(data, np.memmap) and data.offset == 0 and data.filename and self._n == len(data):
            self._file = (data.filename, self._n)  # a whole file's rows: mapped again, privately
        if self._file is not None:
            path, rows = self._file
            nbytes = capacity * self.dtype.itemsize
            new = private_map(path, rows * self.dtype.itemsize, nbytes)[:nbytes].view(self.dtype)
            new[rows: self._n] = data[rows: self._n]
        else:
            new = allocate(capacity, self.dtype)
            new[: self._n] = data[: self._n]
        self._data = new

    def append(self, values) -> tuple[int, int]:
        """Append values (cast to the column's dtype); returns the ``[start, stop)`` range."""
        values = np.asarray(values, dtype=self.dtype).ravel()
        start, stop = self._n, self._n + len(values)
        if stop > self.capacity:
            self.reserve(max(stop, 2 * self.capacity, _MIN_CAPACITY))
        self._data[start:stop] = values
        self._n = stop
        return start, stop

    def view(self) -> np.ndarray:
        return self._data[: self._n]

    def __getitem__(self, key):
        return self.view()[key]

    def __setitem__(self, key, value):
        self.view()[key] = value
        if self._file is not None:  # a file's row may differ now: every row copied on growth
            self._data, self._file = self._data.copy(), None

    def nbytes(self) -> int:
        """Bytes of the rows written."""
        return self._n * self.dtype.itemsize

    def slack_bytes(self) -> int:
        """Bytes of capacity allocated but not written (not resident: see the module docstring)."""
        return (self.capacity - self._n) * self.dtype.itemsize

    def mapped_bytes(self) -> int:
        """Bytes of the rows that are a file's pages (page cache, not anonymous memory)."""
        if isinstance(self._data, np.memmap):
            return self.nbytes()
        return min(self._file[1], self._n) * self.dtype.itemsize if self._file is not None else 0

    @property
    def is_mapped(self) -> bool:
        """Whether the rows are a file's memory map (:meth:`wrap` of an ``np.memmap``)."""
        return isinstance(self._data, np.memmap)
