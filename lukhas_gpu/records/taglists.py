"""Per-row tag-id lists (CSR columns) and one roaring bitmap of rows per tag id.

The storage half of :class:`~lukhas_gpu.records.tags.TagIndex`, which owns the vocabulary (tag
names <-> ids) and the checks; this module knows tag *ids* only and trusts its inputs.

Each row's tag ids live in a flat ``uint32`` array plus a per-row ``start`` offset (``uint32``)
and ``count`` (``uint8``); each tag id's rows live in a :class:`pyroaring.BitMap`. Updates
append: a replaced row's new list goes to the end of the flat array and its old entries become
garbage until :meth:`TagLists.compact`.

Limits, from the 32-bit storage: at most :data:`MAX_ROWS` rows (roaring bitmaps hold 32-bit row
numbers); at most ``2**32 - 1`` flat entries, garbage included (``start`` is ``uint32``); when an
update would cross it the lists compact themselves first.
"""
from __future__ import annotations

import array

import numpy as np
from pyroaring import BitMap

from ..util.bounds import MAX_ROWS
from ..util.memory import bitmap_bytes
from .columns import GrowableArray

__all__ = ["TagLists", "MAX_ROWS"]

# Read at call time (not bound as defaults) so tests can lower them to exercise the limits
# (``MAX_ROWS`` is the store's, from ``util.bounds``).
_MAX_FLAT_ENTRIES = 2**32 - 1

# pyroaring copies an ``array.array`` of C unsigned ints straight into the bitmap; a numpy array
# goes through its generic iterator, measured ~10x slower (45 ms vs 5 ms per million rows).
_U32_CODE = next((c for c in "IL" if array.array(c).itemsize == 4), None)


def _u32(values: np.ndarray):
    """``values`` as something :meth:`BitMap.update` ingests fast (an ``array.array`` of uint32)."""
    values = np.ascontiguousarray(values, dtype=np.uint32)
    if _U32_CODE is None:  # exotic platform: correct, just slower
        return values
    out = array.array(_U32_CODE)
    out.frombytes(values.view(np.uint8))  # frombytes wants a byte buffer, not uint32
    return out


def _group_by_tag(ids: np.ndarray, rows: np.ndarray):
    """Yield ``(tag_id, rows_of_that_tag)`` for parallel entry arrays, rows kept in input order."""
    if len(ids) == 0:
        return
    # Stable, so rows that arrive ascending (appends) stay ascending per tag: roaring's bulk
    # insert is fastest on sorted input.
    order = np.argsort(ids, kind="stable")
    sids, srows = ids[order], rows[order]
    cuts = np.flatnonzero(sids[1:] != sids[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(sids)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        yield int(sids[lo]), srows[lo:hi]


def offsets_after(counts: np.ndarray, base: int) -> np.ndarray:
    """uint32 start offsets for rows with ``counts`` entries laid out from ``base``."""
    ends = np.cumsum(counts, dtype=np.int64)
    return (base + ends - counts).astype(np.uint32)


class TagLists:
    """CSR tag-id lists per row and a roaring bitmap of rows per tag id.

    Rows are appended in order and never removed. Tag ids are ``0 .. n_tags - 1``; each has a
    bitmap from :meth:`add_tags` on. Callers pass valid, distinct row numbers and tag ids that
    exist, and call :meth:`make_room` before an update so that a refused one changes nothing.
    """

    def __init__(self):
        self._bitmaps: list[BitMap] = []
        self._flat = GrowableArray(np.uint32)
        self._start = GrowableArray(np.uint32)
        self._count = GrowableArray(np.uint8)
        self._garbage = 0  # flat entries no live row points at any more

    # -- size ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._count)

    @property
    def n_tags(self) -> int:
        return len(self._bitmaps)

    @property
    def entries(self) -> int:
        """Flat-array entries, live and garbage."""
        return len(self._flat)

    @property
    def garbage(self) -> int:
        """Flat-array entries no live row points at (reclaimed by :meth:`compact`)."""
        return self._garbage

    def counts(self) -> np.ndarray:
        """``(len,)`` uint8 tag count per row (a view)."""
        return self._count.view()

    def csr(self) -> dict[str, np.ndarray]:
        """Read-only views of the raw columns: ``flat`` (garbage included), ``start``, ``count``."""
        out = {"flat": self._flat.view(), "start": self._start.view(), "count": self._count.view()}
        for v in out.values():  # each a fresh view: the columns themselves stay writable
            v.flags.writeable = False
        return out

    # -- updates -----------------------------------------------------------------------------
    def add_tags(self, k: int) -> None:
        """Give ``k`` new tag ids (``n_tags .. n_tags + k - 1``) an empty bitmap each."""
        self._bitmaps.extend(BitMap() for _ in range(k))

    def make_room(self, extra: int, rows: int = 0) -> None:
        """Make sure ``extra`` more flat entries (and ``rows`` more rows) fit, compacting if
        that is what it takes.

        Raises
        ------
        OverflowError
            They do not fit even so (the ``uint32`` offsets), or the rows would pass
            :data:`MAX_ROWS` (the bitmaps' 32-bit row numbers).
        """
        if rows and len(self) + rows > MAX_ROWS:
            raise OverflowError(f"appending {rows} rows to {len(self)} would pass the "
                                f"{MAX_ROWS}-row limit of 32-bit roaring bitmaps")
        if len(self._flat) + extra <= _MAX_FLAT_ENTRIES:
            return
        if self._garbage:
            self.compact()
        if len(self._flat) + extra > _MAX_FLAT_ENTRIES:
            raise OverflowError(f"{len(self._flat)} tag entries plus {extra} new ones would pass "
                                f"the {_MAX_FLAT_ENTRIES}-entry limit of the uint32 row offsets")

    def append(self, counts: np.ndarray, ids: np.ndarray) -> tuple[int, int]:
        """Append rows with ``counts`` (uint8) tag ids each, ``ids`` (uint32) back to back."""
        start = len(self)
        stop = start + len(counts)
        offsets = offsets_after(counts, len(self._flat))
        self._flat.append(ids)
        self._start.append(offsets)
        self._count.append(counts)
        self._add(ids, np.repeat(np.arange(start, stop, dtype=np.uint32), counts))
        return start, stop

    def replace(self, rows: np.ndarray, counts: np.ndarray, ids: np.ndarray) -> None:
        """Give distinct existing ``rows`` (int64) new lists; the old entries become garbage."""
        old_ids, old_rows = self.gather(rows)
        self._remove(old_ids, old_rows)
        self._start[rows] = offsets_after(counts, len(self._flat))
        self._count[rows] = counts
        self._flat.append(ids)
        self._garbage += len(old_ids)
        self._add(ids, np.repeat(rows.astype(np.uint32), counts))

    def delete(self, rows: np.ndarray) -> None:
        """Empty the lists of distinct existing ``rows`` (int64)."""
        old_ids, old_rows = self.gather(rows)
        self._remove(old_ids, old_rows)
        self._count[rows] = 0
        self._garbage += len(old_ids)

    def compact(self) -> None:
        """Drop all garbage (the flat array rewritten in row order) and run-optimise the bitmaps."""
        # Bulk updates leave dense tags as bitset containers; optimising on every append would
        # rescan each touched bitmap (O(its size) per call), so it happens here and on load.
        self.optimize_bitmaps()
        counts = self._count.view()
        offsets = offsets_after(counts, 0)
        if self._garbage == 0 and np.array_equal(self._start.view(), offsets):
            return  # flat already canonical (e.g. only appends so far)
        live, _ = self.gather(np.arange(len(self), dtype=np.int64))
        flat = GrowableArray(np.uint32)
        flat.append(live)
        self._flat = flat
        self._start[:] = offsets
        self._garbage = 0

    def optimize_bitmaps(self) -> None:
        for bm in self._bitmaps:
            bm.run_optimize()
            bm.shrink_to_fit()

    def _add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        for tid, r in _group_by_tag(ids, rows):
            self._bitmaps[tid].update(_u32(r))

    def _remove(self, ids: np.ndarray, rows: np.ndarray) -> None:
        for tid, r in _group_by_tag(ids, rows):
            self._bitmaps[tid].difference_update(BitMap(_u32(r)))

    # -- reads -------------------------------------------------------------------------------
    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tag ids of ``rows`` (int64, valid) in row order, and the row of each id."""
        counts = self._count.view()[rows].astype(np.int64)
        total = int(counts.sum())
        if total == 0:
            return np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int64)
        starts = self._start.view()[rows].astype(np.int64)
        ends = np.cumsum(counts)
        pos = np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - counts), counts)
        return self._flat.view()[pos], np.repeat(rows, counts)

    def bitmap(self, tid: int) -> BitMap:
        """The bitmap of tag id ``tid`` itself (not a copy: callers must not modify it)."""
        return self._bitmaps[tid]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """``flat`` / ``start`` / ``count`` in canonical compacted form (row order, no garbage)."""
        counts = self._count.view().copy()
        live, _ = self.gather(np.arange(len(self), dtype=np.int64))
        return {"flat": np.array(live, dtype=np.uint32), "start": offsets_after(counts, 0), "count": counts}

    @classmethod
    def from_arrays(cls, flat: np.ndarray, start: np.ndarray, count: np.ndarray, n_tags: int) -> "TagLists":
        """Lists from any CSR layout (garbage included; arrays copied), bitmaps rebuilt.

        Raises
        ------
        ValueError
            Row ranges past the end of ``flat``, more than :data:`MAX_ROWS` rows, a tag id
            ``>= n_tags``, or a tag id repeated within a row.
        """
        if len(start) != len(count):
            raise ValueError(f"start has {len(start)} rows but count has {len(count)}")
        if len(count) > MAX_ROWS:
            raise ValueError(f"{len(count)} rows pass the {MAX_ROWS}-row limit")
        if len(start) and int((start.astype(np.int64) + count).max()) > len(flat):
            raise ValueError(f"a row's range start + count passes the end of flat "
                             f"({len(flat)} entries)")
        lists = cls()
        lists.add_tags(n_tags)
        lists._flat.append(flat)
        lists._start.append(start)
        lists._count.append(count)
        live, rows = lists.gather(np.arange(len(count), dtype=np.int64))
        if len(live) and int(live.max()) >= n_tags:
            raise ValueError(f"flat holds tag id {int(live.max())} but there are only "
                             f"{n_tags} tag names")
        lists._add(live, rows)
        if sum(len(bm) for bm in lists._bitmaps) != len(live):
            raise ValueError("a row lists the same tag id more than once")
        lists._garbage = max(0, len(flat) - len(live))
        lists.optimize_bitmaps()
        return lists

    # -- accounting ----------------------------------------------------------------------------
    def nbytes(self) -> dict[str, int]:
        """Logical bytes: ``flat`` (live entries), ``start``, ``count``, ``bitmaps`` (portable
        serialized sizes)."""
        n = len(self)
        return {
            "flat": 4 * (len(self._flat) - self._garbage),
            "start": 4 * n,
            "count": n,
            # pyroaring's __sizeof__ is roaring_bitmap_portable_size_in_bytes: O(containers),
            # no serialisation (tests pin it to len(serialize())).
            "bitmaps": sum(bm.__sizeof__() for bm in self._bitmaps),
        }

    def memory_usage(self) -> dict:
        """``tags_flat`` (live and garbage entries both hold memory), ``tags_start``,
        ``tags_count``, ``tags_bitmaps`` (in-memory roaring size) in ``anon``; the columns'
        unwritten capacity as ``reserved["tags"]``."""
        nb = self.nbytes()
        anon = {"tags_flat": 4 * len(self._flat), "tags_start": nb["start"], "tags_count": nb["count"],
                "tags_bitmaps": sum(bitmap_bytes(bm) for bm in self._bitmaps)}
        reserved = sum(c.slack_bytes() for c in (self._flat, self._start, self._count))
        return {"anon": anon, "reserved": {"tags": reserved}}

    def small_objects(self) -> list:
        """The bitmap objects (one per tag id)."""
        return list(self._bitmaps)
