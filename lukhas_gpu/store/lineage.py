"""Which generation a store is at: the lineage of its generations and the log that follows one.

Each generation's manifest records its ``parent`` (the generation it was checkpointed from; None
for a store's first) and the ``log_id`` of the write-ahead log whose records it absorbed. The
log's header names the generation it follows (``base``) and its own random id. ``rollback`` goes
to the parent of the published generation, pruning keeps the published one and its ancestors,
recovery walks the same chain: never onto an abandoned branch (what a rollback left behind).

The pair (``CURRENT``, ``wal.log``) decides, read-only (:func:`resolve`), where the store is:

* no log, or a log that follows ``CURRENT``: at ``CURRENT`` (the log replayed on it);
* a log that follows ``CURRENT``'s parent and that ``CURRENT`` absorbed (same id): at
  ``CURRENT``, the log is stale (a checkpoint's crash window: published, log not yet restarted);
* a log that follows ``CURRENT``'s parent and that it did not absorb: at the parent -- a
  rollback is committed (its new log in place, :func:`commit_rollback`), ``CURRENT`` not yet
  switched;
* anything else: :class:`~.layout.CorruptStoreError`, nothing changed (``recover`` decides); a log
  is never dropped on a guess (an empty one, holding nothing, excepted).

Generations written before the lineage (no ``parent`` in the manifest) have the previous number
as their parent; a log of an older generation that cannot be shown to be absorbed is moved aside
(``wal.log.stale-<time>``), never deleted. A writer, ``rollback`` and ``recover`` :func:`settle`
the pair first (under the writer lock), so what they see is the one state every reader resolves.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

from . import layout
from .wal import WalHeaderError, WalReader, WriteAheadLog, move_aside, scan_damage

log = logging.getLogger(__name__)

__all__ = ["Head", "absorbed_by", "commit_rollback", "head_from_log", "resolve", "settle", "wal_header"]


@dataclasses.dataclass(frozen=True)
class Head:
    """``number``: the generation the store is at; ``current``: what ``CURRENT`` names; ``log``:
    ``"absent"``, ``"follows"`` (the log follows ``number``), ``"absorbed"`` (stale: its records
    are in ``number``), ``"rollback"`` (committed, ``CURRENT`` not yet switched: the log follows
    ``number``), ``"legacy"`` (a log of an older generation of a store without lineage) or
    ``"stray"`` (an empty log the lineage does not explain: nothing to keep)."""

    number: int
    current: int
    log: str
    wal_base: int | None = None
    wal_id: int | None = None

    @property
    def log_follows(self) -> bool:
        return self.log in ("follows", "rollback")


def wal_header(root, *, empty: bool = False):
    """``(base, log id)`` of the store's log (``empty``: and whether it holds no record bytes),
    None if there is none; CorruptStoreError for a file that is not a log."""
    path = pathlib.Path(root) / layout.WAL
    try:
        with WalReader(path, decode=False) as r:
            return (r.base, r.log_id, r.file_size == r.header_size) if empty else (r.base, r.log_id)
    except FileNotFoundError:
        return None
    except WalHeaderError:  # a damaged or foreign header: named as it is
        raise
    except ValueError as e:
        raise layout.CorruptStoreError(path, str(e)) from None


def _manifest(root: pathlib.Path, number: int) -> dict:
    gen_dir = root / layout.generation_name(number)
    manifest = layout.read_manifest(gen_dir)
    layout.check_manifest_crc(gen_dir, manifest)
    return manifest


def absorbed_by(root, number: int, wal: tuple[int, int | None]) -> bool:
    """Whether generation ``number`` was checkpointed from the log ``wal`` (its records are in it)."""
    m = _manifest(pathlib.Path(root), number)
    base, log_id = wal
    return "parent" in m and m["parent"] == base and m.get("log_id") == log_id


def resolve(root) -> Head:
    """Where the store at ``root`` is (see the module docstring); changes nothing. The log's
    header is read before ``CURRENT`` (a checkpoint replaces ``CURRENT`` first, then the log)."""
    root = pathlib.Path(root)
    wal = wal_header(root, empty=True)
    cur = layout.generation_number(layout.current_generation(root))
    if wal is None:
        return Head(cur, cur, "absent")
    base, log_id, empty = wal
    if base == cur:
        return Head(cur, cur, "follows", base, log_id)
    m = _manifest(root, cur)
    lineaged = "parent" in m  # else a generation older than the lineage: its parent is the previous number
    if base == (m["parent"] if lineaged else layout.parent_number(root, cur)):
        if lineaged and m.get("log_id") == log_id:
            return Head(cur, cur, "absorbed", base, log_id)
        if log_id is not None and (root / layout.generation_name(base)).is_dir():  # only a rollback writes it
            return Head(base, cur, "rollback", base, log_id)
    if not lineaged and base < cur or empty:  # an empty log holds nothing to lose: CURRENT decides
        return Head(cur, cur, "legacy" if not empty else "stray", base, log_id)
    raise layout.CorruptStoreError(
        root / layout.WAL, f"follows generation {base}, but the store is at {cur} (parent "
                           f"{m.get('parent', 'unrecorded')}), which did not absorb it: its records are in no "
                           "generation of the store's lineage. Nothing was changed; lukhas-gpu recover (open "
                           "with recover=True) publishes the generation the log follows if it verifies")


def _clean_leftovers(root: pathlib.Path) -> None:
    """An interrupted rollback's uncommitted files: its new log, and the second name it gave the
    live log (a ``wal.log.discarded-*`` that is still ``wal.log`` itself)."""
    (root / layout.WAL_NEXT).unlink(missing_ok=True)
    wal = root / layout.WAL
    for p in root.glob(layout.WAL + ".discarded-*"):
        try:
            if wal.exists() and os.path.samefile(p, wal):
                p.unlink()
                log.info("%s: removed %s, the name an interrupted rollback gave the live log", root, p.name)
        except FileNotFoundError:
            pass


def settle(root) -> Head:
    """Bring the store to the state :func:`resolve` says it is in (the writer lock held): finish
    a committed rollback (publish its generation), drop a log its generation absorbed (moved
    aside if damaged), move a legacy stale log aside; returns the settled :class:`Head`."""
    root = pathlib.Path(root)
    _clean_leftovers(root)
    head = resolve(root)
    wal = root / layout.WAL
    if head.log == "rollback":
        layout.publish(root, layout.generation_name(head.number))
        log.warning("%s: finished an interrupted rollback to %s (its log was in place)", root,
                    layout.generation_name(head.number))
        return Head(head.number, head.number, "follows", head.wal_base, head.wal_id)
    if head.log == "absorbed":
        if scan_damage(wal)[1]:  # e.g. a salvage that crashed after its checkpoint: keep the evidence
            log.warning("%s follows generation %s, absorbed by %s, and is damaged: moved aside to %s",
                        wal, head.wal_base, head.number, move_aside(wal))
        else:
            wal.unlink()
            layout.fsync_dir(root)
            log.warning("%s: dropped the log of generation %s: generation %s absorbed it (same log id)", root,
                        head.wal_base, head.number)
    elif head.log == "stray":
        wal.unlink()
        log.warning("%s: removed an empty log that follows generation %s, which the store (at %s) does not "
                    "explain", root, head.wal_base, head.number)
    elif head.log == "legacy":
        records = scan_damage(wal)[0]
        if records:
            log.warning("%s follows generation %s, the store is at %s (a store without lineage: whether its %d "
                        "records are in it is unknown); moved aside to %s, not replayed", wal, head.wal_base,
                        head.number, records, move_aside(wal, "stale"))
        else:
            wal.unlink()
    else:
        return head
    return Head(head.number, head.number, "absent")


def commit_rollback(root, target: int, *, keep_log: bool) -> str | None:
    """Roll the settled store at ``root`` back to generation ``target`` in one atomic step.

    A new empty log that follows ``target`` is written in full beside the old one
    (``WAL_NEXT``); ``keep_log``: the old log gets a second name (``wal.log.discarded-<time>``,
    a hard link); then the new log replaces ``wal.log`` -- the commit: from here :func:`resolve`
    says the store is at ``target`` -- and ``CURRENT`` is switched. A crash before the commit
    leaves the old state whole (the leftovers are cleaned by the next :func:`settle`), after it
    the new state. Returns the discarded log's name, or None.
    """
    root = pathlib.Path(root)
    nxt, wal = root / layout.WAL_NEXT, root / layout.WAL
    nxt.unlink(missing_ok=True)
    WriteAheadLog(nxt, base=target, sync="always", lock=False).close()  # written, flushed, linked
    moved = move_aside(wal, "discarded", link=True) if keep_log and wal.exists() else None
    os.replace(nxt, wal)
    layout.fsync_dir(root)
    layout.publish(root, layout.generation_name(target))
    return moved


def head_from_log(root) -> int | None:
    """The generation the log says the store is at, for a store whose ``CURRENT`` cannot be
    trusted: the one it follows (that generation plus the whole log is every acknowledged write,
    also when a child absorbed the log, or part of it), else, that one gone, the child that
    absorbed it; None without a log."""
    root = pathlib.Path(root)
    try:
        wal = wal_header(root)
    except layout.CorruptStoreError:
        return None
    if wal is None:
        return None
    if (root / layout.generation_name(wal[0])).is_dir():
        return wal[0]
    for number in reversed(layout.generations(root)):
        try:
            if number > wal[0] and absorbed_by(root, number, wal):
                return number
        except layout.StoreError:
            continue
    return None
