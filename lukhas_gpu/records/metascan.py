"""Filters on metadata keys never declared: a vectorised scan of the binary metadata records.

:class:`~.docmeta.DocMetadata` keeps each row's free dict as one self-delimiting record (its
format is documented there). A condition on an undeclared key walks every record's top-level
pairs in lock step with numpy (one step per pair position, all rows at once), skipping values it
does not need (nested lists and dicts included, also in lock step), then reads only the found
values' tags and scalars into a :class:`KeyValues` (a few numpy arrays over the rows holding the
key). A :class:`ScanCache` keeps the most recently used keys' values within
``SCAN_CACHE_BYTES``: a repeated filter on the same key costs a column scan, appended rows are
scanned alone and added, and a replace or compaction of the records (``DocMetadata.version``)
drops them.

Semantics are those of :func:`lukhas_gpu.query.metafilter.matches` (plain Python): ``None`` is
absent; ``$eq``/``$in`` compare like ``==`` with bools apart from numbers; ranges hold between
numbers (int or float, never bool) or between strs, never across kinds; ``$ne``/``$nin`` are the
complement of ``$eq``/``$in`` (they hold where the key is absent); lists and dicts equal nothing.
"""
from __future__ import annotations

import numpy as np

__all__ = ["KeyValues", "ScanCache", "locate", "mask", "SCAN_CACHE_BYTES"]

#: Bytes of decoded key values one store keeps between filters (least recently used dropped first;
#: a key whose values alone are larger is never kept: about 45 B per row holding it).
SCAN_CACHE_BYTES = 64 << 20

_RANGES = ("$gt", "$gte", "$lt", "$lte")
#: ``$in`` lists of strs longer than this are matched by decoding each str value (a set lookup)
#: rather than one vectorised byte comparison per listed value.
_NEEDLE_LOOP_MAX = 16


def _varint(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned LEB128 varints at ``pos`` (all at once): ``(values uint64, positions after)``.
    Most are one byte (key codes, counts, short lengths): only the others loop."""
    b = buf[pos]
    val = (b & 0x7F).astype(np.uint64)
    out = pos + 1
    act = np.flatnonzero(b >= 0x80)
    shift = 7
    while len(act):
        b = buf[out[act]]
        val[act] |= (b & 0x7F).astype(np.uint64) << np.uint64(shift)
        out[act] += 1
        act = act[b >= 0x80]
        shift += 7
        if len(act) and shift > 63:
            raise ValueError("corrupt metadata record: a varint longer than 10 bytes")
    return val, out


def _skip_values(buf: np.ndarray, pos: np.ndarray, counts: np.ndarray, *, keyed: bool, depth: int) -> np.ndarray:
    """Positions after ``counts[i]`` values (``keyed``: key, value pairs) starting at ``pos[i]``."""
    pos, counts = pos.copy(), counts.astype(np.int64)
    act = np.flatnonzero(counts > 0)
    while len(act):
        p = pos[act]
        if keyed:
            _, p = _varint(buf, p)
        pos[act] = _skip(buf, p, depth + 1)
        counts[act] -= 1
        act = act[counts[act] > 0]
    return pos


def _skip(buf: np.ndarray, pos: np.ndarray, depth: int = 0) -> np.ndarray:
    """Positions after the value whose tag is at ``pos`` (each row its own type)."""
    if depth > 64:
        raise ValueError("corrupt metadata record: nested deeper than any valid record")
    t = buf[pos]
    out = pos + 1
    for tag, keyed in ((3, None), (5, None), (6, False), (7, True)):
        sel = np.flatnonzero(t == tag)
        if not len(sel):
            continue
        v, after = _varint(buf, pos[sel] + 1)
        if tag == 3:
            out[sel] = after
        elif tag == 5:
            out[sel] = after + v.astype(np.int64)
        else:
            out[sel] = _skip_values(buf, after, v, keyed=keyed, depth=depth)
    out[t == 4] += 8
    bad = (t > 7) & (t < 0x80)
    if bad.any():
        raise ValueError(f"corrupt metadata record: value tag {int(t[bad][0])}")
    return out


def locate(buf: np.ndarray, starts: np.ndarray, none: int, code: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose top-level dict holds key ``code``, and the position of each one's value tag
    (both int64, rows ascending)."""
    rows = np.flatnonzero(starts != none)
    cnt, pos = _varint(buf, starts[rows].astype(np.int64))
    cnt = cnt.astype(np.int64)
    keep = cnt > 0
    rows, pos, cnt = rows[keep], pos[keep], cnt[keep]
    found_r, found_p = [], []
    while len(rows):
        k, pos = _varint(buf, pos)
        hit = k == code
        found_r.append(rows[hit])
        found_p.append(pos[hit])
        miss = ~hit  # a key occurs once per dict: a found row is done
        rows, pos, cnt = rows[miss], _skip(buf, pos[miss]), cnt[miss] - 1
        more = cnt > 0
        rows, pos, cnt = rows[more], pos[more], cnt[more]
    if not found_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    r, p = np.concatenate(found_r), np.concatenate(found_p)
    order = np.argsort(r, kind="stable")
    return r[order], p[order]


class KeyValues:
    """The top-level values of one key over rows ``[0, n)``, decoded to typed arrays once.

    ``rows`` (the rows holding the key, ``None`` values included), ``tag``, and per kind: ``ival``
    (int64, ints), ``fval`` (float64, floats), ``spos``/``slen`` (the UTF-8 bytes of strs)."""

    def __init__(self, buf: np.ndarray, starts: np.ndarray | None, none: int, code: int | None, n: int,
                 first: int = 0):
        self.buf, self.n = buf, n
        if starts is None or code is None or first >= n:
            rows = pos = np.zeros(0, np.int64)
        else:
            rows, pos = locate(buf, starts[first:n], none, code)
            rows += first
        self.rows, self.tag = rows, buf[pos] if len(pos) else np.zeros(0, np.uint8)
        t = self.tag
        self.is_int = (t >= 0x80) | (t == 3)
        self.is_float = t == 4
        self.is_str = t == 5
        self.is_bool = (t == 1) | (t == 2)
        self.ival = np.where(t >= 0x80, t & 0x7F, 0).astype(np.int64)
        big = np.flatnonzero(t == 3)
        if len(big):
            z, _ = _varint(buf, pos[big] + 1)
            self.ival[big] = ((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.int64)
        self.fval = np.zeros(len(t), np.float64)
        fl = np.flatnonzero(self.is_float)
        if len(fl):
            self.fval[fl] = buf[pos[fl, None] + 1 + np.arange(8)].copy().view("<f8").ravel()
        self.spos = np.zeros(len(t), np.int64)
        self.slen = np.zeros(len(t), np.int64)
        st = np.flatnonzero(self.is_str)
        if len(st):
            ln, after = _varint(buf, pos[st] + 1)
            self.spos[st], self.slen[st] = after, ln.astype(np.int64)

    _ARRAYS = ("rows", "tag", "is_int", "is_float", "is_str", "is_bool", "ival", "fval", "spos", "slen")

    def nbytes(self) -> int:
        return int(sum(getattr(self, a).nbytes for a in self._ARRAYS))

    def extend(self, tail: "KeyValues") -> "KeyValues":
        """These values followed by ``tail``'s (the rows appended since: ``tail.rows`` past ours)."""
        for a in self._ARRAYS:
            setattr(self, a, np.concatenate([getattr(self, a), getattr(tail, a)]))
        self.buf, self.n = tail.buf, tail.n
        return self

    def _strs(self, sel: np.ndarray) -> list:
        mv = memoryview(self.buf)
        return [str(mv[p:p + n], "utf-8") for p, n in zip(self.spos[sel].tolist(), self.slen[sel].tolist())]

    def _eq(self, x) -> np.ndarray:
        """Over the found values: which equal ``x``."""
        if isinstance(x, bool):
            return self.is_bool & ((self.tag == 2) == x)
        if isinstance(x, int):
            return (self.is_int & (self.ival == x)) | (self.is_float & (self.fval == x) & (float(x) == x))
        if isinstance(x, float):
            hit = self.is_float & (self.fval == x)
            if x.is_integer() and -2.0**63 <= x < 2.0**63:
                hit |= self.is_int & (self.ival == int(x))
            return hit
        raw = x.encode("utf-8")
        hit = self.is_str & (self.slen == len(raw))
        cand = np.flatnonzero(hit)
        if len(cand) and len(raw):
            got = self.buf[self.spos[cand, None] + np.arange(len(raw))]
            hit[cand] = (got == np.frombuffer(raw, np.uint8)).all(axis=1)
        return hit

    def _in(self, xs) -> np.ndarray:
        strs = [x for x in xs if isinstance(x, str)]
        hit = np.zeros(len(self.tag), bool)
        if len(strs) > _NEEDLE_LOOP_MAX:
            want = set(strs)
            sel = np.flatnonzero(self.is_str)
            hit[sel] = [s in want for s in self._strs(sel)]
            xs = [x for x in xs if not isinstance(x, str)]
        nums = [x for x in xs if not isinstance(x, (str, bool))]
        if nums:
            ints = [x for x in nums if isinstance(x, int)] + [int(x) for x in nums if isinstance(x, float)
                                                               and x.is_integer() and -2.0**63 <= x < 2.0**63]
            floats = [float(x) for x in nums if isinstance(x, float) or float(x) == x]
            hit |= self.is_int & np.isin(self.ival, np.array(ints, np.int64))
            hit |= self.is_float & np.isin(self.fval, np.array(floats, np.float64))
        for x in xs:
            if isinstance(x, (str, bool)):
                hit |= self._eq(x)
        return hit

    def _range(self, op: str, x) -> np.ndarray:
        cmp = {"$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
        if isinstance(x, str):
            hit = np.zeros(len(self.tag), bool)
            sel = np.flatnonzero(self.is_str)
            hit[sel] = cmp(np.array(self._strs(sel), dtype=object), x).astype(bool) if len(sel) else False
            return hit
        return (self.is_int & cmp(self.ival, x)) | (self.is_float & cmp(self.fval, x))

    def mask(self, op: str, value) -> np.ndarray:
        """Rows ``[0, n)`` that satisfy ``op value`` (see the module docstring)."""
        if op in _RANGES and isinstance(value, bool):
            raise TypeError(f"{op} {value!r}: ranges compare numbers or strs, not bools")
        if op == "$exists":
            found = self.tag != 0
        elif op in ("$eq", "$ne"):
            found = self._eq(value)
        elif op in ("$in", "$nin"):
            found = self._in(value)
        else:
            found = self._range(op, value)
        out = np.zeros(self.n, bool)
        out[self.rows[found]] = True
        if op in ("$ne", "$nin") or (op == "$exists" and not value):
            return ~out
        return out


class ScanCache:
    """Decoded values of the keys filtered most recently, within ``max_bytes``; valid while the
    records' ``version`` holds (appends only: the new rows are scanned and added)."""

    def __init__(self, max_bytes: int = SCAN_CACHE_BYTES):
        self.max_bytes, self.version = int(max_bytes), 0
        self.entries: dict[str, KeyValues] = {}

    def nbytes(self) -> int:
        return int(sum(kv.nbytes() for kv in self.entries.values()))

    def get(self, name: str, version: int, buf, starts, none: int, code: int | None, n: int) -> KeyValues:
        if version != self.version:
            self.entries.clear()
            self.version = version
        kv = self.entries.pop(name, None)
        if kv is None or kv.n > n:
            kv = KeyValues(buf, starts, none, code, n)
        elif kv.n < n:
            kv = kv.extend(KeyValues(buf, starts, none, code, n, first=kv.n))
        else:
            kv.buf = buf  # the records' current array (offsets hold: appends never move a record)
        if kv.nbytes() <= self.max_bytes:
            self.entries[name] = kv  # the most recent last
            while self.nbytes() > self.max_bytes:
                self.entries.pop(next(iter(self.entries)))
        return kv


def mask(buf, starts, none: int, code: int | None, n: int, op: str, value) -> np.ndarray:
    """Rows ``[0, n)`` whose key ``code`` satisfies ``op value`` (one condition, one pass)."""
    return KeyValues(buf, starts, none, code, n).mask(op, value)
