"""External ids and free metadata on the facade: a mixin :class:`~.facade.MemoryIndex` inherits.

With ``IndexConfig.external_ids`` set, every public method that takes ids (``get``,
``contents``, ``contains``, ``update``, ``delete``) takes the user's ids, resolved here to rows;
search results keep the rows (``SearchResult.ids``) and give the user's ids through
``SearchResult.external_ids``. Without it, ids are the rows, as before.
"""
from __future__ import annotations

import numpy as np

from ..util.ids import as_ids
from . import extids
from .locking import locked
from .results import Memory

__all__ = ["DocumentsMixin"]


class DocumentsMixin:
    """``external_ids_of``, ``metadata``, and the id resolution the facade routes through."""

    def _rows_for(self, ids) -> np.ndarray:
        """Rows of the ids a caller gives (external ids resolved; ValueError for an unknown one)."""
        if self.config.external_ids is None:
            return as_ids(ids)
        return extids.resolve(self, ids)

    def _memories_at(self, rows: np.ndarray) -> list:
        """:class:`Memory` records of live ``rows`` (the facade's ``get`` and search results)."""
        p = self.parts
        rows = np.asarray(rows, np.int64)
        contents, tags = p.contents.get(rows), p.tags.get(rows)
        ts, imp = p.meta.timestamp[rows], p.meta.importance(rows)
        metas = p.docmeta.get(rows)
        ext = p.idmap.keys(rows) if p.idmap is not None else rows.tolist()
        ns, (vf, vt) = p.namespaces.of_rows(rows), p.validity.window(rows)
        return [Memory(int(r), c, t, float(a), float(b), e, m, n, float(f), float(u))
                for r, c, t, a, b, e, m, n, f, u in zip(rows.tolist(), contents, tags, ts, imp, ext, metas, ns, vf, vt)]

    @locked
    def contents_at(self, rows) -> list:
        """The contents of live rows (``SearchResult.ids``, never external ids), in the order
        given: the batch accessor of ``SearchResult.contents()`` and a shard host.

        Raises
        ------
        ValueError
            A row that was never assigned or has been deleted.
        """
        return self.parts.contents.get(self.parts.tombstones.check(as_ids(rows), self.parts.rows))

    @locked
    def memories_at(self, rows) -> list:
        """:class:`Memory` records of live rows (not external ids), in the order given: the batch
        accessor of ``SearchResult.memories()`` and a shard host; ValueError as :meth:`contents_at`."""
        return self._memories_at(self.parts.tombstones.check(as_ids(rows), self.parts.rows))

    @locked
    def vectors_at(self, rows) -> np.ndarray:
        """The stored vectors of live rows, dequantized (``(n, dim)`` float32: the int8 codes times
        their scales, what searches score against), in the order given: MMR's similarities
        between candidates (a shard host's too); ValueError as :meth:`contents_at`."""
        return self.dequantized(self.parts.tombstones.check(as_ids(rows), self.parts.rows)).cpu().numpy()

    def dequantized(self, rows: np.ndarray):
        """``vectors_at`` of checked rows as a torch tensor on the encoder's device."""
        return self.encoder.dequantize(self.parts.vectors.array[np.asarray(rows, np.int64)])

    @locked
    def external_ids_of(self, rows) -> list:
        """The external ids of rows (``SearchResult.ids``), ``None`` for -1 padding; the rows
        themselves when the index assigns its own ids."""
        rows = as_ids(rows)
        out: list = [None] * len(rows)
        ok = np.flatnonzero((rows >= 0) & (rows < self.parts.rows))
        if self.parts.idmap is None:
            for j in ok.tolist():
                out[j] = int(rows[j])
            return out
        for j, k in zip(ok.tolist(), self.parts.idmap.keys(rows[ok])):
            out[j] = k
        return out

    @locked
    def metadata(self, ids) -> list:
        """The metadata dicts of these ids (None for a memory added without one), in order."""
        return self.parts.docmeta.get(self._check_ids(ids))

    def _contains_ids(self, ids) -> np.ndarray:
        if self.config.external_ids is None:
            ids = as_ids(ids)
            live = (ids >= 0) & (ids < self.parts.rows)
            return live & ~self.parts.tombstones.contains(ids)
        _, keys = extids._id_list(self, ids, None)
        return self.parts.idmap.find(keys, self.parts.tombstones.bitmap) >= 0

    @locked
    def select(self, where=None, *, limit: int | None = None, namespace: str | None = None, as_of=None) -> np.ndarray:
        """Row ids of the live memories that satisfy ``where`` (a :class:`~lukhas_gpu.Filter`, or
        None: all) in ``namespace`` (None: any) valid at ``as_of`` (default now), ascending, at
        most ``limit``: listings and deletions by metadata, no vectors."""
        from ..query import filters

        p = self.parts
        allowed = filters.allowed_rows(p, filters.scoped(where, namespace, as_of))
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        if allowed is None:
            rows = np.flatnonzero(p.tombstones.live_mask(p.rows))
        else:
            rows = np.asarray(allowed.to_array(), np.int64)
        return rows[:limit].astype(np.int64) if limit is not None else rows.astype(np.int64)
