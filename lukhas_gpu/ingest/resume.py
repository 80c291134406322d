"""Resume bookkeeping of an ingest: one record per input file, in the store's progress file.

``STORE/ingest-progress.json`` holds ``{"version": 3, "inputs": {key: entry}}``. The key names an
input (its absolute path, and its payload file's for an array input), so a failed or interrupted
ingest of one file does not stand in the way of another: each resumes where it stopped. An entry
holds the input's identity (path, size, mtime of the input and payloads, the array key or
embedding column), ``records`` (its record count), ``ingested`` (records stored), ``pending``
(the batch being added when the entry was last written), ``rows`` (the store's row count after
this input's last recorded batch), ``writes`` (the store's write count,
:attr:`MemoryIndex.write_count`, when the entry was last written: before the pending batch's add),
``dedup`` (the pending batch's mode) and ``done``.

Whether a pending batch landed is decided on the store's write count, whatever the dedup (a
deduplicated batch stores fewer rows than records, or none): its ``add`` logs exactly one record,
the count moves by one with it, a checkpoint or a reopen does not move it, and one writer holds a
store. So when an ingest begins, a pending batch of any input is in the store exactly when the
count is its ``writes`` + 1 (the crash came after the log's append) and not when it is still
``writes`` (before it); it then counts as ingested. Any other count means the store was written by
someone else since (or rolled back): the batch is taken as not landed and added again when its
mode deduplicates (a landed batch added again merges into the memories it made; the count went
back: the entry's own resume refuses, rolled back), and by the row rule with ``dedup="off"``; a
warning says so. An entry of a version-2 file (no ``writes``) is decided by the row rule, right for
the ``dedup="off"`` those ingests ran with: the pending batch is in the store exactly when it
holds ``rows + pending`` rows (ids are dense row numbers, never reused). A version-1 file (one
entry, the whole file) is read as the entry of its input.

A store checkpointed by a version of the package older than the write count restarts the count
from its log: an entry recorded on the newer count is then refused as rolled back (pass
``--restart``).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib

from ..store import layout

log = logging.getLogger(__name__)

__all__ = ["PROGRESS_FILE", "Resume", "read_progress", "write_progress", "progress_of", "input_key"]

#: The ingest's resume record, inside the store directory.
PROGRESS_FILE = layout.PROGRESS  # the store layout names every file
_VERSION = 3


def input_key(ident: dict) -> str:
    """The progress file's key of an input: its path (and its payload file's)."""
    key = ident["input"]["path"]
    return key if not ident.get("payloads") else f"{key} + {ident['payloads']['path']}"


def read_progress(store) -> dict:
    """The progress file of ``store`` (``{"version": 3, "inputs": {}}`` when there is none; a
    version-1 or -2 file is read as version 3, its entries without ``writes``).

    Raises
    ------
    ValueError
        The file is not valid JSON (the message says to remove it or pass ``--restart``).
    """
    path = pathlib.Path(store) / PROGRESS_FILE
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        return {"version": _VERSION, "inputs": {}}
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); remove it or pass --restart") from None
    if state.get("version") == 1:  # one ingest, the whole file: the entry of its input
        entry = {k: v for k, v in state.items() if k not in ("version", "first_row")}
        entry["rows"] = int(state.get("first_row", 0)) + int(state.get("ingested", 0))
        state = {"version": _VERSION, "inputs": {input_key(state): entry}} if state.get("input") else \
            {"version": _VERSION, "inputs": {}}
    state.setdefault("inputs", {})
    return state


def write_progress(store, state: dict) -> None:
    """Atomically replace the progress file: a crash leaves the old or the new one, never half."""
    from ..store.layout import fsync_dir

    store = pathlib.Path(store)
    tmp = store / (PROGRESS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, store / PROGRESS_FILE)
    fsync_dir(store)


def progress_of(store, path, payloads=None) -> dict | None:
    """The progress entry of the input ``path`` (with ``payloads`` for an array input), or None."""
    key = os.path.abspath(path)
    if payloads is not None:
        key = f"{key} + {os.path.abspath(payloads)}"
    return read_progress(store)["inputs"].get(key)


class Resume:
    """The resume record of one input during one ingest: where to start, and what to write
    around every batch (the :class:`~lukhas_gpu.ingest.pipeline.Pipeline` calls
    :meth:`pending`, :meth:`added`, :meth:`rejected` and :meth:`finish`).

    Parameters
    ----------
    store : path
        The store directory (where the progress file lives).
    ident : dict
        The input's identity (``source.identity()``).
    rows_now : int
        The store's row count now (``index.stats()["rows"]``).
    writes_now : int, optional
        The store's write count now (``index.write_count``); None: the row rule decides (only
        right for ``dedup="off"``).
    total : int
        The input's record count.
    restart : bool
        Ignore this input's recorded progress (other inputs' entries stay).

    Attributes
    ----------
    skip : int
        Records of the input already stored: the ingest starts after them.
    finished : bool
        This very input was ingested to its end before (a re-run adds nothing).

    Raises
    ------
    ValueError
        The input changed since its progress was recorded (size, mtime, payloads, array key or
        embedding column), the store holds fewer rows or a lower write count than recorded
        (rolled back?), or the
        progress records more records than the input holds; each message says to pass
        ``--restart``.
    """

    def __init__(self, store, ident: dict, *, rows_now: int, total: int, restart: bool = False,
                 writes_now: int | None = None):
        self.store = pathlib.Path(store)
        self.key = input_key(ident)
        self.state = read_progress(self.store)
        self.state["version"] = _VERSION
        entries = self.state["inputs"]
        self._settle_pending(entries, rows_now, writes_now)
        prev = None if restart else entries.get(self.key)
        where = self.store / PROGRESS_FILE
        if prev is not None:
            if any(prev.get(k) != ident[k] for k in ident):
                was = prev.get("input", {})
                raise ValueError(
                    f"{where} records {'a finished' if prev.get('done') else 'an unfinished'} ingest of "
                    f"{was.get('path')} (size {was.get('size')}), and the input differs (now size "
                    f"{ident['input']['size']}, or another mtime, --payloads, --npz-key or --embedding-column); "
                    "pass --restart to ingest it from its first record")
            if rows_now < int(prev["rows"]):
                raise ValueError(f"{where} records {prev['ingested']} ingested records of {self.key} up to row "
                                 f"{int(prev['rows']) - 1}, the store holds only {rows_now} rows (rolled back?); pass "
                                 "--restart to ingest it from its first record")
            if writes_now is not None and prev.get("writes") is not None and writes_now < int(prev["writes"]):
                raise ValueError(f"{where} records {prev['ingested']} ingested records of {self.key} at the store's "
                                 f"write count {prev['writes']}, the store is at {writes_now} (rolled back?); pass "
                                 "--restart to ingest it from its first record")
            if int(prev["ingested"]) > total:
                raise ValueError(f"{where} records {prev['ingested']} ingested records, {ident['input']['path']} "
                                 f"holds only {total}; pass --restart to ingest it from its first record")
        self.skip = 0 if prev is None else int(prev["ingested"])
        self.finished = prev is not None and bool(prev.get("done"))
        # the next batch lands at row ``rows_now``, whatever other inputs added in between
        self.entry = {**ident, "records": total, "ingested": self.skip, "pending": 0, "rows": rows_now,
                      "done": self.finished, **({} if writes_now is None else {"writes": int(writes_now)})}
        entries[self.key] = self.entry
        self._write()

    @staticmethod
    def _settle_pending(entries: dict, rows_now: int, writes_now: int | None) -> None:
        for key, e in entries.items():
            pending = int(e.get("pending", 0))
            if not pending:
                continue
            rows = int(e.get("rows", 0))
            moved = None if writes_now is None or e.get("writes") is None else writes_now - int(e["writes"])
            if moved in (0, 1):  # the count says it: one writer, one logged record per batch
                landed = moved == 1
            elif moved is not None and (moved < 0 or e.get("dedup", "off") != "off"):
                landed = False  # added again: a landed batch merges into the memories it made
                log.warning("the store's write count is %d, the progress of %s expected %d or %d (%s); adding "
                            "the batch of %d records from its record %d again", writes_now, key, e["writes"],
                            int(e["writes"]) + 1, "rolled back?" if moved < 0 else "another writer since?",
                            pending, e["ingested"])
            else:  # an entry of a version-2 file, or dedup off after another writer: the row rule
                landed = rows_now == rows + pending
                if not landed and rows_now != rows:
                    log.warning("the store holds %d rows, the progress of %s expected %d or %d (another writer?); "
                                "resuming after its record %d", rows_now, key, rows, rows + pending, e["ingested"])
            if landed:
                log.info("the batch of %d records of %s being added when its last ingest stopped is in the store",
                         pending, key)
                e["ingested"] = int(e["ingested"]) + pending
                e["rows"] = rows_now if moved == 1 else rows + pending
                if writes_now is not None:
                    e["writes"] = writes_now
            e["pending"] = 0
            e.pop("dedup", None)

    def _write(self) -> None:
        write_progress(self.store, self.state)  # looked up at call time: tests stand in for it

    def pending(self, n: int, *, writes: int | None = None, dedup: str = "off") -> None:
        """A batch of ``n`` records is about to be added with ``dedup``, the store's write count
        being ``writes`` (``index.write_count``; None: the row rule decides at resume)."""
        self.entry["pending"] = n
        if writes is None:
            self.entry.pop("writes", None)
        else:
            self.entry["writes"] = int(writes)
        self.entry["dedup"] = dedup
        self._write()

    def added(self, n: int, *, new: int | None = None, writes: int | None = None) -> None:
        """The pending batch of ``n`` records is in the store: ``new`` of them as new memories
        (default ``n``; the others merged), the store's write count now ``writes``."""
        self.entry["ingested"] += n
        self.entry["rows"] += n if new is None else int(new)
        if writes is not None:
            self.entry["writes"] = int(writes)
        self.entry["pending"] = 0
        self.entry.pop("dedup", None)
        self._write()

    def rejected(self) -> None:
        """The index rejected the pending batch: it stored nothing of it (nor logged it)."""
        self.entry["pending"] = 0
        self.entry.pop("dedup", None)
        self._write()

    def finish(self) -> None:
        """Every record of the input is in the store."""
        self.entry["done"] = True
        self._write()
