"""A reader of a store that a writer keeps changing: open the published generation plus the
write-ahead log, then :func:`refresh` at a cost proportional to what is new.

A reader never writes, cuts, creates or locks a file of the store. It keeps a cursor: the
generation it loaded, and the log file (``(st_dev, st_ino)``), byte offset and sequence number
it has applied up to. A refresh

* reloads when the store is at another generation (a checkpoint or a rollback published one;
  where it is comes from ``CURRENT`` and the log's header together, :func:`~..store.lineage.resolve`,
  as a writer opening the store would settle it), then reads that generation's log from its start;
* otherwise resumes the same log at its offset (a log replaced by another file of the same
  generation -- a writer that found a stale log -- is read from its start if nothing had been
  applied from the old one, else the generation is reloaded);
* applies each complete record through the write paths of :mod:`.writes`
  (:func:`~.durable.apply_record`), so a reader ends in the state a writer reopening the store
  would reach; the record a writer is appending at that moment (incomplete, or failing its CRC)
  is not read, and is read by a later refresh once complete;
* repeats while ``CURRENT`` moved during the pass, so everything acknowledged before the call
  is visible when it returns (see the consistency model in README.md).

Vectors appended by replay live in this process's memory (the published ``vectors.i8`` is mapped
copy-on-write, :meth:`~lukhas_gpu.vectors.store.VectorStore.attach` ``private=True``).
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import time

from ..store import layout, lineage
from ..store.wal import check_tail
from ..store.walreader import WalReader
from . import durable

log = logging.getLogger(__name__)

__all__ = ["Cursor", "open_reader", "refresh", "MAX_PASSES"]

#: Passes of one open/refresh while a writer keeps publishing generations under it; a reader
#: that loses every race returns what it has (consistent, possibly behind) with a warning.
MAX_PASSES = 8


@dataclasses.dataclass
class Cursor:
    """How far a reader has read: ``generation`` loaded, and in the log of that generation the
    file ``wal_id`` read from, the byte ``offset`` and sequence number ``seq`` reached."""

    generation: int
    wal_id: tuple | None = None
    offset: int = 0
    seq: int = 0
    broken: bool = False  # a record failed half-applied: the next refresh reloads


def open_reader(index_cls, path, *, verify: bool):
    """``MemoryIndex.open(path, mode="r")``: the published generation plus its log."""
    path = pathlib.Path(path)
    for attempt in range(MAX_PASSES):
        gen_dir = _head(path)
        try:
            index = _load(index_cls, path, gen_dir, True if verify else "small")
            break
        except Exception:  # StoreError, OSError, FAISS's RuntimeError for a file gone
            if attempt + 1 == MAX_PASSES or _published(path) == layout.generation_number(gen_dir):
                raise
            # pruned by two checkpoints while we read it: take the new one
    index.state.reader = Cursor(layout.generation_number(gen_dir))
    _catch_up(index, _Changes())
    return index


def refresh(index) -> dict:
    """``MemoryIndex.refresh``: catch up with the writer; returns what changed."""
    t0 = time.perf_counter()
    ch = _Changes()
    _catch_up(index, ch)
    ch.seconds = time.perf_counter() - t0
    return ch.report(index.state.reader.generation, len(index))


def _catch_up(index, ch: "_Changes") -> None:
    path = index.path
    for attempt in range(MAX_PASSES):
        gen_dir = _head(path)
        number = layout.generation_number(gen_dir)
        if number != index.state.reader.generation or index.state.reader.broken:
            try:
                new = _load(type(index), path, gen_dir, "small")
            except Exception:
                if attempt + 1 == MAX_PASSES or _published(path) == number:
                    raise
                continue
            for name in ("dim", "config", "backend", "parts"):
                setattr(index, name, getattr(new, name))
            index.last_plan = None
            index.state.reader = Cursor(number)
            ch.reloaded = True
        if _follow(index, ch):
            return
    log.warning("%s: the writer published generations faster than this reader could load them; "
                "it shows generation %d and may be behind", path, index.state.reader.generation)


@dataclasses.dataclass
class _Changes:
    records: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    reloaded: bool = False
    seconds: float = 0.0

    def report(self, generation: int, count: int) -> dict:
        return {"generation": generation, "records": self.records, "added": self.added, "updated": self.updated,
                "deleted": self.deleted, "reloaded": self.reloaded, "count": count,
                "seconds": round(self.seconds, 6)}


def _load(index_cls, path, gen_dir, checksums):
    index, _ = durable.load(index_cls, path, gen_dir, writable=False, checksums=checksums, private=True)
    index.path, index.mode = path, "r"
    return index


def _head(path) -> pathlib.Path:
    """The generation the store is at. A writer changes ``CURRENT`` and the log one after the
    other, so a pair read in between may not fit: read again (an error only if it lasts)."""
    for attempt in range(MAX_PASSES):
        try:
            return path / layout.generation_name(lineage.resolve(path).number)
        except layout.CorruptStoreError:
            if attempt + 1 == MAX_PASSES:
                raise
            time.sleep(0.002 * (attempt + 1))


def _published(path) -> int | None:
    try:
        return layout.generation_number(_head(path))
    except layout.StoreError:
        return None


def _follow(index, ch: _Changes) -> bool:
    """Apply the log's new records; False when the generation loaded is no longer the published
    one, or the log cannot be continued (the caller reloads and comes back), True when the
    reader is up to date."""
    cur: Cursor = index.state.reader
    wal_path = index.path / layout.WAL
    try:
        with WalReader(wal_path) as head:  # the header and the file's identity
            base, file_id, size = head.base, head.file_id, head.file_size
    except FileNotFoundError:
        return _published(index.path) == cur.generation
    if base != cur.generation:
        # a log the generation loaded absorbed (a crash between publishing a checkpoint and
        # restarting the log) or a legacy stale one: not replayed, unless the store moved meanwhile
        return _published(index.path) == cur.generation
    start = None
    if file_id == cur.wal_id and size >= cur.offset:
        start = (cur.offset, cur.seq)
    elif cur.seq:  # what was applied came from another file, or was cut: cannot continue it
        cur.broken = True
        return False
    try:
        reader = WalReader(wal_path, start=start)
    except FileNotFoundError:
        return False
    with reader:
        if reader.file_id != file_id:  # replaced in between: look again
            return False
        n0 = reader.n_records
        try:
            for rec in reader:
                _count(ch, rec.op, rec.fields)
                durable.apply_record(index, rec.op, rec.fields)
                ch.records += 1
        except BaseException:
            cur.broken = True  # a record half-applied: the next refresh reloads
            raise
        cur.wal_id, cur.offset, cur.seq = file_id, reader.valid_end, reader.n_records
        if reader.torn:  # a record in flight is a torn tail; a bad record with valid ones after it, or
            check_tail(reader)  # a complete one failing its CRC, is not
    if reader.n_records > n0:
        log.debug("%s: applied records %d..%d of %s", index.path, n0, reader.n_records - 1, wal_path)
    return _published(index.path) == cur.generation


def _count(ch: _Changes, op: int, fields: dict) -> None:
    if op == durable.OP_ADD:
        ch.added += len(fields["x"])
    elif op == durable.OP_DELETE:
        ch.deleted += len(fields["ids"])
    elif op == durable.OP_UPDATE:
        ch.updated += len(fields["ids"])
