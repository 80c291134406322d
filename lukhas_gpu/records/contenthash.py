"""A 64-bit hash of every memory's content, and the hash -> row lookup of exact dedup.

The column is one packed uint64 per row (``0``: no content; a memory without content is never
an exact duplicate): BLAKE2b-64 of the content's kind byte and bytes (a ``str`` and the same
UTF-8 ``bytes`` are different contents, as ``get`` returns them differently). The lookup finds,
for each hash, the smallest live row holding it: a sorted ``(hash, row)`` pair of arrays built
on first use, plus a *tail* of the rows appended or re-hashed since (sorted at each lookup; the
main arrays are rebuilt when the tail outgrows ``max(TAIL_MIN, main / 4)``). A main entry whose
row was re-hashed since is stale: every candidate is checked against the column.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .columns import GrowableArray
from .validate import KIND_NONE

__all__ = ["ContentHashes", "hash_contents", "planned_bytes", "NO_HASH", "TAIL_MIN"]

NO_HASH = 0
TAIL_MIN = 65536


def hash_contents(validated) -> np.ndarray:
    """``(n,)`` uint64 hashes of a :class:`~lukhas_gpu.records.validate.ValidatedContents`
    (``NO_HASH`` where there is no content; a digest of 0 is mapped to 1)."""
    kinds = np.asarray(validated.kinds, np.uint8)
    out = np.zeros(len(kinds), np.uint64)
    blake = hashlib.blake2b
    for i, (k, p) in enumerate(zip(kinds.tolist(), validated.payloads)):
        if k == KIND_NONE or p is None:
            continue
        h = int.from_bytes(blake(bytes((k,)) + p, digest_size=8).digest(), "little")
        out[i] = h or 1
    return out


def planned_bytes(count: int, exact: bool) -> int:
    """What :meth:`ContentHashes.memory_usage` reports for ``count`` rows: the column, plus the
    lookup's sorted hashes and rows once an exact dedup has used it (``exact``)."""
    return 8 * count + (16 * count if exact else 0)


class ContentHashes:
    """The hash column and its lookup (see the module docstring)."""

    def __init__(self, hashes: np.ndarray | None = None):
        self.col = GrowableArray(np.uint64)
        if hashes is not None:
            self.col.append(hashes)
        self._main_h = self._main_rows = None  # built on first lookup
        self._built = 0  # rows [0, _built) are in the main arrays
        self._dirty = GrowableArray(np.int64)  # rows re-hashed since the build

    def __len__(self) -> int:
        return len(self.col)

    def append(self, hashes: np.ndarray) -> None:
        self.col.append(hashes)

    def replace(self, rows: np.ndarray, hashes: np.ndarray) -> None:
        self.col[np.asarray(rows, np.int64)] = hashes
        if self._main_h is not None:
            self._dirty.append(rows)

    def _build(self) -> None:
        h = self.col.view()
        order = np.argsort(h, kind="stable")  # equal hashes: ascending rows
        self._main_h, self._main_rows = h[order], order.astype(np.int64)
        self._built = len(h)
        self._dirty = GrowableArray(np.int64)

    def lookup(self, q: np.ndarray, dead_mask_of) -> np.ndarray:
        """For each hash of ``q`` (uint64), the smallest live row holding it, or -1
        (``NO_HASH`` never matches)."""
        q = np.asarray(q, np.uint64)
        if self._main_h is None or len(self.col) - self._built + len(self._dirty) > max(TAIL_MIN, self._built // 4):
            self._build()
        col = self.col.view()
        out = np.full(len(q), -1, np.int64)
        want = np.flatnonzero(q != NO_HASH)
        if not len(want):
            return out
        lo = np.searchsorted(self._main_h, q[want], "left")
        hi = np.searchsorted(self._main_h, q[want], "right")
        j = 0
        todo = np.flatnonzero(hi > lo)
        while len(todo):  # the first live, current entry of each range (ranges are short)
            pos = lo[todo] + j
            rows = self._main_rows[pos]
            ok = (col[rows] == q[want[todo]]) & ~dead_mask_of(rows)
            out[want[todo[ok]]] = rows[ok]
            todo = todo[~ok]
            j += 1
            todo = todo[lo[todo] + j < hi[todo]]
        tail = np.unique(np.concatenate([np.arange(self._built, len(col), dtype=np.int64), self._dirty.view()]))
        if len(tail):
            tail = tail[~dead_mask_of(tail)]
            th = col[tail]
            order = np.lexsort((tail, th))
            th, tail = th[order], tail[order]
            at = np.searchsorted(th, q[want], "left")
            hit = at < len(th)
            hit[hit] = th[at[hit]] == q[want][hit]
            cand = np.where(hit, tail[np.minimum(at, max(len(tail) - 1, 0))], -1)
            cur = out[want]
            better = (cand >= 0) & ((cur < 0) | (cand < cur))
            out[want[better]] = cand[better]
        return out

    def nbytes(self) -> int:
        idx = 0 if self._main_h is None else self._main_h.nbytes + self._main_rows.nbytes
        return int(self.col.nbytes() + idx + self._dirty.nbytes())

    def memory_usage(self) -> dict:
        return {"anon": {"content_hashes": self.nbytes()}}

    def to_arrays(self) -> dict:
        return {"hashes": self.col.view()}

    @classmethod
    def from_arrays(cls, a: dict) -> "ContentHashes":
        h = np.asarray(a["hashes"])
        if h.ndim != 1 or h.dtype != np.uint64:
            raise ValueError(f"the content hashes must be a 1-D uint64 array, got {h.dtype} {h.shape}")
        return cls(h)
