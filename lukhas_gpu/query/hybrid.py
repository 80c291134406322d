"""Hybrid search: fusing ranked lists (dense similarity, sparse vectors, BM25) into one top-k.

Each list is ``(ids (nq, kc) int64, scores (nq, kc))``, best first, ``-1`` where padded. Two
fusions:

* ``"rrf"`` -- reciprocal rank fusion: ``sum_i w_i / (rrf_k + rank_i)`` over the lists a memory
  appears in (rank from 1; ``rrf_k`` 60 by default, as in Cormack et al. 2009); scale-free, the
  usual choice.
* ``"weighted"`` -- ``sum_i w_i * (s_i - min_i) / (max_i - min_i)``: each list's scores min-max
  normalised over its candidates for that query (1 when they are all equal), 0 where a memory is
  absent from a list.

Weights default to 1 per list for RRF and ``1 / len(lists)`` for ``weighted``. Ties are broken
by the smaller id; missing results are padded with id -1 and score ``-inf``.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Fusion", "as_fusion", "fuse", "METHODS"]

METHODS = ("rrf", "weighted")
#: Candidates taken from each list per result (``k * CANDIDATES_PER_RESULT``, at least 100).
CANDIDATES_PER_RESULT = 4


@dataclasses.dataclass(frozen=True)
class Fusion:
    """How a hybrid search fuses its lists.

    Parameters
    ----------
    method : {"rrf", "weighted"}
    rrf_k : int
        RRF's rank constant (default 60).
    weights : tuple of float, optional
        One per list, in the order dense, sparse, text (only the lists searched).
    candidates : int, optional
        Results taken from each list before fusing; default ``max(100, 4 * k)``.
    """

    method: str = "rrf"
    rrf_k: int = 60
    weights: tuple | None = None
    candidates: int | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"fusion must be one of {METHODS} (or a lukhas_gpu.Fusion), got {self.method!r}")
        if not isinstance(self.rrf_k, int) or isinstance(self.rrf_k, bool) or self.rrf_k < 0:
            raise ValueError(f"rrf_k must be an int >= 0, got {self.rrf_k!r}")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
                raise ValueError(f"fusion weights must be finite, >= 0 and not all 0, got {self.weights!r}")
        if self.candidates is not None and (not isinstance(self.candidates, int) or self.candidates <= 0):
            raise ValueError(f"fusion candidates must be a positive int, got {self.candidates!r}")

    def per_list(self, k: int, max_k: int) -> int:
        return min(max_k, self.candidates or max(100, CANDIDATES_PER_RESULT * k))

    def list_weights(self, n: int) -> np.ndarray:
        if self.weights is None:
            return np.full(n, 1.0 if self.method == "rrf" else 1.0 / n)
        if len(self.weights) != n:
            raise ValueError(f"fusion weights has {len(self.weights)} entries, expected {n} (one per list searched: "
                             "dense, sparse, text, in that order)")
        return np.asarray(self.weights, dtype=np.float64)


def as_fusion(f) -> Fusion:
    """``None`` (RRF), a method name, or a :class:`Fusion`."""
    if f is None:
        return Fusion()
    if isinstance(f, str):
        return Fusion(method=f)
    if isinstance(f, Fusion):
        return f
    raise TypeError(f"fusion must be 'rrf', 'weighted' or a lukhas_gpu.Fusion, got {type(f).__name__}")


def fuse(lists: list[tuple[np.ndarray, np.ndarray]], k: int, fusion: Fusion) -> tuple[np.ndarray, np.ndarray]:
    """Fused top-k of each query: ``(scores (nq, k) float32, ids (nq, k) int64)``."""
    nq = lists[0][0].shape[0]
    w = fusion.list_weights(len(lists))
    out_s = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    for q in range(nq):
        ids_parts, val_parts = [], []
        for (ids, scores), wi in zip(lists, w):
            row_i = np.asarray(ids[q], np.int64)
            row_s = np.asarray(scores[q], np.float64)
            ok = row_i >= 0
            row_i, row_s = row_i[ok], row_s[ok]
            if not len(row_i):
                continue
            if fusion.method == "rrf":
                val = wi / (fusion.rrf_k + np.arange(1, len(row_i) + 1, dtype=np.float64))
            else:
                lo, hi = row_s.min(), row_s.max()
                val = wi * ((row_s - lo) / (hi - lo) if hi > lo else np.ones(len(row_s)))
            ids_parts.append(row_i)
            val_parts.append(val)
        if not ids_parts:
            continue
        uniq, inv = np.unique(np.concatenate(ids_parts), return_inverse=True)
        total = np.bincount(inv, weights=np.concatenate(val_parts), minlength=len(uniq))
        order = np.lexsort((uniq, -total))[:k]
        out_s[q, : len(order)] = total[order]
        out_i[q, : len(order)] = uniq[order]
    return out_s, out_i
