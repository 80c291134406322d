"""Free metadata: one JSON-like dict per memory, packed, and declared fields as filterable columns.

A dict (str keys; values None, bool, int64, float, str, lists and dicts of these, nested) is
validated and logged as compact JSON, then stored as a self-delimiting binary record in one
byte arena (``uint32`` offset per row, widened to ``uint64`` past 4 GiB; rows without metadata
cost only the offset, and nothing at all while no memory of the index has metadata). Keys are
interned in a :class:`~.keytable.KeyTable`: a key is one varint. Value tags::

    0 None   1 False   2 True   3 int (zigzag varint)   4 float (8 B)   5 str (varint length, UTF-8)
    6 list (varint count, values)   7 dict (varint count, (key code, value) pairs)
    0x80 | v: an int 0 <= v < 128 in one byte

so ``{"source": "email", "turn": 17}`` is 11 B. Round trips are exact: an int stays an int,
1.0 stays a float, key order is kept (declared fields, stored in their columns, come back after
the free keys, in declaration order).

Fields declared in ``IndexConfig.metadata_fields`` (``{name: "str" | "int" | "float" | "bool"}``)
live in packed columns that filters scan (a filter on any other top-level key scans the records,
:mod:`.metascan`): ``str`` as a ``uint32`` code into an interned
vocabulary (0: absent), ``int`` int64 and ``float`` float64 with a roaring bitmap of the rows
that have one, ``bool`` as one byte (0 absent, 1 false, 2 true). A declared field's value must
be of its type (None is kept as a free value and counts as absent).
"""
from __future__ import annotations

import json
import struct

import numpy as np
from pyroaring import BitMap

from ..config import METADATA_FIELD_TYPES as FIELD_TYPES
from . import metascan
from .columns import GrowableArray
from .keytable import KeyTable, encode_keys

__all__ = ["DocMetadata", "validate_metadata", "check_fields", "FIELD_TYPES", "MAX_METADATA_BYTES", "MAX_DEPTH"]

#: Largest metadata dict accepted, as compact JSON (UTF-8 bytes).
MAX_METADATA_BYTES = 65536
#: Deepest nesting of lists and dicts accepted.
MAX_DEPTH = 32
_F64 = struct.Struct("<d")
_KEY_CACHE = 65536


def check_fields(fields) -> dict:
    """``{name: type}`` from a dict or ``IndexConfig.metadata_fields`` pairs (checked there)."""
    if not fields:
        return {}
    return dict(fields.items() if isinstance(fields, dict) else fields)


def _check_value(v, where: str, depth: int) -> None:
    if v is None or isinstance(v, (bool, str)):
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{where}: str is not valid UTF-8 (lone surrogate)") from None
        return
    if isinstance(v, int):
        if not -2**63 <= v < 2**63:
            raise ValueError(f"{where}: int {v} is outside int64")
        return
    if isinstance(v, float):
        return
    if depth >= MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_value(x, f"{where}[{i}]", depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {type(k).__name__} {k!r}")
            _check_value(k, f"{where} key", depth + 1)
            _check_value(x, f"{where}[{k!r}]", depth + 1)
        return
    hint = " (pass a list)" if isinstance(v, tuple) else " (pass .item())" if isinstance(v, np.generic) else ""
    raise TypeError(f"{where}: {type(v).__name__} is not a metadata value (None, bool, int, float, str, "
                    f"list, dict){hint}")


def _type_ok(t: str, v) -> bool:
    if t == "str":
        return isinstance(v, str)
    if t == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "float":
        return isinstance(v, float)
    return isinstance(v, bool)


def validate_metadata(items, n: int, fields: dict) -> list:
    """One batch checked: a list of ``n`` compact JSON texts (None where a memory has none).

    Raises
    ------
    TypeError, ValueError
        Not a sequence of ``n`` dicts / None, a value of no allowed type (the message names the
        memory and the key), an int outside int64, a declared field of the wrong type, a dict
        over ``MAX_METADATA_BYTES`` as JSON or nested deeper than ``MAX_DEPTH``.
    """
    if isinstance(items, dict) or isinstance(items, (str, bytes)) or not hasattr(items, "__len__"):
        raise TypeError(f"metadata must be a sequence of dicts (or None), one per memory, got {type(items).__name__}")
    if len(items) != n:
        raise ValueError(f"metadata has {len(items)} entries, expected {n} (one per memory)")
    out: list = []
    for i, d in enumerate(items):
        if d is None:
            out.append(None)
            continue
        if not isinstance(d, dict):
            raise TypeError(f"metadata[{i}] must be a dict or None, got {type(d).__name__}")
        try:
            _check_value(d, f"metadata[{i}]", 0)
        except RecursionError:
            raise ValueError(f"metadata[{i}] is nested too deeply (or contains itself)") from None
        for name, t in fields.items():
            if name in d and d[name] is not None and not _type_ok(t, d[name]):
                raise TypeError(f"metadata[{i}][{name!r}] is declared {t} (IndexConfig.metadata_fields), "
                                f"got {type(d[name]).__name__} {d[name]!r}")
        text = json.dumps(d, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
        if len(text.encode("utf-8")) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata[{i}] is {len(text.encode('utf-8'))} bytes as JSON; "
                             f"at most {MAX_METADATA_BYTES}")
        out.append(text)
    return out


def _varint(out: bytearray, v: int) -> None:
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos

    def varint(self) -> int:
        v = shift = 0
        while True:
            b = self.buf[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            if b < 0x80:
                return v
            shift += 7


class _Column:
    """One declared field's packed column."""

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.vocab = KeyTable() if kind == "str" else None
        dtype = {"str": np.uint32, "int": np.int64, "float": np.float64, "bool": np.uint8}[kind]
        self.values = GrowableArray(dtype)
        self.present = BitMap() if kind in ("int", "float") else None

    def codes_for(self, strings: list, *, add: bool) -> np.ndarray:
        """Vocabulary codes (entry + 1) of ``strings``; 0 for unknown ones unless ``add``."""
        codes = np.zeros(len(strings), np.int64)
        if not strings:
            return codes
        uniq = list(dict.fromkeys(strings))
        qi, ent = self.vocab.lookup(encode_keys(uniq, self.name))
        code = dict(zip((uniq[i] for i in qi.tolist()), (ent + 1).tolist()))
        missing = [s for s in uniq if s not in code]
        if missing and add:
            start = len(self.vocab)
            self.vocab.append(encode_keys(missing, self.name))
            code.update((s, start + 1 + j) for j, s in enumerate(missing))
        return np.array([code.get(s, 0) for s in strings], np.int64)

    def write(self, rows: np.ndarray | None, values: list, start: int | None = None) -> None:
        """Set the rows' values (None: absent); ``rows=None`` appends."""
        n = len(values)
        have = np.array([v is not None for v in values], bool)
        if self.kind == "str":
            col = np.zeros(n, np.uint32)
            col[have] = self.codes_for([v for v in values if v is not None], add=True)
        elif self.kind == "bool":
            col = np.array([0 if v is None else 2 if v else 1 for v in values], np.uint8)
        else:
            col = np.array([0 if v is None else v for v in values], self.values.dtype)
        if rows is None:
            s, _ = self.values.append(col)
            rows = np.arange(s, s + n)
        else:
            self.values[rows] = col
        if self.present is not None:
            rows = np.asarray(rows, np.int64)
            self.present -= BitMap(rows[~have].astype(np.uint32))
            self.present |= BitMap(rows[have].astype(np.uint32))

    def get(self, rows: np.ndarray) -> list:
        v = self.values[rows]
        if self.kind == "str":
            out: list = [None] * len(rows)
            nz = np.flatnonzero(v)
            for j, s in zip(nz.tolist(), self.vocab.keys(v[nz].astype(np.int64) - 1)):
                out[j] = s
            return out
        if self.kind == "bool":
            return [None if x == 0 else x == 2 for x in v.tolist()]
        has = [r in self.present for r in np.asarray(rows).tolist()]
        return [x if h else None for x, h in zip(v.tolist(), has)]

    def mask(self, op: str, value, n: int) -> np.ndarray:
        """Rows ``[0, n)`` whose value satisfies ``op value`` (absent rows never do, but ``$ne``,
        ``$nin`` and ``$exists: False`` hold for them)."""
        v = self.values[:n]
        if self.present is not None:
            exists = np.zeros(n, bool)
            idx = np.asarray(self.present.to_array(), np.int64)
            exists[idx[idx < n]] = True
        else:
            exists = v != 0
        if op == "$exists":
            return exists if value else ~exists
        vals = value if op in ("$in", "$nin") else [value]
        for x in vals:
            if not _type_ok(self.kind, x) \
                    and not (self.kind == "float" and isinstance(x, int) and not isinstance(x, bool)) \
                    and not (self.kind == "int" and isinstance(x, float) and op in ("$gt", "$gte", "$lt", "$lte")):
                raise TypeError(f"filter on {self.name!r} (declared {self.kind}): {op} {x!r} is a {type(x).__name__}")
        if self.kind == "str":
            if op not in ("$eq", "$ne", "$in", "$nin"):
                raise TypeError(f"filter on {self.name!r} (declared str): {op} is not supported; "
                                f"use $eq, $ne, $in, $nin")
            codes = self.codes_for(list(vals), add=False)
            hit = np.isin(v, codes[codes > 0].astype(np.uint32))
        elif self.kind == "bool":
            if op not in ("$eq", "$ne", "$in", "$nin"):
                raise TypeError(f"filter on {self.name!r} (declared bool): {op} is not supported")
            hit = np.isin(v, np.array([2 if x else 1 for x in vals], np.uint8))
        elif op in ("$eq", "$ne", "$in", "$nin"):
            hit = np.isin(v, np.array(vals, v.dtype)) & exists
        else:
            x = value
            hit = {"$gt": v > x, "$gte": v >= x, "$lt": v < x, "$lte": v <= x}[op] & exists
        return ~hit if op in ("$ne", "$nin") else hit & exists

    def nbytes(self) -> int:
        n = self.values.nbytes() + (self.vocab.nbytes() if self.vocab is not None else 0)
        return int(n + (len(self.present.serialize()) if self.present is not None else 0))

    def to_arrays(self, p: str) -> dict:
        out = {p + "values": self.values.view().copy()}
        if self.vocab is not None:
            out.update(self.vocab.to_arrays(p + "vocab_"))
        if self.present is not None:
            out[p + "present"] = np.frombuffer(self.present.serialize(), np.uint8).copy()
        return out

    def load(self, arrays, p: str) -> None:
        vals = np.asarray(arrays[p + "values"])
        if vals.dtype != self.values.dtype:
            raise ValueError(f"field {self.name!r}: column of dtype {vals.dtype}, expected {self.values.dtype}")
        self.values.append(vals)
        if self.vocab is not None:
            self.vocab = KeyTable.from_arrays(arrays, p + "vocab_")
            if len(vals) and int(vals.max(initial=0)) > len(self.vocab):
                raise ValueError(f"field {self.name!r}: a code past its vocabulary of {len(self.vocab)}")
        if self.present is not None:
            self.present = BitMap.deserialize(np.asarray(arrays[p + "present"], np.uint8).tobytes())


class DocMetadata:
    """Free metadata dicts (one optional dict per row) and the declared fields' columns."""

    def __init__(self, fields: dict | None = None):
        self.fields = check_fields(fields)
        self.columns = {name: _Column(name, t) for name, t in self.fields.items()}
        self.keys = KeyTable()
        self.buf = GrowableArray(np.uint8)
        self.starts: GrowableArray | None = None  # None: no row has metadata yet
        self.rows = 0
        self.garbage = 0
        self._key_cache: dict[int, str] = {}
        self.version = 0  # bumped when records are replaced or compacted (a scan cache's validity)
        self.scans = metascan.ScanCache()

    def __len__(self) -> int:
        return self.rows

    @property
    def none(self) -> int:
        return int(np.iinfo(self.starts.dtype).max)

    # -- encoding -----------------------------------------------------------------------------
    def _key_codes(self, dicts: list) -> dict:
        names = list(dict.fromkeys(k for d in dicts for k in _all_keys(d)))
        qi, ent = self.keys.lookup(encode_keys(names, "metadata keys"))
        code = dict(zip((names[i] for i in qi.tolist()), ent.tolist()))
        missing = [k for k in names if k not in code]
        if missing:
            start = len(self.keys)
            self.keys.append(encode_keys(missing, "metadata keys"))
            code.update((k, start + j) for j, k in enumerate(missing))
        return code

    def _encode(self, d: dict, code: dict, out: bytearray) -> None:
        items = [(k, v) for k, v in d.items()]
        _varint(out, len(items))
        for k, v in items:
            _varint(out, code[k])
            self._value(v, code, out)

    def _value(self, v, code: dict, out: bytearray) -> None:
        if v is None:
            out.append(0)
        elif v is True or v is False:
            out.append(2 if v else 1)
        elif isinstance(v, int):
            if 0 <= v < 128:
                out.append(0x80 | v)
            else:
                out.append(3)
                _varint(out, (v << 1) ^ (v >> 63))
        elif isinstance(v, float):
            out.append(4)
            out += _F64.pack(v)
        elif isinstance(v, str):
            raw = v.encode("utf-8")
            out.append(5)
            _varint(out, len(raw))
            out += raw
        elif isinstance(v, list):
            out.append(6)
            _varint(out, len(v))
            for x in v:
                self._value(x, code, out)
        else:
            out.append(7)
            self._encode(v, code, out)

    def _key(self, c: int) -> str:
        k = self._key_cache.get(c)
        if k is None:
            if len(self._key_cache) >= _KEY_CACHE:
                self._key_cache.clear()
            k = self._key_cache[c] = self.keys.keys([c])[0]
        return k

    def _decode_dict(self, r: _Reader) -> dict:
        return {self._key(r.varint()): self._decode_value(r) for _ in range(r.varint())}

    def _decode_value(self, r: _Reader):
        t = r.buf[r.pos]
        r.pos += 1
        if t >= 0x80:
            return t & 0x7F
        if t < 3:
            return (None, False, True)[t]
        if t == 3:
            z = r.varint()
            return (z >> 1) ^ -(z & 1)
        if t == 4:
            r.pos += 8
            return _F64.unpack_from(r.buf, r.pos - 8)[0]
        if t == 5:
            ln = r.varint()
            r.pos += ln
            return str(r.buf[r.pos - ln:r.pos], "utf-8")
        if t == 6:
            return [self._decode_value(r) for _ in range(r.varint())]
        if t == 7:
            return self._decode_dict(r)
        raise ValueError(f"corrupt metadata record: value tag {t}")

    # -- rows ---------------------------------------------------------------------------------
    def _records(self, texts: list):
        """Free parts (declared typed values moved out) of validated JSON texts, encoded."""
        dicts = [json.loads(t) if isinstance(t, str) else t for t in texts]  # the writer passes its dicts
        free = [None if d is None else {k: v for k, v in d.items()
                                        if not (k in self.fields and v is not None)} for d in dicts]
        code = self._key_codes([d for d in free if d])
        recs = []
        for d in free:
            if d is None:
                recs.append(None)
            else:
                out = bytearray()
                self._encode(d, code, out)
                recs.append(bytes(out))
        cols = {name: [None if d is None else (d.get(name) if d.get(name) is not None else None) for d in dicts]
                for name in self.fields}
        return recs, cols

    def _store(self, recs: list) -> np.ndarray:
        if self.starts is None:
            self.starts = GrowableArray(np.uint32)
            self.starts.append(np.full(self.rows, self.none, np.uint32))
        blob = b"".join(r for r in recs if r is not None)
        if len(self.buf) + len(blob) >= self.none and self.starts.dtype == np.uint32:
            wide = GrowableArray(np.uint64)
            old = self.starts.view().astype(np.uint64)
            old[old == np.iinfo(np.uint32).max] = np.iinfo(np.uint64).max
            wide.append(old)
            self.starts = wide
        base, _ = self.buf.append(np.frombuffer(blob, np.uint8))
        sizes = np.array([0 if r is None else len(r) for r in recs], np.int64)
        at = base + np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(recs) else sizes
        return np.where([r is None for r in recs], self.none, at).astype(self.starts.dtype)

    def append(self, texts: list | None, n: int) -> None:
        """Append ``n`` rows (``texts`` from :func:`validate_metadata`, or None: no metadata)."""
        if texts is None or all(t is None for t in texts):
            if self.starts is not None:
                self.starts.append(np.full(n, self.none, self.starts.dtype))
            for c in self.columns.values():
                c.write(None, [None] * n)
        else:
            recs, cols = self._records(texts)
            starts = self._store(recs)  # the first metadata of the index creates the offsets
            self.starts.append(starts)
            for name, c in self.columns.items():
                c.write(None, cols[name])
        self.rows += n

    def replace(self, rows: np.ndarray, texts: list) -> None:
        """Replace the rows' dicts (the old records become garbage)."""
        recs, cols = self._records(texts)
        old = self.starts.view()[rows] if self.starts is not None else None
        new = self._store(recs)
        if old is not None:
            self.garbage += int(sum(self._size(int(s)) for s in old.tolist() if s != self.none))
        self.starts[rows] = new
        self.version += 1
        for name, c in self.columns.items():
            c.write(rows, cols[name])

    def _size(self, start: int) -> int:
        r = _Reader(memoryview(self.buf.view()), start)
        self._decode_dict(r)
        return r.pos - start

    def compact(self, live_rows: np.ndarray) -> int:
        """Keep only the records of ``live_rows`` (deleted rows' and replaced dicts' bytes go; a
        deleted row's offset becomes "none"); returns the bytes reclaimed."""
        if self.starts is None:
            return 0
        starts = self.starts.view()
        keep = np.zeros(self.rows, bool)
        keep[np.asarray(live_rows, np.int64)] = True
        keep &= starts != self.none
        mv = memoryview(self.buf.view())
        new_starts = np.full(self.rows, self.none, starts.dtype)
        chunks, pos = [], 0
        for r in np.flatnonzero(keep).tolist():
            s = int(starts[r])
            n = self._size(s)
            chunks.append(mv[s:s + n])
            new_starts[r] = pos
            pos += n
        before = len(self.buf)
        buf = GrowableArray(np.uint8)
        buf.append(np.frombuffer(b"".join(chunks), np.uint8))
        self.buf, self.garbage = buf, 0
        self.version += 1
        self.starts = GrowableArray(starts.dtype)
        self.starts.append(new_starts)
        return before - len(self.buf)

    def get(self, rows) -> list:
        """The dicts of ``rows`` (None for a memory added without metadata)."""
        rows = np.asarray(rows, np.int64)
        if self.starts is None:
            return [None] * len(rows)
        starts = self.starts.view()[rows].tolist()
        mv = memoryview(self.buf.view())
        cols = {name: c.get(rows) for name, c in self.columns.items()}
        out = []
        for j, s in enumerate(starts):
            if s == self.none:
                out.append(None)
                continue
            d = self._decode_dict(_Reader(mv, s))
            for name in self.fields:
                v = cols[name][j]
                if v is not None:
                    d[name] = v
            out.append(d)
        return out

    def field_mask(self, name: str, op: str, value, n: int, cache: dict | None = None) -> np.ndarray:
        """Rows ``[0, n)`` whose ``name`` satisfies ``op value``: a declared field's column, else a
        scan of the records (:mod:`.metascan`; ``cache``: one evaluation's decoded keys)."""
        c = self.columns.get(name)
        if c is not None:
            return c.mask(op, value, n)
        kv = cache.get(name) if cache is not None else None
        if kv is None or kv.n != n:
            _, ent = self.keys.lookup(encode_keys([name], "metadata keys"))
            starts = self.starts.view() if self.starts is not None else None
            kv = self.scans.get(name, self.version, self.buf.view(), starts, self.none if starts is not None else 0,
                                int(ent[0]) if len(ent) else None, n)
            if cache is not None:
                cache[name] = kv
        return kv.mask(op, value)

    # -- persistence and accounting ---------------------------------------------------------------
    def nbytes(self) -> dict:
        return {"metadata_records": int(self.buf.nbytes() + (self.starts.nbytes() if self.starts is not None else 0)
                                        + self.keys.nbytes()),
                "metadata_fields": int(sum(c.nbytes() for c in self.columns.values()))}

    def memory_usage(self) -> dict:
        slack = self.buf.slack_bytes() + self.keys.slack_bytes() + (self.starts.slack_bytes() if self.starts else 0)
        scans = {"metadata_scans": self.scans.nbytes()}
        return {"anon": {k: v for k, v in {**self.nbytes(), **scans}.items() if v},
                "reserved": {"metadata_records": int(slack)}}

    def to_arrays(self) -> dict:
        out = {"rows": np.array([self.rows], np.int64), "garbage": np.array([self.garbage], np.int64),
               "buf": self.buf.view().copy(), **self.keys.to_arrays("keys_")}
        if self.starts is not None:
            out["starts"] = self.starts.view().copy()
        for i, c in enumerate(self.columns.values()):
            out.update(c.to_arrays(f"f{i}_"))
        return out

    @classmethod
    def from_arrays(cls, arrays, fields: dict | None) -> "DocMetadata":
        m = cls(fields)
        m.rows = int(np.asarray(arrays["rows"])[0])
        m.garbage = int(np.asarray(arrays["garbage"])[0])
        m.buf.append(np.asarray(arrays["buf"], np.uint8))
        m.keys = KeyTable.from_arrays(arrays, "keys_")
        if "starts" in arrays:
            starts = np.asarray(arrays["starts"])
            if starts.dtype not in (np.uint32, np.uint64) or len(starts) != m.rows:
                raise ValueError(f"metadata: {len(starts)} offsets ({starts.dtype}) for {m.rows} rows")
            live = starts[starts != np.iinfo(starts.dtype).max]
            if len(live) and int(live.max()) >= len(m.buf):
                raise ValueError("metadata: an offset points past the records")
            m.starts = GrowableArray(starts.dtype)
            m.starts.append(starts)
        for i, c in enumerate(m.columns.values()):
            c.load(arrays, f"f{i}_")
            if len(c.values) != m.rows:
                raise ValueError(f"metadata field {c.name!r} holds {len(c.values)} rows, expected {m.rows}")
        return m


def _all_keys(d: dict):
    for k, v in d.items():
        yield k
        yield from _nested_keys(v)


def _nested_keys(v):
    if isinstance(v, dict):
        yield from _all_keys(v)
    elif isinstance(v, list):
        for x in v:
            yield from _nested_keys(x)

