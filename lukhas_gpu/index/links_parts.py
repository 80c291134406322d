"""Links and content hashes wired into the log, the store, the readers and ``verify``: one
function per seam (as :mod:`.sparse_parts` does for the sparse parts).

A ``link`` record holds ``src``, ``dst`` (int64 rows), ``kind_names`` (the distinct names, in
first-seen order), ``kind`` (uint16 positions in ``kind_names``) and ``weight`` (float32); an
``unlink`` record ``src``, ``dst`` and ``kind`` (a name, or None for every kind). Kind codes are
interned at apply time in record order, so a replay interns the same codes.
"""
from __future__ import annotations

import numpy as np

from ..records.contenthash import ContentHashes, hash_contents
from ..records.links import Links, check_kind_name
from ..store import layout
from ..store.walcodec import OP_LINK, OP_UNLINK
from ..util.bounds import MAX_LINK_BATCH
from . import loadchecks

__all__ = ["prepare_link", "apply_link", "prepare_unlink", "apply_unlink", "apply_record", "persist", "load",
           "verify", "LINK_OPS"]


def _pairs(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(src) != len(dst) and 1 not in (len(src), len(dst)):
        raise ValueError(f"src has {len(src)} ids and dst {len(dst)}: give as many of each, or one of either")
    n = max(len(src), len(dst))
    if n > MAX_LINK_BATCH:
        raise ValueError(f"{n:,} links in one call; at most {MAX_LINK_BATCH:,} (util.bounds.MAX_LINK_BATCH)")
    return np.broadcast_to(src, n).astype(np.int64), np.broadcast_to(dst, n).astype(np.int64)


def prepare_link(parts, src: np.ndarray, dst: np.ndarray, kind, weight) -> dict:
    """The fields of a ``link`` record of live rows ``src`` and ``dst`` (validated; nothing changes)."""
    src, dst = _pairs(src, dst)
    n = len(src)
    kinds = [kind] * n if isinstance(kind, str) else list(kind) if hasattr(kind, "__len__") else None
    if kinds is None:
        raise TypeError(f"kind must be a str or one str per link, got {type(kind).__name__}")
    if len(kinds) != n:
        raise ValueError(f"kind has {len(kinds)} entries, expected one str per link ({n})")
    names = list(dict.fromkeys(check_kind_name(k) for k in kinds))
    parts.links.check_new_kinds(names)
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim > 1 or (w.ndim == 1 and len(w) != n) or not np.isfinite(w).all():
        raise ValueError(f"weight must be a finite number or one finite number per link ({n})")
    at = {name: i for i, name in enumerate(names)}
    return {"src": src, "dst": dst, "kind_names": names, "kind": np.array([at[k] for k in kinds], np.uint16),
            "weight": np.broadcast_to(w, n).astype(np.float32)}


def apply_link(parts, f: dict) -> int:
    codes = parts.links.intern(f["kind_names"])
    parts.links.link(f["src"].astype(np.uint32), f["dst"].astype(np.uint32), codes[f["kind"].astype(np.int64)],
                     f["weight"].astype(np.float32))
    return len(f["src"])


def prepare_unlink(src: np.ndarray, dst: np.ndarray, kind) -> dict:
    src, dst = _pairs(src, dst)
    if kind is not None:
        check_kind_name(kind)
    return {"src": src, "dst": dst, "kind": kind}


def apply_unlink(parts, f: dict) -> int:
    code = None if f["kind"] is None else parts.links.code(f["kind"])
    if f["kind"] is not None and code is None:
        return 0  # a kind never linked: nothing to remove
    return parts.links.unlink(f["src"].astype(np.uint32), f["dst"].astype(np.uint32), code)


def apply_record(index, op: int, f: dict) -> int:
    """A logged link or unlink (its rows checked live: the same rows were live when it was logged)."""
    p = index.parts
    for name in ("src", "dst"):
        p.tombstones.check(np.asarray(f[name], np.int64), p.rows)
    if op == OP_LINK:
        if len(f["kind"]) and int(np.max(f["kind"])) >= len(f["kind_names"]):
            raise ValueError("a link record names a kind outside its table")
        return apply_link(p, f)
    return apply_unlink(p, f)


LINK_OPS = (OP_LINK, OP_UNLINK)


# -- the store ------------------------------------------------------------------------------------
def persist(parts) -> dict:
    """``npz`` file contents: the content hashes always, the links once any was made."""
    out = {layout.CONTENT_HASHES: parts.hashes.to_arrays()}
    if len(parts.links) or parts.links.kinds:
        out[layout.LINKS] = parts.links.to_arrays()
    return out


def load(parts, gen, rows: int) -> None:
    """Restore links and hashes from a generation (a store older than them: no links, hashes
    computed from the contents). CorruptStoreError naming the file for arrays that do not fit."""
    if gen.has(layout.LINKS):
        parts.links = loadchecks.from_npz(gen, layout.LINKS, Links)
        loadchecks.check_rows_within(gen.path / layout.LINKS, "the links' memories", rows,
                                     values=parts.links.rows_named())
    if gen.has(layout.CONTENT_HASHES):
        parts.hashes = loadchecks.from_npz(gen, layout.CONTENT_HASHES, ContentHashes)
        loadchecks.check_rows_within(gen.path / layout.CONTENT_HASHES, "the content hashes", rows,
                                     length=len(parts.hashes))
    else:
        parts.hashes = _hashes_from_contents(parts, rows)


def _hashes_from_contents(parts, rows: int) -> ContentHashes:
    out = np.zeros(rows, np.uint64)
    live = np.flatnonzero(parts.tombstones.live_mask(rows))
    for a in range(0, len(live), 65536):
        r = live[a:a + 65536]
        out[r] = hash_contents(parts.contents.validate(parts.contents.get(r)))
    return ContentHashes(out)


def verify(parts, rows: int) -> None:
    """ValueError if the hash column does not cover every row or a link names a row outside."""
    if len(parts.hashes) != rows:
        raise ValueError(f"the content hashes hold {len(parts.hashes)} rows, the vectors {rows}")
    named = parts.links.rows_named()
    if len(named) and int(named.max()) >= rows:
        raise ValueError(f"a link names row {int(named.max())}, the index holds {rows}")
    k = parts.links.main.kind
    if len(k) and int(k.max()) >= len(parts.links.kinds):
        raise ValueError("a link names a kind outside the kind table")
