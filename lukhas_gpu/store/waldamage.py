"""Damage in a write-ahead log, told apart from a torn tail: the checks, and the files a damaged
log or record is kept in (never deleted). See :mod:`.wal` for the rules."""
from __future__ import annotations

import glob
import logging
import os
import time

from .layout import CorruptStoreError, fsync_dir
from .walcodec import DEFAULT_MAX_RECORD_BYTES
from .walreader import find_record, scan_damage

__all__ = ["check_torn_tail", "check_tail", "keep_damaged_tail", "damaged_tails", "move_aside", "TAIL_DAMAGED",
           "TAIL_SALVAGED"]

log = logging.getLogger("lukhas_gpu.store.wal")

#: Tags of the files beside a log that hold a damaged last record's bytes: kept on open (the
#: store's verify fails while one exists), renamed to the second once salvage has reported it.
TAIL_DAMAGED, TAIL_SALVAGED = "tail-damaged", "tail-salvaged"


def check_torn_tail(path, valid_end: int, file_size: int, *, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
    """Raise :class:`CorruptStoreError` unless the bytes after ``valid_end`` are a torn tail:
    nothing valid after the bad record. The message names the file, the byte offset, the
    sequence numbers affected and how many valid records follow; ``e.damage`` lists them."""
    if find_record(path, valid_end + 1, file_size, max_record_bytes=max_record_bytes) is None:
        return
    n, damage, _ = scan_damage(path, max_record_bytes=max_record_bytes)
    first = damage[0]
    after = n - first.seq
    err = CorruptStoreError(path, f"corrupted in the middle, not a torn tail: {first.describe()}, and {after} valid "
                                  f"records follow it (sequence numbers {first.seq} on are affected"
                                  f"{f'; {len(damage)} damaged places in all' if len(damage) > 1 else ''}). "
                                  f"Nothing was cut or replayed. To keep every valid record and move this log "
                                  f"aside, open with salvage=True (lukhas-gpu verify --salvage STORE)")
    err.damage, err.offset, err.seq = damage, first.offset, first.seq
    raise err


def keep_damaged_tail(path, reader) -> str:
    """Copy the bytes from a finished :class:`WalReader`'s ``valid_end`` to the end of the file
    (a damaged last record, :attr:`WalReader.crc_failed`) to ``<path>.tail-damaged-<time>``,
    flushed, before the caller cuts them; logs an error naming it and returns its name."""
    with open(path, "rb") as f:
        f.seek(reader.valid_end)
        data = f.read(reader.file_size - reader.valid_end)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, k = f"{os.fspath(path)}.{TAIL_DAMAGED}-{stamp}", 1
    while os.path.exists(dest):
        dest, k = f"{os.fspath(path)}.{TAIL_DAMAGED}-{stamp}-{k}", k + 1
    with open(dest, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(os.path.abspath(dest)))
    log.error("%s: record %d at byte %d lies within the file and fails its CRC (%s): damage, not a torn tail. "
              "Its %d bytes are kept in %s and the log was cut there; the record is not applied. Salvage "
              "(lukhas-gpu verify --salvage) reports it", path, reader.n_records, reader.valid_end, reader.reason,
              len(data), dest)
    return dest


def damaged_tails(path) -> list[str]:
    """The files beside the log at ``path`` that hold damaged last records not yet salvaged."""
    return sorted(glob.glob(glob.escape(os.fspath(path)) + f".{TAIL_DAMAGED}-*"))


def move_aside(path, tag: str = "damaged", *, link: bool = False) -> str:
    """Rename ``path`` to ``path.<tag>-<UTC timestamp>`` (never deleted) and flush the
    directory; returns the new name. ``link``: a second name (hard link) instead, ``path`` kept."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = f"{os.fspath(path)}.{tag}-{stamp}"
    k = 1
    while os.path.exists(dest):
        dest, k = f"{os.fspath(path)}.{tag}-{stamp}-{k}", k + 1
    (os.link if link else os.rename)(path, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)), quiet=True)
    return dest


def check_tail(reader) -> None:
    """For a finished :class:`~.walreader.WalReader` that stopped at a bad record: return if it is
    a torn tail (an interrupted append), else raise CorruptStoreError naming the log -- valid
    records after it (:func:`check_torn_tail`), or a last record within the file that fails its
    CRC. For readers and verify, which change nothing; a writer's open keeps such a record's bytes
    aside instead (:func:`keep_damaged_tail`)."""
    check_torn_tail(reader.path, reader.valid_end, reader.file_size, max_record_bytes=reader.max_record_bytes)
    if reader.crc_failed:
        raise CorruptStoreError(reader.path, f"record {reader.n_records} at byte {reader.valid_end} lies within the "
                                             f"file and fails its CRC ({reader.reason}): an acknowledged record is "
                                             "damaged, not a torn tail. Nothing was cut; lukhas-gpu verify --salvage "
                                             "STORE keeps its bytes aside and reports it")
