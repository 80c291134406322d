"""Filters: a :class:`Filter` becomes a roaring bitmap of allowed rows (the planner, in
:mod:`.routing`, then chooses how to search them).

:func:`allowed_rows` is the one rule every route applies (dense, exact, sparse, BM25, hybrid,
``select``, and each shard of a sharded search): the rows the filter allows, minus tombstones.

Scope is part of the same rule: ``Filter.namespace`` (the namespace's rows, derived from its column
and cached as a bitmap) and validity windows (rows whose window excludes ``Filter.as_of`` -- a
search's one "now", fixed by :func:`scoped` -- are never allowed).

Tag constraints are roaring operations on the per-tag bitmaps; time and importance constraints are
vectorised scans of the metadata columns (only over the rows the tags left, when they left few).
"""
from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
from pyroaring import BitMap

from ..records.metadata import to_epoch_seconds
from ..records.scopes import check_namespace
from ..util.bounds import MAX_FILTER_TAGS
from . import metafilter

__all__ = ["Filter", "allowed_rows", "check_where", "evaluate", "labelled", "scoped"]


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
    namespace : str, optional
        Only memories of this namespace (``""`` is the default namespace; None: every one).
    as_of : epoch seconds, optional
        The time whose valid memories are allowed (memories added with ``valid_from`` /
        ``valid_to``); default: now, read once per call.
    """

    tags_all: tuple[str, ...]
    tags_any: tuple[str, ...]
    tags_none: tuple[str, ...]
    since: float | None
    until: float | None
    min_importance: float | None
    meta: tuple | None
    namespace: str | None
    as_of: float | None

    def __init__(self, *, tags_all=None, tags_any=None, tags_none=None, since=None, until=None,
                 min_importance=None, meta=None, namespace=None, as_of=None):
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
        set_(self, "namespace", None if namespace is None else check_namespace(namespace, "Filter.namespace"))
        set_(self, "as_of", None if as_of is None else to_epoch_seconds(as_of, "Filter.as_of"))

    def is_empty(self) -> bool:
        return self.as_of is None and self._no_constraint()

    def _no_constraint(self) -> bool:  # nothing but (maybe) as_of
        return not (self.tags_all or self.tags_any or self.tags_none or self.since is not None
                    or self.until is not None or self.min_importance is not None or self.meta is not None
                    or self.namespace is not None)

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


def scoped(where, namespace=None, as_of=None, now: float | None = None) -> Filter | None:
    """``where`` with a search's ``namespace`` and ``as_of`` merged in, ``as_of`` fixed to ``now``
    (default: the clock, read here once) when none is given, so that every route of one call
    tests validity at the same time. ValueError when ``where`` already names another namespace."""
    where = check_where(where)
    if namespace is not None:
        namespace = check_namespace(namespace)
        if where is not None and where.namespace is not None and where.namespace != namespace:
            raise ValueError(f"namespace={namespace!r} and where=Filter(namespace={where.namespace!r}) disagree")
    t = as_of if as_of is not None else (where.as_of if where is not None and where.as_of is not None else now)
    t = to_epoch_seconds(t if t is not None else time.time(), "as_of")
    if where is None:
        return Filter(namespace=namespace, as_of=t)
    ns = namespace if namespace is not None else where.namespace
    if (ns, t) == (where.namespace, where.as_of):
        return where
    out = copy.copy(where)  # the other fields as they were checked (a parsed meta is not parsed again)
    object.__setattr__(out, "namespace", ns)
    object.__setattr__(out, "as_of", t)
    return out


def allowed_rows(parts, where) -> BitMap | None:
    """The live rows of an index (``IndexParts``: its tags, metadata columns, declared metadata
    fields, namespaces, validity windows and tombstones) that ``where`` allows, as a roaring
    bitmap; None for no constraint (every live row: no filter, and no row whose window excludes
    ``where.as_of``, default now). The one function every search route and ``select`` turn a
    filter into rows with."""
    where = check_where(where)
    t = where.as_of if where is not None and where.as_of is not None else time.time()
    if where is None or where._no_constraint():
        hidden = parts.validity.hidden_at(t)
        if not hidden:
            return None
        return BitMap(range(parts.rows)) - parts.tombstones.bitmap - hidden  # a range: containers, not rows
    return evaluate(where, tags=parts.tags, metadata=parts.meta, n_rows=parts.rows,
                    deleted=parts.tombstones.bitmap, fields=parts.docmeta, namespaces=parts.namespaces,
                    validity=parts.validity, now=t)


def labelled(plan, parts, where):
    """``plan`` (a ``SearchPlan`` or None) with ``metadata`` set to what ``where.meta`` read:
    ``"columns"`` (declared fields), ``"records"`` (undeclared keys) or ``"columns+records"``."""
    if plan is None or where is None or where.meta is None:
        return plan
    return dataclasses.replace(plan, metadata=metafilter.source(where.meta, parts.docmeta.fields))


def evaluate(flt: Filter, *, tags, metadata, n_rows: int, deleted: BitMap | None, fields=None, namespaces=None,
             validity=None, now: float | None = None) -> BitMap:
    """The rows ``flt`` allows, live rows only, as a roaring bitmap (``fields``: the metadata,
    ``DocMetadata``: declared columns and records, needed by ``flt.meta``; ``namespaces`` and
    ``validity``, the index's, needed by ``flt.namespace`` and windows, tested at ``flt.as_of``
    or else ``now``)."""
    allowed: BitMap | None = None
    if flt.namespace is not None:
        if namespaces is None:
            raise ValueError("Filter.namespace needs the index's namespaces")
        ns_rows = namespaces.rows(flt.namespace)
        allowed = None if ns_rows is None else BitMap(ns_rows)
    if flt.meta is not None:
        if fields is None:
            raise ValueError("Filter.meta needs the index's metadata fields")
        met = BitMap(np.flatnonzero(metafilter.evaluate(flt.meta, fields, n_rows)).astype(np.uint32))
        allowed = met if allowed is None else allowed & met
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
    if validity is not None and validity.windowed:
        t = flt.as_of if flt.as_of is not None else (now if now is not None else time.time())
        allowed = allowed - validity.hidden_at(t, allowed if len(allowed) < len(validity.windowed) else None)
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
