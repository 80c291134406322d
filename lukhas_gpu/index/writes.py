"""The write paths in two steps: *prepare* validates a whole call (nothing changes, nothing is
logged if anything is wrong), *apply* changes every component. The facade logs the prepared
call to the write-ahead log in between, so a rejected call leaves the log and the index exactly
as they were, and a replayed record applies exactly what was acknowledged.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..records.contenthash import hash_contents
from ..records.metadata import MetadataColumns
from ..util import runtime
from ..util.bounds import MAX_ROWS
from ..util.ids import as_ids
from ..util.memtrim import TRIM_BATCH_BYTES, maybe_trim, trim
from ..vectors.policy import train_at
from . import dedup as dedup_, extids, ivflists, lifecycle, mirror_upkeep, scope_parts, sparse_parts

__all__ = ["AddBatch", "Update", "prepare_add", "apply_add", "commit_add", "prepare_update", "apply_update",
           "prepare_delete", "apply_delete", "compact", "MAX_ROWS"]

@dataclasses.dataclass
class AddBatch:
    """A validated ``add``: the float batch (torch, on its own device) and its payload."""

    x: object
    raw_contents: list | None
    contents: object  # ValidatedContents or None
    tags: list | None  # as given (the tag index interns them)
    norm_tags: list | None
    ts: np.ndarray
    imp: np.ndarray
    start: int = 0  # the first id: logged, so a replay (or a salvage) can check where it lands
    ext: object = None  # extids.ExtAdd: external ids and metadata (optional fields of the record)
    sparse: object = None  # PackedSparse or None
    scope: object = None  # scope_parts.Scope (namespace, validity windows) or None
    hashes: np.ndarray | None = None  # (n,) uint64 content hashes (records/contenthash.py)
    into: np.ndarray | None = None  # dedup: -1 new, else the id each memory merges into (dedup.py)

    def log_fields(self) -> dict:
        import torch

        out = {"x": self.x.to("cpu", torch.float32).numpy(), "ts": self.ts, "imp": self.imp, "start": self.start,
               "contents": list(self.raw_contents) if self.raw_contents is not None else None,
               "tags": [list(t) for t in self.norm_tags] if self.norm_tags is not None else None}
        if self.into is not None:  # the dedup decision, replayed as made (an optional field)
            out["into"] = self.into
        if self.ext is not None:
            out.update(self.ext.log_fields())
        if self.sparse is not None:
            out.update(self.sparse.log_fields(sparse_parts.LOG_PREFIX))
        if self.scope is not None:
            out.update(self.scope.log_fields())
        return out

    def subset(self, keep: np.ndarray) -> "AddBatch":
        """The memories at positions ``keep`` (sorted ints), e.g. the new ones of a deduped add."""
        import torch

        kl = keep.tolist()

        def pick(v):
            return None if v is None else [v[i] for i in kl]

        contents = None if self.contents is None else type(self.contents)(pick(self.contents.payloads),
                                                                            np.asarray(self.contents.kinds)[keep])
        ext = None if self.ext is None else dataclasses.replace(self.ext, meta=pick(self.ext.meta),
                                                                 dicts=pick(self.ext.dicts))
        sparse = None if self.sparse is None else _take_sparse(self.sparse, keep)
        scope = None if self.scope is None else self.scope.subset(keep)
        return AddBatch(self.x[torch.as_tensor(keep, device=self.x.device)], pick(self.raw_contents), contents,
                        pick(self.norm_tags), pick(self.norm_tags), self.ts[keep], self.imp[keep], self.start, ext,
                        sparse, scope, self.hashes[keep])


def _take_sparse(p, keep: np.ndarray):
    a, b = p.indptr[keep], p.indptr[keep + 1]
    counts = (b - a).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.arange(int(indptr[-1]), dtype=np.int64) - np.repeat(indptr[:-1], counts) + np.repeat(a, counts)
    return type(p)(indptr, p.indices[idx], p.values[idx])


def prepare_add(index, embeddings, contents, tags, timestamps, importance, ids=None, metadata=None,
                sparse=None, namespace=None, valid_from=None, valid_to=None, *, dedup=None, into=None) -> AddBatch:
    """Validate an ``add`` completely (see ``MemoryIndex.add`` for the rules)."""
    from ..util.arrays import as_batch, check_nonzero

    parts = index.parts
    x, kind = as_batch(embeddings, index.dim, "embeddings")
    n = x.shape[0]
    if kind.single:
        contents = [contents] if isinstance(contents, (str, bytes)) else contents
        tags = [tags] if tags is not None and (len(tags) == 0 or isinstance(next(iter(tags)), str)) else tags
        timestamps = None if timestamps is None else np.atleast_1d(np.asarray(timestamps))
        importance = None if importance is None else np.atleast_1d(np.asarray(importance))
    if index.config.metric == "cosine":
        check_nonzero(x, "embeddings")
    raw_contents = contents
    if contents is not None:
        if isinstance(contents, (str, bytes)) or not hasattr(contents, "__len__"):
            raise TypeError(f"contents must be a sequence of str/bytes/None, one per memory, "
                            f"got {type(contents).__name__}")
        if len(contents) != n:
            raise ValueError(f"contents has {len(contents)} entries, expected {n} (one per memory)")
        contents = parts.contents.validate(contents)
    norm_tags = parts.tags.validate(tags, n) if tags is not None else None
    ts, imp = MetadataColumns.validate(n, timestamps, importance)
    if parts.rows + n > MAX_ROWS:
        raise ValueError(f"an index holds at most {MAX_ROWS:,} memories (rows, deleted ones included; "
                         f"util.bounds.MAX_ROWS); this batch of {n:,} on {parts.rows:,} rows would exceed it")
    ext = extids.prepare_add(index, n, ids, metadata)
    packed = sparse_parts.prepare(sparse, n)
    scope = scope_parts.prepare_add(parts, n, namespace, valid_from, valid_to)
    hashes = hash_contents(contents) if contents is not None else np.zeros(n, np.uint64)
    b = AddBatch(x, raw_contents, contents, tags, norm_tags, ts, imp, int(parts.rows), ext, packed, scope, hashes)
    if into is not None:  # a replayed decision, checked against the store
        b.into = _check_into(index, np.asarray(into, np.int64), n)
    elif dedup_.check_mode(index, dedup) != "off":  # decided here, once, by the writer
        b.into = dedup_.resolve(index, b, dedup_.check_mode(index, dedup), hashes)
    return b


def _check_into(index, into: np.ndarray, n: int) -> np.ndarray:
    p, start = index.parts, index.parts.rows
    new = int((into < 0).sum())
    old = into[(into >= 0) & (into < start)]
    if into.shape != (n,) or (into >= start + new).any() or p.tombstones.contains(old).any():
        raise ValueError("the add record's dedup targets are not live memories or new rows of the record")
    return into


def apply_add(index, b: AddBatch) -> np.ndarray:
    """Store a prepared batch in every component; returns its ids (a deduped memory: the id it
    merged into)."""
    if b.into is not None:
        return _apply_deduped(index, b)
    parts = index.parts
    replaced = extids.upserted_rows(index, b.ext)
    if len(replaced):  # an upsert: the old rows go, in the same logged operation
        apply_delete(index, replaced)
    lifecycle.calibrate(index, b.x)
    with runtime.first_use("encode") as use:  # the process's first GEMM: the libraries' buffers
        codes, proj = index.encoder(b.x)
        use.held = sum(t.nbytes for t in (codes, proj) if not t.is_cuda)
    n = b.x.shape[0]
    start = parts.rows
    ids = np.arange(start, start + n, dtype=np.int64)
    if parts.ann is not None:
        parts.ann.add(proj.cpu().numpy(), ids)
    for st in parts.stages():
        if st.covered() == start:  # else its build catches up
            st.add(proj.cpu().numpy(), ids)
    parts.vectors.append(codes.cpu().numpy())
    parts.contents.append(b.contents if b.contents is not None else [None] * n)
    parts.tags.append(b.tags, n)
    parts.meta.append(b.ts, b.imp)
    parts.hashes.append(b.hashes)
    extids.append(index, b.ext, n)
    scope_parts.append(parts, b.scope, n)
    sparse_parts.apply_add(parts, ids, b.sparse, b.raw_contents)
    if parts.mirror is not None:
        mirror_upkeep.grow_mirror(index, lambda: parts.encoder.resident_from(codes, proj))
    lifecycle.observe(parts, b.x, codes, proj, ids)
    return ids


def _apply_deduped(index, b: AddBatch) -> np.ndarray:
    """The new memories of a deduped batch stored, then each duplicate merged into its target."""
    new = np.flatnonzero(b.into < 0)
    ids = b.into.copy()
    if len(new):
        ids[new] = apply_add(index, b.subset(new))
    m = dedup_.merge_fields(index, b.into, b)
    if m is not None:
        p, rows = index.parts, m["rows"]
        p.meta.timestamp[rows] = m["ts"]
        p.meta.importance_q[rows] = m["imp_q"]
        if m["tags"] is not None:
            p.tags.replace(rows, m["tags"])
        if m["contents"] is not None:
            v = p.contents.validate(m["contents"])
            p.contents.replace(rows, v)
            p.hashes.replace(rows, hash_contents(v))
            sparse_parts.apply_update(p, rows, m["contents"])
    return ids


def commit_add(index, b: AddBatch) -> np.ndarray:
    """:func:`apply_add`, then what an add brings: training when it crosses the threshold and
    the batch's temporaries back to the OS. The path of the writer's ``add`` and of every
    replayed record (writer or reader), so both end in the same state."""
    ids = apply_add(index, b)
    into = b.into if b.into is not None else np.full(len(ids), -1, np.int64)
    index.state.last_add = dedup_.AddResult(ids, into, int((into >= 0).sum()))
    if index.parts.ann is None and index.parts.rows >= train_at(index.config):
        lifecycle.train(index)
    maybe_trim(every=0.0 if b.x.numel() * 4 >= TRIM_BATCH_BYTES else 1.0)
    return ids


def prepare_delete(index, ids) -> np.ndarray:
    """The unique rows to delete; ValueError for an id never assigned or already deleted."""
    p = index.parts
    return p.tombstones.check(np.unique(as_ids(ids)), p.rows, deleted="id(s) already deleted")


def apply_delete(index, rows: np.ndarray) -> None:
    p = index.parts
    p.tombstones.add(rows)  # the record every path reads; below, the copies that serve searches
    ivflists.after_delete(index)  # the IVF keeps the rows' entries: searches exclude the tombstones
    if p.mirror is not None:
        p.mirror.delete(rows)
    p.tags.delete(rows)  # frees the rows' tag lists and bitmap bits
    sparse_parts.apply_delete(p, rows)


@dataclasses.dataclass
class Update:
    """A validated ``update`` of live, unique ``rows``; None where a field is not changed."""

    rows: np.ndarray
    raw_contents: list | None
    contents: object
    tags: list | None
    norm_tags: list | None
    ts: np.ndarray | None
    imp: np.ndarray | None
    x: object = None  # new embeddings (torch) or None
    meta: list | None = None  # new metadata (compact JSON texts) or None
    windows: tuple | None = None  # new (valid_from, valid_to), a side None if unchanged, or None

    def log_fields(self) -> dict:
        out = {"ids": self.rows, "contents": list(self.raw_contents) if self.raw_contents is not None else None,
               "tags": [list(t) for t in self.norm_tags] if self.norm_tags is not None else None,
               "ts": self.ts, "imp": self.imp}
        if self.x is not None:  # optional fields: records without them replay as before
            import torch

            out["x"] = self.x.to("cpu", torch.float32).numpy()
        if self.meta is not None:
            out["meta"] = list(self.meta)
        out.update(scope_parts.window_fields(self.windows))
        return out


def prepare_update(index, rows: np.ndarray, contents, tags, timestamps, importance, embeddings=None,
                   metadata=None, valid_from=None, valid_to=None) -> Update:
    """Validate an ``update`` of ``rows`` (already checked to be live ids)."""
    parts = index.parts
    n = len(rows)
    if len(np.unique(rows)) != n:
        raise ValueError("update ids must be unique")
    raw_contents = contents
    if contents is not None:
        if isinstance(contents, (str, bytes)) or len(contents) != n:
            raise ValueError(f"contents must have {n} entries, one per id")
        contents = parts.contents.validate(contents)
    norm_tags = parts.tags.validate(tags, n) if tags is not None else None
    ts = imp = None
    if timestamps is not None or importance is not None:
        ts, imp = MetadataColumns.validate(n, timestamps, importance)
    x, meta = extids.prepare_update_fields(index, n, embeddings, metadata)
    windows = scope_parts.prepare_update(parts, rows, valid_from, valid_to)
    return Update(rows, raw_contents, contents, tags, norm_tags, ts if timestamps is not None else None,
                  imp if importance is not None else None, x, meta, windows)


def apply_update(index, u: Update) -> None:
    parts = index.parts
    if u.contents is not None:
        parts.contents.replace(u.rows, u.contents)
        parts.hashes.replace(u.rows, hash_contents(u.contents))
        sparse_parts.apply_update(parts, u.rows, u.raw_contents)
    if u.tags is not None:
        parts.tags.replace(u.rows, u.tags)
    if u.ts is not None:
        parts.meta.timestamp[u.rows] = u.ts
    if u.imp is not None:
        parts.meta.importance_q[u.rows] = MetadataColumns.quantize_importance(u.imp)
    if u.meta is not None:
        parts.docmeta.replace(u.rows, u.meta)
    if u.windows is not None:
        parts.validity.set(u.rows, u.windows)
    if u.x is not None:
        extids.replace_vectors(index, u.rows, u.x)


def compact(index) -> int:
    """``MemoryIndex.compact``: drop deleted memories' and replaced payloads' bytes (the IVF
    lists holding dead entries re-encoded without them); returns the bytes reclaimed."""
    p = index.parts

    def held() -> int:  # content records plus tag-list entries, live and garbage
        return p.contents.nbytes()["records"] + p.tags.nbytes()["flat"] + 4 * p.tags.garbage

    before = held()
    live = np.flatnonzero(p.tombstones.live_mask(p.rows))
    p.contents.compact(live)
    p.tags.compact()
    freed = p.docmeta.compact(live)  # free metadata records of deleted memories and replaced dicts
    freed += ivflists.purge(index)
    freed += p.links.compact(p.tombstones.contains)  # the links of deleted memories
    trim()
    return int(before - held() + freed)
