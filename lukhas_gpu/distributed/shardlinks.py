"""Links over a sharded root (a mixin :class:`~.sharded.ShardedIndex` inherits): ``link``,
``unlink``, ``links``, ``lineage``, ``follow`` and ``search(follow_links=)``, with global ids.

**A link lives in its shard, and both its ends in the same one.** A link between memories of
two shards is refused (``ValueError`` naming both shards): each shard's links are its own
store's packed arrays, logged by its own WAL and checkpointed with it, so a link is exactly as
durable as the memories it joins and a shard's ``verify``, ``compact`` and deletes keep holding
(a deleted memory's links vanish). Cross-shard links would need a log of their own beside the
shards, deletes seen across shards and a root-level checkpoint; the partition rule (row ``r`` of
an ingest to shard ``r % shards``) puts no related memories together, so group a lineage's
memories in one shard (write them through that shard) where links matter.

Following links is then shard-local, and the driver runs the one rule of
:func:`lukhas_gpu.index.memops.follow_arrays` over the merged top-k: each hop asks every shard
holding part of the frontier for its out-links (to memories the filter allows), so the memories
appended, their order, scores and ``linked_from`` are those one index holding every memory and
link would give (global ids). A batch of links or unlinks touching several shards is checked on
the driver first (ids in the root, both ends in one shard, live), then each shard applies its
part atomically; the shards are separate stores, so a batch is not atomic across them.
"""
from __future__ import annotations

import numpy as np

from ..index.memops import Lineage, LinkSet, check_depth, follow_arrays, with_links
from ..records.links import check_kind_name
from ..util.ids import as_ids
from . import rootfiles

__all__ = ["ShardLinksMixin", "routed_edges"]


def _ids(ids, name: str) -> np.ndarray:
    if isinstance(ids, (int, np.integer)):
        ids = [ids]
    out = as_ids(ids)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one global id or a 1-D list of them, got shape {out.shape}")
    return out


def _per_link(v, n: int, name: str):
    """``kind`` / ``weight``: one value for all, or one per link (kept as given otherwise: the
    shard's checks name a bad one)."""
    if isinstance(v, str) or v is None or np.ndim(v) == 0:
        return None
    if len(v) != n:
        raise ValueError(f"{name} has {len(v)} entries, expected one per link ({n})")
    return list(v) if name == "kind" else np.asarray(v)


class ShardLinksMixin:
    """Links with global ids (see the module docstring)."""

    def _pairs_by_shard(self, src, dst) -> tuple[np.ndarray, np.ndarray, list]:
        """``(src rows, dst rows, [(shard position, the links' positions)])`` of a batch
        whose links each stay in one shard (ValueError naming the two shards otherwise)."""
        src, dst = _ids(src, "src"), _ids(dst, "dst")
        if len(src) != len(dst) and 1 not in (len(src), len(dst)):
            raise ValueError(f"src has {len(src)} ids and dst {len(dst)}: give as many of each, or one of either")
        n = max(len(src), len(dst))
        src, dst = np.broadcast_to(src, n), np.broadcast_to(dst, n)
        s_shard, s_row = rootfiles.split_ids(src, self.n_shards)
        d_shard, d_row = rootfiles.split_ids(dst, self.n_shards)
        cross = np.flatnonzero(s_shard != d_shard)
        if len(cross):
            i = int(cross[0])
            raise ValueError(f"a link joins {int(src[i])} of {rootfiles.shard_name(int(s_shard[i]))} and {int(dst[i])} "
                             f"of {rootfiles.shard_name(int(d_shard[i]))}: links do not cross shards (both ends "
                             f"in one shard; {len(cross)} such link(s) in this call)")
        for s in np.unique(s_shard).tolist():
            if s not in self._pos:
                raise KeyError(f"{rootfiles.shard_name(s)} is not open in this ShardedIndex (shards {self.shards})")
        groups = [(self._pos[s], np.flatnonzero(s_shard == s)) for s in np.unique(s_shard).tolist()]
        return s_row, d_row, groups

    def _live_or_raise(self, ids: np.ndarray) -> None:
        live = self.contains(ids) if len(ids) else np.zeros(0, bool)
        if not live.all():
            bad = ids[~live][:10].tolist()
            raise ValueError(f"unknown or deleted id(s): {bad}; nothing was linked or unlinked")

    def link(self, src, dst, kind="related", weight=1.0) -> int:
        """``MemoryIndex.link`` with global ids (writers: ``open(mode="w")``); both ends of each
        link in one shard. Returns the links made."""
        self._require_open()
        s_row, d_row, groups = self._pairs_by_shard(src, dst)
        n = len(s_row)
        kinds, weights = _per_link(kind, n, "kind"), _per_link(weight, n, "weight")
        for name in dict.fromkeys([kind] if kinds is None else kinds):  # checked once for every shard
            check_kind_name(name)
        if not np.isfinite(np.asarray(weight, np.float64)).all():
            raise ValueError(f"weight must be a finite number or one finite number per link ({n})")
        self._live_or_raise(np.unique(np.concatenate([_ids(src, "src"), _ids(dst, "dst")])))
        calls = [(pos, "link", (s_row[idx], d_row[idx], kind if kinds is None else [kinds[i] for i in idx],
                                weight if weights is None else weights[idx])) for pos, idx in groups]
        return int(sum(self._fan.run(calls))) if calls else 0

    def unlink(self, src, dst, kind: str | None = None) -> int:
        """``MemoryIndex.unlink`` with global ids; returns how many links existed."""
        self._require_open()
        s_row, d_row, groups = self._pairs_by_shard(src, dst)
        self._live_or_raise(np.unique(np.concatenate([_ids(src, "src"), _ids(dst, "dst")])))
        calls = [(pos, "unlink", (s_row[idx], d_row[idx], kind)) for pos, idx in groups]
        return int(sum(self._fan.run(calls))) if calls else 0

    def links(self, ids, kind: str | None = None, direction: str = "out") -> LinkSet:
        """``MemoryIndex.links`` of global ids: a :class:`~lukhas_gpu.index.memops.LinkSet` whose
        ``ids`` are global and whose ``kind_names`` are the shards' kinds together."""
        ids = _ids(ids, "ids")
        shard, row = rootfiles.split_ids(ids, self.n_shards)
        per = {s: (np.flatnonzero(shard == s)) for s in np.unique(shard).tolist()}
        for s in per:
            if s not in self._pos:
                raise KeyError(f"{rootfiles.shard_name(s)} is not open in this ShardedIndex (shards {self.shards})")
        answers = self._fan.run([(self._pos[s], "links", (row[idx], kind, direction)) for s, idx in per.items()]) \
            if per else []
        names: dict = {}
        pieces: list = [None] * len(ids)
        for (s, idx), ls in zip(per.items(), answers):
            code = np.array([names.setdefault(k, len(names)) for k in ls.kind_names] or [0], np.uint16)
            for j, i in enumerate(idx.tolist()):
                a, b = int(ls.indptr[j]), int(ls.indptr[j + 1])
                pieces[i] = (ls.ids[a:b], code[ls.kind_codes[a:b].astype(np.int64)], ls.weights[a:b])
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum([len(p[0]) for p in pieces], out=indptr[1:])

        def cat(i, dtype):
            return np.concatenate([p[i] for p in pieces]).astype(dtype) if pieces else np.zeros(0, dtype)
        return LinkSet(indptr, cat(0, np.int64), cat(1, np.uint16), cat(2, np.float32), tuple(names))

    def lineage(self, id, depth: int = 3, kind: str | None = None, direction: str = "out") -> Lineage:
        """``MemoryIndex.lineage`` of a global id (links stay in a shard, so its shard answers)."""
        one = _ids(id, "id")
        if len(one) != 1:
            raise ValueError(f"lineage takes one id, got {len(one)}")
        return self._route_one(one, "lineage", depth, kind, direction)

    def _route_one(self, one: np.ndarray, name: str, *args):
        self._require_open()
        shard, row = rootfiles.split_ids(one, self.n_shards)
        s = int(shard[0])
        if s not in self._pos:
            raise KeyError(f"id {int(one[0])} is in {rootfiles.shard_name(s)}, which this ShardedIndex did not open")
        return self._fan.run([(self._pos[s], name, (int(row[0]), *args))])[0]

    def follow(self, ids, scores, hops: int = 1, *, where=None, namespace: str | None = None, as_of=None):
        """``MemoryIndex.follow`` over the shards: results (global ids, e.g. merged elsewhere)
        followed ``hops`` hops along out-links: ``(ids, scores, linked_from)`` numpy."""
        from ..query.filters import scoped
        from .merge import check_where

        ids0, sc0 = np.asarray(ids), np.asarray(scores, np.float32)
        if ids0.shape != sc0.shape or ids0.ndim not in (1, 2):
            raise ValueError(f"ids {ids0.shape} and scores {sc0.shape} must be one (k,) or (nq, k) shape")
        return self._follow_arrays(ids0.astype(np.int64), sc0, check_depth(hops, "hops", 0),
                                   check_where(scoped(where, namespace, as_of)))

    def _follow_arrays(self, ids0, sc0, hops: int, where):
        return follow_arrays(ids0, sc0, hops, lambda frontier: self.link_edges(frontier, where))

    def link_edges(self, ids, where=None) -> tuple:
        """One hop of following: the out-links of global ``ids`` (of the shards open here) to
        memories ``where`` (a checked ``Filter``) allows, a CSR ``(indptr, global ids, weights)``
        in the order of ``ids`` (a Ray Serve group's part of a hop, :mod:`.ray_serve`)."""
        self._require_open()
        ids = _ids(ids, "ids")
        shard, row = rootfiles.split_ids(ids, self.n_shards)
        for s in np.unique(shard).tolist():
            if s not in self._pos:
                raise KeyError(f"{rootfiles.shard_name(s)} is not open in this ShardedIndex (shards {self.shards})")

        def run(groups):
            return self._fan.run([(self._pos[s], "follow_edges", (row[idx], where)) for s, idx in groups])
        return routed_edges(shard, run)

    def _with_links(self, result, follow_links: int, where):
        """``search(follow_links=n)``: the merged result followed (its form kept, ``linked_from`` set)."""
        if not check_depth(follow_links, "follow_links", 0):
            return result
        return with_links(result, lambda ids, sc: self._follow_arrays(ids, sc, follow_links, where))


def routed_edges(keys: np.ndarray, run) -> tuple:
    """A frontier's out-links asked of the places holding it: ``keys[i]`` names the place of the
    ``i``-th id (a shard, a serving group), ``run([(key, positions)])`` returns each place's CSR
    ``(indptr, ids, weights)`` over those positions; the answers joined in frontier order."""
    groups = [(k, np.flatnonzero(keys == k)) for k in np.unique(keys).tolist()]
    answers = run(groups) if groups else []
    counts = np.zeros(len(keys), np.int64)
    dst: list = [np.zeros(0, np.int64)] * len(keys)
    w: list = [np.zeros(0, np.float32)] * len(keys)
    for (_, idx), (indptr, ids, weights) in zip(groups, answers):
        for j, i in enumerate(idx.tolist()):
            a, b = int(indptr[j]), int(indptr[j + 1])
            dst[i], w[i], counts[i] = ids[a:b], weights[a:b], b - a
    indptr = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return (indptr, np.concatenate(dst).astype(np.int64) if len(keys) else np.zeros(0, np.int64),
            np.concatenate(w).astype(np.float32) if len(keys) else np.zeros(0, np.float32))
