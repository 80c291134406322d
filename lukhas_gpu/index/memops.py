"""Memory operations on the facade (a mixin :class:`~.facade.MemoryIndex` inherits): links
between memories (``link``, ``unlink``, ``links``, ``lineage``, ``search(follow_links=)``) and
what the last ``add`` deduplicated (``last_add``; the dedup itself: :mod:`.dedup`), and the store's
``write_count`` (:mod:`.writecount`).

Ids given are the caller's (external ids resolved, see :mod:`.documents`); ids returned are rows,
as ``SearchResult.ids`` are. Links are logged (``OP_LINK`` / ``OP_UNLINK``) and stored in packed
arrays (:mod:`lukhas_gpu.records.links`); a deleted memory's links vanish in both directions.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..store.walcodec import OP_LINK, OP_UNLINK
from ..util.bounds import MAX_LINEAGE, MAX_LINK_DEPTH, MAX_LINKED_PER_QUERY
from . import links_parts, writecount
from .locking import locked

__all__ = ["MemOpsMixin", "LinkSet", "Lineage", "follow_arrays", "allowed_edges", "check_depth",
           "with_links"]

_DIRECTIONS = ("out", "in")


@dataclasses.dataclass(frozen=True)
class LinkSet:
    """The links of each id asked (a CSR): id ``i``'s are ``ids[indptr[i]:indptr[i + 1]]``.

    Attributes
    ----------
    indptr : (n + 1,) int64
    ids : (m,) int64
        The linked memories (destinations for ``direction="out"``, sources for ``"in"``).
    kind_codes : (m,) uint16
        Positions in ``kind_names``.
    weights : (m,) float32
    kind_names : tuple of str
    """

    indptr: np.ndarray
    ids: np.ndarray
    kind_codes: np.ndarray
    weights: np.ndarray
    kind_names: tuple

    @property
    def kinds(self) -> np.ndarray:
        """(m,) str: the kind of each link."""
        names = np.array(self.kind_names if self.kind_names else [""], dtype=str)
        return names[self.kind_codes.astype(np.int64)] if len(self.kind_codes) else np.zeros(0, names.dtype)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def of(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, kinds, weights)`` of the ``i``-th id asked."""
        a, b = int(self.indptr[i]), int(self.indptr[i + 1])
        return self.ids[a:b], self.kinds[a:b], self.weights[a:b]


@dataclasses.dataclass(frozen=True)
class Lineage:
    """The memories reachable from one (itself excluded), breadth first: ``ids`` (int64, by
    ``depth`` then id), ``depth`` (int32, hops), ``parent`` (int64, the id whose link reached it)."""

    ids: np.ndarray
    depth: np.ndarray
    parent: np.ndarray


def check_depth(depth, name: str, low: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or not low <= depth <= MAX_LINK_DEPTH:
        raise ValueError(f"{name} must be an int in [{low}, {MAX_LINK_DEPTH}] (util.bounds.MAX_LINK_DEPTH), "
                         f"got {depth!r}")
    return int(depth)


def _cat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


class MemOpsMixin:
    """``link``, ``unlink``, ``links``, ``lineage``, ``last_add``, ``write_count`` and the ``follow_links`` step of
    ``search``."""

    @property
    def last_add(self):
        """What the last ``add`` did: :class:`~.dedup.AddResult` (``ids``, ``into``: -1 or the id a
        memory merged into, ``merged``, ``positions``), or None before any add."""
        return self.state.last_add

    @property
    def write_count(self) -> int:
        """The logged write operations the store has applied over its life (:mod:`.writecount`):
        +1 per logged call (an ``add`` that merged every memory included), unchanged by a
        checkpoint or a reopen, back to the target's after a rollback; 0 without a store."""
        with self.lock:
            return writecount.count(self)

    def _link_rows(self, ids, name: str) -> np.ndarray:
        if isinstance(ids, (int, np.integer, str, bytes)):
            ids = [ids]
        return self._check_ids(ids if len(ids) else np.zeros(0, np.int64))

    def _log(self, op: int, fields: dict) -> None:
        self._require_writable()
        if self.state.wal is not None:
            self.state.wal.append(op, fields)

    @locked
    def link(self, src, dst, kind="related", weight=1.0) -> int:
        """Link memories: ``src[i] -> dst[i]`` of ``kind`` with ``weight`` (a link already there is
        re-weighted). Each of ``src``, ``dst``, ``kind`` and ``weight`` is one value or one per
        link (a single ``src`` or ``dst`` pairs with every one of the other). Kinds are short
        names (at most ``util.bounds.MAX_LINK_KIND_BYTES`` bytes). Returns the links made.

        Raises ValueError for an id not live, lengths that disagree, a bad kind or weight, more
        than ``util.bounds.MAX_LINK_BATCH`` links; nothing is logged or changed then."""
        self._require_writable()
        f = links_parts.prepare_link(self.parts, self._link_rows(src, "src"), self._link_rows(dst, "dst"), kind,
                                     weight)
        self._log(OP_LINK, f)
        return links_parts.apply_link(self.parts, f)

    @locked
    def unlink(self, src, dst, kind: str | None = None) -> int:
        """Remove the links ``src[i] -> dst[i]`` (of ``kind``, or of every kind); returns how many
        existed."""
        self._require_writable()
        f = links_parts.prepare_unlink(self._link_rows(src, "src"), self._link_rows(dst, "dst"), kind)
        self._log(OP_UNLINK, f)
        return links_parts.apply_unlink(self.parts, f)

    @locked
    def links(self, ids, kind: str | None = None, direction: str = "out") -> LinkSet:
        """The live links of each of ``ids``: ``direction="out"`` (ordered by destination, then
        kind) or ``"in"`` (by source), of one ``kind`` or all; see :class:`LinkSet`."""
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        rows = self._link_rows(ids, "ids")
        return self._links_of(rows, kind, direction)

    def _links_of(self, rows: np.ndarray, kind, direction: str) -> LinkSet:
        lk = self.parts.links
        code = None if kind is None else lk.code(kind)
        if kind is not None and code is None:  # a kind never linked
            z = np.zeros(0, np.int64)
            return LinkSet(np.zeros(len(rows) + 1, np.int64), z, z.astype(np.uint16), z.astype(np.float32),
                           tuple(lk.kinds))
        indptr, other, codes, w = lk.edges(rows, direction, code, self.parts.tombstones.contains)
        return LinkSet(indptr, other, codes, w, tuple(lk.kinds))

    @locked
    def lineage(self, id, depth: int = 3, kind: str | None = None, direction: str = "out") -> Lineage:
        """The memories reachable from ``id`` in at most ``depth`` hops along links (of ``kind``,
        or any), breadth first, each once; at most ``util.bounds.MAX_LINEAGE``."""
        depth = check_depth(depth, "depth", 1)
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        start = self._link_rows(id, "id")
        if len(start) != 1:
            raise ValueError(f"lineage takes one id, got {len(start)}")
        seen = start.copy()
        frontier = start
        out_ids, out_depth, out_parent = [], [], []
        for d in range(1, depth + 1):
            ls = self._links_of(frontier, kind, direction)
            parent = np.repeat(frontier, np.diff(ls.indptr))
            new, first = np.unique(ls.ids, return_index=True)
            keep = ~np.isin(new, seen)
            new, par = new[keep], parent[first[keep]]
            if not len(new):
                break
            room = MAX_LINEAGE - sum(len(a) for a in out_ids)
            new, par = new[:room], par[:room]
            out_ids.append(new)
            out_depth.append(np.full(len(new), d, np.int32))
            out_parent.append(par)
            seen = np.union1d(seen, new)
            frontier = new
            if room <= len(new):
                break
        return Lineage(_cat(out_ids, np.int64), _cat(out_depth, np.int32), _cat(out_parent, np.int64))

    def _with_links(self, result, follow_links, where):
        """``search(follow_links=n)``: :meth:`follow` applied to a ``SearchResult`` (its form kept)."""
        if not check_depth(follow_links, "follow_links", 0):
            return result
        return with_links(result, lambda ids, sc: self._follow_arrays(ids, sc, follow_links, where))

    @locked
    def follow(self, ids, scores, hops: int = 1, *, where=None, namespace: str | None = None, as_of=None):
        """A search's results followed ``hops`` hops along out-links, as ``search(follow_links=)``
        does (for results merged elsewhere, e.g. the server's batches): ``(ids, scores,
        linked_from)``, each ``(nq, k + m)`` numpy; ``linked_from`` is -1 for the given hits, else
        the id whose link added the memory (score: that memory's times the link's weight)."""
        from ..query import filters

        ids0, sc0 = np.asarray(ids), np.asarray(scores, np.float32)
        if ids0.shape != sc0.shape or ids0.ndim not in (1, 2):
            raise ValueError(f"ids {ids0.shape} and scores {sc0.shape} must be one (k,) or (nq, k) shape")
        check_depth(hops, "hops", 0)
        return self._follow_arrays(ids0.astype(np.int64), sc0, hops, filters.scoped(where, namespace, as_of))

    def _follow_arrays(self, ids0, sc0, follow_links, where):
        """:func:`follow_arrays` over this index's out-links (the memories ``where`` allows)."""
        hops = check_depth(follow_links, "follow_links", 0)
        from ..query import filters

        allowed = filters.allowed_rows(self.parts, where)

        def edges(frontier):
            ls = self._links_of(frontier, None, "out")
            return allowed_edges(ls.indptr, ls.ids, ls.weights, allowed)
        return follow_arrays(ids0, sc0, hops, edges)


def allowed_edges(indptr: np.ndarray, ids: np.ndarray, weights: np.ndarray, allowed) -> tuple:
    """A CSR of links ``(indptr, ids, weights)`` less the links to memories ``allowed`` (a set of
    rows, e.g. a roaring bitmap; None: all) does not hold."""
    if allowed is None or not len(ids):
        return indptr, ids, weights
    keep = np.fromiter((d in allowed for d in ids.tolist()), bool, len(ids))
    seg = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    out = np.zeros(len(indptr), np.int64)
    np.cumsum(np.bincount(seg[keep], minlength=len(indptr) - 1), out=out[1:])
    return out, ids[keep], weights[keep]


def follow_arrays(ids0: np.ndarray, sc0: np.ndarray, hops: int, edges) -> tuple:
    """Each query's hits followed ``hops`` hops along out-links: ``edges(frontier)`` gives the
    links to follow from the ids of ``frontier`` (a CSR ``(indptr, ids, weights)``, memories a
    result may hold only); the memories reached (not already in the results) are appended in hit
    order, breadth first, at most ``util.bounds.MAX_LINKED_PER_QUERY`` per query. The one rule of
    ``MemoryIndex.search(follow_links=)`` and ``ShardedIndex``'s (global ids): ``(ids, scores,
    linked_from)`` of ``(nq, k + m)`` (``(k + m,)`` for one query)."""
    one = ids0.ndim == 1
    ids2, sc2 = np.atleast_2d(ids0), np.atleast_2d(sc0).astype(np.float32)
    extra = [_follow(row_ids, row_sc, hops, edges) for row_ids, row_sc in zip(ids2, sc2)]
    m = max((len(e[0]) for e in extra), default=0)
    nq, k = ids2.shape
    ids = np.full((nq, k + m), -1, np.int64)
    scores = np.full((nq, k + m), -np.inf, np.float32)
    frm = np.full((nq, k + m), -1, np.int64)
    ids[:, :k], scores[:, :k] = ids2, sc2
    for q, (e_ids, e_sc, e_from) in enumerate(extra):
        ids[q, k:k + len(e_ids)], scores[q, k:k + len(e_ids)], frm[q, k:k + len(e_ids)] = e_ids, e_sc, e_from
    if one:
        ids, scores, frm = ids[0], scores[0], frm[0]
    return ids, scores, frm


def _follow(hit_ids: np.ndarray, hit_sc: np.ndarray, hops: int, edges):
    ok = hit_ids >= 0
    frontier, fsc = hit_ids[ok], hit_sc[ok]
    seen = set(frontier.tolist())
    out_ids, out_sc, out_from = [], [], []
    for _ in range(hops):
        if not len(frontier) or len(out_ids) >= MAX_LINKED_PER_QUERY:
            break
        indptr, dsts, ws = edges(frontier)
        src = np.repeat(np.arange(len(frontier)), np.diff(indptr))
        nxt, nsc = [], []
        for j, (dst, w) in enumerate(zip(dsts.tolist(), ws.tolist())):
            if dst in seen:
                continue
            seen.add(dst)
            s = float(fsc[src[j]]) * w
            out_ids.append(dst)
            out_sc.append(s)
            out_from.append(int(frontier[src[j]]))
            nxt.append(dst)
            nsc.append(s)
            if len(out_ids) >= MAX_LINKED_PER_QUERY:
                break
        frontier, fsc = np.array(nxt, np.int64), np.array(nsc, np.float32)
    return np.array(out_ids, np.int64), np.array(out_sc, np.float32), np.array(out_from, np.int64)


def with_links(result, follow):
    """``result`` (a ``SearchResult``, numpy or torch) with ``follow(ids, scores) -> (ids, scores,
    linked_from)`` applied: its ids and scores in their form and device, ``linked_from`` numpy."""
    ids0, sc0 = (a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
                 for a in (result.ids, result.scores))
    ids, scores, frm = follow(ids0, sc0)
    if hasattr(result.ids, "detach"):
        import torch

        dev = result.ids.device
        return dataclasses.replace(result, ids=torch.as_tensor(ids, device=dev),
                                   scores=torch.as_tensor(scores, device=dev), linked_from=frm)
    return dataclasses.replace(result, ids=ids, scores=scores, linked_from=frm)
