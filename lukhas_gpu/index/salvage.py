"""Salvage of a damaged write-ahead log beyond the records in its middle (those are
:func:`~.durable.salvage_wal`'s): damaged last records kept beside the log, and a log whose header
fails its CRC. Called by :func:`~.durable.replay_wal` with ``salvage=True`` (``lukhas-gpu verify
--salvage``); nothing here runs otherwise."""
from __future__ import annotations

import logging
import os
import secrets

from ..store import layout
from ..store.wal import HEADER_SIZE, MAGIC, TAIL_DAMAGED, TAIL_SALVAGED, WalReader, damaged_tails, move_aside
from ..store.walcodec import OP_ADD, pack_header

log = logging.getLogger(__name__)

__all__ = ["salvage_tails", "salvage_header"]


def salvage_tails(index) -> dict | None:
    """Mark the damaged last records kept beside the log (``wal.log.tail-damaged-*``) as seen:
    each is renamed ``wal.log.tail-salvaged-*`` (never deleted) and reported in
    ``index.salvage_report`` (``"tails"``); verify fails until then. None if there was none."""
    wal_path = index.path / layout.WAL
    tails = []
    for name in damaged_tails(wal_path):
        dest = name.replace(f".{TAIL_DAMAGED}-", f".{TAIL_SALVAGED}-", 1)
        os.replace(name, dest)
        tails.append({"file": dest, "bytes": os.path.getsize(dest)})
    if not tails:
        return None
    layout.fsync_dir(index.path)
    report = index.salvage_report = getattr(index, "salvage_report", None) or {
        "log": str(wal_path), "moved_to": None, "kept": len(index.state.wal), "damaged": [], "lost_ids": [],
        "lost_records": [], "generation": layout.current_generation(index.path).name}
    report["tails"] = tails
    report["damaged"] += [f"a damaged last record ({t['bytes']} bytes, kept in {t['file']})" for t in tails]
    report["note"] = ("a damaged last record was not applied: if it was an add, its ids were the next ones after "
                      f"the records kept (from {index.parts.rows} on) and are not in the store")
    log.warning("salvaged %s: %d damaged last record(s) reported, kept in %s", wal_path, len(tails),
                [t["file"] for t in tails])
    return report


def salvage_header(index, base: int, replay) -> None:
    """The log's header fails its CRC (a flipped base): the generation it follows is read from
    its records instead. Its records are copied behind a new header naming ``base``; if its first
    add record starts at the rows of the published generation, that copy becomes the log and is
    replayed (itself salvaged if damaged); otherwise (a stale log, or no add to tell) nothing is
    replayed. Either way the damaged log is moved aside (``wal.log.header-damaged-<time>``, never
    deleted) and ``index.salvage_report`` says which. ``replay``: ``durable.replay_wal`` (passed
    in: durable calls this module)."""
    wal_path = index.path / layout.WAL
    data = wal_path.read_bytes()
    if data[:len(MAGIC)] != MAGIC:  # not this format's header at all: where its records start is unknown
        raise layout.CorruptStoreError(wal_path, "its header is not a lukhas_gpu WAL header; nothing can be salvaged "
                                                 "from it automatically (move it aside to open the store without it)")
    tmp = wal_path.with_name(f"{layout.WAL}.{os.getpid()}.salvage-tmp")
    with open(tmp, "wb") as f:
        f.write(pack_header(base, secrets.randbits(64) or 1) + data[HEADER_SIZE:])
        f.flush()
        os.fsync(f.fileno())
    with WalReader(tmp, resync=True) as r:
        first = next((int(rec.fields["start"]) for rec in r if rec.op == OP_ADD and "start" in rec.fields),
                     None)
    follows = first == index.parts.rows
    moved = move_aside(wal_path, "header-damaged")
    if follows:
        os.replace(tmp, wal_path)
        layout.fsync_dir(index.path)
        replay(index, salvage=True)
    else:
        tmp.unlink()
        replay(index)  # no log: a new one follows the published generation
    report = index.salvage_report = getattr(index, "salvage_report", None) or {
        "log": str(wal_path), "moved_to": None, "kept": len(index.state.wal), "damaged": [], "lost_ids": [],
        "lost_records": [], "generation": layout.current_generation(index.path).name}
    report["header"] = {"moved_to": moved, "replayed": follows, "first_add": first}
    why = ("" if follows else f": its first add starts at id {first}, the store holds {index.parts.rows} rows"
           if first is not None else ": no add record tells which generation it follows")
    report["damaged"].insert(0, f"the header (its records {'replayed' if follows else 'not replayed'}{why}; "
                                f"the log is kept in {moved})")
    log.warning("salvaged %s: its header failed its CRC; records %s; the damaged log is at %s", wal_path,
                "replayed" if follows else "not replayed", moved)
