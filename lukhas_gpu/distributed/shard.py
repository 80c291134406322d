"""One shard of a sharded root, as the driver of a :class:`~.sharded.ShardedIndex` sees it.

:class:`ShardHost` holds one shard's :class:`~lukhas_gpu.MemoryIndex` and answers in numpy
arrays and plain values, with global ids (``rootfiles.global_ids``): the same object serves a
local :class:`~.sharded.ShardedIndex` (called from its threads) and, wrapped by ``ray.remote``,
one Ray actor per shard (:mod:`.actors`), so both modes run the same code and nothing but
arrays, ids and small parameter objects (``Filter``, ``Rank``) crosses the wire. Imports no Ray.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..index import MemoryIndex
from ..util.ids import as_ids
from . import rootfiles

__all__ = ["ShardHost"]


class ShardHost:
    """Shard ``shard`` of the root at ``root``, opened with ``MemoryIndex.open(mode, verify)``.

    ``defer_errors`` (actors): an error opening the store is kept and raised by :meth:`opened`
    rather than by the constructor, since Ray reports a failed actor constructor as a dead actor
    with the message only; a method's exception reaches the driver whole.
    """

    def __init__(self, root, shard: int, mode: str = "r", verify: bool = False, defer_errors: bool = False):
        self.shard, self._error = int(shard), None
        try:
            self.index = MemoryIndex.open(rootfiles.shard_dir(root, shard), mode=mode, verify=verify)
        except Exception as e:
            if not defer_errors:
                raise
            self._error = e

    def opened(self) -> int:
        """The live count, once the store opened (else the error that stopped it)."""
        if self._error is not None:
            raise self._error
        return len(self.index)

    def describe(self) -> dict:
        """What the driver checks across shards: ``shard``, ``dim``, ``metric``, ``count``,
        ``rows``, ``backend``, ``text_index``, ``external_ids``."""
        ix = self.index
        return {"shard": self.shard, "dim": ix.dim, "metric": ix.config.metric, "count": len(ix),
                "rows": ix.parts.rows, "backend": ix.backend, "text_index": bool(ix.config.text_index),
                "external_ids": ix.config.external_ids}

    def _global(self, rows) -> np.ndarray:
        return rootfiles.global_ids(self.shard, rows)

    # -- searches: numpy in, (global ids, scores) numpy out --------------------------------------
    def search(self, q: np.ndarray, k: int, where, rank, nprobe, rerank, target_recall):
        res = self.index.search(q, k, where=where, rank=rank, nprobe=nprobe, rerank=rerank,
                                target_recall=target_recall)
        return self._global(_np(res.ids)), _np(res.scores)

    def sparse_topk(self, sparse: list, k: int, where):
        res = self.index.search(None, k, where=where, sparse=sparse)
        return self._global(_np(res.ids)), _np(res.scores)

    def text_stats(self, texts: list):
        return self.index.text_stats(texts)

    def text_topk(self, texts: list, k: int, where, stats):
        res = self.index.search_text(texts, k, where=where, stats=stats)
        return self._global(_np(res.ids)), _np(res.scores)

    # -- records by row (the driver split the global ids) ------------------------------------------
    def contents_at(self, rows) -> list:
        with self.index.lock:  # the SearchResult protocol: rows, not external ids
            return self.index.contents_at(self._live(rows))

    def get_at(self, rows) -> list:
        ext = self.index.config.external_ids is not None
        with self.index.lock:
            rows = self._live(rows)
            got = self.index.memories_at(rows)
        return [dataclasses.replace(m, id=g, external_id=m.external_id if ext else g)
                for m, g in zip(got, self._global(rows).tolist())]

    def vectors_at(self, rows) -> np.ndarray:
        return self.index.vectors_at(rows)

    def contains_rows(self, rows) -> np.ndarray:
        rows = as_ids(rows)
        with self.index.lock:
            p = self.index.parts
            return (rows >= 0) & (rows < p.rows) & ~p.tombstones.contains(rows)

    def _live(self, rows) -> np.ndarray:
        rows = as_ids(rows)
        bad = ~self.contains_rows(rows)
        if bad.any():
            ids = self._global(rows[bad][:10]).tolist()
            raise ValueError(f"unknown or deleted id(s): {ids}{' ...' if bad.sum() > 10 else ''} "
                             f"(rows {rows[bad][:10].tolist()} of {rootfiles.shard_name(self.shard)})")
        return rows

    def external_ids_of(self, rows) -> list:
        """The external ids of rows (``None`` where padded); global ids where the shard assigns
        its own."""
        rows = as_ids(rows)
        if self.index.config.external_ids is None:
            g = self._global(rows)
            return [int(v) if v >= 0 and r < self.index.parts.rows else None for v, r in zip(g.tolist(), rows.tolist())]
        return self.index.external_ids_of(rows)

    # -- links by row (a link's two ends are in this shard: sharded.py's rule) -------------------------
    def _caller_ids(self, rows) -> np.ndarray | list:
        """Rows as this shard's ``link``/``links`` take them: rows, or their external ids."""
        rows = as_ids(rows)
        return rows if self.index.config.external_ids is None else self.index.external_ids_of(rows)

    def link(self, src, dst, kind, weight) -> int:
        with self.index.lock:
            return self.index.link(self._caller_ids(src), self._caller_ids(dst), kind=kind, weight=weight)

    def unlink(self, src, dst, kind) -> int:
        with self.index.lock:
            return self.index.unlink(self._caller_ids(src), self._caller_ids(dst), kind=kind)

    def links(self, rows, kind, direction):
        """``MemoryIndex.links`` of rows, its ids global."""
        with self.index.lock:
            ls = self.index.links(self._caller_ids(rows), kind=kind, direction=direction)
        return dataclasses.replace(ls, ids=self._global(ls.ids))

    def lineage(self, row: int, depth: int, kind, direction):
        """``MemoryIndex.lineage`` of a row, its ids and parents global."""
        with self.index.lock:
            lin = self.index.lineage(self._caller_ids([row])[0], depth=depth, kind=kind, direction=direction)
        return dataclasses.replace(lin, ids=self._global(lin.ids), parent=self._global(lin.parent))

    def follow_edges(self, rows, where) -> tuple:
        """The out-links of rows to memories ``where`` allows: ``(indptr, global ids, weights)``
        (one hop of ``search(follow_links=)``, :func:`lukhas_gpu.index.memops.follow_arrays`)."""
        from ..index.memops import allowed_edges
        from ..query.filters import allowed_rows

        with self.index.lock:
            ls = self.index.links(self._caller_ids(rows), direction="out")
            indptr, ids, w = allowed_edges(ls.indptr, ls.ids, ls.weights, allowed_rows(self.index.parts, where))
        return indptr, self._global(ids), w

    # -- the store ---------------------------------------------------------------------------------
    def count(self) -> int:
        return len(self.index)

    def stats(self) -> dict:
        return {"shard": self.shard, **self.index.stats()}

    def namespaces(self) -> dict:
        return self.index.namespaces()

    def quality(self, queries, k, nprobe, rerank, max_queries, confidence) -> dict:
        return self.index.quality(queries, k, nprobe=nprobe, rerank=rerank, max_queries=max_queries,
                                  confidence=confidence)

    def refresh(self) -> dict:
        return {"shard": self.shard, **self.index.refresh()}

    def verify(self) -> dict:
        return {"shard": self.shard, **self.index.verify()}

    def close(self, checkpoint: bool = True) -> None:
        self.index.close(checkpoint=checkpoint)


def _np(a) -> np.ndarray:
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return a if a.ndim == 2 else a[None, :]
