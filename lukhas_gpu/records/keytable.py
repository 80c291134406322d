"""``KeyTable``: a compact, append-only table of str / int64 keys with hashed lookup, and no
Python object per key.

Each entry is one ``uint8`` kind and a 16-byte slot (two ``uint64`` columns ``a`` and ``b``):

=================  ==========================================================================
kind               slot
=================  ==========================================================================
``NONE`` (0)       no key (never found)
``INT`` (1)        ``a`` = the int64 value
``UUID`` (2, 3)    a canonical 36-char UUID, lower (2) or upper (3) case hex: its 128 bits
``SHORT`` (16+n)   a str of ``n <= 16`` UTF-8 bytes, inline (zero padded)
``LONG`` (4)       a longer str: ``a`` = its 64-bit BLAKE2b, ``b`` = offset << 24 | length in
                   the table's byte arena
=================  ==========================================================================

so a 36-char UUID costs 17 B and ``"doc-000123"`` 17 B. Lookup: entries are kept sorted by a
64-bit hash of their slot in ``order`` (``uint32``, 4 B per entry; the hash is recomputed from
the slots during the vectorised binary search rather than stored), plus an unsorted tail of the
latest entries, merged into the sorted part once it outgrows ``max(4096, n / 32)``. 21 B per
key plus the bytes of long strings.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..util.bounds import MAX_ID, MIN_ID
from .columns import GrowableArray

__all__ = ["KeyTable", "encode_keys", "MAX_KEY_BYTES", "KIND_NONE", "KIND_INT", "KIND_LONG"]

KIND_NONE, KIND_INT, KIND_UUID_LOWER, KIND_UUID_UPPER, KIND_LONG, KIND_SHORT = 0, 1, 2, 3, 4, 16
#: Longest str key accepted (UTF-8 bytes).
MAX_KEY_BYTES = 1024
_HEX = frozenset("0123456789abcdefABCDEF")
_M1, _M2, _M3 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
_TAIL_MIN = 4096


def _mix(h: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * _M1
        h = (h ^ (h >> np.uint64(27))) * _M2
        return h ^ (h >> np.uint64(31))


def slot_hash(kind: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 64-bit hash of slots (vectorised); a LONG key hashes by its BLAKE2b alone."""
    kind = np.asarray(kind, dtype=np.uint64)
    b = np.where(kind == KIND_LONG, np.uint64(0), np.asarray(b, dtype=np.uint64))
    with np.errstate(over="ignore"):
        return _mix(_mix(np.asarray(a, dtype=np.uint64) ^ (kind * _M3)) ^ b)


def _uuid_kind(s: str) -> int:
    if len(s) != 36 or s[8] != "-" or s[13] != "-" or s[18] != "-" or s[23] != "-":
        return 0
    h = s[:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
    if not set(h) <= _HEX:
        return 0
    if h == h.lower():
        return KIND_UUID_LOWER
    return KIND_UUID_UPPER if h == h.upper() else 0


def encode_keys(keys, what: str = "ids", *, kind: str | None = None):
    """``(kinds uint8, a uint64, b uint64, long_bytes list)`` for a sequence of keys.

    ``kind`` ("str" or "int") restricts the keys to that type. LONG keys get ``b = 0`` here
    (their place in the arena is set by :meth:`KeyTable.append`); ``long_bytes[i]`` is their UTF-8.

    Raises
    ------
    TypeError
        A key that is not a str / int (or not of ``kind``), a bool.
    ValueError
        A str over ``MAX_KEY_BYTES`` UTF-8 bytes or not valid UTF-8 (lone surrogates), an int
        outside int64.
    """
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__len__"):
        raise TypeError(f"{what} must be a sequence of keys, got {type(keys).__name__}")
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu" and kind != "str":
        k64 = keys.astype(np.int64).ravel()
        if keys.dtype.kind == "u" and (keys > np.iinfo(np.int64).max).any():
            raise ValueError(f"{what}: int keys must fit in int64")
        n = len(k64)
        return np.full(n, KIND_INT, np.uint8), k64.view(np.uint64).copy(), np.zeros(n, np.uint64), [None] * n
    n = len(keys)
    kinds = np.zeros(n, np.uint8)
    a = np.zeros(n, np.uint64)
    b = np.zeros(n, np.uint64)
    longs: list = [None] * n
    for i, k in enumerate(keys):
        if isinstance(k, str) and kind != "int":
            uk = _uuid_kind(k)
            if uk:
                v = int(k.replace("-", ""), 16)
                kinds[i], a[i], b[i] = uk, v >> 64, v & 0xFFFFFFFFFFFFFFFF
                continue
            try:
                raw = k.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{what}[{i}] is not valid UTF-8 text (lone surrogate)") from None
            if len(raw) > MAX_KEY_BYTES:
                raise ValueError(f"{what}[{i}] is {len(raw)} UTF-8 bytes; at most {MAX_KEY_BYTES}")
            if len(raw) <= 16:
                pad = np.frombuffer(raw.ljust(16, b"\0"), dtype="<u8")
                kinds[i], a[i], b[i] = KIND_SHORT + len(raw), pad[0], pad[1]
            else:
                kinds[i] = KIND_LONG
                a[i] = np.frombuffer(hashlib.blake2b(raw, digest_size=8).digest(), dtype="<u8")[0]
                longs[i] = raw
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) and kind != "str":
            if not MIN_ID <= int(k) <= MAX_ID:
                raise ValueError(f"{what}[{i}] = {int(k)} is outside int64")
            kinds[i], a[i] = KIND_INT, np.uint64(int(k) & 0xFFFFFFFFFFFFFFFF)
        else:
            want = {"str": "a str", "int": "an int"}.get(kind, "a str or an int")
            raise TypeError(f"{what}[{i}] must be {want}, got {type(k).__name__}")
    return kinds, a, b, longs


class KeyTable:
    """Keys in append order (entry ``i`` is the ``i``-th key appended) with hashed lookup."""

    def __init__(self):
        self.kind = GrowableArray(np.uint8)
        self.a = GrowableArray(np.uint64)
        self.b = GrowableArray(np.uint64)
        self.arena = GrowableArray(np.uint8)
        self.order = np.zeros(0, np.uint32)  # entries [0, n_sorted) sorted by slot hash
        self._tail_sorted: tuple | None = None  # (hashes, entries) of the tail, sorted; a cache

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def n_sorted(self) -> int:
        return len(self.order)

    # -- writes -------------------------------------------------------------------------------
    def append(self, encoded) -> None:
        """Append keys encoded by :func:`encode_keys`."""
        kinds, a, b, longs = encoded
        b = b.copy()
        for i, raw in enumerate(longs):
            if raw is not None:
                start, _ = self.arena.append(np.frombuffer(raw, dtype=np.uint8))
                b[i] = (start << 24) | len(raw)
        self.kind.append(kinds)
        self.a.append(a)
        self.b.append(b)
        self._tail_sorted = None
        if len(self) - self.n_sorted > max(_TAIL_MIN, len(self) // 32):
            self.merge()

    def merge(self) -> None:
        """Sort every entry into ``order`` (the tail becomes empty)."""
        h = slot_hash(self.kind.view(), self.a.view(), self.b.view())
        self.order = np.argsort(h, kind="stable").astype(np.uint32)
        self._tail_sorted = None

    # -- reads --------------------------------------------------------------------------------
    def _hash_of(self, entries: np.ndarray) -> np.ndarray:
        return slot_hash(self.kind[entries], self.a[entries], self.b[entries])

    def _long_bytes(self, entry: int) -> bytes:
        b = int(self.b[entry])
        off, ln = b >> 24, b & 0xFFFFFF
        return self.arena[off:off + ln].tobytes()

    def _same(self, entries: np.ndarray, kinds, a, b, longs, qi: np.ndarray) -> np.ndarray:
        """Whether ``entries`` hold the queried keys ``qi`` exactly."""
        k = self.kind[entries]
        same = (k == kinds[qi]) & (self.a[entries] == a[qi]) & (k != KIND_NONE)
        plain = k != KIND_LONG
        same &= ~plain | (self.b[entries] == b[qi])
        for j in np.flatnonzero(same & ~plain):
            same[j] = self._long_bytes(int(entries[j])) == longs[qi[j]]
        return same

    def lookup(self, encoded) -> tuple[np.ndarray, np.ndarray]:
        """Every entry holding each queried key: ``(query index, entry)`` pairs (int64)."""
        kinds, a, b, longs = encoded
        q = len(kinds)
        if q == 0 or len(self) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        target = slot_hash(kinds, a, b)
        out_q, out_e = [], []
        m = self.n_sorted
        if m:  # lower bound of each target among the sorted entries, hashing as it goes
            lo, hi = np.zeros(q, np.int64), np.full(q, m, np.int64)
            while True:
                act = lo < hi
                if not act.any():
                    break
                mid = (lo + hi) // 2
                hm = self._hash_of(self.order[np.minimum(mid, m - 1)])
                right = act & (hm < target)
                lo = np.where(right, mid + 1, lo)
                hi = np.where(act & ~right, mid, hi)
            qi, pos = np.arange(q), lo
            while len(qi):
                ok = pos < m
                qi, pos = qi[ok], pos[ok]
                ent = self.order[pos].astype(np.int64)
                eq = self._hash_of(ent) == target[qi]
                qi, pos, ent = qi[eq], pos[eq], ent[eq]
                same = self._same(ent, kinds, a, b, longs, qi)
                out_q.append(qi[same])
                out_e.append(ent[same])
                pos = pos + 1
        if len(self) > m:  # the tail
            if self._tail_sorted is None:
                ent = np.arange(m, len(self), dtype=np.int64)
                h = self._hash_of(ent)
                o = np.argsort(h, kind="stable")
                self._tail_sorted = (h[o], ent[o])
            th, te = self._tail_sorted
            lo = np.searchsorted(th, target, "left")
            hi = np.searchsorted(th, target, "right")
            counts = hi - lo
            if counts.any():
                qi = np.repeat(np.arange(q), counts)
                idx = np.concatenate([np.arange(x, y) for x, y in zip(lo[counts > 0], hi[counts > 0])])
                ent = te[idx]
                same = self._same(ent, kinds, a, b, longs, qi)
                out_q.append(qi[same])
                out_e.append(ent[same])
        if not out_q:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(out_q).astype(np.int64), np.concatenate(out_e).astype(np.int64)

    def keys(self, entries) -> list:
        """The keys of ``entries`` (str, int, or None for ``NONE``)."""
        entries = np.asarray(entries, dtype=np.int64)
        kinds, a, b = self.kind[entries], self.a[entries], self.b[entries]
        out: list = []
        for e, k, x, y in zip(entries.tolist(), kinds.tolist(), a.tolist(), b.tolist()):
            if k == KIND_INT:
                out.append(x - (1 << 64) if x >= 1 << 63 else x)
            elif k in (KIND_UUID_LOWER, KIND_UUID_UPPER):
                h = f"{(x << 64) | y:032x}"
                s = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
                out.append(s.upper() if k == KIND_UUID_UPPER else s)
            elif k >= KIND_SHORT:
                out.append(np.array([x, y], dtype="<u8").tobytes()[:k - KIND_SHORT].decode("utf-8"))
            elif k == KIND_LONG:
                out.append(self._long_bytes(e).decode("utf-8"))
            else:
                out.append(None)
        return out

    # -- persistence and accounting --------------------------------------------------------------
    def nbytes(self) -> int:
        return int(self.kind.nbytes() + self.a.nbytes() + self.b.nbytes() + self.arena.nbytes() + self.order.nbytes)

    def slack_bytes(self) -> int:
        return int(sum(c.slack_bytes() for c in (self.kind, self.a, self.b, self.arena)))

    def to_arrays(self, prefix: str = "") -> dict:
        return {f"{prefix}kind": self.kind.view().copy(), f"{prefix}a": self.a.view().copy(),
                f"{prefix}b": self.b.view().copy(), f"{prefix}arena": self.arena.view().copy(),
                f"{prefix}order": self.order.copy()}

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "KeyTable":
        """Rebuild a table, checking that its arrays fit together (ValueError otherwise)."""
        t = cls()
        kind, a, b = (np.asarray(arrays[prefix + x]) for x in ("kind", "a", "b"))
        arena, order = np.asarray(arrays[prefix + "arena"]), np.asarray(arrays[prefix + "order"])
        n = len(kind)
        if len(a) != n or len(b) != n or len(order) > n or kind.dtype != np.uint8 \
                or a.dtype != np.uint64 or b.dtype != np.uint64 or arena.dtype != np.uint8:
            raise ValueError(f"key table {prefix!r}: arrays of {n} kinds, {len(a)}/{len(b)} slots, "
                             f"{len(order)} sorted do not fit together")
        longs = kind == KIND_LONG
        ends = (b[longs] >> np.uint64(24)) + (b[longs] & np.uint64(0xFFFFFF))
        if len(ends) and int(ends.max()) > len(arena):
            raise ValueError(f"key table {prefix!r}: a long key points past its arena ({len(arena)} bytes)")
        t.kind.append(kind)
        t.a.append(a)
        t.b.append(b)
        t.arena.append(arena)
        order = order.astype(np.uint32)
        m = len(order)
        if m and (int(order.max()) >= m or np.bincount(order, minlength=m).max() != 1):
            raise ValueError(f"key table {prefix!r}: its sort order is not a permutation of its first {m} entries")
        h = t._hash_of(order.astype(np.int64))
        if m > 1 and np.any(h[1:] < h[:-1]):
            raise ValueError(f"key table {prefix!r}: its sort order does not follow the keys' hashes")
        t.order = order
        return t
