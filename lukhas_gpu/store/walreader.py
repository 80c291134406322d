"""Reading the write-ahead log: a streaming :class:`WalReader` that stops at the first torn or
corrupted record, and :class:`WalScan`, the summary of a whole pass (see :mod:`.wal` for the
format and the durability rules)."""
from __future__ import annotations

import dataclasses
import operator
import os
import zlib
from typing import Iterator, NamedTuple

import numpy as np

from .layout import CorruptStoreError
from .walcodec import (
    DEFAULT_MAX_RECORD_BYTES,
    HEADER,
    HEADER_V1,
    MAGIC,
    MAGIC_V1,
    MAX_LENGTH_FIELD,
    OP,
    RECORD,
    RECORD_HEADER_SIZE,
    RESYNC_LOOKAHEAD,
    decode_fields,
    header_crc,
    record_candidates,
)

__all__ = ["WalReader", "WalRecord", "WalScan", "WalDamage", "WalHeaderError", "check_max_record_bytes",
           "find_record", "scan_damage"]


class WalHeaderError(CorruptStoreError, ValueError):
    """A file that is not a complete, intact lukhas_gpu WAL header (wrong magic, truncated, or a
    header CRC mismatch): a :class:`~.layout.CorruptStoreError` naming the file, and a ValueError."""

#: Bytes examined at once when looking for the next valid record after a damaged one.
_SCAN_CHUNK = 1 << 20

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
        or an implausible length -- a torn tail, or corruption, after which nothing is replayed
        (:func:`~.waldamage.check_tail` tells them apart).
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


@dataclasses.dataclass(frozen=True)
class WalDamage:
    """Damaged bytes of a log with valid records after them (corruption, not a torn tail).

    Attributes
    ----------
    offset : int
        Where the first damaged record starts (the end of the valid records before it).
    end : int
        Where the next valid record starts.
    seq : int
        Sequence number of the first damaged record (the valid records before it, counted).
    reason : str
        What is wrong with the record at ``offset``.
    records : int or None
        Records lost in ``offset..end``: 1 when the damaged record's length field still spans
        exactly that range; None when it cannot be known (its length field is damaged).
    """

    offset: int
    end: int
    seq: int
    reason: str
    records: int | None

    def describe(self) -> str:
        what = (f"record {self.seq}" if self.records == 1 else f"the records from sequence number {self.seq}")
        return f"{what} at bytes {self.offset}..{self.end} ({self.reason})"


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
    resync : bool
        If True, a bad record followed by valid ones does not end the iteration: the reader
        skips to the next valid record (see :func:`find_record`), records a :class:`WalDamage`
        in :attr:`damage` and goes on (salvage). Only a bad record with nothing valid after it
        -- a torn tail -- ends it. Sequence numbers keep counting the valid records.
    start : (int, int), optional
        ``(byte offset, sequence number)`` of a record boundary reached by an earlier pass (its
        ``valid_end`` and ``n_records``): reading resumes there, so following a growing log costs
        only what is new. Sequence numbers and :attr:`n_records` stay counted from the log's start.

    Raises
    ------
    WalHeaderError
        (a CorruptStoreError and a ValueError) The file does not start with a complete, intact
        lukhas_gpu WAL header (magic, base and their CRC-32); the message names the file.

    Notes
    -----
    Only the bytes present when the reader was opened are read. A log being appended to at the
    same time may therefore end in what looks like a torn tail (the record in flight); reading a
    live log is safe, but only the writer may cut a tail.
    """

    def __init__(self, path, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, decode: bool = True,
                 resync: bool = False, start: tuple[int, int] | None = None):
        self.path = os.fspath(path)
        self._resync = bool(resync)
        self.damage: list[WalDamage] = []
        self.max_record_bytes = check_max_record_bytes(max_record_bytes)
        self._decode = bool(decode)
        self._f = open(self.path, "rb")
        try:
            st = os.fstat(self._f.fileno())
            self.file_size = st.st_size
            #: ``base``: the generation the log follows; ``log_id``: the log's identity (None for
            #: a log older than it); ``header_size``: where its first record starts (28, 16 for a
            #: log of the first format)
            self.base, self.log_id, self.header_size = _parse_header(self.path, self._f)
            #: ``(st_dev, st_ino, log id)`` of the file read: a log replaced by a reset is another
            #: log even where the new file reuses the old one's inode (a reader resumes only its own)
            self.file_id = (st.st_dev, st.st_ino, self.log_id)
            offset, first = start if start is not None else (self.header_size, 0)
            if not (self.header_size <= offset <= self.file_size and first >= 0):
                raise ValueError(f"{self.path}: cannot resume at byte {offset} (the file has {self.file_size})")
            self._f.seek(offset)
        except BaseException:
            self._f.close()
            raise
        self._pos = offset
        self._n = first
        self._done = False
        self._torn = False
        self._reason: str | None = None
        self._bad_length: int | None = None

    def __iter__(self) -> Iterator[WalRecord]:
        return self

    def __next__(self) -> WalRecord:
        while True:
            if self._done:
                raise StopIteration
            rec = self._next_record()
            if isinstance(rec, WalRecord):
                return rec
            self._damaged(*rec)

    def _next_record(self):
        """The next record, or ``(reason, length)`` for a bad one (``reason`` None: the end)."""
        pos, left = self._pos, self.file_size - self._pos
        if left == 0:
            self._finish(None)
        if left < RECORD_HEADER_SIZE:
            return f"incomplete record header ({left} of {RECORD_HEADER_SIZE} bytes)", None
        length, crc, op = RECORD.unpack(self._read(RECORD_HEADER_SIZE))
        if length > self.max_record_bytes:
            return f"record length {length} exceeds max_record_bytes={self.max_record_bytes}", None
        if length > left - RECORD_HEADER_SIZE:
            return f"incomplete record ({left - RECORD_HEADER_SIZE} of {length} payload bytes)", None
        payload = self._read(length)
        if zlib.crc32(payload, zlib.crc32(OP.pack(op))) != crc:
            return "CRC mismatch", length
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

    def _damaged(self, reason: str, length: int | None) -> None:
        """A bad record at ``self._pos``: the end (torn tail, or no resync), or skip past it."""
        self._bad_length = length
        if not self._resync:
            self._finish(reason)
        nxt = find_record(self.path, self._pos + 1, self.file_size, max_record_bytes=self.max_record_bytes)
        if nxt is None:
            self._finish(reason)
        one = length is not None and self._pos + RECORD_HEADER_SIZE + length == nxt
        self.damage.append(WalDamage(self._pos, nxt, self._n, reason, 1 if one else None))
        self._pos = nxt
        self._f.seek(nxt)

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

    @property
    def crc_failed(self) -> bool:
        """Whether the record at :attr:`valid_end` lies wholly within the file and fails its CRC,
        and is not all zeros (a file extended without its data): damage, not an interrupted
        append (whose length runs past the end of the file). Whether valid records follow it is
        :func:`~.wal.check_torn_tail`'s question."""
        self._require_done("crc_failed")
        if not self._torn or self._bad_length is None:
            return False
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read(RECORD_HEADER_SIZE + self._bad_length)
        return bool(data.strip(b"\0"))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "WalReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_header(path: str, f) -> tuple[int, int | None, int]:
    """``(base, log id or None, header size)`` of the log open as ``f`` (positioned at 0); a log of
    the first format (no id, no CRC) is read too. WalHeaderError if the header is not a lukhas_gpu
    WAL's, is truncated, or fails its CRC."""
    magic = f.read(len(MAGIC))
    if magic not in (MAGIC[:len(magic)], MAGIC_V1[:len(magic)]):
        raise WalHeaderError(path, f"is not a lukhas_gpu WAL: it starts with {magic!r}, expected {MAGIC!r}")
    fmt = HEADER_V1 if magic == MAGIC_V1 else HEADER
    header = magic + f.read(fmt.size - len(magic))
    if len(header) < fmt.size:
        raise WalHeaderError(path, f"truncated header ({len(header)} of {fmt.size} bytes); not a complete "
                                   f"lukhas_gpu WAL")
    if fmt is HEADER_V1:
        return HEADER_V1.unpack(header)[1], None, fmt.size
    _, base, log_id, crc = HEADER.unpack(header)
    want = header_crc(base, log_id)
    if crc != want:
        raise WalHeaderError(path, f"damaged header: CRC-32 {want:08x} of its magic, base ({base}) and log id, it "
                                   f"says {crc:08x}; the generation this log follows is unknown. Nothing was read")
    return base, log_id, fmt.size


def check_max_record_bytes(n) -> int:
    n = operator.index(n)
    if not 0 < n <= MAX_LENGTH_FIELD:
        raise ValueError(f"max_record_bytes must be in 1..{MAX_LENGTH_FIELD} (uint32 length field), got {n}")
    return n


# =============================================================================================
# writing
# =============================================================================================


def find_record(path, start: int, end: int, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> int | None:
    """The offset of the first complete, CRC-valid record that starts in ``start..end`` of the
    log at ``path`` (and ends by ``end``), or None: the resynchronisation scan that tells a torn
    tail (nothing valid after the bad record) from corruption in the middle of a log.

    Positions are first filtered on the record framing and the payload's layout
    (:func:`~.walcodec.record_candidates`, vectorised); only candidates get a CRC-32, read in
    chunks (a damaged length field is never allocated).
    """
    with open(path, "rb") as f:
        pos = start
        while pos < end:
            n = min(_SCAN_CHUNK, end - pos)
            f.seek(pos)
            raw = f.read(n + RESYNC_LOOKAHEAD)
            buf = np.zeros(n + RESYNC_LOOKAHEAD, np.uint8)
            buf[:len(raw)] = np.frombuffer(raw, np.uint8)
            for c in record_candidates(buf, n, end - pos, max_record_bytes):
                if _crc_ok(f, pos + int(c)):
                    return pos + int(c)
            pos += n
    return None


def _crc_ok(f, at: int) -> bool:
    f.seek(at)
    length, crc, op = RECORD.unpack(f.read(RECORD_HEADER_SIZE))
    got = zlib.crc32(OP.pack(op))
    while length > 0:
        chunk = f.read(min(length, _SCAN_CHUNK))
        if not chunk:
            return False
        got = zlib.crc32(chunk, got)
        length -= len(chunk)
    return got == crc


def scan_damage(path, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
    """Read a whole log past any damage: ``(valid records, [WalDamage], torn tail reason or None)``.

    The file is not modified; records are CRC-checked, not decoded.
    """
    with WalReader(path, max_record_bytes=max_record_bytes, decode=False, resync=True) as r:
        n = sum(1 for _ in r)
    return n, list(r.damage), r.reason
