"""Hybrid (dense + sparse + BM25) and BM25 searches over the shards of a root.

Fusion is not mergeable from per-shard fused lists: RRF scores a memory by its rank in each
list and ``weighted`` min-max normalises each list over its candidates, and both differ per
shard. So each list is searched on every shard and merged to its global top ``kc``
(:func:`.merge.merge_topk`), then the global lists are fused once with
:func:`lukhas_gpu.query.hybrid.fuse` -- what one index over all the memories does.

BM25 depends on collection statistics (live memories, average length, each query term's
document frequency): every shard first reports its own (``MemoryIndex.text_stats``), the driver
sums them (:meth:`~lukhas_gpu.sparse.text.BM25Stats.combine`), and every shard scores with the
totals, so its scores are the single index's and merge exactly. Sparse dot products need
nothing of the kind.
"""
from __future__ import annotations

import numpy as np

from ..index.results import SearchResult
from ..index.sparse_search import as_result, check_texts, hybrid
from ..sparse.text import BM25Stats
from ..util.checks import check_queries
from .merge import check_where, merge_topk

__all__ = ["hybrid_search", "text_search", "text_topk"]


def text_topk(sh, texts: list, k: int, where) -> tuple[np.ndarray, np.ndarray]:
    """The global BM25 top-k of ``texts``: ``(ids, scores)`` (nq, k) numpy."""
    stats = BM25Stats.combine(sh.run_all("text_stats", texts))
    return merge_topk(sh.run_all("text_topk", texts, k, where, stats), k)


def text_search(sh, texts, k: int, *, where) -> SearchResult:
    """``ShardedIndex.search_text``."""
    texts, single = check_texts(texts)
    ids, scores = text_topk(sh, texts, check_queries(len(texts), k), where)
    return as_result(sh, ids, scores, single)


def _pairs(sq) -> list:
    """Checked sparse queries (:class:`~lukhas_gpu.sparse.SparseQuery`) as the ``(indices,
    values)`` pairs the shards take (float32 holds every value a query can carry)."""
    return [(q.terms, q.weights.astype(np.float32)) for q in sq]


def hybrid_search(sh, queries, k, *, where, rank, nprobe, rerank, target_recall, text, sparse,
                  fusion) -> SearchResult:
    """``ShardedIndex.search(..., text=, sparse=)``: ``MemoryIndex.search``'s hybrid route
    (:func:`lukhas_gpu.index.sparse_search.hybrid`), each list merged over the shards."""
    where = check_where(where)

    def dense(kc):
        return sh.search(queries, kc, where=where, rank=rank, nprobe=nprobe, rerank=rerank,
                         target_recall=target_recall)

    def sparse_topk(sq, kc):
        return merge_topk(sh.run_all("sparse_topk", _pairs(sq), kc, where), kc)

    return hybrid(sh, queries, k, rank=rank, text=text, sparse=sparse, fusion=fusion, dense=dense,
                  sparse_topk=sparse_topk, text_topk=lambda texts, kc: text_topk(sh, texts, kc, where))
