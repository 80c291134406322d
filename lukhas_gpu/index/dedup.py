"""Dedup on write: which memories of an ``add`` duplicate a live memory (or an earlier one of the
same batch), decided once by the writer and logged with the add, and the merge of each into its
target.

* ``exact``: the same content (kind and bytes; :mod:`lukhas_gpu.records.contenthash`); the target
  is the smallest live row holding it. Memories without content are never exact duplicates.
* ``near``: cosine >= ``config.dedup_threshold`` to the nearest live memory, found by the index's
  own search (k=1, the route a search takes) and confirmed exactly on its int8 row; inside the
  batch, against the earlier memories of the same window of ``MAX_NEAR_DEDUP_WINDOW`` (exact float
  cosines). A store match comes first, then the earliest in-batch match.

The decision is the add record's ``into`` field (per memory: -1 new, else the id it merges into),
so a replay applies what was decided and never decides again (the ANN may differ after a crash).
An add naming ``ids=`` is an upsert and skips dedup. Merging takes the newest timestamp, the
highest importance, the union of the tags (the target's first), and keeps the target's content,
metadata, sparse vector and vector -- the content is replaced by the duplicate's (the last one
of the batch) with ``config.dedup_merge == "replace"``.

Nothing merges across namespaces: each namespace of a batch is resolved alone, its candidates
the live rows of that namespace (:func:`candidate_rows`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..config import DEDUP_MODES
from ..records.contenthash import NO_HASH
from ..util.bounds import MAX_NEAR_DEDUP_WINDOW

__all__ = ["AddResult", "check_mode", "resolve", "targets", "merge_fields"]


@dataclasses.dataclass(frozen=True)
class AddResult:
    """What an ``add`` did (``MemoryIndex.last_add``).

    Attributes
    ----------
    ids : (n,) int64
        The id each memory of the batch got (its new row, or the id it merged into).
    into : (n,) int64
        -1 for a memory stored as new, else the id it merged into.
    merged : int
        How many memories of the batch merged (``(into >= 0).sum()``).
    """

    ids: np.ndarray
    into: np.ndarray
    merged: int

    @property
    def positions(self) -> np.ndarray:
        """The positions of the batch that merged."""
        return np.flatnonzero(self.into >= 0)


def check_mode(index, dedup) -> str:
    """The dedup mode of one add: ``dedup`` or the config's."""
    mode = index.config.dedup if dedup is None else dedup
    if mode not in DEDUP_MODES:
        raise ValueError(f"dedup must be one of {DEDUP_MODES} or None, got {dedup!r}")
    return mode


def candidate_rows(index, name: str):
    """The live rows a memory of namespace ``name`` may merge into (a roaring bitmap), or None for
    every live row (no namespace but the default exists)."""
    rows = index.parts.namespaces.rows(name)
    return None if rows is None else rows - index.parts.tombstones.bitmap


def _groups(batch, n: int) -> list:
    """``(namespace, positions)`` of every namespace of the batch: nothing merges across them."""
    scope = getattr(batch, "scope", None)
    if scope is None or scope.names is None:
        return [("", np.arange(n))]
    names, idx = scope.names
    return [(name, np.flatnonzero(np.asarray(idx) == i)) for i, name in enumerate(names)]


def resolve(index, batch, mode: str, hashes: np.ndarray) -> np.ndarray | None:
    """``into`` for a prepared add (see the module docstring), or None when nothing merges."""
    n = len(hashes)
    if mode == "off" or batch.ext is not None and batch.ext.raw_ids is not None:
        return None
    store, first = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    for name, pos in _groups(batch, n):
        allowed = candidate_rows(index, name)
        if mode == "exact":
            ok = None if allowed is None else np.asarray(allowed.to_array(), np.int64)  # once, not per probe
            dead = index.parts.tombstones.contains if ok is None else (lambda rows: ~np.isin(rows, ok))
            s = index.parts.hashes.lookup(hashes[pos], dead)
            f = _first_equal(hashes[pos])
        else:
            s, f = _near(index, batch, pos, allowed)
        store[pos] = s
        first[pos] = np.where(f >= 0, pos[np.maximum(f, 0)], -1)
    if (store < 0).all() and (first < 0).all():
        return None
    return targets(store, first, batch.start, n)


def targets(store: np.ndarray, first: np.ndarray, start: int, n: int) -> np.ndarray:
    """``into`` from each memory's store match (row or -1) and earliest in-batch match (position
    or -1): a store match wins; an in-batch match takes its match's target (chains followed);
    the new memories get the rows ``start, start + 1, ...`` in order."""
    pos = np.arange(n)
    parent = np.where(store < 0, first, -1)
    root = np.where(parent >= 0, parent, pos)
    while True:  # pointer jumping: each memory's chain of in-batch matches to its root
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    is_new = (store < 0) & (root == pos)
    new_row = start + np.cumsum(is_new) - 1
    into = np.where(store[root] >= 0, store[root], new_row[root])
    into[is_new] = -1
    return into.astype(np.int64)


def _first_equal(hashes: np.ndarray) -> np.ndarray:
    """For each position, the earliest earlier position with the same (non-empty) hash, or -1."""
    n = len(hashes)
    order = np.argsort(hashes, kind="stable")
    h = hashes[order]
    start = np.ones(n, bool)
    start[1:] = h[1:] != h[:-1]
    group_first = order[np.maximum.accumulate(np.where(start, np.arange(n), 0))]
    out = np.full(n, -1, np.int64)
    out[order] = group_first
    out[(out == np.arange(n)) | (hashes == NO_HASH)] = -1
    return out


def _near(index, batch, pos: np.ndarray, allowed) -> tuple[np.ndarray, np.ndarray]:
    """Store matches (k=1 search among ``allowed`` rows, confirmed on the int8 rows) and in-batch
    matches of ``near``, for the memories at positions ``pos`` (indices into ``pos``)."""
    import torch

    from ..query import executor

    parts, cfg = index.parts, index.config
    thr = float(cfg.dedup_threshold)
    x = batch.x[torch.as_tensor(pos, device=batch.x.device)] if len(pos) != batch.x.shape[0] else batch.x
    xn = torch.nn.functional.normalize(x.to(torch.float32), dim=1)
    n = xn.shape[0]
    store = np.full(n, -1, np.int64)
    if parts.live and (allowed is None or len(allowed)):
        s = executor.Search(k=1, nprobe=cfg.nprobe, rerank=max(cfg.rerank, 16), exact_max=cfg.filter_exact_max,
                            cosine=cfg.metric == "cosine")
        _, ids, _ = executor.similar(parts, x, s, allowed)
        cand = ids.reshape(n, -1)[:, 0].cpu().numpy().astype(np.int64)
        ok = np.flatnonzero(cand >= 0)
        if len(ok):
            rows = torch.nn.functional.normalize(index.dequantized(cand[ok]).to(torch.float32), dim=1)
            cos = (rows.to(xn.device) * xn[torch.as_tensor(ok, device=xn.device)]).sum(1).cpu().numpy()
            hit = ok[cos >= thr]
            store[hit] = cand[hit]
    first = np.full(n, -1, np.int64)
    for a in range(0, n, MAX_NEAR_DEDUP_WINDOW):  # quadratic inside a window, in blocks of rows
        b = min(n, a + MAX_NEAR_DEDUP_WINDOW)
        for i in range(a, b, 2048):
            j = min(b, i + 2048)
            sim = xn[i:j] @ xn[a:j].T  # (rows i..j) x (window a..j)
            later = torch.arange(a, j, device=xn.device)[None, :] >= torch.arange(i, j, device=xn.device)[:, None]
            hit = (sim >= thr) & ~later
            has = hit.any(1).cpu().numpy()
            idx = hit.to(torch.int8).argmax(1).cpu().numpy() + a
            first[i:j] = np.where(has, idx, -1)
    return store, first


def merge_fields(index, into: np.ndarray, batch) -> dict | None:
    """The update that merges the duplicates of ``batch`` (``into >= 0``) into their targets:
    ``{"rows", "ts", "imp", "tags", "contents"}`` (contents None unless ``replace``), read from the
    targets' current state (new rows of this batch included: call after they are stored)."""
    from ..records.metadata import MetadataColumns

    dup = np.flatnonzero(into >= 0)
    if not len(dup):
        return None
    parts = index.parts
    tgt = into[dup]
    rows = np.unique(tgt)
    slot = np.searchsorted(rows, tgt)
    ts = parts.meta.timestamp[rows].astype(np.float64)
    np.maximum.at(ts, slot, np.asarray(batch.ts, np.float64)[dup])
    imp_q = parts.meta.importance_q[rows].copy()
    np.maximum.at(imp_q, slot, MetadataColumns.quantize_importance(np.asarray(batch.imp))[dup].astype(imp_q.dtype))
    tags = None
    if batch.norm_tags is not None:
        tags = [list(t) for t in parts.tags.get(rows)]
        for s, p in zip(slot.tolist(), dup.tolist()):
            tags[s].extend(t for t in batch.norm_tags[p] if t not in tags[s])
    contents = None
    if index.config.dedup_merge == "replace" and batch.raw_contents is not None:
        contents = list(parts.contents.get(rows))
        for s, p in zip(slot.tolist(), dup.tolist()):  # the last duplicate with a content wins
            if batch.raw_contents[p] is not None:
                contents[s] = batch.raw_contents[p]
    return {"rows": rows, "ts": ts, "imp_q": imp_q, "tags": tags, "contents": contents}
