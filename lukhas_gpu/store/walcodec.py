"""The write-ahead log's record codec: a record's fields (named numpy arrays, content lists and
small JSON values) to bytes and back, with every length bounded before anything is allocated.

Payload layout (little-endian): per field ``uint16 name_length, name, uint8 kind, uint64
body_length, body``; kinds: an array (dtype string, ndim, shape, raw bytes), a list of contents
(kinds + offsets + concatenated bytes) or a JSON value. No pickle. Loads with numpy only.
"""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np

__all__ = ["encode_fields", "encode_parts", "decode_fields", "MAGIC", "HEADER", "MAGIC_V1", "HEADER_V1", "pack_header",
           "header_crc", "RECORD", "OP", "OP_ADD", "OP_UPDATE", "OP_DELETE", "OP_LINK", "OP_UNLINK", "OP_TRIAL",
           "HEADER_SIZE", "RECORD_HEADER_SIZE", "DEFAULT_MAX_RECORD_BYTES", "MAX_LENGTH_FIELD", "RESYNC_LOOKAHEAD",
           "record_candidates"]

# -- framing: the file header and each record's header ------------------------------------------
MAGIC = b"LKGWAL02"
#: magic, base (the generation the log follows), log id (random, never 0: which log a checkpoint
#: absorbed is recorded in its manifest, so a log of the same base started later is told apart),
#: CRC-32 of the three (a flipped base or id is damage, not a stale or another log)
HEADER = struct.Struct("<8sQQI")
#: The first format's header (no log id, no CRC): still read, never written; a flip in its base
#: cannot be detected.
MAGIC_V1 = b"LKGWAL01"
HEADER_V1 = struct.Struct("<8sQ")
RECORD = struct.Struct("<IIB")  # payload length, crc32(op + payload), op
#: The ops a store logs (the op byte of a record).
OP_ADD, OP_UPDATE, OP_DELETE = 1, 2, 3
#: Links between memories (index/memops.py): ``src``, ``dst`` int64, ``kind_names`` (JSON list)
#: and ``kind`` uint16 (indices into it), ``weight`` float32; an unlink's ``kind`` is a name or None.
OP_LINK, OP_UNLINK = 4, 5
#: A trial's report (index/trials.py), logged when the trial rolled back: ``report`` (a JSON object).
OP_TRIAL = 6
OP = struct.Struct("<B")  # the op byte, covered by the CRC with the payload
HEADER_SIZE = HEADER.size  # 28 (16 for a MAGIC_V1 log)
RECORD_HEADER_SIZE = RECORD.size  # 9
#: A length field above this is read as corruption rather than allocated. The uint32 length field
#: caps records at 4 GiB - 1 anyway.
DEFAULT_MAX_RECORD_BYTES = 1 << 30
MAX_LENGTH_FIELD = (1 << 32) - 1


def header_crc(base: int, log_id: int) -> int:
    """The CRC-32 a header carries: of its magic, base and log id."""
    return zlib.crc32(struct.pack("<8sQQ", MAGIC, base, log_id))


def pack_header(base: int, log_id: int) -> bytes:
    """A new log's header: magic, ``base``, ``log_id`` and the CRC-32 of the three."""
    return HEADER.pack(MAGIC, base, log_id, header_crc(base, log_id))


_KIND_ARRAY, _KIND_CONTENTS, _KIND_JSON = 1, 2, 3
# item kinds of a contents list; the same values as payload.KIND_* (not imported: this module
# loads on its own, with numpy only)
_ITEM_NONE, _ITEM_STR, _ITEM_BYTES = 0, 1, 2

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_FIELD_KIND_LEN = struct.Struct("<BQ")
_NUMERIC_KINDS = "biufc"
_MAX_NDIM = 64


def encode_fields(fields: dict) -> bytes:
    """Encode a record's fields as bytes; :func:`decode_fields` gives them back exactly.

    Parameters
    ----------
    fields : dict
        ``{name: value}`` with ``name`` a str of at most 255 UTF-8 bytes. Each value is one of

        * a numpy array of a numeric or bool dtype (``b i u f c`` kinds), any shape and memory
          layout, stored as its dtype string, shape and raw little-endian bytes;
        * a *contents* list, whose items are each ``str``, ``bytes`` or ``None``; stored as one
          uint8 kind and one uint64 length per item plus one blob (str as UTF-8, lone surrogates
          kept);
        * a JSON value: ``None``, bool, int, float (NaN and infinities allowed), str, or lists /
          str-keyed dicts of these, nested (e.g. tag lists ``[["a", "b"], []]``).

    Returns
    -------
    bytes

    Raises
    ------
    TypeError
        ``fields`` is not a dict, a name is not a str, or a value is of none of the kinds above
        (an object-dtype array, a tuple, which would come back as a list, a dict with non-str
        keys, ...); the message names the field.
    ValueError
        A field name longer than 255 UTF-8 bytes.
    """
    return b"".join(encode_parts(fields))


def encode_parts(fields: dict) -> list:
    """The encoded record as a list of bytes-like parts, so that the writer joins it only once."""
    if not isinstance(fields, dict):
        raise TypeError(f"fields must be a dict of name -> value, got {type(fields).__name__}")
    parts: list = [_U32.pack(len(fields))]
    for name, value in fields.items():
        if not isinstance(name, str):
            raise TypeError(f"field names must be str, got {name!r} ({type(name).__name__})")
        raw_name = name.encode("utf-8", "surrogatepass")
        if len(raw_name) > 255:
            raise ValueError(f"field name {name[:40]!r}... is {len(raw_name)} UTF-8 bytes; at most 255")
        kind, body = _encode_value(name, value)
        parts.append(_U8.pack(len(raw_name)))
        parts.append(raw_name)
        parts.append(_FIELD_KIND_LEN.pack(kind, sum(memoryview(p).nbytes for p in body)))
        parts.extend(body)
    return parts


def _encode_value(name: str, value) -> tuple[int, list]:
    if isinstance(value, np.ndarray):
        return _KIND_ARRAY, _encode_array(name, value)
    if isinstance(value, list):
        body = _encode_contents(value)
        if body is not None:
            return _KIND_CONTENTS, body
    _check_json(name, value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)
    return _KIND_JSON, [text.encode("utf-8", "surrogatepass")]


def _encode_array(name: str, a: np.ndarray) -> list:
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"field {name!r}: masked arrays are not supported (the mask would be lost)")
    dt = a.dtype
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None:
        raise TypeError(f"field {name!r}: array dtype {dt} is not numeric or bool; "
                        f"only dtype kinds {_NUMERIC_KINDS!r} can be logged")
    little = dt.newbyteorder("<")
    data = np.ascontiguousarray(a, dtype=little)  # a no-op for C-contiguous little-endian input
    dstr = dt.str.encode("ascii")  # the original byte order is kept, for an exact round trip
    head = _U8.pack(len(dstr)) + dstr + _U8.pack(a.ndim) + b"".join(_U64.pack(s) for s in a.shape)
    # a memoryview, not tobytes(): the record is joined once, in the writer
    return [head, memoryview(data.reshape(-1).view(np.uint8))]


def _encode_contents(items: list) -> list | None:
    """A contents body, or None if ``items`` is not a flat list of str / bytes / None."""
    n = len(items)
    kinds = bytearray(n)
    lengths = np.zeros(n, dtype="<u8")
    blobs = []
    for i, item in enumerate(items):
        if item is None:
            continue  # kind 0, length 0
        if isinstance(item, str):
            b = item.encode("utf-8", "surrogatepass")
            kinds[i] = _ITEM_STR
        elif type(item) is bytes:  # not bytearray / memoryview: they would come back as bytes
            b = item
            kinds[i] = _ITEM_BYTES
        else:
            return None
        lengths[i] = len(b)
        blobs.append(b)
    return [_U64.pack(n), bytes(kinds), lengths.tobytes(), b"".join(blobs)]


def _check_json(name: str, value) -> None:
    try:
        _check_json_value(name, value, "")
    except RecursionError:
        raise TypeError(f"field {name!r}: value is nested too deeply (or contains itself)") from None


def _check_json_value(name: str, v, where: str) -> None:
    if v is None or isinstance(v, (bool, int, float, str)):
        return
    if isinstance(v, list):
        for i, item in enumerate(v):
            _check_json_value(name, item, f"{where}[{i}]")
        return
    if isinstance(v, dict):
        for k, item in v.items():
            if not isinstance(k, str):
                raise TypeError(f"field {name!r}: dict key {k!r} at {where or 'top level'} is "
                                f"{type(k).__name__}; JSON values need str keys")
            _check_json_value(name, item, f"{where}[{k!r}]")
        return
    hint = ""
    if isinstance(v, tuple):
        hint = " (a tuple would come back as a list; pass a list)"
    elif isinstance(v, np.generic):
        hint = " (pass .item() for a Python scalar or np.asarray(x) for a 0-d array)"
    elif isinstance(v, (bytes, bytearray, memoryview)):
        hint = " (bytes are allowed only as items of a flat list of str / bytes / None)"
    raise TypeError(f"field {name!r}: value {type(v).__name__} at {where or 'top level'} is not a "
                    f"numeric numpy array, a list of str / bytes / None, or a JSON value{hint}")


class _Cursor:
    """Bounds-checked reads from a record payload; any overrun is a ValueError, not an IndexError."""

    __slots__ = ("mv", "pos")

    def __init__(self, data):
        self.mv = memoryview(data).cast("B")
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.mv):
            raise ValueError(f"corrupt WAL record payload: needs {n} bytes at offset {self.pos}, "
                             f"{len(self.mv) - self.pos} left")
        out = self.mv[self.pos:end]
        self.pos = end
        return out

    def unpack(self, st: struct.Struct) -> tuple:
        return st.unpack(self.take(st.size))


def decode_fields(data: bytes) -> dict:
    """Decode bytes written by :func:`encode_fields`.

    Returns
    -------
    dict
        The fields, in their original order. Arrays come back as new, writable, C-contiguous,
        aligned arrays with the original dtype (byte order included) and shape -- copies, so they
        outlive ``data`` and may be modified or handed to torch. Contents lists come back as
        lists of ``str`` / ``bytes`` / ``None``, JSON values as their Python equivalents.

    Raises
    ------
    ValueError
        ``data`` is not a well-formed encoding.
    """
    cur = _Cursor(data)
    (n,) = cur.unpack(_U32)
    out = {}
    for _ in range(n):
        (name_len,) = cur.unpack(_U8)
        name = str(cur.take(name_len), "utf-8", "surrogatepass")
        kind, body_len = cur.unpack(_FIELD_KIND_LEN)
        body = cur.take(body_len)
        if kind == _KIND_ARRAY:
            out[name] = _decode_array(name, body)
        elif kind == _KIND_CONTENTS:
            out[name] = _decode_contents(name, body)
        elif kind == _KIND_JSON:
            out[name] = json.loads(str(body, "utf-8", "surrogatepass"))
        else:
            raise ValueError(f"corrupt WAL record payload: field {name!r} has unknown kind {kind}")
    if cur.pos != len(cur.mv):
        raise ValueError(f"corrupt WAL record payload: {len(cur.mv) - cur.pos} trailing bytes")
    return out


def _decode_array(name: str, body: memoryview) -> np.ndarray:
    cur = _Cursor(body)
    (dlen,) = cur.unpack(_U8)
    try:
        dt = np.dtype(str(cur.take(dlen), "ascii"))
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt WAL record payload: field {name!r} has a bad dtype ({e})") from None
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None:
        raise ValueError(f"corrupt WAL record payload: field {name!r} has non-numeric dtype {dt}")
    (ndim,) = cur.unpack(_U8)
    if ndim > _MAX_NDIM:
        raise ValueError(f"corrupt WAL record payload: field {name!r} claims {ndim} dimensions")
    shape = tuple(cur.unpack(_U64)[0] for _ in range(ndim))
    count = int(np.prod(shape, dtype=object))  # object: no silent int64 overflow on garbage shapes
    if count * dt.itemsize != len(body) - cur.pos:
        raise ValueError(f"corrupt WAL record payload: field {name!r} of shape {shape} {dt} needs "
                         f"{count * dt.itemsize} bytes, has {len(body) - cur.pos}")
    little = dt.newbyteorder("<")
    a = np.frombuffer(cur.take(len(body) - cur.pos), dtype=little, count=count).reshape(shape)
    return a.astype(dt, copy=True)  # a copy, in the original byte order


def _decode_contents(name: str, body: memoryview) -> list:
    cur = _Cursor(body)
    (n,) = cur.unpack(_U64)
    if n > len(body):  # each item costs at least 9 bytes; avoids allocating for a garbage count
        raise ValueError(f"corrupt WAL record payload: field {name!r} claims {n} items")
    kinds = np.frombuffer(cur.take(n), dtype=np.uint8)
    lengths = np.frombuffer(cur.take(8 * n), dtype="<u8")
    blob = cur.take(len(body) - cur.pos)
    if (kinds > _ITEM_BYTES).any() or (lengths[kinds == _ITEM_NONE] != 0).any() \
            or int(lengths.sum(dtype=object)) != len(blob):
        raise ValueError(f"corrupt WAL record payload: field {name!r} has inconsistent kinds / lengths")
    out: list = []
    pos = 0
    for k, ln in zip(kinds.tolist(), lengths.tolist()):
        piece = blob[pos:pos + ln]
        pos += ln
        if k == _ITEM_NONE:
            out.append(None)
        elif k == _ITEM_STR:
            out.append(str(piece, "utf-8", "surrogatepass"))
        else:
            out.append(bytes(piece))
    return out




# -- resynchronisation: where might a record start? ---------------------------------------------
#: Bytes after a record's start that :func:`record_candidates` looks at (header, field count and
#: the first field's name length, name, kind and body length).
RESYNC_LOOKAHEAD = RECORD.size + 4 + 1 + 255 + 1 + 8


def record_candidates(buf: np.ndarray, n: int, room: int, max_record_bytes: int) -> np.ndarray:
    """Positions ``0 <= p < n`` of ``buf`` (uint8, at least ``n + RESYNC_LOOKAHEAD`` long, zero
    padded past the file's end) where a record could start: a length that fits before the file
    ends (``room`` bytes after position 0) and within ``max_record_bytes``, and a payload that
    begins like :func:`encode_fields` output (a field count the length can hold; a first field with
    a known kind and a body that fits).

    Cheap and vectorised: only the candidates' CRC-32 is then computed, so finding the next
    valid record after a damaged one costs about one pass over the bytes, not one CRC per byte.
    """
    def u32(k, idx):  # little-endian uint32 at idx + k, gathered
        b = [buf[idx + k + j].astype(np.int64) for j in range(4)]
        return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)

    length = np.empty(n, np.int64)
    for r in range(4):  # every position's length field: four aligned views, not a gather
        m = len(range(r, n, 4))
        length[r::4] = buf[r: r + 4 * m].view("<u4")
    ok = (length >= 4) & (length <= min(max_record_bytes, MAX_LENGTH_FIELD, room - RECORD.size))
    idx = np.flatnonzero(ok)
    length = length[idx]
    fits = idx + RECORD.size + length <= room
    idx, length = idx[fits], length[fits]
    if not len(idx):
        return idx
    count = u32(RECORD.size, idx)
    empty = (count == 0) & (length == 4)
    fields = (count >= 1) & (count * 10 <= length - 4)
    name_len = buf[idx + RECORD.size + 4].astype(np.int64)
    kind = buf[idx + RECORD.size + 5 + name_len]
    body_at = idx + RECORD.size + 6 + name_len
    body_lo = u32(0, body_at)
    body_hi = u32(4, body_at)
    fields &= (kind >= _KIND_ARRAY) & (kind <= _KIND_JSON) & (body_hi == 0) & (14 + name_len + body_lo <= length)
    return idx[empty | fields]
