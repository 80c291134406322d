"""Tombstones: the one record of which rows are deleted.

Ids are row numbers and never reused, so a deleted row keeps its place in every column; the
tombstones say it is gone. Every path reads them from here: the exact scans (``exclude``), the
filters (``allowed - deleted``), ``get``/``contains``, the device mirror's mask and the ANN. A
deleted row's IVF entry stays in its list (FAISS's removal from fast-scan lists corrupts the codes
added after it, see ``vectors/ann.py``): searches exclude it with :meth:`Tombstones.packed` as an
id selector, and the index re-encodes the lists that hold dead entries when it compacts or when
they pass ``policy.ANN_DEAD_FRACTION``. A roaring bitmap: a few bytes per deleted row, nothing per
live one; the packed bit array for FAISS (one bit per row up to the last deleted one) is built on
first use and kept up to date.
"""
from __future__ import annotations

import numpy as np
from pyroaring import BitMap

__all__ = ["Tombstones"]


class Tombstones:
    """The set of deleted rows (row numbers < 2**32)."""

    __slots__ = ("_array", "_bits", "_packed")

    def __init__(self, bits: BitMap | None = None):
        self._bits = BitMap() if bits is None else bits
        self._array: np.ndarray | None = None  # sorted int64 copy, rebuilt after a change
        self._packed: np.ndarray | None = None  # bit array for FAISS, built on first use, then updated

    def __len__(self) -> int:
        return len(self._bits)

    def __bool__(self) -> bool:
        return bool(self._bits)

    def __repr__(self) -> str:
        return f"Tombstones({len(self)} deleted)"

    @property
    def bitmap(self) -> BitMap:
        """The rows as a roaring bitmap (for set algebra with filters; do not modify)."""
        return self._bits

    def add(self, rows: np.ndarray) -> None:
        """Mark ``rows`` (int64, validated by the caller) deleted."""
        rows = np.asarray(rows, dtype=np.int64)
        self._bits.update(rows.astype(np.uint32))
        self._array = None
        if self._packed is not None and len(rows):
            need = int(rows.max()) // 8 + 1
            if need > len(self._packed):  # doubled, so a stream of deletes copies O(n) in all
                grown = np.zeros(max(need, 2 * len(self._packed)), dtype=np.uint8)
                grown[: len(self._packed)] = self._packed
                self._packed = grown
            np.bitwise_or.at(self._packed, rows >> 3, np.left_shift(1, rows & 7).astype(np.uint8))

    def array(self) -> np.ndarray:
        """The deleted rows, sorted ``(m,)`` int64."""
        if self._array is None:
            self._array = np.asarray(self._bits.to_array(), dtype=np.int64)
        return self._array

    def packed(self) -> np.ndarray:
        """The deleted rows as a little-endian bit array, uint8 ``(>= max_row // 8 + 1,)``: bit
        ``r & 7`` of byte ``r >> 3`` is set when row ``r`` is deleted; rows past its end are live.
        What ``faiss.IDSelectorBitmap`` reads (its size argument is the byte count). Do not modify."""
        if self._packed is None:
            dead = self.array()
            packed = np.zeros(int(dead[-1]) // 8 + 1 if len(dead) else 0, dtype=np.uint8)
            np.bitwise_or.at(packed, dead >> 3, np.left_shift(1, dead & 7).astype(np.uint8))
            self._packed = packed
        return self._packed

    def contains(self, rows: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``rows`` are deleted."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self._bits:
            return np.zeros(rows.shape, dtype=bool)
        return np.isin(rows, self.array())

    def live_mask(self, n_rows: int) -> np.ndarray:
        """``(n_rows,)`` bool: True where the row is live."""
        live = np.ones(n_rows, dtype=bool)
        if self._bits:
            dead = self.array()
            live[dead[dead < n_rows]] = False
        return live

    def check(self, ids: np.ndarray, n_rows: int, *, deleted: str = "deleted id(s)") -> np.ndarray:
        """``ids`` (int64, from ``as_ids``) if every one is an assigned, live row; else a
        ``ValueError`` naming the first ten unknown ids, or the deleted ones (``deleted`` says how)."""
        bad = ids[(ids < 0) | (ids >= n_rows)]
        if len(bad):
            raise ValueError(f"unknown id(s): {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}")
        dead = self.contains(ids)
        if dead.any():
            raise ValueError(f"{deleted}: {ids[dead][:10].tolist()}")
        return ids

    def copy(self) -> "Tombstones":
        return Tombstones(BitMap(self._bits))

    def since(self, earlier: "Tombstones") -> np.ndarray:
        """Rows deleted here but not in ``earlier``, sorted int64."""
        return np.asarray((self._bits - earlier._bits).to_array(), dtype=np.int64)

    # -- persistence and accounting -------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Roaring's portable serialisation (what ``deleted.roaring`` holds)."""
        return self._bits.serialize()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Tombstones":
        return cls(BitMap.deserialize(data))

    def nbytes(self) -> int:
        return len(self._bits.serialize()) if self._bits else 0

    def memory_usage(self) -> dict:
        """``{"anon": {"tombstones": bytes}}``: the serialised size (roaring's containers), plus the
        packed bit array once a search has built it."""
        packed = self._packed.nbytes if self._packed is not None else 0
        return {"anon": {"tombstones": self.nbytes() + packed}}
