"""Filters: a :class:`Filter` becomes a roaring bitmap of allowed rows (the planner, in
:mod:`.routing`, then chooses how to search them).

:func:`allowed_rows` is the one rule every route applies (dense, exact, sparse, BM25, hybrid,
``select``, and each shard of a sharded search): the rows the filter allows, minus tombstones.

Tag constraints are roaring operations on the per-tag bitmaps; time and importance constraints are
vectorised scans of the metadata columns (only over the rows the tags left, when they left few).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from pyroaring import BitMap

from ..records.metadata import to_epoch_seconds
from ..util.bounds import MAX_FILTER_TAGS
from . import metafilter

__all__ = ["Filter", "allowed_rows", "check_where", "evaluate", "labelled"]


def _tag_tuple(name: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"Filter.{name} must be a str or a list of str, got {type(value).__name__}") from None
    if len(items) > MAX_FILTER_TAGS:
        raise ValueError(f"Filter.{name} holds {len(items):,} tags, at most {MAX_FILTER_TAGS:,} "
                         "(lukhas_gpu.util.bounds.MAX_FILTER_TAGS)")
    for t in items:
        if not isinstance(t, str):
            raise TypeError(f"Filter.{name} must hold str tags, got {type(t).__name__}")
    return items


@dataclasses.dataclass(frozen=True, init=False)
class Filter:
    """Which memories a search may return. All given constraints must hold (AND).

    Parameters
    ----------
    tags_all : str or list of str
        The memory carries every one of these tags.
    tags_any : str or list of str
        ... at least one of these.
    tags_none : str or list of str
        ... none of these.
    since, until : epoch seconds, datetime or numpy.datetime64, optional
        ``since <= timestamp <= until`` (both inclusive).
    min_importance : float in [0, 1], optional
        ``importance >= min_importance``.
    meta : dict, optional
        Conditions on metadata keys, in the dict form of :mod:`lukhas_gpu.query.metafilter`:
        ``{"user_id": "alice", "turn": {"$gte": 3}, "$or": [...]}``. Declared fields
        (``IndexConfig.metadata_fields``) are read from their columns; any other top-level key
        from the stored metadata records (slower: one pass over the records per key).
    """

    tags_all: tuple[str, ...]
    tags_any: tuple[str, ...]
    tags_none: tuple[str, ...]
    since: float | None
    until: float | None
    min_importance: float | None
    meta: tuple | None

    def __init__(self, *, tags_all=None, tags_any=None, tags_none=None, since=None, until=None,
                 min_importance=None, meta=None):
        set_ = object.__setattr__
        set_(self, "tags_all", _tag_tuple("tags_all", tags_all))
        set_(self, "tags_any", _tag_tuple("tags_any", tags_any))
        set_(self, "tags_none", _tag_tuple("tags_none", tags_none))
        set_(self, "since", None if since is None else to_epoch_seconds(since, "Filter.since"))
        set_(self, "until", None if until is None else to_epoch_seconds(until, "Filter.until"))
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(f"Filter.since ({self.since}) is after Filter.until ({self.until})")
        if min_importance is not None:
            if isinstance(min_importance, bool) \
                    or not isinstance(min_importance, (int, float, np.integer, np.floating)):
                raise TypeError(f"Filter.min_importance must be a float, got {type(min_importance).__name__}")
            if not 0.0 <= float(min_importance) <= 1.0:
                raise ValueError(f"Filter.min_importance must be in [0, 1], got {min_importance!r}")
            min_importance = float(min_importance)
        set_(self, "min_importance", min_importance)
        set_(self, "meta", metafilter.parse(meta) if meta is not None else None)

    def is_empty(self) -> bool:
        return not (self.tags_all or self.tags_any or self.tags_none or self.since is not None
                    or self.until is not None or self.min_importance is not None or self.meta is not None)

    def matches(self, tags: list[str], timestamp: float, importance: float) -> bool:
        """The predicate for one memory, in plain Python (the reference the tests check against)."""
        s = set(tags)
        return (all(t in s for t in self.tags_all)
                and (not self.tags_any or any(t in s for t in self.tags_any))
                and not any(t in s for t in self.tags_none)
                and (self.since is None or timestamp >= self.since)
                and (self.until is None or timestamp <= self.until)
                and (self.min_importance is None or importance >= self.min_importance - 1e-12))


def check_where(where) -> Filter | None:
    """``where`` checked: a :class:`Filter`, or None; an empty filter is None (no filter)."""
    if where is not None and not isinstance(where, Filter):
        raise TypeError(f"where must be a lukhas_gpu.Filter, got {type(where).__name__}")
    return None if where is None or where.is_empty() else where


def allowed_rows(parts, where) -> BitMap | None:
    """The live rows of an index (``IndexParts``: its tags, metadata columns, declared metadata
    fields and tombstones) that ``where`` allows, as a roaring bitmap; None for no filter (every
    live row). The one function every search route and ``select`` turn a filter into rows with."""
    where = check_where(where)
    if where is None:
        return None
    return evaluate(where, tags=parts.tags, metadata=parts.meta, n_rows=parts.rows,
                    deleted=parts.tombstones.bitmap, fields=parts.docmeta)


def labelled(plan, parts, where):
    """``plan`` (a ``SearchPlan`` or None) with ``metadata`` set to what ``where.meta`` read:
    ``"columns"`` (declared fields), ``"records"`` (undeclared keys) or ``"columns+records"``."""
    if plan is None or where is None or where.meta is None:
        return plan
    return dataclasses.replace(plan, metadata=metafilter.source(where.meta, parts.docmeta.fields))


def evaluate(flt: Filter, *, tags, metadata, n_rows: int, deleted: BitMap | None, fields=None) -> BitMap:
    """The rows ``flt`` allows, live rows only, as a roaring bitmap (``fields``: the metadata,
    ``DocMetadata``: declared columns and records, needed by ``flt.meta``)."""
    allowed: BitMap | None = None
    if flt.meta is not None:
        if fields is None:
            raise ValueError("Filter.meta needs the index's metadata fields")
        allowed = BitMap(np.flatnonzero(metafilter.evaluate(flt.meta, fields, n_rows)).astype(np.uint32))
    if flt.tags_all:
        all_ = tags.all_of(list(flt.tags_all))
        allowed = all_ if allowed is None else allowed & all_
    if flt.tags_any:
        any_ = tags.any_of(list(flt.tags_any))
        allowed = any_ if allowed is None else allowed & any_
    if flt.since is not None or flt.until is not None or flt.min_importance is not None:
        if allowed is not None and len(allowed) * 8 < n_rows:
            rows = np.asarray(allowed.to_array(), dtype=np.int64)
            keep = _column_mask(flt, metadata, rows)
            allowed = BitMap(rows[keep].astype(np.uint32))
        else:
            mask = _column_mask(flt, metadata, slice(0, n_rows))
            cols = BitMap(np.flatnonzero(mask).astype(np.uint32))
            allowed = cols if allowed is None else allowed & cols
    if allowed is None:
        allowed = BitMap(range(n_rows))
    if flt.tags_none:
        allowed = allowed - tags.any_of(list(flt.tags_none))
    if deleted:
        allowed = allowed - deleted
    return allowed


def _column_mask(flt: Filter, metadata, rows) -> np.ndarray:
    ts = metadata.timestamp[rows]
    mask = np.ones(len(ts), dtype=bool)
    if flt.since is not None:
        mask &= ts >= flt.since
    if flt.until is not None:
        mask &= ts <= flt.until
    if flt.min_importance is not None:
        mask &= metadata.importance_q[rows] >= metadata.min_importance_q(flt.min_importance)
    return mask
