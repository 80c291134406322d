"""The store's write count (``MemoryIndex.write_count``): the logged write operations its store
has applied over its life.

Each generation's manifest keeps the count it absorbed (``writes``; 0 for a generation written
before the field existed), and the records of its log are added to it: a writer's log length (the
records replayed at open plus those appended since), a reader's cursor. So every logged operation
moves it by one -- an ``add`` whose every memory merged into existing ones too (it logs one
record) --, a checkpoint does not move it (the new generation absorbs the log's records), a crash
leaves it where the store is (a record cut as a torn tail was never applied nor counted), and a
rollback takes it back to its target's. One writer at a time holds a store, so a writer that
noted the count before a call knows after a crash whether that call's record is in the store: the
ingest's resume (:mod:`lukhas_gpu.ingest.resume`) decides so whether its interrupted batch landed.
"""
from __future__ import annotations

__all__ = ["count", "absorbed", "log_checkpoint"]


def count(index) -> int:
    """The write count of ``index`` now (0 for an index without a store)."""
    base = index.parts.absorbed_writes
    if index.state.wal is not None:
        return base + len(index.state.wal)
    if index.state.reader is not None:
        return base + index.state.reader.seq
    return base


def absorbed(manifest: dict) -> int:
    """The count a generation absorbed (its manifest's ``writes``, bounded by ``layout.check_manifest``)."""
    return int(manifest.get("writes") or 0)


def log_checkpoint(index, writes: int) -> None:
    """The log was restarted after a checkpoint that absorbed ``writes``: the count stays."""
    index.parts.absorbed_writes = int(writes)
