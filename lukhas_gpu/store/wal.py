"""A write-ahead log for the memory store: every add / update / delete, appended and synced.

A store open for writing appends one record per mutation and, by default, syncs it to disk before
the call returns. On open, the log is replayed on top of the last checkpoint; after a new
checkpoint the log is :meth:`~WriteAheadLog.reset` to an empty one whose ``base`` names the
checkpoint it follows.

On-disk format (all integers little-endian)::

    header   24 B    b"LKGWAL02"  uint64 base  uint64 log_id (random; logs of b"LKGWAL01", 16 B, have none)
    record    9 B    uint32 payload_length  uint32 crc32(op + payload)  uint8 op
             + payload_length bytes of payload (see :func:`encode_fields`)

Records are written with one ``os.write`` each, on a descriptor opened ``O_APPEND``. A crash in
the middle of a write leaves a *torn tail*: a record that is incomplete, or complete in length
but not in content (a file extended with zeros, say). Readers stop at the first record that is
incomplete, fails its CRC, or claims more than ``max_record_bytes``, and never replay past it,
because that would apply later mutations without an earlier one. Whether it is a torn tail is
decided by a resynchronisation scan (:func:`~.walreader.find_record`): if a valid record follows
the bad one, the log is corrupted in the middle -- acknowledged records lie beyond the damage --
and opening it for writing raises :class:`~.layout.CorruptStoreError` (the offset and sequence
numbers named) and changes nothing; salvage is the caller's explicit choice
(``WalReader(resync=True)``). A torn tail -- nothing valid after the bad record, whose length runs
past the end of the file (an interrupted append; or bytes that are all zeros) -- is cut off with a
warning before appending, so a new record is never written after garbage. A last record that
lies wholly within the file and fails its CRC is *damage* (an acknowledged record altered): its
bytes are first kept beside the log (``<log>.tail-damaged-<time>``, :func:`damaged_tails`), the
log is cut and an error is logged naming that file; a store's ``verify`` fails while such a file
exists, until salvage marks it seen.

The header (magic, base, CRC-32 of both) is checked too: a damaged one raises
:class:`~.walreader.WalHeaderError` (a CorruptStoreError and a ValueError) naming the file.
Logs of the first format (``MAGIC_V1``, no header CRC) are still read and appended to.

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

import errno
import glob
import logging
import operator
import os
import secrets
import threading
import time
import weakref
import zlib

from .layout import fsync_dir
from .walcodec import (
    DEFAULT_MAX_RECORD_BYTES,
    HEADER_SIZE,
    MAGIC,
    OP,
    RECORD,
    RECORD_HEADER_SIZE,
    decode_fields,
    encode_fields,
    encode_parts,
    pack_header,
)
from .waldamage import (
    TAIL_DAMAGED,
    TAIL_SALVAGED,
    check_tail,
    check_torn_tail,
    damaged_tails,
    keep_damaged_tail,
    move_aside,
)
from .walreader import (
    WalDamage,
    WalHeaderError,
    WalReader,
    WalRecord,
    WalScan,
    check_max_record_bytes,
    find_record,
    scan_damage,
)

try:  # POSIX only; elsewhere the single-writer rule is the caller's to keep
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None

__all__ = [
    "WriteAheadLog", "WalReader", "WalRecord", "WalScan", "WalDamage", "encode_fields", "decode_fields",
    "find_record", "scan_damage", "check_torn_tail", "move_aside", "WalHeaderError", "damaged_tails",
    "keep_damaged_tail", "check_tail", "TAIL_DAMAGED", "TAIL_SALVAGED",
    "MAGIC", "HEADER_SIZE", "RECORD_HEADER_SIZE", "SYNC_MODES",
    "DEFAULT_GROUP_INTERVAL", "DEFAULT_MAX_RECORD_BYTES",
]

log = logging.getLogger(__name__)

SYNC_MODES = ("always", "group", "none")
DEFAULT_GROUP_INTERVAL = 0.05

# fdatasync flushes the data and the file size (which every O_APPEND write changes) and skips the
# mtime update that fsync would also force; where it is missing (macOS) fsync is the best there is.
# Module attribute so tests can count flushes.
_datasync = getattr(os, "fdatasync", os.fsync)

_TMP_SUFFIX = ".wal-tmp"


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
    lock : bool
        Take the log's own ``flock`` (default). A store passes False: its ``LOCK`` file is the
        one source of truth for who writes (see :class:`~.layout.StoreLock`).

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
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, lock: bool = True):
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(map(repr, SYNC_MODES))}; got {sync!r}")
        group_interval = float(group_interval)
        if not group_interval > 0:
            raise ValueError(f"group_interval must be > 0 seconds, got {group_interval}")
        self.path = os.path.abspath(os.fspath(path))
        self.sync_mode = sync
        self._flock = bool(lock)
        self.group_interval = group_interval
        self.max_record_bytes = check_max_record_bytes(max_record_bytes)
        self._lock = threading.Lock()       # appends: the write, the counters, the fd swap
        self._sync_lock = threading.Lock()  # flushes; also keeps the fd alive while one runs
        self._fd = -1
        self._closed = True
        self._failed: BaseException | None = None
        self._written = 0   # appends written (a generation counter; reset() does not zero it)
        self._synced = 0    # generation covered by the last flush
        self._last_sync = time.monotonic()
        self._flusher = None

        self.damaged_tail = None
        fd, created = self._open_or_create(base)
        try:
            if created:
                self.base, self._n, self._size, self.log_id = int(base or 0), 0, HEADER_SIZE, self._created_id
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
                if self._flock:
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
            if self._flock:
                _lock_fd(fd, tmp)  # locked before it is visible, so nobody can grab it in between
            self._created_id = secrets.randbits(64) or 1  # the log's identity (see walcodec.HEADER)
            _write_all(fd, pack_header(base, self._created_id))
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
        fsync_dir(d, quiet=True)
        return fd

    def _adopt_existing(self, fd: int, base) -> None:
        reader = WalReader(self.path, max_record_bytes=self.max_record_bytes, decode=False)
        with reader:
            for _ in reader:
                pass
        if base is not None and reader.base != base:
            raise ValueError(f"{self.path}: WAL follows base {reader.base}, expected base {base} "
                             f"(reset() it, or open it without base=)")
        self.base, self._n, self._size, self.log_id = reader.base, reader.n_records, reader.valid_end, reader.log_id
        #: where a damaged last record's bytes were kept on open (None: there was none)
        self.damaged_tail = None
        if reader.torn:
            check_torn_tail(self.path, reader.valid_end, reader.file_size, max_record_bytes=self.max_record_bytes)
            if reader.crc_failed:
                self.damaged_tail = keep_damaged_tail(self.path, reader)
                os.ftruncate(fd, reader.valid_end)
                os.fsync(fd)
                return
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
        parts = encode_parts(fields)
        length = sum(memoryview(p).nbytes for p in parts)
        if length > self.max_record_bytes:
            raise ValueError(f"record payload of {length} bytes exceeds max_record_bytes="
                             f"{self.max_record_bytes}")
        crc = zlib.crc32(OP.pack(op))
        for p in parts:
            crc = zlib.crc32(p, crc)
        record = b"".join([RECORD.pack(length, crc, op), *parts])
        del parts
        with self._lock:
            self._check_usable()
            try:
                _write_all(self._fd, record)
            except BaseException as e:
                self._roll_back()
                if isinstance(e, OSError) and e.filename is None:  # ENOSPC, EIO: name the file
                    raise OSError(e.errno, f"{e.strerror} (appending to {self.path})", self.path) from e
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
                raise OSError(e.errno, f"{e.strerror} (flushing {self.path})", self.path) from e
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
            self.base, self._n, self._size, self.log_id = base, 0, HEADER_SIZE, self._created_id
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




def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
