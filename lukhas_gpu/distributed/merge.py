"""The exact merge of per-shard top-k lists, and what must be fixed before a search fans out.

Every shard returns its own top-k with global ids. The global top-k is the top-k of their union:
no memory outside a shard's top-k can be among the global top-k, since k memories of that shard
alone already beat it. :func:`merge_topk` is the one implementation, used by
:class:`~.sharded.ShardedIndex` (threads or actors) and by the Ray Serve ingress
(:mod:`.ray_serve`).

The merge is exact only if scores from different shards mean the same thing. What a shard
scores with:

* cosine similarity (clipped at 1) from its int8 rows: an estimate of the true cosine; each
  shard quantizes with its own per-dimension scales (fitted on its data), so a shard's scores
  differ from a single index's by the int8 error (~1e-3), never by a per-shard normalisation;
* a :class:`~lukhas_gpu.Rank`: absolute weights of cosine, recency and importance (never min-max
  normalised per query), but the recency term depends on ``now``: :func:`fixed_rank` sets ONE
  reference time on the driver so every shard scores against the same clock;
* sparse dot products: absolute;
* BM25: IDF and the average length are collection statistics -- per shard they would differ,
  so hybrid and text searches first gather them from every shard and score with the totals
  (:class:`~lukhas_gpu.sparse.text.BM25Stats`, see :mod:`.fusion_merge`);
* fusion (RRF ranks, min-max ``weighted``): per list, so it is never applied per shard; each
  list is merged globally first, then fused once (:mod:`.fusion_merge`).

Ties are broken by the smaller global id (shards in order, then rows), padding (id ``-1``,
score ``-inf``) comes last.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["merge_topk", "fixed_rank", "check_where", "check_rank"]

_LAST = np.iinfo(np.int64).max


def merge_topk(parts, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top-k of per-shard lists.

    Parameters
    ----------
    parts : sequence of ``(ids, scores)``
        One per shard (or shard group): ``(nq, k_s)`` int64 global ids (``-1`` where padded) and
        their scores, best first or in any order.
    k : int

    Returns
    -------
    (ids (nq, k) int64, scores (nq, k) float32), descending, ties by the smaller id, padded with
    ``-1`` / ``-inf``.
    """
    parts = [(np.asarray(i, np.int64), np.asarray(s, np.float32)) for i, s in parts]
    if not parts:
        raise ValueError("nothing to merge: no shard answered")
    nq = parts[0][0].shape[0]
    for i, s in parts:
        if i.ndim != 2 or i.shape != s.shape or i.shape[0] != nq:
            raise ValueError(f"a shard answered ids {i.shape} and scores {s.shape}; expected ({nq}, k) each")
    ids = np.concatenate([p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    pad = ids < 0
    scores = np.where(pad, np.float32(-np.inf), scores)
    tie = np.where(pad, _LAST, ids)
    order = np.lexsort((tie, -scores), axis=-1)[:, :k]
    out_i = np.take_along_axis(ids, order, axis=1)
    out_s = np.take_along_axis(scores, order, axis=1)
    out_i = np.where(np.take_along_axis(pad, order, axis=1), np.int64(-1), out_i)
    if out_i.shape[1] < k:  # fewer candidates than k in all: pad
        extra = k - out_i.shape[1]
        out_i = np.concatenate([out_i, np.full((nq, extra), -1, np.int64)], axis=1)
        out_s = np.concatenate([out_s, np.full((nq, extra), -np.inf, np.float32)], axis=1)
    return np.ascontiguousarray(out_i), np.ascontiguousarray(out_s, dtype=np.float32)


def fixed_rank(rank):
    """``rank`` with its reference time fixed (``now`` = the driver's clock when unset), so that
    every shard computes the recency term against the same time; ``None`` and ranks without a
    recency term pass unchanged."""
    if rank is None or rank.now is not None or not rank.recency:
        return rank
    return type(rank)(rank.similarity, rank.recency, rank.importance, half_life=rank.half_life, now=time.time())


def check_where(where):
    """A search's ``where`` checked once on the driver: a :class:`~lukhas_gpu.Filter` or None
    (an empty filter becomes None)."""
    from ..query.filters import Filter
    if where is not None and not isinstance(where, Filter):
        raise TypeError(f"where must be a lukhas_gpu.Filter, got {type(where).__name__}")
    return None if where is None or where.is_empty() else where


def check_rank(rank):
    """A search's ``rank`` checked once on the driver: a :class:`~lukhas_gpu.Rank` or None."""
    from ..query.ranking import Rank
    if rank is not None and not isinstance(rank, Rank):
        raise TypeError(f"rank must be a lukhas_gpu.Rank, got {type(rank).__name__}")
    return rank
