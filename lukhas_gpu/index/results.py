"""What a search and a lookup return: :class:`SearchResult` and :class:`Memory`."""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import numpy as np

__all__ = ["SearchResult", "Memory"]


def _to_numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


@dataclasses.dataclass
class SearchResult:
    """Top-k results of a batch of queries.

    Attributes
    ----------
    ids : (nq, k) int64, -1 where fewer than k memories exist
    scores : (nq, k) float32, descending; ``-inf`` where padded
    linked_from : (nq, k + m) int64 or None
        With ``search(follow_links=)``: ``ids`` and ``scores`` gain ``m`` columns of linked
        memories (score: the linking memory's score times the link's weight); this says, per
        column, the id whose link added it (-1 for a direct hit and for padding). None otherwise.
    Both are numpy arrays for numpy queries, and torch tensors on the query's device for torch
    queries; a 1-D query gives 1-D results.
    """

    ids: Any
    scores: Any
    # a weak reference: results must not keep an index (and its memory maps) alive
    _index_ref: "weakref.ref | None" = dataclasses.field(default=None, repr=False, compare=False)
    linked_from: Any = None

    def __iter__(self):  # allows ``ids, scores = index.search(...)``
        yield self.ids
        yield self.scores

    def __len__(self) -> int:
        return len(self.ids)

    def _index(self):
        index = self._index_ref() if self._index_ref is not None else None
        if index is None:
            raise RuntimeError("the index this SearchResult came from is gone")
        return index

    def _hydrate(self, fetch):
        ids = _to_numpy(self.ids)
        flat = ids.reshape(-1)
        live = flat >= 0
        got = fetch(flat[live]) if live.any() else []
        out, it = [], iter(got)
        for ok in live:
            out.append(next(it) if ok else None)
        if ids.ndim == 1:
            return out
        k = ids.shape[1]
        return [out[i * k:(i + 1) * k] for i in range(ids.shape[0])]

    def contents(self) -> list:
        """Contents of the results, shaped like ``ids`` (lists), ``None`` where padded."""
        return self._hydrate(lambda ids: self._index().contents_at(ids))

    def memories(self) -> list:
        """:class:`Memory` records of the results, shaped like ``ids``, ``None`` where padded."""
        return self._hydrate(lambda ids: self._index().memories_at(ids))

    @property
    def external_ids(self) -> list:
        """The user's ids of the results (``IndexConfig.external_ids``), shaped like ``ids``
        (lists), ``None`` where padded; the row ids when the index assigns its own."""
        ids = _to_numpy(self.ids)
        flat = self._index().external_ids_of(ids.reshape(-1))
        if ids.ndim == 1:
            return flat
        k = ids.shape[1]
        return [flat[i * k:(i + 1) * k] for i in range(ids.shape[0])]


@dataclasses.dataclass(frozen=True)
class Memory:
    """One memory as returned by :meth:`MemoryIndex.get` (built on demand, never stored)."""

    id: int
    content: str | bytes | None
    tags: list[str]
    timestamp: float
    importance: float
    #: The user's id (``IndexConfig.external_ids``), else the row id.
    external_id: Any = None
    #: The free metadata dict (None if the memory was added without one).
    metadata: dict | None = None
    #: Its namespace (``""``: the default).
    namespace: str = ""
    #: Its validity window ``[valid_from, valid_to)`` in epoch seconds (default: always valid).
    valid_from: float = float("-inf")
    valid_to: float = float("inf")
