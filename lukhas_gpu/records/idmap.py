"""``IdMap``: the external id of every row (str or int64, chosen by the user) and the row of
every live external id.

Entry ``i`` of the map's :class:`~.keytable.KeyTable` is row ``i``'s id (rows and entries are
appended together), so the map costs 21 B per memory for a 36-char UUID and nothing else. An
upsert appends the new row and deletes the old one: both keep the key, and a lookup returns the
entry that is not deleted (the tombstones are the one record of deletions).
"""
from __future__ import annotations

import numpy as np

from .keytable import KIND_NONE, KeyTable, encode_keys

__all__ = ["IdMap", "ID_KINDS"]

ID_KINDS = ("str", "int")


class IdMap:
    """External ids of kind ``"str"`` or ``"int"``, one per row (``None`` for rows without one)."""

    def __init__(self, kind: str):
        if kind not in ID_KINDS:
            raise ValueError(f"external_ids must be one of {ID_KINDS} or None, got {kind!r}")
        self.kind = kind
        self.table = KeyTable()

    def __len__(self) -> int:
        return len(self.table)

    def encode(self, ids, what: str = "ids"):
        """Validated keys (see :func:`~.keytable.encode_keys`); raises TypeError/ValueError."""
        return encode_keys(ids, what, kind=self.kind)

    def append(self, encoded) -> None:
        self.table.append(encoded)

    def append_none(self, n: int) -> None:
        z = np.zeros(n, np.uint64)
        self.table.append((np.full(n, KIND_NONE, np.uint8), z, z, [None] * n))

    def find(self, encoded, deleted) -> np.ndarray:
        """The live row of each key, -1 where none (``deleted``: a roaring bitmap of rows)."""
        q = len(encoded[0])
        rows = np.full(q, -1, np.int64)
        qi, ent = self.table.lookup(encoded)
        if len(qi):
            live = np.array([e not in deleted for e in ent.tolist()], bool) if deleted else np.ones(len(ent), bool)
            rows[qi[live]] = ent[live]
        return rows

    def keys(self, rows) -> list:
        return self.table.keys(rows)

    def nbytes(self) -> int:
        return self.table.nbytes()

    def memory_usage(self) -> dict:
        return {"anon": {"external_ids": self.nbytes()}, "reserved": {"external_ids": self.table.slack_bytes()}}

    def to_arrays(self) -> dict:
        return {"kind_name": np.frombuffer(self.kind.encode(), np.uint8).copy(), **self.table.to_arrays()}

    @classmethod
    def from_arrays(cls, arrays) -> "IdMap":
        kind = bytes(np.asarray(arrays["kind_name"], np.uint8)).decode("ascii", "replace")
        m = cls(kind)
        m.table = KeyTable.from_arrays(arrays)
        return m
