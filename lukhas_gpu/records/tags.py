"""Tags of stored memories: an interned vocabulary, per-row tag lists and one roaring bitmap per tag.

A row is one memory; rows are dense integers ``0..n-1`` appended in order. Nothing here holds a
Python object per row: each row's tags live in CSR-like columns (a flat ``uint32`` array of tag
ids plus a per-row ``start`` offset and ``count``), and each tag's rows live in a
:class:`pyroaring.BitMap` -- both in :class:`~lukhas_gpu.records.taglists.TagLists`. Python
objects exist per distinct *tag* only (its name, its dict entry, its bitmap).

This module owns the vocabulary (interning names to ids) and the public boundary; the tag rules
and limits are :mod:`lukhas_gpu.records.validate`'s (:data:`MAX_TAG_BYTES`,
:data:`MAX_TAGS_PER_MEMORY`), the storage limits :mod:`lukhas_gpu.records.taglists`' (at most
``util.bounds.MAX_ROWS`` rows, ``2**32 - 1`` flat entries garbage included; when an update would cross the
latter the index compacts itself first).

Updates append: a replaced row's new list goes to the end of the flat array and its old entries
become garbage until :meth:`TagIndex.compact`. Not thread-safe: callers serialise writes.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pyroaring import BitMap

from .taglists import MAX_ROWS, TagLists
from .validate import (
    MAX_TAG_BYTES,
    MAX_TAGS_PER_MEMORY,
    check_tag,
    check_tag_batch,
    check_tag_container,
    check_tag_count,
    check_tag_item,
    short_repr,
)

__all__ = ["TagIndex", "MAX_TAG_BYTES", "MAX_TAGS_PER_MEMORY", "MAX_ROWS", "TAG_OBJECT_BYTES"]

#: Per tag in the vocabulary: its name (a ``str``), the dict entry and list slot that intern it,
#: its ``BitMap`` object and the roaring bitmap struct behind it (measured on CPython 3.11).
TAG_OBJECT_BYTES = 260
#: Ints up to this are the interpreter's cached singletons, not objects the index keeps.
_SMALL_INT_MAX = 256

_ARRAY_KEYS = ("names_utf8", "names_offsets", "flat", "start", "count")
_ARRAY_DTYPES = {"names_utf8": np.uint8, "names_offsets": np.int64, "flat": np.uint32,
                 "start": np.uint32, "count": np.uint8}


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
        self._lists = TagLists()

    # -- size ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._lists)

    @property
    def vocab_size(self) -> int:
        """Number of distinct tags ever seen (tags whose rows were all deleted included)."""
        return len(self._names)

    @property
    def garbage(self) -> int:
        """Flat-array entries left behind by :meth:`replace` / :meth:`delete` (reclaimed by :meth:`compact`)."""
        return self._lists.garbage

    @property
    def entries(self) -> int:
        """Entries in the flat array of tag ids, live and garbage (``nbytes()["flat"] // 4`` are live)."""
        return self._lists.entries

    def csr(self) -> dict[str, np.ndarray]:
        """Read-only views of the raw CSR columns as they are now (garbage included): ``flat``
        (uint32 tag ids), ``start`` (uint32) and ``count`` (uint8) per row. :meth:`to_arrays`
        gives the canonical form."""
        return self._lists.csr()

    def __repr__(self) -> str:
        return (f"TagIndex(rows={len(self)}, vocab_size={self.vocab_size}, "
                f"entries={self.entries - self.garbage}, garbage={self.garbage})")

    # -- validation --------------------------------------------------------------------------
    def validate(self, tags, n: int) -> list[tuple[str, ...]]:
        """Check a batch of tag lists without changing anything (the rules, return value and
        errors: :func:`lukhas_gpu.records.validate.validate_tags`)."""
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
        n = check_tag_batch(tags, n)
        if tags is None:
            return np.zeros(n, dtype=np.uint8), np.empty(0, dtype=np.uint32), []

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
                check_tag_container(where(i), mem)
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
            check_tag_count(where(i), k)
            counts[i] = k
            flat.extend(tids)
        return (np.array(counts, dtype=np.uint8), np.array(flat, dtype=np.uint32), list(new))

    def _slow_ids(self, where: str, mem, new: dict, base: int, learn: dict | None) -> list[int]:
        """Per-tag checks for a memory with a non-str item or a tag not yet interned.

        New tags get provisional ids in ``new`` and, when given, in the batch's private
        ``learn`` lookup as well.
        """
        ids_get = self._ids.get
        out = []
        for j, tag in enumerate(mem):
            check_tag_item(where, j, tag)
            tid = ids_get(tag)
            if tid is None:
                tag = str.__str__(tag)  # a plain str, not a caller's str subclass
                tid = new.get(tag)
                if tid is None:
                    check_tag(where, tag)
                    tid = new[tag] = base + len(new)
                    if learn is not None:
                        learn[tag] = tid
            out.append(tid)
        return out

    def _commit_names(self, new_names: list[str]) -> None:
        self._intern(new_names)
        self._lists.add_tags(len(new_names))

    def _intern(self, names: list[str]) -> None:
        for name in names:
            self._ids[name] = len(self._names)
            self._names.append(name)

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
            The index would pass ``MAX_ROWS`` rows (the bitmaps' 32-bit row numbers).
        """
        counts, ids, new_names = self._prepare(tags, n)
        self._lists.make_room(len(ids), rows=len(counts))
        self._commit_names(new_names)
        return self._lists.append(counts, ids)

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
        self._lists.make_room(len(ids))  # may compact: nothing is gathered before it
        self._commit_names(new_names)
        self._lists.replace(rows, counts, ids)

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
        self._lists.delete(np.unique(self._check_rows(rows)))

    def compact(self) -> None:
        """Drop all garbage and shrink the bitmaps.

        The flat array is rewritten with only live entries, in row order. Each bitmap is
        run-optimised (runs of consecutive rows, such as a tag given to a whole imported batch,
        become run containers) and trimmed to size. Contents are unchanged.
        """
        self._lists.compact()

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
        ids, _ = self._lists.gather(rows)
        names = self._names
        flat = [names[t] for t in ids.tolist()]
        out, pos = [], 0
        for k in self._lists.counts()[rows].tolist():
            out.append(flat[pos:pos + k])
            pos += k
        return out

    def _tag_id(self, tag) -> int | None:
        if not isinstance(tag, str):
            raise TypeError(f"a tag must be a str, got {type(tag).__name__} {short_repr(tag)}")
        return self._ids.get(tag)

    def _query_ids(self, tags) -> list[int | None]:
        if isinstance(tags, str):
            raise TypeError(f"tags must be a list or tuple of str, got a bare str "
                            f"{short_repr(tags)}: write [{short_repr(tags)}]")
        return [self._tag_id(t) for t in tags]

    def bitmap(self, tag: str) -> BitMap:
        """Rows carrying ``tag``, as a new :class:`~pyroaring.BitMap` the caller may modify.

        An unknown tag gives an empty bitmap (a filter on it matches nothing), not an error.
        """
        tid = self._tag_id(tag)
        return BitMap() if tid is None else self._lists.bitmap(tid).copy()

    def names(self) -> list[str]:
        """Every tag of the vocabulary, in first-seen order (tags whose rows were all deleted included)."""
        return list(self._names)

    def cardinality(self, tag: str) -> int:
        """Number of rows carrying ``tag`` (0 for an unknown tag)."""
        tid = self._tag_id(tag)
        return 0 if tid is None else len(self._lists.bitmap(tid))

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
        bms = sorted((self._lists.bitmap(t) for t in set(ids)), key=len)
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
        bms = [self._lists.bitmap(t) for t in set(self._query_ids(tags)) if t is not None]
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
        return {**self._lists.nbytes(), "vocab": self._vocab_bytes(), "garbage": self.garbage}

    def _vocab_bytes(self) -> int:
        return sum(len(name.encode("utf-8")) for name in self._names)

    def memory_usage(self) -> dict:
        """Where the index's bytes live (see :mod:`lukhas_gpu.util.memory` for the contract).

        ``anon``: ``tags_flat`` (live and garbage entries), ``tags_start``, ``tags_count``,
        ``tags_bitmaps`` (in-memory roaring size, containers included) and ``tags_vocab`` (the
        names' UTF-8 bytes plus :data:`TAG_OBJECT_BYTES` per tag); ``reserved["tags"]``: the
        columns' unwritten capacity.
        """
        out = self._lists.memory_usage()
        out["anon"]["tags_vocab"] = self._vocab_bytes() + TAG_OBJECT_BYTES * self.vocab_size
        return out

    def small_objects(self) -> list:
        """The small Python objects kept per tag: its name, its id (past the interpreter's cached
        small ints) and its bitmap object. For the CPython pool estimate of
        :func:`lukhas_gpu.capacity.accounting.python_pools`."""
        ids = [v for v in self._ids.values() if v > _SMALL_INT_MAX]
        return [*self._names, *ids, *self._lists.small_objects()]

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
        return {
            "names_utf8": np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(),
            "names_offsets": offsets,
            **self._lists.to_arrays(),
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
            check_tag(f"tag name {i}", name)
            names.append(name)
        if len(set(names)) != len(names):
            raise ValueError("tag names repeat; each tag must appear once in names_utf8")
        lists = TagLists.from_arrays(a["flat"], a["start"], a["count"], len(names))
        index = cls()
        index._lists = lists  # with a bitmap per name already
        index._intern(names)
        return index
