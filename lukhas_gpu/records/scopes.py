"""Who a memory belongs to and when it holds: namespaces and validity windows, one entry per row.

* :class:`Namespaces`: a name table (a :class:`~.keytable.KeyTable`, entry ``i`` = namespace id
  ``i``, entry 0 the default namespace ``""``) and a ``uint32`` column of ids, one per row. A
  namespace's rows are derived from the column on first use and kept as a roaring bitmap in a
  small cache (at most :data:`CACHED_NAMESPACES`), extended by the rows appended since: rows are
  never renumbered and a row's namespace never changes, so nothing else invalidates it. Until a
  memory is added outside ``""`` there is no column at all (a store without namespaces is as
  before, byte for byte).
* :class:`Validity`: ``valid_from`` / ``valid_to`` (float64 epoch seconds), a memory valid at
  ``t`` when ``valid_from <= t < valid_to``; the default ``(-inf, inf)`` is always valid. The two
  columns exist from the first memory given a window, and a bitmap of the rows with one
  (``windowed``) bounds the validity test of a search to those rows.

No Python object per memory: columns, a key table and bitmaps. Deleted rows keep their entries
(the tombstones are the record of deletions).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from pyroaring import BitMap

from ..util.bounds import MAX_NAMESPACE_BYTES, MAX_NAMESPACES
from ..util.memory import NPZ_MEMBER_BYTES, bitmap_bytes, planned_bitmap_bytes
from .columns import GrowableArray
from .keytable import KeyTable, encode_keys

__all__ = ["Namespaces", "Validity", "check_namespace", "planned_bytes", "CACHED_NAMESPACES"]

#: Namespaces whose row bitmaps are kept between searches (least recently used dropped).
CACHED_NAMESPACES = 64


def check_namespace(name, what: str = "namespace") -> str:
    """One namespace name: a str of at most ``MAX_NAMESPACE_BYTES`` UTF-8 bytes (TypeError /
    ValueError naming ``what`` otherwise)."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text (lone surrogate)") from None
    if size > MAX_NAMESPACE_BYTES:
        raise ValueError(f"{what} is {size} UTF-8 bytes; at most {MAX_NAMESPACE_BYTES} "
                         "(lukhas_gpu.util.bounds.MAX_NAMESPACE_BYTES)")
    return name


class Namespaces:
    """The namespace of every row: a name table, a uint32 column and cached row bitmaps."""

    def __init__(self, rows: int = 0):
        self.table = KeyTable()
        self.table.append(encode_keys([""], "namespace", kind="str"))
        self.column: GrowableArray | None = None  # None: every row is in ""
        self._rows = int(rows)
        self._cache: OrderedDict = OrderedDict()  # name -> (id, BitMap, rows covered)
        self._cache_lock = threading.Lock()  # rows() runs in concurrent searches (the index's shared lock)

    def __len__(self) -> int:
        return self._rows if self.column is None else len(self.column)

    @property
    def count(self) -> int:
        """Names in the table (the default ``""`` included, dropped namespaces too)."""
        return len(self.table)

    @property
    def used(self) -> bool:
        """Whether any memory was ever added outside the default namespace."""
        return self.column is not None

    # -- names ------------------------------------------------------------------------------------
    def find(self, names: list) -> np.ndarray:
        """The id of each name, -1 for a name the table does not hold (int64)."""
        out = np.full(len(names), -1, np.int64)
        if names:
            qi, ent = self.table.lookup(encode_keys(names, "namespace", kind="str"))
            out[qi] = ent
        return out

    def names(self, ids) -> list:
        return self.table.keys(np.asarray(ids, np.int64))

    # -- writes -----------------------------------------------------------------------------------
    def prepare(self, namespace, n: int) -> tuple[list, np.ndarray] | None:
        """``add(..., namespace=)`` checked: ``(distinct names, index of each row's name uint32)``,
        or None when every memory goes to ``""``. Changes nothing."""
        if namespace is None:
            return None
        if isinstance(namespace, str):
            names, index = [check_namespace(namespace)], np.zeros(n, np.uint32)
        else:
            if isinstance(namespace, bytes) or not hasattr(namespace, "__len__"):
                raise TypeError(f"namespace must be a str or a sequence of str (one per memory), "
                                f"got {type(namespace).__name__}")
            if len(namespace) != n:
                raise ValueError(f"namespace has {len(namespace)} entries, expected {n} (one per memory)")
            seen: dict = {}
            index = np.empty(n, np.uint32)
            for i, name in enumerate(namespace):
                if not isinstance(name, str) or name not in seen:
                    seen[check_namespace(name, f"namespace[{i}]")] = len(seen)
                index[i] = seen[name]
            names = list(seen)
        if names == [""]:
            return None
        new = int((self.find(names) < 0).sum())
        if self.count + new > MAX_NAMESPACES:
            raise ValueError(f"a store names at most {MAX_NAMESPACES:,} namespaces "
                             f"(lukhas_gpu.util.bounds.MAX_NAMESPACES); this add would make {self.count + new:,}")
        return names, index

    def append(self, prepared, n: int) -> None:
        """Append ``n`` rows (``prepared`` from :meth:`prepare`, or None for ``""``)."""
        if prepared is None:
            if self.column is None:
                self._rows += n
            else:
                self.column.append(np.zeros(n, np.uint32))
            return
        names, index = prepared
        ids = self.find(names)
        missing = [nm for nm, i in zip(names, ids.tolist()) if i < 0]
        if missing:
            self.table.append(encode_keys(missing, "namespace", kind="str"))
            ids = self.find(names)
        if self.column is None:
            self.column = GrowableArray(np.uint32)
            self.column.append(np.zeros(self._rows, np.uint32))
        self.column.append(ids.astype(np.uint32)[index])

    # -- reads ------------------------------------------------------------------------------------
    def rows(self, name: str) -> BitMap | None:
        """Every row (deleted ones included) in namespace ``name``; None for "every row" (``""``
        while no other namespace exists)."""
        if self.column is None:
            return None if name == "" else BitMap()
        with self._cache_lock:
            return self._rows_of(name)

    def _rows_of(self, name: str) -> BitMap:
        hit = self._cache.pop(name, None)  # a name's id never changes: the cache holds it too
        if hit is None:
            ns = int(self.find([name])[0])
            if ns < 0:
                return BitMap()
            hit = (ns, BitMap(), 0)
        ns, bm, covered = hit
        n = len(self.column)
        if covered < n:
            new = np.flatnonzero(self.column[covered:n] == ns)
            if len(new):
                bm.update((new + covered).astype(np.uint32))
        self._cache[name] = (ns, bm, n)
        while len(self._cache) > CACHED_NAMESPACES:
            self._cache.popitem(last=False)
        return bm

    def of_rows(self, rows) -> list:
        """The namespace name of each row."""
        if self.column is None:
            return [""] * len(rows)
        ids = self.column[np.asarray(rows, np.int64)]
        uniq, inv = np.unique(ids, return_inverse=True)
        names = self.names(uniq)
        return [names[i] for i in inv.tolist()]

    def counts(self, live_mask: np.ndarray) -> dict:
        """``{name: live memories}`` of every namespace holding at least one."""
        if self.column is None:
            n = int(live_mask.sum())
            return {"": n} if n else {}
        c = np.bincount(self.column.view()[live_mask], minlength=self.count)
        ids = np.flatnonzero(c)
        return dict(zip(self.names(ids), c[ids].tolist()))

    # -- persistence and accounting ---------------------------------------------------------------
    def nbytes(self) -> int:
        return 0 if self.column is None else self.table.nbytes() + self.column.nbytes() + self._cache_bytes()

    def _cache_bytes(self) -> int:
        return sum(bitmap_bytes(bm) for _, bm, _ in self._cache.values())

    def memory_usage(self) -> dict:
        return {"anon": {"namespaces": self.nbytes()},
                "reserved": {"namespaces": 0 if self.column is None else self.column.slack_bytes()}}

    def to_arrays(self) -> dict | None:
        """The name table and the column, or None while every row is in ``""``."""
        if self.column is None:
            return None
        return {"column": self.column.view().copy(), **self.table.to_arrays("names_")}

    @classmethod
    def from_arrays(cls, arrays) -> "Namespaces":
        """ValueError for arrays that do not fit together (a name table without ``""`` first,
        an id past the table)."""
        ns = cls()
        table = KeyTable.from_arrays(arrays, "names_")
        if len(table) == 0 or table.keys([0]) != [""] or len(table) > MAX_NAMESPACES:
            raise ValueError("the namespace table does not start with the default namespace ''")
        column = np.asarray(arrays["column"])
        if column.dtype != np.uint32 or column.ndim != 1:
            raise ValueError(f"the namespace column is {column.dtype} of {column.ndim} dims, expected uint32 (n,)")
        if len(column) and int(column.max()) >= len(table):
            raise ValueError(f"a row names namespace {int(column.max())}, the table holds {len(table)}")
        ns.table = table
        ns.column = GrowableArray(np.uint32)
        ns.column.append(column)
        return ns


class Validity:
    """``valid_from`` / ``valid_to`` per row (absent until a memory is given a window)."""

    def __init__(self, rows: int = 0):
        self.start: GrowableArray | None = None
        self.end: GrowableArray | None = None
        self._rows = int(rows)
        self.windowed = BitMap()  # rows whose window is not (-inf, inf)

    def __len__(self) -> int:
        return self._rows if self.start is None else len(self.start)

    @staticmethod
    def validate(n: int, valid_from=None, valid_to=None, *, current=None) -> tuple | None:
        """``(valid_from, valid_to)`` as ``(n,)`` float64 (None where not given), or None for
        neither. Scalars apply to all; ``-inf`` / ``inf`` are the open ends; NaN, a wrong length
        or ``valid_to < valid_from`` (with ``current``, the rows' present windows, for the side
        not given) raise ValueError; a non-number TypeError."""
        if valid_from is None and valid_to is None:
            return None
        out = []
        for name, v, default in (("valid_from", valid_from, -np.inf), ("valid_to", valid_to, np.inf)):
            if v is None:
                out.append(None)
                continue
            a = np.asarray(v)
            if a.dtype.kind not in "iuf" or a.dtype == np.bool_:
                raise TypeError(f"{name} must be epoch seconds (a number or one per memory), got {a.dtype}")
            a = np.broadcast_to(a.astype(np.float64), (n,)).copy() if a.ndim == 0 else a.astype(np.float64)
            if a.shape != (n,):
                raise ValueError(f"{name} has shape {a.shape}, expected ({n},) (one per memory)")
            if np.isnan(a).any():
                raise ValueError(f"{name} holds NaN")
            if (a == -default).any():
                raise ValueError(f"{name} holds {-default}: a window cannot {'start' if default < 0 else 'end'} there")
            out.append(a)
        lo = out[0] if out[0] is not None else (current[0] if current is not None else np.full(n, -np.inf))
        hi = out[1] if out[1] is not None else (current[1] if current is not None else np.full(n, np.inf))
        bad = np.flatnonzero(hi < lo)
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"valid_to ({hi[i]}) is before valid_from ({lo[i]}) for memory {i}")
        return out[0], out[1]

    def window(self, rows) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        if self.start is None:
            return np.full(len(rows), -np.inf), np.full(len(rows), np.inf)
        return self.start[rows], self.end[rows]

    def _materialize(self) -> None:
        if self.start is None:
            self.start, self.end = GrowableArray(np.float64), GrowableArray(np.float64)
            self.start.append(np.full(self._rows, -np.inf))
            self.end.append(np.full(self._rows, np.inf))

    def _mark(self, rows: np.ndarray) -> None:
        s, e = self.start[rows], self.end[rows]
        has = (s != -np.inf) | (e != np.inf)
        self.windowed.update(rows[has].astype(np.uint32))
        self.windowed.difference_update(BitMap(rows[~has].astype(np.uint32)))

    def append(self, windows, n: int) -> None:
        """Append ``n`` rows with ``windows`` (from :meth:`validate`, or None: always valid)."""
        if windows is None and self.start is None:
            self._rows += n
            return
        self._materialize()
        vf, vt = windows if windows is not None else (None, None)
        start, _ = self.start.append(vf if vf is not None else np.full(n, -np.inf))
        self.end.append(vt if vt is not None else np.full(n, np.inf))
        if windows is not None:
            self._mark(np.arange(start, start + n, dtype=np.int64))

    def set(self, rows: np.ndarray, windows) -> None:
        """New windows for ``rows`` (an update; a side given as None keeps its value)."""
        self._materialize()
        vf, vt = windows
        if vf is not None:
            self.start[rows] = vf
        if vt is not None:
            self.end[rows] = vt
        self._mark(np.asarray(rows, np.int64))

    def hidden_at(self, t: float, within: BitMap | None = None) -> BitMap:
        """Rows (among ``within``, default all) whose window excludes time ``t``."""
        cand = self.windowed if within is None else self.windowed & within
        if not cand:
            return BitMap()
        rows = np.asarray(cand.to_array(), np.int64)
        out = (self.start[rows] > t) | (self.end[rows] <= t)
        return BitMap(rows[out].astype(np.uint32))

    def expired(self, t: float) -> BitMap:
        """Rows whose window ended at or before ``t``."""
        if not self.windowed:
            return BitMap()
        rows = np.asarray(self.windowed.to_array(), np.int64)
        return BitMap(rows[self.end[rows] <= t].astype(np.uint32))

    def nbytes(self) -> int:
        return 0 if self.start is None else self.start.nbytes() + self.end.nbytes() + bitmap_bytes(self.windowed)

    def memory_usage(self) -> dict:
        slack = 0 if self.start is None else self.start.slack_bytes() + self.end.slack_bytes()
        return {"anon": {"validity": self.nbytes()}, "reserved": {"validity": slack}}

    def to_arrays(self) -> dict | None:
        if self.start is None:
            return None
        return {"valid_from": self.start.view().copy(), "valid_to": self.end.view().copy()}

    @classmethod
    def from_arrays(cls, arrays) -> "Validity":
        v = cls()
        s, e = np.asarray(arrays["valid_from"]), np.asarray(arrays["valid_to"])
        if s.dtype != np.float64 or e.dtype != np.float64 or s.shape != e.shape or s.ndim != 1:
            raise ValueError(f"validity columns {s.dtype}{s.shape} / {e.dtype}{e.shape} do not fit together")
        if np.isnan(s).any() or np.isnan(e).any() or (e < s).any():
            raise ValueError("a validity window holds NaN or ends before it starts")
        v.start, v.end = GrowableArray(np.float64), GrowableArray(np.float64)
        v.start.append(s)
        v.end.append(e)
        v._mark(np.arange(len(s), dtype=np.int64))
        return v


#: A name table entry: a kind byte, a 16-byte slot and a 4-byte hash order (``records.keytable``);
#: names longer than 16 UTF-8 bytes add their bytes to its arena.
_NAME_ENTRY_BYTES = 21


def planned_bytes(count: int, namespaces: int = 1, windows: float = 0.0, *, avg_name_bytes: float = 16) -> dict:
    """The bytes of :class:`Namespaces` and :class:`Validity` over ``count`` rows, as their
    ``memory_usage()`` names them, plus ``disk`` (their npz files): ``namespaces`` distinct names
    (1: every memory in ``""``, no column at all), the memories spread evenly, and the row bitmaps
    of :data:`CACHED_NAMESPACES` of them cached (after searches in that many); ``windows``: the
    share of memories given a validity window (0: no columns)."""
    anon: dict = {}
    disk: dict = {}
    if namespaces > 1 and count:
        table = (namespaces + 1) * (_NAME_ENTRY_BYTES + (avg_name_bytes if avg_name_bytes > 16 else 0))
        per = count / namespaces
        cached = planned_bitmap_bytes([per] * min(namespaces, CACHED_NAMESPACES), count)
        anon["namespaces"] = 4 * count + table + cached
        disk["namespaces"] = 4 * count + table + 6 * NPZ_MEMBER_BYTES
    if windows > 0 and count:
        windowed = planned_bitmap_bytes([windows * count], count)
        anon["validity"] = 16 * count + windowed
        disk["validity"] = 16 * count + 2 * NPZ_MEMBER_BYTES
    return {"anon": anon, "disk": disk}
