"""A write-ahead log for the memory store: every add / update / delete, appended and synced.

A store open for writing appends one record per mutation and, by default, syncs it to disk before
the call returns. On open, the log is replayed on top of the last checkpoint; after a new
checkpoint the log is :meth:`~WriteAheadLog.reset` to an empty one whose ``base`` names the
checkpoint it follows.

On-disk format (all integers little-endian)::

    header   16 B    b"LKGWAL01"  uint64 base
    record    9 B    uint32 payload_length  uint32 crc32(op + payload)  uint8 op
             + payload_length bytes of payload (see :func:`encode_fields`)

Records are written with one ``os.write`` each, on a descriptor opened ``O_APPEND``. A crash in
the middle of a write leaves a *torn tail*: a record that is incomplete, or complete in length
but not in content (a file extended with zeros, say). Readers stop at the first record that is
incomplete, fails its CRC, or claims more than ``max_record_bytes``, and never look past it -- a
bad record in the middle is treated exactly like a torn tail, because skipping it would replay
later mutations without an earlier one. Opening a log for writing cuts such a tail off (with a
warning) before appending, so a new record is never written after garbage.

Durability (``sync``):

``"always"`` (default)
    ``fdatasync`` after every append: an acknowledged record survives a process crash and a power
    failure. Costs one disk flush per append (concurrent appenders share flushes).
``"group"``
    A background thread flushes at most every ``group_interval`` seconds, and :meth:`sync` /
    :meth:`close` flush at once. Appends return without waiting, so throughput is close to
    ``"none"``. Records acknowledged in the last window (up to ``group_interval`` plus one flush)
    can be lost on a power failure or kernel crash, but not on a process crash: ``os.write``
    has already handed them to the OS page cache, which outlives the process.
``"none"``
    Never flushes (tests, benchmarks, rebuildable data): like ``"group"`` but the window is
    whatever the OS writeback delay is (typically ~30 s on Linux).

Only one writer may hold a log: the writer takes an exclusive ``flock`` on it (where the platform
has ``fcntl``), so a second store opening the same log fails instead of cutting the first one's
in-flight record as a "torn tail".
"""
from __future__ import annotations

import dataclasses
import errno
import glob
import json
import logging
import operator
import os
import secrets
import struct
import threading
import time
import weakref
import zlib
from typing import Iterator, NamedTuple

import numpy as np

try:  # POSIX only; elsewhere the single-writer rule is the caller's to keep
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

__all__ = [
    "WriteAheadLog", "WalReader", "WalRecord", "WalScan", "encode_fields", "decode_fields",
    "MAGIC", "HEADER_SIZE", "RECORD_HEADER_SIZE", "SYNC_MODES",
    "DEFAULT_GROUP_INTERVAL", "DEFAULT_MAX_RECORD_BYTES",
]

log = logging.getLogger(__name__)

MAGIC = b"LKGWAL01"
_HEADER = struct.Struct("<8sQ")
_RECORD = struct.Struct("<IIB")
HEADER_SIZE = _HEADER.size  # 16
RECORD_HEADER_SIZE = _RECORD.size  # 9

SYNC_MODES = ("always", "group", "none")
DEFAULT_GROUP_INTERVAL = 0.05
#: A length field above this is read as corruption rather than allocated. The uint32 length field
#: caps records at 4 GiB - 1 anyway.
DEFAULT_MAX_RECORD_BYTES = 1 << 30
_MAX_LENGTH_FIELD = (1 << 32) - 1

# fdatasync flushes the data and the file size (which every O_APPEND write changes) and skips the
# mtime update that fsync would also force; where it is missing (macOS) fsync is the best there is.
# Module attribute so tests can count flushes.
_datasync = getattr(os, "fdatasync", os.fsync)

_TMP_SUFFIX = ".wal-tmp"


# =============================================================================================
# record codec
# =============================================================================================
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
    return b"".join(_encode_parts(fields))


def _encode_parts(fields: dict) -> list:
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


# =============================================================================================
# reading
# =============================================================================================
class WalRecord(NamedTuple):
    """One replayed record: its 0-based ``seq`` in the log, the caller's ``op`` code, its fields."""

    seq: int
    op: int
    fields: dict


@dataclasses.dataclass(frozen=True)
class WalScan:
    """Everything :meth:`WriteAheadLog.read` found in a log.

    Attributes
    ----------
    path : str
    base : int
        The sequence number written in the header when the log was started.
    records : list of WalRecord
        The valid prefix, in order; ``records[i].seq == i``.
    valid_end : int
        Byte offset where the valid prefix ends (``HEADER_SIZE`` for an empty log).
    file_size : int
        Size of the file when it was read.
    torn : bool
        True when bytes after ``valid_end`` were ignored: an incomplete record, a CRC mismatch
        or an implausible length -- a torn tail, or corruption, after which nothing is replayed.
    reason : str or None
        What stopped the replay, when ``torn``.
    """

    path: str
    base: int
    records: list
    valid_end: int
    file_size: int
    torn: bool
    reason: str | None

    @property
    def n_records(self) -> int:
        return len(self.records)

    @property
    def torn_bytes(self) -> int:
        return self.file_size - self.valid_end


class WalReader:
    """Stream the records of a log, one at a time, stopping at the first bad one.

    The header is checked on construction. Iterating yields :class:`WalRecord` s until the end of
    the valid prefix; after that, :attr:`valid_end`, :attr:`torn` and :attr:`reason` say where it
    ended and why. Use it (rather than :meth:`WriteAheadLog.read`) to replay a large log without
    holding every record at once::

        with WalReader(path) as r:
            for seq, op, fields in r:
                apply(op, fields)
            if r.torn:
                ...

    Parameters
    ----------
    path : str or os.PathLike
    max_record_bytes : int
        A record whose length field exceeds this is treated as corruption (replay stops there);
        it is never allocated. A length running past the end of the file is treated the same way.
    decode : bool
        If False, ``fields`` of each record is the raw payload (``bytes``) -- CRC-checked but not
        decoded; for validating a log cheaply.

    Raises
    ------
    ValueError
        The file does not start with a complete lukhas_gpu WAL header; the message names the file.

    Notes
    -----
    Only the bytes present when the reader was opened are read. A log being appended to at the
    same time may therefore end in what looks like a torn tail (the record in flight); reading a
    live log is safe, but only the writer may cut a tail.
    """

    def __init__(self, path, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, decode: bool = True):
        self.path = os.fspath(path)
        self.max_record_bytes = _check_max_record_bytes(max_record_bytes)
        self._decode = bool(decode)
        self._f = open(self.path, "rb")
        try:
            self.file_size = os.fstat(self._f.fileno()).st_size
            self.base = _parse_header(self.path, self._f.read(HEADER_SIZE))
        except BaseException:
            self._f.close()
            raise
        self._pos = HEADER_SIZE
        self._n = 0
        self._done = False
        self._torn = False
        self._reason: str | None = None

    def __iter__(self) -> Iterator[WalRecord]:
        return self

    def __next__(self) -> WalRecord:
        if self._done:
            raise StopIteration
        pos, left = self._pos, self.file_size - self._pos
        if left == 0:
            self._finish(None)
        if left < RECORD_HEADER_SIZE:
            self._finish(f"incomplete record header ({left} of {RECORD_HEADER_SIZE} bytes)")
        length, crc, op = _RECORD.unpack(self._read(RECORD_HEADER_SIZE))
        if length > self.max_record_bytes:
            self._finish(f"record length {length} exceeds max_record_bytes={self.max_record_bytes}")
        if length > left - RECORD_HEADER_SIZE:
            self._finish(f"incomplete record ({left - RECORD_HEADER_SIZE} of {length} payload bytes)")
        payload = self._read(length)
        if zlib.crc32(payload, zlib.crc32(_U8.pack(op))) != crc:
            self._finish("CRC mismatch")
        seq = self._n
        if self._decode:
            try:
                fields = decode_fields(payload)
            except ValueError as e:
                # The CRC matched, so these are the bytes the writer wrote: a codec bug or a
                # format mismatch, not a torn write. Cutting it silently would hide the bug.
                raise ValueError(f"{self.path}: record {seq} at byte {pos} passed its CRC but "
                                 f"cannot be decoded: {e}") from None
        else:
            fields = payload
        self._n += 1
        self._pos = pos + RECORD_HEADER_SIZE + length
        return WalRecord(seq, op, fields)

    def _read(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:  # the file shrank under us: what is missing is missing
            self._finish(f"file ended early (read {len(data)} of {n} bytes)")
        return data

    def _finish(self, reason: str | None):
        self._done, self._torn, self._reason = True, reason is not None, reason
        self.close()
        raise StopIteration

    def _require_done(self, what: str):
        if not self._done:
            raise RuntimeError(f"WalReader.{what} is known only once the records have been read to "
                               f"the end (iterate the reader first)")

    @property
    def n_records(self) -> int:
        """Records yielded so far (all of the valid prefix once iteration has finished)."""
        return self._n

    @property
    def valid_end(self) -> int:
        """Byte offset where the valid prefix ends."""
        self._require_done("valid_end")
        return self._pos

    @property
    def torn(self) -> bool:
        """Whether bytes after :attr:`valid_end` were ignored (torn tail or corruption)."""
        self._require_done("torn")
        return self._torn

    @property
    def reason(self) -> str | None:
        self._require_done("reason")
        return self._reason

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "WalReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_header(path: str, header: bytes) -> int:
    if header[:len(MAGIC)] != MAGIC[:len(header)]:
        raise ValueError(f"{path} is not a lukhas_gpu WAL: it starts with {header[:len(MAGIC)]!r}, "
                         f"expected {MAGIC!r}")
    if len(header) < HEADER_SIZE:
        raise ValueError(f"{path}: truncated header ({len(header)} of {HEADER_SIZE} bytes); "
                         f"not a complete lukhas_gpu WAL")
    return _HEADER.unpack(header)[1]


def _check_max_record_bytes(n) -> int:
    n = operator.index(n)
    if not 0 < n <= _MAX_LENGTH_FIELD:
        raise ValueError(f"max_record_bytes must be in 1..{_MAX_LENGTH_FIELD} (uint32 length field), got {n}")
    return n


# =============================================================================================
# writing
# =============================================================================================
class WriteAheadLog:
    """An append-only, CRC-checked log of ``(op, fields)`` records; the store's redo log.

    Opening a log that exists validates it and cuts a torn tail (``ftruncate`` + flush, with a
    warning giving the byte counts) so that appends continue right after the valid prefix.
    Opening one that does not exist creates it, atomically, with header ``base``.

    Parameters
    ----------
    path : str or os.PathLike
    base : int, optional
        When creating: the header's base sequence number (default 0), opaque to the log -- e.g.
        the checkpoint generation it follows. When opening an existing log: if given, the base
        it must have (ValueError otherwise), a guard against replaying a log on the wrong
        checkpoint.
    sync : {"always", "group", "none"}
        When appends reach the disk; see the module docstring for the trade-offs.
    group_interval : float
        Seconds between background flushes in ``"group"`` mode (default 0.05): the longest time an
        acknowledged record can sit in the page cache, unflushed, plus one flush.
    max_record_bytes : int
        The largest payload this log writes or reads (default 1 GiB; at most 4 GiB - 1). Larger
        appends raise ValueError; on reading, a larger length field is corruption.

    Raises
    ------
    ValueError
        A bad ``sync`` / ``group_interval`` / ``max_record_bytes``; an existing file that is not a
        lukhas_gpu WAL; a ``base`` mismatch.
    RuntimeError
        Another writer holds the log.

    Notes
    -----
    ``append`` is thread-safe. The record count and file size are tracked here, so ``len`` and
    :attr:`nbytes` cost nothing.
    """

    def __init__(self, path, *, base: int | None = None, sync: str = "always",
                 group_interval: float = DEFAULT_GROUP_INTERVAL,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(map(repr, SYNC_MODES))}; got {sync!r}")
        group_interval = float(group_interval)
        if not group_interval > 0:
            raise ValueError(f"group_interval must be > 0 seconds, got {group_interval}")
        self.path = os.path.abspath(os.fspath(path))
        self.sync_mode = sync
        self.group_interval = group_interval
        self.max_record_bytes = _check_max_record_bytes(max_record_bytes)
        self._lock = threading.Lock()       # appends: the write, the counters, the fd swap
        self._sync_lock = threading.Lock()  # flushes; also keeps the fd alive while one runs
        self._fd = -1
        self._closed = True
        self._failed: BaseException | None = None
        self._written = 0   # appends written (a generation counter; reset() does not zero it)
        self._synced = 0    # generation covered by the last flush
        self._last_sync = time.monotonic()
        self._flusher = None

        fd, created = self._open_or_create(base)
        try:
            if created:
                self.base, self._n, self._size = int(base or 0), 0, HEADER_SIZE
            else:
                self._adopt_existing(fd, base)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._closed = False
        self._remove_stale_tmp()
        if sync == "group":
            self._wake, self._stop = threading.Event(), threading.Event()
            self._flusher = threading.Thread(
                target=_group_flush_loop, args=(weakref.ref(self), self._wake, self._stop, group_interval),
                name=f"wal-flush:{os.path.basename(self.path)}", daemon=True)
            self._flusher.start()

    @classmethod
    def open_for_append(cls, path, **kwargs) -> "WriteAheadLog":
        """Open an existing log (FileNotFoundError if there is none); see the class parameters."""
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "no WAL to open for append", os.fspath(path))
        return cls(path, **kwargs)

    # -- opening -------------------------------------------------------------------------------
    def _open_or_create(self, base) -> tuple[int, bool]:
        """A locked O_APPEND descriptor on ``path`` -- an existing file, or a new one."""
        if base is not None:
            base = _check_base(base)
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:
                fd = self._create(base or 0, exclusive=True)
                if fd is not None:
                    return fd, True
                continue  # someone else created it first: open theirs
            try:
                _lock_fd(fd, self.path)
                # A reset() elsewhere may have replaced the file between our open and our lock;
                # the lock is then on a dead inode. Retry on the file now at ``path``.
                if _same_file(fd, self.path):
                    return fd, False
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise RuntimeError(f"{self.path}: the file kept being replaced while opening it")

    def _create(self, base: int, *, exclusive: bool) -> int | None:
        """Write a header-only log beside ``path``, flush it, then move it into place.

        With ``exclusive``, the move is a hard link that fails if ``path`` exists (returns None
        then); otherwise an atomic ``os.replace``. Returns the new file's locked O_APPEND fd.
        """
        d = os.path.dirname(self.path)
        tmp, fd = _create_tmp(self.path)
        try:
            _lock_fd(fd, tmp)  # locked before it is visible, so nobody can grab it in between
            _write_all(fd, _HEADER.pack(MAGIC, base))
            os.fsync(fd)
            if exclusive:
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    os.close(fd)
                    fd = None
                except OSError:  # a filesystem without hard links; a create race is then possible
                    os.replace(tmp, self.path)
            else:
                os.replace(tmp, self.path)
        except BaseException:
            if fd is not None:
                os.close(fd)
            _unlink_quietly(tmp)
            raise
        _unlink_quietly(tmp)
        _fsync_dir(d)
        return fd

    def _adopt_existing(self, fd: int, base) -> None:
        reader = WalReader(self.path, max_record_bytes=self.max_record_bytes, decode=False)
        with reader:
            for _ in reader:
                pass
        if base is not None and reader.base != base:
            raise ValueError(f"{self.path}: WAL follows base {reader.base}, expected base {base} "
                             f"(reset() it, or open it without base=)")
        self.base, self._n, self._size = reader.base, reader.n_records, reader.valid_end
        if reader.torn:
            os.ftruncate(fd, reader.valid_end)
            os.fsync(fd)
            log.warning("%s: cut a torn tail of %d bytes (%s) at byte %d; kept %d records (%d bytes)",
                        self.path, reader.file_size - reader.valid_end, reader.reason,
                        reader.valid_end, reader.n_records, reader.valid_end)

    def _remove_stale_tmp(self) -> None:
        """Delete temporaries that a crashed create / reset left beside the log.

        One still locked belongs to a live create in another process and is left alone.
        """
        pattern = glob.escape(self.path) + ".*" + _TMP_SUFFIX
        for tmp in glob.glob(pattern):
            try:
                fd = os.open(tmp, os.O_RDONLY)
            except OSError:
                continue
            try:
                _lock_fd(fd, tmp)
            except RuntimeError:
                continue
            finally:
                os.close(fd)
            _unlink_quietly(tmp)
            log.info("%s: removed a stale temporary %s", self.path, tmp)

    # -- appending -----------------------------------------------------------------------------
    def append(self, op: int, fields: dict) -> int:
        """Append one record; returns its sequence number (0-based, within this log).

        With ``sync="always"`` the record is on disk when this returns; see the module docstring
        for the other modes. If the write fails part-way, the partial record is cut off again
        before the error is raised, so the log never holds garbage between valid records.

        Parameters
        ----------
        op : int
            The caller's operation code, 0..255.
        fields : dict
            See :func:`encode_fields`.

        Raises
        ------
        ValueError
            ``op`` out of range, the payload larger than ``max_record_bytes``, or the log closed.
        TypeError
            A field that cannot be encoded (nothing is written).
        OSError
            The write or the flush failed.
        """
        try:
            op = operator.index(op)
        except TypeError:
            raise TypeError(f"op must be an int in 0..255, got {type(op).__name__}") from None
        if not 0 <= op <= 255:
            raise ValueError(f"op must be in 0..255, got {op}")
        parts = _encode_parts(fields)
        length = sum(memoryview(p).nbytes for p in parts)
        if length > self.max_record_bytes:
            raise ValueError(f"record payload of {length} bytes exceeds max_record_bytes="
                             f"{self.max_record_bytes}")
        crc = zlib.crc32(_U8.pack(op))
        for p in parts:
            crc = zlib.crc32(p, crc)
        record = b"".join([_RECORD.pack(length, crc, op), *parts])
        del parts
        with self._lock:
            self._check_usable()
            try:
                _write_all(self._fd, record)
            except BaseException:
                self._roll_back()
                raise
            seq = self._n
            self._n += 1
            self._size += len(record)
            self._written += 1
            gen = self._written
        if self.sync_mode == "always":
            self._sync_to(gen)
        elif self.sync_mode == "group":
            self._wake.set()
        return seq

    def _roll_back(self) -> None:
        """Cut whatever part of a failed record reached the file; if that fails too, the log is
        unusable (a later record would land after garbage and be lost on replay)."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as e:
            self._failed = e
            log.error("%s: could not cut a partly written record (%s); the log is unusable", self.path, e)

    def sync(self) -> None:
        """Flush the log file to disk now, in every mode (``"none"`` included); this also covers
        records a previous writer left unflushed."""
        with self._lock:
            self._check_usable()
            gen = self._written
        self._sync_to(gen, force=True)

    def _sync_to(self, gen: int, *, force: bool = False) -> None:
        with self._sync_lock:
            if self._synced >= gen and not force:
                return  # a concurrent flush already covered it
            self._check_usable()
            target = self._written  # everything written before the flush starts is covered
            try:
                _datasync(self._fd)
            except OSError as e:
                # After a failed flush the kernel may have dropped the dirty pages (Linux marks
                # them clean): retrying could report success for data that is gone.
                self._failed = e
                raise
            self._synced = max(self._synced, target)
            self._last_sync = time.monotonic()

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError(f"I/O operation on a closed WAL ({self.path})")
        if self._failed is not None:
            raise RuntimeError(f"{self.path}: the WAL is unusable after an earlier I/O error: "
                               f"{self._failed}") from self._failed

    # -- reset / close -------------------------------------------------------------------------
    def reset(self, base: int) -> None:
        """Replace the log by an empty one with header ``base`` -- after a checkpoint.

        Atomic: the new log is written and flushed beside the old one, moved over it with
        ``os.replace`` and the directory is flushed, so a crash leaves either the old log or the
        new one. Records not yet flushed in ``"group"`` / ``"none"`` mode are discarded with the
        old log (the checkpoint holds them).
        """
        base = _check_base(base)
        with self._lock, self._sync_lock:
            self._check_usable()
            fd = self._create(base, exclusive=False)
            old, self._fd = self._fd, fd
            os.close(old)  # releases the lock on the old, now unlinked, file
            self.base, self._n, self._size = base, 0, HEADER_SIZE
            self._synced = self._written  # the header is flushed; no record is pending

    def close(self) -> None:
        """Flush (unless ``sync="none"``) and close. Idempotent."""
        if self._closed:
            return
        if self._flusher is not None:
            self._stop.set()
            self._wake.set()
            # __del__ can run on the flusher thread itself, when it drops the last reference
            if self._flusher is not threading.current_thread():
                self._flusher.join()
            self._flusher = None
        try:
            if self.sync_mode != "none" and self._failed is None:
                self._sync_to(self._written)
        finally:
            with self._lock, self._sync_lock:
                self._closed = True
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "WriteAheadLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- state ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Records in the log (replayable ones found on open, plus those appended since)."""
        return self._n

    @property
    def nbytes(self) -> int:
        """Size of the log file in bytes (header included)."""
        return self._size

    @property
    def unsynced(self) -> int:
        """Records appended but not yet flushed to disk (always 0 right after an ``"always"``
        append returns)."""
        return self._written - self._synced

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (f"WriteAheadLog({self.path!r}, base={self.base}, records={self._n}, "
                f"nbytes={self._size}, sync={self.sync_mode!r}{', closed' if self._closed else ''})")

    @staticmethod
    def read(path, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> WalScan:
        """Read a whole log: its base, its valid prefix of records, where that prefix ends.

        Stops at the first incomplete record, CRC mismatch or length above ``max_record_bytes``
        (never skips past it) and reports it as a torn tail; the file is not modified. See
        :class:`WalReader` to stream a large log instead.

        Raises
        ------
        ValueError
            The file does not start with a complete lukhas_gpu WAL header ("not a lukhas_gpu WAL"
            / "truncated header", naming the file), or a record passes its CRC but cannot be
            decoded.
        """
        with WalReader(path, max_record_bytes=max_record_bytes) as r:
            records = list(r)
        return WalScan(path=r.path, base=r.base, records=records, valid_end=r.valid_end,
                       file_size=r.file_size, torn=r.torn, reason=r.reason)


def _group_flush_loop(ref, wake: threading.Event, stop: threading.Event, interval: float) -> None:
    """Background flusher of a ``"group"`` log. Holds the log only weakly, so a log that is
    dropped without ``close()`` can still be collected (and closed by ``__del__``)."""
    while not stop.is_set():
        if not wake.wait(1.0):
            if ref() is None:
                return
            continue
        wal = ref()
        if wal is None:
            return
        delay = wal._last_sync + interval - time.monotonic()
        del wal
        if delay > 0 and stop.wait(delay):
            return  # close() flushes what is left
        wake.clear()  # appends after this point set it again and get the next flush
        wal = ref()
        if wal is None:
            return
        try:
            wal._sync_to(wal._written)
        except (OSError, ValueError, RuntimeError) as e:
            # OSError marks the log failed (the next append raises); closed / failed: nothing to do
            log.debug("%s: background flush stopped: %s", wal.path, e)
            return
        finally:
            del wal


# -- small OS helpers ----------------------------------------------------------------------------
def _create_tmp(path: str) -> tuple[str, int]:
    """A new, empty, uniquely named O_APPEND file beside ``path``: ``(name, fd)``."""
    while True:
        tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def _check_base(base) -> int:
    base = operator.index(base)
    if not 0 <= base < 1 << 64:
        raise ValueError(f"base must be in 0..2**64-1 (uint64), got {base}")
    return base


def _write_all(fd: int, data) -> None:
    """One os.write; more only if the kernel takes less (over ~2 GiB, or a disk filling up)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _lock_fd(fd: int, path: str) -> None:
    if fcntl is None:  # pragma: no cover - non-POSIX
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"{path} is already open for writing by another WriteAheadLog "
                           f"(one writer per log)") from None


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _fsync_dir(d: str) -> None:
    """Flush a directory entry change (create / rename); a no-op where directories cannot be opened."""
    try:
        dfd = os.open(d or ".", os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(dfd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
