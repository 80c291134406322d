""":class:`SparseVectors`: the user's sparse vectors (SPLADE-style) of an index: the arena that
stores them and the inverted index that searches them."""
from __future__ import annotations

import numpy as np

from .arena import SparseArena
from .inverted import InvertedIndex, SparseQuery
from .sparse_input import PackedSparse, pack_sparse

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
    :class:`SparseQuery` objects, validated by the rules of :mod:`.sparse_input`."""
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


def planned_bytes(count: int, nnz: float, value_bytes: int = 4, *, vocabulary: int = 30522,
                  opened: bool = False) -> dict:
    """The bytes of :class:`SparseVectors` holding ``count`` vectors of ``nnz`` non-zeros each
    (``value_bytes`` 4 for float32, 2 for float16), as its ``memory_usage()`` names them, plus
    ``disk``: ``{"anon": {...}, "mapped": {...}, "disk": {...}}`` (for ``lukhas_gpu.plan``).

    The posting lists' per-term arrays (16 B per term) are counted once (one segment: the lists
    of a store just opened); a growing index holds a few segments, each with its own."""
    total = count * nnz
    bulk = {"sparse_indices": 4 * total, "sparse_values": value_bytes * total}
    small = {"sparse_indptr": 8 * (count + 1), "sparse_slot_doc": 4 * count, "sparse_doc_slot": 4 * count,
             "sparse_dead": count}
    anon = {**small, "sparse_postings": (4 + value_bytes) * total + 16 * min(vocabulary, total)}
    mapped = {}
    (mapped if opened else anon).update(bulk)
    disk = {**bulk, "sparse_index": sum(small.values())}
    return {"anon": anon, "mapped": mapped, "disk": disk}
