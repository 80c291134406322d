""":class:`SparseVectors`: the user's sparse vectors (SPLADE-style) of an index: the arena that
stores them and the inverted index that searches them."""
from __future__ import annotations

import numpy as np

from .arena import SparseArena
from .inverted import InvertedIndex, SparseQuery
from .validate import PackedSparse, pack_sparse

__all__ = ["SparseVectors", "as_queries"]


class SparseVectors:
    """Sparse vectors per memory (:class:`~.arena.SparseArena`) and their posting lists."""

    def __init__(self, arena: SparseArena | None = None):
        self.arena = arena if arena is not None else SparseArena()
        self.inverted = InvertedIndex()

    def append(self, rows: np.ndarray, packed: PackedSparse) -> None:
        self.arena.append(rows, packed)

    def delete(self, rows: np.ndarray) -> None:
        self.arena.delete_docs(rows)

    def get(self, rows) -> list:
        return self.arena.get(rows)

    @property
    def count(self) -> int:
        return self.arena.live_slots

    def topk(self, queries: list[SparseQuery], k: int, **kw):
        return self.inverted.topk(self.arena, queries, k, **kw)

    def to_arrays(self) -> dict:
        return self.arena.to_arrays()

    @classmethod
    def from_arrays(cls, arrays: dict) -> "SparseVectors":
        return cls(SparseArena.from_arrays(arrays))

    def memory_usage(self) -> dict:
        cols = self.arena.columns()
        anon = {f"sparse_{k}": v.nbytes() for k, v in cols.items() if not v.mapped}
        mapped = {f"sparse_{k}": v.nbytes() for k, v in cols.items() if v.mapped}
        anon["sparse_postings"] = sum(s.nbytes() for s in self.inverted.segments)
        return {"anon": anon, "mapped": mapped, "reserved": {"sparse_columns": sum(v.slack() for v in cols.values())}}


def as_queries(s, name: str = "sparse") -> list[SparseQuery]:
    """Query vectors (a scipy matrix, a list of ``(indices, values)`` pairs or one pair) as
    :class:`SparseQuery` objects, validated by the rules of :mod:`.validate`."""
    if hasattr(s, "tocsr") and hasattr(s, "shape"):
        n = s.shape[0]
    elif isinstance(s, tuple) and len(s) == 2 and np.ndim(s[0]) == 1 and np.ndim(s[1]) == 1:
        s, n = [s], 1
    elif hasattr(s, "__len__") and not isinstance(s, (str, bytes, dict)):
        n = len(s)
    else:
        raise TypeError(f"{name} must be a scipy.sparse matrix or a sequence of (indices, values) pairs, "
                        f"got {type(s).__name__}")
    if n == 0:
        raise ValueError(f"{name} holds no query")
    p = pack_sparse(s, n, name)
    return [SparseQuery(p.row(i)[0], p.row(i)[1].astype(np.float64)) for i in range(n)]
