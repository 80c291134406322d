"""The IVF lists' upkeep after deletes and vector updates.

FAISS's ``remove_ids`` corrupts fast-scan lists for the entries added after it (see
:mod:`lukhas_gpu.vectors.ann`), so nothing leaves a list that way. A deleted row's entry stays
in its list and the searches exclude it with the tombstones (the one record of deletions);
lists are re-encoded from the stored int8 rows (:meth:`IVFPQIndex.rebuild_lists`):

* by ``update(embeddings=)``: the lists holding the rows' old entries, without them, before the
  new entries go in under the same ids (a row id is never in two entries); and in an IVF that a
  retrain built meanwhile, for the rows it had copied before the update (:func:`reindex`);
* by ``compact()``, and by a delete that takes the dead entries past
  ``policy.ANN_DEAD_FRACTION`` of the lists: every list holding a dead entry;
* on opening a generation saved when deletes removed entries (no ``ann["dead"]`` in its
  manifest) with deletions: every list, since codes added after a removal may be wrong.

Every one of these runs on the writer's call and on its replay (a writer's open, a reader's
refresh) alike, so both end with the same lists.
"""
from __future__ import annotations

import logging

import numpy as np

from ..vectors.ann import DEAD_ENTRIES
from ..vectors.policy import ANN_DEAD_FRACTION

log = logging.getLogger(__name__)

__all__ = ["after_delete", "check", "dead_entries", "purge", "reindex", "repair", "replace", "vectors_of"]


def vectors_of(parts, rows: np.ndarray) -> np.ndarray:
    """The ANN-space vectors of stored ``rows`` (int8 rows dequantized and projected), float32."""
    enc = parts.encoder
    return enc.project(enc.dequantize(np.asarray(parts.vectors[rows]))).cpu().numpy()


def dead_entries(parts) -> int:
    """Entries of deleted rows still in the lists (every live row has exactly one entry)."""
    return parts.ann.ntotal - parts.live if parts.ann is not None else 0


def after_delete(index) -> None:
    """After rows are tombstoned: the GPU copy's limit, and a purge past ``ANN_DEAD_FRACTION``."""
    p = index.parts
    if p.ann is None:
        return
    p.ann.note_deleted(len(p.tombstones))
    if dead_entries(p) > ANN_DEAD_FRACTION * max(p.ann.ntotal, 1):
        purge(index)


def _held(ann) -> int:
    nb = ann.nbytes()
    return nb["codes"] + nb["ids"]


def purge(index) -> int:
    """Re-encode every list holding a dead entry, keeping its live ones; returns the bytes of
    codes and ids freed."""
    p = index.parts
    ann, dead = p.ann, p.tombstones
    if ann is None or not dead or dead_entries(p) <= 0:
        return 0
    before = _held(ann)
    lists = ann.lists_holding(dead.contains)
    dropped = ann.rebuild_lists(lists, lambda ids: ~dead.contains(ids), lambda ids: vectors_of(p, ids),
                                index.config.batch_size)
    log.info("IVF lists: %d dead entries purged from %d lists", dropped, len(lists))
    return max(0, before - _held(ann))


def replace(index, rows: np.ndarray, codes: np.ndarray, proj: np.ndarray) -> None:
    """New vectors for live ``rows``: the int8 ``codes`` stored, the lists holding the rows' old
    entries re-encoded without them, then the new entries (``proj``, the ANN space) added."""
    p = index.parts
    ann = p.ann
    if p.replaced is not None:  # a retrain is building another IVF: it re-indexes these at its end
        p.replaced.update(np.asarray(rows, dtype=np.uint32))
    if ann is not None:  # where the old entries are expected: their stored vectors' lists
        guess = ann.assign(vectors_of(p, rows))
    p.vectors[rows] = codes
    if ann is not None:
        reindex(ann, rows, guess, proj, p.tombstones, lambda ids: vectors_of(p, ids), index.config.batch_size)


def reindex(ann, rows: np.ndarray, guess: np.ndarray, x: np.ndarray, dead, vectors_of, batch: int) -> None:
    """``rows``' entries in ``ann`` replaced by ``x`` (n, d): the lists holding them (``guess``:
    where each is expected) re-encoded from ``vectors_of`` without them and without the
    ``dead`` rows, then ``x`` added under the same ids."""
    ann.drop_gpu("a row's vector was replaced (the GPU copy keeps its old entry)")
    lists = ann.locate(rows, guess)
    ann.rebuild_lists(lists, lambda ids: ~(dead.contains(ids) | np.isin(ids, rows)), vectors_of, batch)
    ann.add(x, rows)


def repair(index, manifest_ann: dict) -> None:
    """A generation whose lists had entries removed by FAISS (no ``"dead"`` key in the manifest's
    ``ann``) and that has deletions: every list re-encoded from the live rows."""
    p = index.parts
    if p.ann is None or manifest_ann.get("dead") == DEAD_ENTRIES or not p.tombstones:
        return
    dead = p.tombstones
    log.warning("IVF lists saved after FAISS removals (codes added since may be wrong): re-encoding "
                "%d entries", p.ann.ntotal)
    p.ann.rebuild_lists(np.arange(p.ann.nlist), lambda ids: ~dead.contains(ids), lambda ids: vectors_of(p, ids),
                        index.config.batch_size)


def check(parts) -> str | None:
    """What is wrong with the lists' entries (every live row exactly once, every other entry a
    deleted row), or None."""
    ann = parts.ann
    if ann is None:
        return None
    ids = np.concatenate([ann.list_ids(i) for i in range(ann.nlist)] + [np.zeros(0, np.int64)])
    if len(ids) != ann.ntotal:
        return f"the ANN's lists hold {len(ids)} entries, its count says {ann.ntotal}"
    live = ids[~parts.tombstones.contains(ids)] if parts.tombstones else ids
    if (live < 0).any() or (live >= parts.rows).any():
        return "the ANN holds ids that are not rows"
    if len(live) != parts.live or len(np.unique(live)) != len(live):
        return f"the ANN holds {len(np.unique(live))} live memories ({len(live)} entries), the index {parts.live}"
    return None
