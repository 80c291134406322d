"""Tags of stored memories: an interned vocabulary, per-row tag lists and one roaring bitmap per tag.

A row is one memory; rows are dense integers ``0..n-1`` appended in order. Nothing here holds a
Python object per row: each row's tags live in CSR-like columns (a flat ``uint32`` array of tag
ids plus a per-row ``start`` offset and ``count``), and each tag's rows live in a
:class:`pyroaring.BitMap`. Python objects exist per distinct *tag* only (its name, its dict
entry, its bitmap).

Limits, all from the 32-bit storage:

* at most ``2**32`` rows (roaring bitmaps hold 32-bit row numbers);
* at most 255 distinct tags per memory (``count`` is ``uint8``);
* each tag non-empty, at most 256 UTF-8 bytes, without NUL (tags are compared byte for byte;
  no Unicode normalisation is applied, so ``"é"`` composed and decomposed are different tags);
* at most ``2**32 - 1`` entries in the flat array, garbage included (``start`` is ``uint32``);
  when an update would cross it the index compacts itself first.

Updates append: a replaced row's new list goes to the end of the flat array and its old entries
become garbage until :meth:`TagIndex.compact`. Not thread-safe: callers serialise writes.
"""
from __future__ import annotations

import array
import operator
import reprlib
from collections.abc import Mapping

import numpy as np
from pyroaring import BitMap

from .columns import GrowableArray

__all__ = ["TagIndex", "MAX_TAG_BYTES", "MAX_TAGS_PER_MEMORY", "MAX_ROWS"]

MAX_TAG_BYTES = 256
MAX_TAGS_PER_MEMORY = 255
MAX_ROWS = 2**32
# Read at call time (not bound as defaults) so tests can lower them to exercise the limits.
_MAX_FLAT_ENTRIES = 2**32 - 1

# pyroaring copies an ``array.array`` of C unsigned ints straight into the bitmap; a numpy array
# goes through its generic iterator, measured ~10x slower (45 ms vs 5 ms per million rows).
_U32_CODE = next((c for c in "IL" if array.array(c).itemsize == 4), None)

_ARRAY_KEYS = ("names_utf8", "names_offsets", "flat", "start", "count")
_ARRAY_DTYPES = {"names_utf8": np.uint8, "names_offsets": np.int64, "flat": np.uint32,
                 "start": np.uint32, "count": np.uint8}

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def _u32(values: np.ndarray):
    """``values`` as something :meth:`BitMap.update` ingests fast (an ``array.array`` of uint32)."""
    values = np.ascontiguousarray(values, dtype=np.uint32)
    if _U32_CODE is None:  # exotic platform: correct, just slower
        return values
    out = array.array(_U32_CODE)
    out.frombytes(values.view(np.uint8))  # frombytes wants a byte buffer, not uint32
    return out


def _check_tag(where: str, tag: str) -> None:
    """Raise ``ValueError`` unless ``tag`` (a ``str``) is a storable tag."""
    if not tag:
        raise ValueError(f"{where} contains an empty tag; tags must be non-empty strings")
    if "\x00" in tag:
        raise ValueError(f"{where} tag {_short.repr(tag)} contains a NUL character")
    try:
        nbytes = len(tag.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} tag {_short.repr(tag)} is not encodable as UTF-8 "
                         f"({exc.reason} at character {exc.start})") from None
    if nbytes > MAX_TAG_BYTES:
        raise ValueError(f"{where} tag {_short.repr(tag)} is {nbytes} UTF-8 bytes; "
                         f"the limit is {MAX_TAG_BYTES}")


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


class TagIndex:
    """Interned tag vocabulary, per-row tag lists and one roaring bitmap of rows per tag.

    Rows are appended in order by :meth:`append` and never removed: :meth:`delete` empties a
    row's tag list, :meth:`replace` swaps it for another. Tag ids are assigned in first-seen
    order and never reused, so a tag whose last row was deleted stays in the vocabulary with
    an empty bitmap.

    Examples
    --------
    >>> ti = TagIndex()
    >>> ti.append([["work", "urgent"], None, ["work"]], 3)
    (0, 3)
    >>> list(ti.bitmap("work")), list(ti.all_of(["work", "urgent"]))
    ([0, 2], [0])
    >>> ti.get([0, 1])
    [['work', 'urgent'], []]
    """

    def __init__(self):
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._bitmaps: list[BitMap] = []
        self._flat = GrowableArray(np.uint32)
        self._start = GrowableArray(np.uint32)
        self._count = GrowableArray(np.uint8)
        self._garbage = 0  # flat entries no live row points at any more

    # -- size ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._count)

    @property
    def vocab_size(self) -> int:
        """Number of distinct tags ever seen (tags whose rows were all deleted included)."""
        return len(self._names)

    @property
    def garbage(self) -> int:
        """Flat-array entries left behind by :meth:`replace` / :meth:`delete` (reclaimed by :meth:`compact`)."""
        return self._garbage

    def __repr__(self) -> str:
        return (f"TagIndex(rows={len(self)}, vocab_size={self.vocab_size}, "
                f"entries={len(self._flat) - self._garbage}, garbage={self._garbage})")

    # -- validation --------------------------------------------------------------------------
    def validate(self, tags, n: int) -> list[tuple[str, ...]]:
        """Check a batch of tag lists without changing anything.

        Parameters
        ----------
        tags : None or sequence of (list or tuple of str, or None), length ``n``
            One entry per memory. ``None`` (for the batch or for one memory) means no tags.
        n : int
            Number of memories in the batch.

        Returns
        -------
        list of tuple of str, length ``n``
            Each memory's tags as plain ``str``, duplicates dropped (first occurrence kept).

        Raises
        ------
        TypeError
            ``tags`` is not a sequence; a memory's entry is not a list/tuple/None (a bare
            ``str`` included: it would be read one character per tag); a tag is not a ``str``.
        ValueError
            ``len(tags) != n``; a tag is empty, longer than 256 UTF-8 bytes, contains NUL or
            is not encodable as UTF-8; a memory has more than 255 distinct tags.
        """
        counts, ids, new_names = self._prepare(tags, n)
        names = self._names + new_names
        flat = [names[t] for t in ids.tolist()]
        out, pos = [], 0
        for k in counts.tolist():
            out.append(tuple(flat[pos:pos + k]))
            pos += k
        return out

    def _prepare(self, tags, n, rows=None):
        """Validate ``tags`` and map them to tag ids, changing nothing.

        Returns ``(counts uint8 (n,), ids uint32 (sum(counts),), new_names)``; tags not yet in
        the vocabulary get provisional ids ``vocab_size + k`` for ``new_names[k]``, which
        :meth:`_commit_names` makes real. Keeping the vocabulary untouched until the whole batch
        passes is what makes a rejected batch leave no trace.
        """
        n = self._check_n(n)
        if tags is None:
            return np.zeros(n, dtype=np.uint8), np.empty(0, dtype=np.uint32), []
        if isinstance(tags, (str, bytes, bytearray)):
            raise TypeError(f"tags must be None or a sequence of {n} tag lists (one per memory), "
                            f"got a bare {type(tags).__name__} {_short.repr(tags)}")
        try:
            m = len(tags)
        except TypeError:
            raise TypeError(f"tags must be None or a sequence of {n} tag lists (one per memory), "
                            f"got {type(tags).__name__}") from None
        if m != n:
            raise ValueError(f"tags has {m} entries but the batch has n={n} memories")

        def where(i):
            return f"tags[{i}]" if rows is None else f"tags[{i}] (row {int(rows[i])})"

        # Tags new to the vocabulary go to a batch-local dict until the batch passes. Lookups
        # use a private copy of the vocabulary that also learns the batch's new tags, so a
        # tag's second sighting takes the fast path too; the copy costs O(vocab_size), so it
        # is made only when the batch is at least that large (keeps one-row appends cheap).
        new: dict[str, int] = {}
        base = len(self._names)
        lookup = dict(self._ids) if base <= n else self._ids
        ids_get = lookup.get
        counts = [0] * n
        flat: list[int] = []
        for i, mem in enumerate(tags):
            if mem is None:
                continue
            if type(mem) is not list and type(mem) is not tuple:
                self._check_container(where(i), mem)
            # Fast path: every tag already interned (the common case with a settled vocabulary).
            # A vocabulary hit proves the tag valid; anything else takes the checking path.
            try:
                tids = list(map(ids_get, mem))
            except TypeError:  # an unhashable item; the slow path names it
                tids = None
            if tids is None or None in tids:
                tids = self._slow_ids(where(i), mem, new, base,
                                      None if lookup is self._ids else lookup)
            k = len(tids)
            if k > 1 and len(set(tids)) != k:
                tids = list(dict.fromkeys(tids))
                k = len(tids)
            if k > MAX_TAGS_PER_MEMORY:
                raise ValueError(f"{where(i)} has {k} distinct tags; the limit is "
                                 f"{MAX_TAGS_PER_MEMORY} per memory")
            counts[i] = k
            flat.extend(tids)
        return (np.array(counts, dtype=np.uint8), np.array(flat, dtype=np.uint32), list(new))

    @staticmethod
    def _check_n(n) -> int:
        try:
            n = operator.index(n)
        except TypeError:
            raise TypeError(f"n must be an integer, got {type(n).__name__}") from None
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return n

    @staticmethod
    def _check_container(where: str, mem) -> None:
        if isinstance(mem, (list, tuple)):
            return
        if isinstance(mem, str):
            raise TypeError(f"{where} is a bare str {_short.repr(mem)}; a memory's tags must be a "
                            f"list or tuple of str (a bare str would be split into one tag per "
                            f"character): write [{_short.repr(mem)}]")
        raise TypeError(f"{where} must be a list or tuple of str, or None; "
                        f"got {type(mem).__name__}")

    def _slow_ids(self, where: str, mem, new: dict, base: int, learn: dict | None) -> list[int]:
        """Per-tag checks for a memory with a non-str item or a tag not yet interned.

        New tags get provisional ids in ``new`` and, when given, in the batch's private
        ``learn`` lookup as well.
        """
        ids_get = self._ids.get
        out = []
        for j, tag in enumerate(mem):
            if not isinstance(tag, str):
                raise TypeError(f"{where} item {j} must be str, got {type(tag).__name__} "
                                f"{_short.repr(tag)}")
            tid = ids_get(tag)
            if tid is None:
                tag = str.__str__(tag)  # a plain str, not a caller's str subclass
                tid = new.get(tag)
                if tid is None:
                    _check_tag(where, tag)
                    tid = new[tag] = base + len(new)
                    if learn is not None:
                        learn[tag] = tid
            out.append(tid)
        return out

    def _commit_names(self, new_names: list[str]) -> None:
        for name in new_names:
            self._ids[name] = len(self._names)
            self._names.append(name)
            self._bitmaps.append(BitMap())

    def _check_rows(self, rows, *, unique: str | None = None) -> np.ndarray:
        """``rows`` as a 1-D int64 array of existing rows; ``unique`` names the caller that needs them distinct."""
        arr = np.asarray(rows)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"rows must be a 1-D array of row numbers, got shape {arr.shape}")
        if arr.size == 0:
            return np.empty(0, dtype=np.int64)
        if arr.dtype.kind not in "iu":
            # Booleans are refused too: a mask would silently read as rows 0 and 1.
            raise TypeError(f"rows must be integers, got dtype {arr.dtype}")
        n = len(self)
        bad = (arr < 0) | (arr >= n)
        if bad.any():
            shown = arr[bad][:10].tolist()
            more = int(bad.sum()) - len(shown)
            raise IndexError(f"rows {shown}{f' (and {more} more)' if more else ''} are out of "
                             f"range for a TagIndex of {n} rows")
        arr = arr.astype(np.int64)
        if unique is not None and len(arr) > 1:
            uniq, cnt = np.unique(arr, return_counts=True)
            if len(uniq) != len(arr):
                raise ValueError(f"{unique} got rows listed more than once: "
                                 f"{uniq[cnt > 1][:10].tolist()}")
        return arr

    # -- updates -----------------------------------------------------------------------------
    def append(self, tags, n: int) -> tuple[int, int]:
        """Append ``n`` rows with the given tags.

        Parameters
        ----------
        tags : None or sequence of (list or tuple of str, or None), length ``n``
            See :meth:`validate`. The whole batch is checked before anything changes.
        n : int
            Number of rows to append.

        Returns
        -------
        tuple of int
            ``(start, stop)``: the new rows are ``range(start, stop)``.

        Raises
        ------
        TypeError, ValueError
            As :meth:`validate`.
        OverflowError
            The index would pass ``2**32`` rows (the bitmaps' 32-bit row numbers).
        """
        counts, ids, new_names = self._prepare(tags, n)
        start = len(self)
        stop = start + len(counts)
        if stop > MAX_ROWS:
            raise OverflowError(f"appending {len(counts)} rows to {start} would pass the "
                                f"{MAX_ROWS}-row limit of 32-bit roaring bitmaps")
        self._make_room(len(ids))
        self._commit_names(new_names)
        offsets = self._offsets_after(counts, len(self._flat))
        self._flat.append(ids)
        self._start.append(offsets)
        self._count.append(counts)
        self._add(ids, np.repeat(np.arange(start, stop, dtype=np.uint32), counts))
        return start, stop

    def replace(self, rows, tags) -> None:
        """Give existing rows new tag lists.

        Parameters
        ----------
        rows : array_like of int, shape (m,)
            Distinct existing rows.
        tags : None or sequence of (list or tuple of str, or None), length ``m``
            The new lists (see :meth:`validate`); ``None`` clears them.

        Raises
        ------
        IndexError
            A row does not exist.
        TypeError, ValueError
            Bad row numbers or rows listed twice; bad tags as in :meth:`validate`.
        """
        rows = self._check_rows(rows, unique="replace")
        counts, ids, new_names = self._prepare(tags, len(rows), rows=rows)
        self._make_room(len(ids))  # may compact, which moves the rows' entries: gather after
        old_ids, old_rows = self._gather(rows)
        self._remove(old_ids, old_rows)
        self._commit_names(new_names)
        self._start[rows] = self._offsets_after(counts, len(self._flat))
        self._count[rows] = counts
        self._flat.append(ids)
        self._garbage += len(old_ids)
        self._add(ids, np.repeat(rows.astype(np.uint32), counts))

    def delete(self, rows) -> None:
        """Empty the tag lists of ``rows`` (the rows stay; their old entries become garbage).

        Parameters
        ----------
        rows : array_like of int, shape (m,)
            Existing rows; repeats and already-empty rows are fine.

        Raises
        ------
        IndexError
            A row does not exist.
        """
        rows = np.unique(self._check_rows(rows))
        old_ids, old_rows = self._gather(rows)
        self._remove(old_ids, old_rows)
        self._count[rows] = 0
        self._garbage += len(old_ids)

    def compact(self) -> None:
        """Drop all garbage and shrink the bitmaps.

        The flat array is rewritten with only live entries, in row order. Each bitmap is
        run-optimised (runs of consecutive rows, such as a tag given to a whole imported batch,
        become run containers) and trimmed to size. Contents are unchanged.
        """
        # Bulk updates leave dense tags as bitset containers; optimising on every append would
        # rescan each touched bitmap (O(its size) per call), so it happens here and on load.
        self._optimize_bitmaps()
        counts = self._count.view()
        offsets = self._offsets_after(counts, 0)
        if self._garbage == 0 and np.array_equal(self._start.view(), offsets):
            return  # flat already canonical (e.g. only appends so far)
        live, _ = self._gather(np.arange(len(self), dtype=np.int64))
        flat = GrowableArray(np.uint32)
        flat.append(live)
        self._flat = flat
        self._start[:] = offsets
        self._garbage = 0

    def _optimize_bitmaps(self) -> None:
        for bm in self._bitmaps:
            bm.run_optimize()
            bm.shrink_to_fit()

    def _make_room(self, extra: int) -> None:
        if len(self._flat) + extra <= _MAX_FLAT_ENTRIES:
            return
        if self._garbage:
            self.compact()
        if len(self._flat) + extra > _MAX_FLAT_ENTRIES:
            raise OverflowError(f"{len(self._flat)} tag entries plus {extra} new ones would pass "
                                f"the {_MAX_FLAT_ENTRIES}-entry limit of the uint32 row offsets")

    @staticmethod
    def _offsets_after(counts: np.ndarray, base: int) -> np.ndarray:
        """uint32 start offsets for rows with ``counts`` entries laid out from ``base``."""
        ends = np.cumsum(counts, dtype=np.int64)
        return (base + ends - counts).astype(np.uint32)

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tag ids of ``rows`` (int64, valid) in row order, and the row of each id."""
        counts = self._count.view()[rows].astype(np.int64)
        total = int(counts.sum())
        if total == 0:
            return np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int64)
        starts = self._start.view()[rows].astype(np.int64)
        ends = np.cumsum(counts)
        pos = np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - counts), counts)
        return self._flat.view()[pos], np.repeat(rows, counts)

    def _add(self, ids: np.ndarray, rows: np.ndarray) -> None:
        for tid, r in _group_by_tag(ids, rows):
            self._bitmaps[tid].update(_u32(r))

    def _remove(self, ids: np.ndarray, rows: np.ndarray) -> None:
        for tid, r in _group_by_tag(ids, rows):
            self._bitmaps[tid].difference_update(BitMap(_u32(r)))

    # -- reads -------------------------------------------------------------------------------
    def get(self, rows) -> list[list[str]]:
        """Tag lists of ``rows``, each in first-seen order.

        Parameters
        ----------
        rows : array_like of int, shape (m,)
            Existing rows; a scalar is a batch of one (the result is still a list of lists).

        Returns
        -------
        list of list of str, length ``m``

        Raises
        ------
        IndexError
            A row does not exist (negative numbers included: ``-1`` is the missing-result
            padding elsewhere in the package, never "the last row").
        """
        rows = self._check_rows(rows)
        ids, _ = self._gather(rows)
        names = self._names
        flat = [names[t] for t in ids.tolist()]
        out, pos = [], 0
        for k in self._count.view()[rows].tolist():
            out.append(flat[pos:pos + k])
            pos += k
        return out

    def _tag_id(self, tag) -> int | None:
        if not isinstance(tag, str):
            raise TypeError(f"a tag must be a str, got {type(tag).__name__} {_short.repr(tag)}")
        return self._ids.get(tag)

    def _query_ids(self, tags) -> list[int | None]:
        if isinstance(tags, str):
            raise TypeError(f"tags must be a list or tuple of str, got a bare str "
                            f"{_short.repr(tags)}: write [{_short.repr(tags)}]")
        return [self._tag_id(t) for t in tags]

    def bitmap(self, tag: str) -> BitMap:
        """Rows carrying ``tag``, as a new :class:`~pyroaring.BitMap` the caller may modify.

        An unknown tag gives an empty bitmap (a filter on it matches nothing), not an error.
        """
        tid = self._tag_id(tag)
        return BitMap() if tid is None else self._bitmaps[tid].copy()

    def cardinality(self, tag: str) -> int:
        """Number of rows carrying ``tag`` (0 for an unknown tag)."""
        tid = self._tag_id(tag)
        return 0 if tid is None else len(self._bitmaps[tid])

    def all_of(self, tags) -> BitMap | None:
        """Rows carrying every one of ``tags``.

        Parameters
        ----------
        tags : list or tuple of str

        Returns
        -------
        BitMap or None
            A new bitmap; ``None`` for an empty ``tags``, meaning "no constraint" (the
            intersection of no sets is everything, which a bitmap cannot express without
            knowing the caller's live rows). An unknown tag gives an empty bitmap.
        """
        ids = self._query_ids(tags)
        if not ids:
            return None
        if None in ids:
            return BitMap()
        # Smallest first: every later intersection is bounded by the running result.
        bms = sorted((self._bitmaps[t] for t in set(ids)), key=len)
        out = bms[0].copy()
        for bm in bms[1:]:
            if not out:
                break
            out &= bm
        return out

    def any_of(self, tags) -> BitMap:
        """Rows carrying at least one of ``tags``.

        Parameters
        ----------
        tags : list or tuple of str

        Returns
        -------
        BitMap
            A new bitmap; empty for an empty ``tags`` (the union of no sets) or when no tag is
            known. Unknown tags contribute nothing.
        """
        bms = [self._bitmaps[t] for t in set(self._query_ids(tags)) if t is not None]
        if not bms:
            return BitMap()
        if len(bms) == 1:
            return bms[0].copy()
        return BitMap.union(*bms)

    # -- accounting and persistence -----------------------------------------------------------
    def nbytes(self) -> dict[str, int]:
        """Approximate memory use in bytes per part, plus the garbage entry count.

        Returns
        -------
        dict
            ``flat``: live flat entries (4 B each); ``start``: ``4 * len``; ``count``: ``len``;
            ``bitmaps``: summed portable serialized sizes of the bitmaps; ``vocab``: UTF-8 bytes
            of the tag names; ``garbage``: number of dead flat entries (an entry count, not
            bytes; they occupy ``4 * garbage`` bytes until :meth:`compact`).
        """
        n = len(self)
        return {
            "flat": 4 * (len(self._flat) - self._garbage),
            "start": 4 * n,
            "count": n,
            # pyroaring's __sizeof__ is roaring_bitmap_portable_size_in_bytes: O(containers),
            # no serialisation (tests pin it to len(serialize())).
            "bitmaps": sum(bm.__sizeof__() for bm in self._bitmaps),
            "vocab": sum(len(name.encode("utf-8")) for name in self._names),
            "garbage": self._garbage,
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything as plain numpy arrays (no pickle), in canonical compacted form.

        The bitmaps are not stored: :meth:`from_arrays` rebuilds them from the CSR columns, so
        the saved form has one source of truth. Garbage is not saved either (the flat array is
        written in row order), and ``self`` is not modified.

        Returns
        -------
        dict of str to numpy.ndarray
            ``names_utf8`` uint8: the tag names' UTF-8 bytes concatenated in tag-id order;
            ``names_offsets`` int64 ``(vocab_size + 1,)``: name ``i`` is bytes
            ``[offsets[i], offsets[i+1])``; ``flat`` uint32: tag ids of all rows in row order;
            ``start`` uint32 ``(len,)`` and ``count`` uint8 ``(len,)``: row ``r``'s ids are
            ``flat[start[r]:start[r] + count[r]]``.
        """
        encoded = [name.encode("utf-8") for name in self._names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        counts = self._count.view().copy()
        live, _ = self._gather(np.arange(len(self), dtype=np.int64))
        return {
            "names_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
            "names_offsets": offsets,
            "flat": np.array(live, dtype=np.uint32),
            "start": self._offsets_after(counts, 0),
            "count": counts,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> TagIndex:
        """Rebuild an index from :meth:`to_arrays` output (extra keys are ignored).

        Any CSR layout is accepted (garbage included); the result has the same rows, tag
        lists, tag ids and bitmaps. Inputs are copied.

        Raises
        ------
        ValueError
            A key is missing; an array has the wrong dtype or shape; the offsets, names or
            row ranges are inconsistent; a tag id is out of range or repeated within a row.
        """
        missing = [k for k in _ARRAY_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"tag arrays are missing {missing}; expected keys {list(_ARRAY_KEYS)}")
        a = {}
        for key in _ARRAY_KEYS:
            arr = np.asarray(arrays[key])
            want = np.dtype(_ARRAY_DTYPES[key])
            if arr.dtype != want or arr.ndim != 1:
                raise ValueError(f"tag array {key!r} must be 1-D {want}, got {arr.ndim}-D {arr.dtype}")
            a[key] = arr
        buf, offsets = a["names_utf8"], a["names_offsets"]
        if (len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(buf)
                or np.any(np.diff(offsets) < 0)):
            raise ValueError(f"names_offsets must rise from 0 to len(names_utf8)={len(buf)}; "
                             f"got {len(offsets)} offsets ending at "
                             f"{offsets[-1] if len(offsets) else None}")
        raw = buf.tobytes()
        bounds = offsets.tolist()
        names = []
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            try:
                name = raw[lo:hi].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"tag name {i} is not valid UTF-8: {exc}") from None
            _check_tag(f"tag name {i}", name)
            names.append(name)
        if len(set(names)) != len(names):
            raise ValueError("tag names repeat; each tag must appear once in names_utf8")
        flat, start, count = a["flat"], a["start"], a["count"]
        if len(start) != len(count):
            raise ValueError(f"start has {len(start)} rows but count has {len(count)}")
        if len(count) > MAX_ROWS:
            raise ValueError(f"{len(count)} rows pass the {MAX_ROWS}-row limit")
        if len(start) and int((start.astype(np.int64) + count).max()) > len(flat):
            raise ValueError(f"a row's range start + count passes the end of flat "
                             f"({len(flat)} entries)")

        index = cls()
        index._commit_names(names)
        index._flat.append(flat)
        index._start.append(start)
        index._count.append(count)
        live, rows = index._gather(np.arange(len(count), dtype=np.int64))
        if len(live) and int(live.max()) >= len(names):
            raise ValueError(f"flat holds tag id {int(live.max())} but there are only "
                             f"{len(names)} tag names")
        index._add(live, rows)
        if sum(len(bm) for bm in index._bitmaps) != len(live):
            raise ValueError("a row lists the same tag id more than once")
        index._garbage = max(0, len(flat) - len(live))
        index._optimize_bitmaps()
        return index
