"""Links between memories: typed, weighted, directed edges ``src -> dst`` in packed arrays.

Storage (no Python object per link or memory):

* the *main* edges, sorted by ``(src, dst, kind)``: ``src`` and ``dst`` uint32 rows, ``kind``
  uint16 (an index into a small table of interned kind names), ``weight`` float32 -- 14 bytes a
  link, the CSR of every source's out-links with its row pointers found by ``searchsorted``
  (no per-row pointer array: most memories have no link);
* the reverse direction: ``by_dst`` (uint32 or int64 positions of the main edges, ordered by
  ``(dst, src, kind)``) and ``dst_sorted`` (their destinations) -- 8 more bytes a link in RAM,
  rebuilt from the main edges (never stored on disk);
* a *log* of recent ``link`` / ``unlink`` operations (the same columns plus an op byte), merged
  into the main edges when it outgrows ``max(MERGE_MIN, main / 8)`` and at every checkpoint.

A read resolves the main edges and the log together (the newest operation on a ``(src, dst,
kind)`` wins; an unlink removes) and drops every edge whose end is a deleted memory: a deleted
memory's links vanish in both directions at once, and :meth:`Links.compact` drops their bytes.
"""
from __future__ import annotations

import numpy as np

from ..util.bounds import MAX_LINK_KIND_BYTES, MAX_LINK_KINDS
from .columns import GrowableArray

__all__ = ["Links", "LinkEdges", "check_kind_name", "MERGE_MIN"]

#: The log is merged into the main edges once it holds this many operations (or main / 8).
MERGE_MIN = 4096
_OP_UNLINK, _OP_LINK = 0, 1


def check_kind_name(kind) -> str:
    """A link kind: a non-empty str of at most ``MAX_LINK_KIND_BYTES`` UTF-8 bytes."""
    if not isinstance(kind, str):
        raise TypeError(f"a link kind must be a str, got {type(kind).__name__}")
    n = len(kind.encode("utf-8", "surrogatepass"))
    if not 0 < n <= MAX_LINK_KIND_BYTES:
        raise ValueError(f"a link kind must be 1..{MAX_LINK_KIND_BYTES} UTF-8 bytes, got {n} ({kind[:40]!r})")
    return str(kind)  # a numpy str_ becomes a plain str (the log's JSON, the kind table)


class LinkEdges:
    """Resolved edges as plain columns (``src``, ``dst``, ``kind``, ``weight``)."""

    __slots__ = ("src", "dst", "kind", "weight")

    def __init__(self, src, dst, kind, weight):
        self.src, self.dst, self.kind, self.weight = src, dst, kind, weight

    def __len__(self) -> int:
        return len(self.src)

    def take(self, idx) -> "LinkEdges":
        return LinkEdges(self.src[idx], self.dst[idx], self.kind[idx], self.weight[idx])


def _ranges(sorted_keys: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``sorted_keys`` equal to each of ``q`` (concatenated, in ``q``'s order) and
    each query's count."""
    lo = np.searchsorted(sorted_keys, q, "left")
    hi = np.searchsorted(sorted_keys, q, "right")
    counts = (hi - lo).astype(np.int64)
    total = int(counts.sum())
    if not total:
        return np.zeros(0, np.int64), counts
    starts = np.cumsum(counts) - counts
    idx = np.arange(total, dtype=np.int64) - np.repeat(starts, counts) + np.repeat(lo.astype(np.int64), counts)
    return idx, counts


def _resolve(src, dst, kind, weight, op, seq) -> LinkEdges:
    """The newest operation per ``(src, dst, kind)``; unlinked keys dropped; sorted by the key."""
    if not len(src):
        return LinkEdges(src.astype(np.uint32), dst.astype(np.uint32), kind.astype(np.uint16),
                         weight.astype(np.float32))
    order = np.lexsort((seq, kind, dst, src))
    s, d, k = src[order], dst[order], kind[order]
    last = np.ones(len(order), bool)
    last[:-1] = (s[1:] != s[:-1]) | (d[1:] != d[:-1]) | (k[1:] != k[:-1])
    keep = order[last]
    keep = keep[op[keep] == _OP_LINK]
    return LinkEdges(src[keep].astype(np.uint32), dst[keep].astype(np.uint32), kind[keep].astype(np.uint16),
                     weight[keep].astype(np.float32))


class Links:
    """The links of one index (see the module docstring)."""

    def __init__(self):
        self.kinds: list[str] = []  # interned kind names; a kind's code is its position
        self._codes: dict[str, int] = {}  # name -> code: one entry per kind, never per memory
        self._set_main(LinkEdges(np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.uint16),
                                 np.zeros(0, np.float32)))
        self._log = {name: GrowableArray(dt) for name, dt in
                     (("src", np.uint32), ("dst", np.uint32), ("kind", np.uint16), ("weight", np.float32),
                      ("op", np.uint8))}

    # -- kinds ----------------------------------------------------------------------------------
    def code(self, name: str) -> int | None:
        """The code of a kind name, or None if no link of that kind was ever made."""
        return self._codes.get(check_kind_name(name))

    def check_new_kinds(self, names) -> None:
        """ValueError if interning ``names`` would exceed ``MAX_LINK_KINDS`` (nothing changes)."""
        new = {check_kind_name(n) for n in names} - set(self._codes)
        if len(self.kinds) + len(new) > MAX_LINK_KINDS:
            raise ValueError(f"an index holds at most {MAX_LINK_KINDS} link kinds (util.bounds.MAX_LINK_KINDS); "
                             f"{len(self.kinds)} exist and this call names {len(new)} new ones")

    def intern(self, names) -> np.ndarray:
        """The codes of ``names`` (uint16), new names added in the order first seen."""
        self.check_new_kinds(names)
        out = np.empty(len(names), np.uint16)
        for i, name in enumerate(names):
            c = self._codes.get(name)
            if c is None:
                c = self._codes[name] = len(self.kinds)
                self.kinds.append(name)
            out[i] = c
        return out

    # -- writing ----------------------------------------------------------------------------------
    def _set_main(self, e: LinkEdges) -> None:
        self.main = e
        pos_dtype = np.uint32 if len(e) < 2**32 else np.int64
        self.by_dst = np.lexsort((e.kind, e.src, e.dst)).astype(pos_dtype)
        self.dst_sorted = e.dst[self.by_dst]

    def _append(self, src, dst, kind, weight, op: int) -> None:
        n = len(src)
        for name, v in (("src", src), ("dst", dst), ("kind", kind), ("weight", weight),
                        ("op", np.full(n, op, np.uint8))):
            self._log[name].append(v)
        if len(self._log["op"]) > max(MERGE_MIN, len(self.main) // 8):
            self.merge()

    def link(self, src: np.ndarray, dst: np.ndarray, kind: np.ndarray, weight: np.ndarray) -> None:
        """Add (or re-weight) the links ``src[i] -> dst[i]`` of kind codes ``kind[i]``."""
        self._append(src, dst, kind, weight, _OP_LINK)

    def unlink(self, src: np.ndarray, dst: np.ndarray, kind: int | None) -> int:
        """Remove the links ``src[i] -> dst[i]`` (of kind code ``kind``, or of every kind);
        returns how many existed."""
        cur = self._select("src", np.unique(src))
        pairs = (src.astype(np.uint64) << np.uint64(32)) | dst.astype(np.uint64)
        have = (cur.src.astype(np.uint64) << np.uint64(32)) | cur.dst.astype(np.uint64)
        hit = np.isin(have, pairs)
        if kind is not None:
            hit &= cur.kind == kind
        gone = cur.take(np.flatnonzero(hit))
        if len(gone):
            self._append(gone.src, gone.dst, gone.kind, gone.weight, _OP_UNLINK)
        return len(gone)

    def merge(self) -> None:
        """Fold the log into the main edges."""
        n = len(self._log["op"])
        if not n:
            return
        m, lg = self.main, {k: v.view() for k, v in self._log.items()}
        cat = [np.concatenate([a, lg[name]]) for a, name in ((m.src, "src"), (m.dst, "dst"), (m.kind, "kind"),
                                                             (m.weight, "weight"))]
        op = np.concatenate([np.full(len(m), _OP_LINK, np.uint8), lg["op"]])
        seq = np.concatenate([np.full(len(m), -1, np.int64), np.arange(n, dtype=np.int64)])
        self._set_main(_resolve(*cat, op, seq))
        self._log = {k: GrowableArray(v.dtype) for k, v in self._log.items()}

    def compact(self, dead_mask_of) -> int:
        """Drop the edges of deleted memories (``dead_mask_of(rows) -> bool mask``); returns the
        bytes freed."""
        self.merge()
        m = self.main
        if not len(m):
            return 0
        dead = dead_mask_of(m.src.astype(np.int64)) | dead_mask_of(m.dst.astype(np.int64))
        if not dead.any():
            return 0
        before = self.nbytes()
        self._set_main(m.take(np.flatnonzero(~dead)))
        return before - self.nbytes()

    # -- reading ------------------------------------------------------------------------------------
    def _select(self, side: str, ids: np.ndarray) -> LinkEdges:
        """The resolved edges whose ``side`` ("src" or "dst") is one of ``ids`` (unique), sorted
        by ``(src, dst, kind)``; deleted memories not filtered."""
        m = self.main
        q = ids.astype(np.uint32)
        if side == "src":
            idx, _ = _ranges(m.src, q)
        else:
            pos, _ = _ranges(self.dst_sorted, q)
            idx = self.by_dst[pos].astype(np.int64)
        lg = {k: v.view() for k, v in self._log.items()}
        if not len(lg["op"]):
            return m.take(np.sort(idx)) if side == "dst" else m.take(idx)
        li = np.flatnonzero(np.isin(lg[side], q))
        cat = [np.concatenate([getattr(m, name)[idx], lg[name][li]]) for name in ("src", "dst", "kind", "weight")]
        op = np.concatenate([np.full(len(idx), _OP_LINK, np.uint8), lg["op"][li]])
        seq = np.concatenate([np.full(len(idx), -1, np.int64), li.astype(np.int64)])
        return _resolve(*cat, op, seq)

    def edges(self, ids: np.ndarray, direction: str, kind: int | None, dead_mask_of) -> tuple:
        """Per id of ``ids`` (int64, any order, repeats allowed), its live links:
        ``(indptr (n + 1,) int64, other (m,) int64, kind (m,) uint16, weight (m,) float32)``;
        out-links ordered by ``(dst, kind)``, in-links by ``(src, kind)``."""
        ids = np.asarray(ids, np.int64)
        side, other = ("src", "dst") if direction == "out" else ("dst", "src")
        e = self._select(side, np.unique(ids))
        if len(e):
            keep = ~(dead_mask_of(e.src.astype(np.int64)) | dead_mask_of(e.dst.astype(np.int64)))
            if kind is not None:
                keep &= e.kind == kind
            e = e.take(np.flatnonzero(keep))
        if side == "dst" and len(e):
            e = e.take(np.lexsort((e.kind, e.src, e.dst)))
        idx, counts = _ranges(getattr(e, side), ids.astype(np.uint32))
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, getattr(e, other)[idx].astype(np.int64), e.kind[idx], e.weight[idx]

    # -- size, persistence ------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Links stored (main plus logged operations; deleted memories' links until compacted)."""
        return len(self.main) + len(self._log["op"])

    def nbytes(self) -> int:
        m = self.main
        main = sum(a.nbytes for a in (m.src, m.dst, m.kind, m.weight, self.by_dst, self.dst_sorted))
        return int(main + sum(c.nbytes() for c in self._log.values()) + sum(len(k) + 8 for k in self.kinds))

    def memory_usage(self) -> dict:
        return {"anon": {"links": self.nbytes()}}

    def to_arrays(self) -> dict:
        """The main edges (the log merged first) and the kind table."""
        self.merge()
        m = self.main
        names = np.array(self.kinds if self.kinds else [""], dtype=str)[: len(self.kinds)]
        return {"src": m.src, "dst": m.dst, "kind": m.kind, "weight": m.weight, "kinds": names}

    @classmethod
    def from_arrays(cls, a: dict) -> "Links":
        """ValueError for arrays that do not fit together (lengths, kinds, order)."""
        out = cls()
        kinds = [str(k) for k in np.asarray(a["kinds"]).tolist()]
        for k in kinds:
            check_kind_name(k)
        if len(set(kinds)) != len(kinds) or len(kinds) > MAX_LINK_KINDS:
            raise ValueError("the link kind table repeats a name or is too long")
        cols = [np.asarray(a[n]) for n in ("src", "dst", "kind", "weight")]
        want = (np.uint32, np.uint32, np.uint16, np.float32)
        if any(c.ndim != 1 or len(c) != len(cols[0]) or c.dtype != w for c, w in zip(cols, want)):
            raise ValueError("the link columns differ in length or dtype")
        e = LinkEdges(*cols)
        if len(e) and int(e.kind.max()) >= len(kinds):
            raise ValueError(f"a link names kind {int(e.kind.max())}, the table holds {len(kinds)}")
        key_order = np.lexsort((e.kind, e.dst, e.src))
        if not np.array_equal(key_order, np.arange(len(e))):
            raise ValueError("the links are not sorted by (src, dst, kind)")
        out.kinds, out._codes = kinds, {k: i for i, k in enumerate(kinds)}
        out._set_main(e)
        return out

    def rows_named(self) -> np.ndarray:
        """Every row an edge or a logged operation names (for bounds checks)."""
        return np.concatenate([self.main.src, self.main.dst, self._log["src"].view(), self._log["dst"].view()])
