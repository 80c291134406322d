"""The public methods of sparse, BM25 and hybrid search, mixed into ``MemoryIndex``.

``search(queries, k, text=..., sparse=..., fusion=...)`` routes here (:meth:`_hybrid_search`);
``search_text`` ranks by BM25 alone; ``search(None, k, sparse=...)`` by sparse vectors alone.
The exact top-k of the sparse side comes from :mod:`lukhas_gpu.sparse.inverted`, the fusion from
:mod:`lukhas_gpu.query.hybrid`.
"""
from __future__ import annotations

import weakref

import numpy as np

from ..query import filters
from ..query.hybrid import as_fusion, fuse
from ..sparse import as_queries
from ..sparse.arena import NONE
from ..sparse.inverted import EXACT_SLOTS_MAX
from ..sparse.text import MAX_QUERY_CHARS, BM25Stats
from ..util.checks import MAX_K, check_queries
from .locking import locked
from .results import SearchResult

__all__ = ["SparseSearchMixin", "check_texts", "hybrid", "as_result"]


def check_texts(text) -> tuple[list, bool]:
    """``text`` (a str or a list of str) checked: ``(texts, single)``."""
    single = isinstance(text, str)
    texts = [text] if single else text
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__len__") or not len(texts):
        raise TypeError(f"text must be a str or a non-empty list of str, got {type(text).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"text[{i}] must be a str, got {type(t).__name__}")
        if len(t) > MAX_QUERY_CHARS:
            raise ValueError(f"text[{i}] has {len(t):,} characters; at most {MAX_QUERY_CHARS:,} per query")
    return list(texts), single


class SparseSearchMixin:
    """``search_text``, ``sparse_vectors`` and the hybrid route of ``search``."""

    @locked
    def search_text(self, texts, k: int = 10, *, where=None, stats=None, namespace: str | None = None,
                    as_of=None) -> SearchResult:
        """BM25 top-k over the memories' contents (needs ``IndexConfig(text_index=True)``).

        Parameters
        ----------
        texts : str or list of str
            Query texts, tokenized like the contents (see :mod:`lukhas_gpu.sparse.tokenize`);
            a repeated query term counts once per occurrence.
        k : int
        where : Filter, optional
        stats : BM25Stats, optional
            Collection statistics to score with instead of this index's own: those of a whole
            collection this index is one shard of (:meth:`text_stats` of every shard, combined by
            :meth:`BM25Stats.combine <lukhas_gpu.sparse.text.BM25Stats.combine>`), so that
            shards score alike.
        namespace, as_of : optional
            As :meth:`search`: only this namespace's memories, valid at ``as_of`` (default now).

        Returns
        -------
        SearchResult
            numpy ``ids`` (nq, k) and BM25 ``scores`` (1-D for one str); exact (the brute-force
            ranking, ties by the smaller id); only memories holding a query term, -1 padding.
        """
        texts, single = check_texts(texts)
        where = filters.scoped(where, namespace, as_of)
        s, i = self._text_topk(texts, check_queries(len(texts), k), where, stats)
        return self._result(i, s, single)

    @locked
    def text_stats(self, texts):
        """This index's BM25 collection statistics for the terms of ``texts`` (a
        :class:`~lukhas_gpu.sparse.text.BM25Stats`: live memories, total length, document
        frequencies), to combine over the shards of a collection (see :meth:`search_text`)."""
        texts, _ = check_texts(texts)
        return self._text_index().stats(texts)

    @locked
    def sparse_vectors(self, ids) -> list:
        """The ``(indices uint32, values)`` sparse vector of each live id (empty if it has none)."""
        rows = self._check_ids(ids)
        if self.parts.sparse is None:
            return [(np.zeros(0, np.uint32), np.zeros(0, np.float32)) for _ in rows]
        return self.parts.sparse.get(rows)

    # -- the route of search(..., text=, sparse=) -------------------------------------------------
    def _hybrid_search(self, queries, k, *, where, rank, nprobe, rerank, text, sparse, fusion,
                       target_recall=None) -> SearchResult:
        def dense(kc):
            return self.search(queries, kc, where=where, rank=rank, nprobe=nprobe, rerank=rerank,
                               target_recall=target_recall)

        def sparse_topk(sq, kc):
            s, i = self._sparse_topk(sq, kc, where)
            return i, s

        def text_topk(texts, kc):
            s, i = self._text_topk(texts, kc, where)
            return i, s

        return hybrid(self, queries, k, rank=rank, text=text, sparse=sparse, fusion=fusion, dense=dense,
                      sparse_topk=sparse_topk, text_topk=text_topk)

    def _result(self, ids, scores, single) -> SearchResult:
        return as_result(self, ids, scores, single)

    def _masks(self, arena, where):
        """``(exclude, allowed_slots)`` for a filter: a slot mask, or (narrow filters) the slots."""
        allowed = filters.allowed_rows(self.parts, where)
        if allowed is None:
            return {}
        rows = np.asarray(allowed.to_array(), dtype=np.int64)
        ds = arena.doc_slot.view()
        if len(rows) <= EXACT_SLOTS_MAX:
            rows = rows[rows < len(ds)]
            slots = ds[rows]
            slots = slots[slots != NONE].astype(np.int64)
            return {"allowed_slots": slots[arena.dead.view()[slots] == 0]}
        ok = np.zeros(self.parts.rows, dtype=bool)
        ok[rows] = True
        return {"exclude": ~ok[arena.slot_doc.view()]}

    def _sparse_topk(self, sq, k, where):
        sv = self.parts.sparse
        if sv is None:
            return np.full((len(sq), k), -np.inf, np.float32), np.full((len(sq), k), -1, np.int64)
        return sv.topk(sq, k, **self._masks(sv.arena, where))

    def _text_index(self):
        ti = self.parts.text
        if ti is None:
            raise ValueError("this index has no text index: create it with IndexConfig(text_index=True)")
        return ti

    def _text_topk(self, texts, k, where, stats=None):
        ti = self._text_index()
        if stats is not None and not isinstance(stats, BM25Stats):
            raise TypeError(f"stats must be a lukhas_gpu.sparse.text.BM25Stats, got {type(stats).__name__}")
        return ti.inverted.topk(ti.arena, ti.queries(texts, stats), k, scorer=ti.scorer(stats),
                                **self._masks(ti.arena, where))


def hybrid(index, queries, k, *, rank, text, sparse, fusion, dense, sparse_topk, text_topk) -> SearchResult:
    """The hybrid route of a search over any index (``MemoryIndex``, or the shards of a
    ``ShardedIndex``), given how it searches each list: ``dense(kc)`` -> the
    :class:`SearchResult` of ``queries``; ``sparse_topk(queries, kc)`` and ``text_topk(texts,
    kc)`` -> ``(ids, scores)`` (nq, kc) numpy. Checks the query counts, takes each list's top
    ``kc`` (``k`` for one list alone) and fuses them; results refer to ``index``."""
    fusion = as_fusion(fusion)
    if queries is None and rank is not None:
        raise ValueError("rank orders the dense list of a hybrid search: it needs dense queries")
    lists, single, n = [], None, None
    if sparse is not None:
        sq = as_queries(sparse)
        n = len(sq)
        single = n == 1 and isinstance(sparse, tuple)
    if text is not None:
        texts, single_t = check_texts(text)
        if n is not None and len(texts) != n:
            raise ValueError(f"text has {len(texts)} queries, sparse {n}: one of each per query")
        n, single = len(texts), single_t if single is None else single and single_t
    k = check_queries(n, k)
    kc = fusion.per_list(k, MAX_K) if queries is not None or (sparse is not None and text is not None) else k
    if queries is not None:
        res = dense(kc)
        d_ids, d_sc = (np.atleast_2d(_np(res.ids)), np.atleast_2d(_np(res.scores)))
        if d_ids.shape[0] != n:
            raise ValueError(f"{d_ids.shape[0]} dense queries, {n} sparse/text queries: one of each per query")
        lists.append((d_ids, d_sc))
        single = _np(res.ids).ndim == 1
    if sparse is not None:
        lists.append(sparse_topk(sq, kc))
    if text is not None:
        lists.append(text_topk(texts, kc))
    if len(lists) == 1:
        s, i = lists[0][1][:, :k], lists[0][0][:, :k]
    else:
        s, i = fuse(lists, k, fusion)
    out = as_result(index, i, s, single)
    if queries is not None and not isinstance(res.ids, np.ndarray):  # torch queries: torch results
        import torch
        out = SearchResult(ids=torch.from_numpy(np.ascontiguousarray(out.ids)).to(res.ids.device),
                           scores=torch.from_numpy(np.ascontiguousarray(out.scores)).to(res.ids.device),
                           _index_ref=weakref.ref(index))
    return out


def as_result(index, ids, scores, single: bool) -> SearchResult:
    """A :class:`SearchResult` of numpy ``ids``/``scores`` referring to ``index`` (row 0 alone
    when the query was ``single``)."""
    if single:
        ids, scores = ids[0], scores[0]
    return SearchResult(ids=ids, scores=scores, _index_ref=weakref.ref(index))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
