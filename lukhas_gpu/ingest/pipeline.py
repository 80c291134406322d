"""The one ingest loop: validated batches -> :meth:`MemoryIndex.add`, with progress and resume.

Both the command line's ``ingest`` and :func:`~lukhas_gpu.ingest.migrate.migrate_jsonl` /
:func:`~lukhas_gpu.ingest.migrate.migrate_npz` run their batches through :class:`Pipeline`:
it fills missing timestamps with the time of the add, adds each batch (or, for a dry run, only
counts it), records the progress around every add (a :class:`~lukhas_gpu.ingest.resume.Resume`),
checkpoints every ``checkpoint_every`` batches, and reports the rate and ETA after each batch.
Batches are added with ``dedup`` (default: the store's ``config.dedup``); the records merged into
existing memories are counted from ``index.last_add``, and the resume decides on the store's
write count, so it stays right whatever the dedup.
A batch the index rejects becomes a :class:`MigrationError` naming its lines; ``add`` stores
nothing of a batch it rejects, so the batches before it are all that is stored.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING, Callable, Iterable

from .input_errors import MigrationError

if TYPE_CHECKING:  # numpy and the readers load with the first batch: the parser reads DEFAULT_BATCH_SIZE
    import numpy as np

    from .batch import Batch

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "Progress", "DEFAULT_BATCH_SIZE"]

#: Records validated and added per batch: the unit of atomicity and of transient memory
#: (``batch_size * dim * 4`` bytes of float32 plus the batch's texts and tags).
DEFAULT_BATCH_SIZE = 10_000


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where an ingest stands, after a batch.

    Attributes
    ----------
    done : int
        Records of the input handled so far (those skipped on resume included).
    total : int or None
        Records of the input, when known.
    initial : int
        Records skipped on resume (not counted in the rate).
    seconds : float
        Since the loop began.
    merged : int
        Records of this run merged into existing memories (dedup); the others are new memories.
    """

    done: int
    total: int | None
    initial: int
    seconds: float
    merged: int = 0

    @property
    def rate(self) -> float:
        """Records per second handled by this run."""
        return (self.done - self.initial) / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the current rate (infinite when unknown)."""
        if self.total is None or self.rate <= 0:
            return math.inf
        return max(self.total - self.done, 0) / self.rate


class Pipeline:
    """Adds batches to an index; its counters stay readable after an error or an interrupt.

    Parameters
    ----------
    index : MemoryIndex
    dry_run : bool, default False
        Count the (already validated) batches, add nothing.
    checkpoint_every : int, optional
        Checkpoint the index every this many batches, when the loop stops on a bad record or a
        rejected batch (so that readers see the batches before it), and at the end (unless a
        finished ingest ran again and added nothing). None: never (the caller decides).
    resume : Resume, optional
        Told before and after every add, and at the end.
    on_batch : callable(batch, ids), optional
        Called after each batch is added, with its new ids (int64; empty for a dry run).
    on_progress : callable(Progress), optional
        Called after each batch.
    total : int, optional
        The input's record count (for the ETA).
    initial : int, default 0
        Records skipped on resume.
    source, unit : str
        Name the input and what its batches' numbers count ("lines" or "rows") in messages.
    dedup : {"off", "exact", "near"}, optional
        Each batch's ``add(dedup=)``; default the index's ``config.dedup``.

    Attributes
    ----------
    records : int
        Records read and validated (after a bad record: also those of its batch before it).
    imported : int
        Records added (merged ones included).
    merged : int
        Records added that merged into an existing memory (or an earlier one of the input).
    new : int
        Records added as new memories (``imported - merged``).
    dedup : str
        The dedup mode of the adds.
    batches : int
        Batches added (or counted, for a dry run).
    seconds : float
        Wall time of the loop.
    """

    def __init__(self, index, *, dry_run: bool = False, checkpoint_every: int | None = None, resume=None,
                 on_batch: "Callable[[Batch, np.ndarray], None] | None" = None,
                 on_progress: Callable[[Progress], None] | None = None, total: int | None = None, initial: int = 0,
                 source: str = "<input>", unit: str = "lines", dedup: str | None = None):
        from ..config import DEDUP_MODES

        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
        if dedup is not None and dedup not in DEDUP_MODES:
            raise ValueError(f"dedup must be one of {DEDUP_MODES} or None, got {dedup!r}")
        self.dedup = index.config.dedup if dedup is None else dedup
        self.index, self.dry_run, self.checkpoint_every = index, dry_run, checkpoint_every
        self.resume, self.on_batch, self.on_progress = resume, on_batch, on_progress
        self.total, self.initial, self.source, self.unit = total, initial, source, unit
        self.records = self.imported = self.merged = self.batches = 0
        self.seconds = 0.0

    @property
    def new(self) -> int:
        """Records added as new memories."""
        return self.imported - self.merged

    def run(self, batches: "Iterable[Batch]") -> "Pipeline":
        """Add every batch; returns self. Raises what the reader raises (a bad record:
        :class:`MigrationError`), a :class:`MigrationError` for a rejected batch, and lets a
        ``KeyboardInterrupt`` through (the batches added so far are in the index's log)."""
        t0 = time.perf_counter()
        publish = self.checkpoint_every is not None and not self.dry_run
        try:
            for b in batches:
                self._add(b)
                self.seconds = time.perf_counter() - t0
                if self.on_progress is not None:
                    self.on_progress(Progress(self.initial + self.records, self.total, self.initial, self.seconds,
                                              self.merged))
                if publish and self.batches % self.checkpoint_every == 0:
                    self.index.checkpoint()
        except (MigrationError, ValueError, TypeError) as e:
            self.records += getattr(e, "in_batch", 0)
            self.seconds = time.perf_counter() - t0
            if publish:  # the batches before the bad one are valid: publish them for readers too
                self.index.checkpoint()
            raise
        finally:
            self.seconds = time.perf_counter() - t0
        if publish and self.batches:
            if not self.index.is_trained and len(self.index) >= self.index.config.train_threshold:
                self.index.train()  # merged duplicates may leave the rows short of the capacity train_at awaits
            self.index.tune_if_due()  # the store leaves tuned (its own sample): readers use it, never tune
        if publish and not (self.batches == 0 and self.resume is not None and self.resume.finished):
            self.index.checkpoint()  # a re-run of a finished ingest publishes no new generation
        if self.resume is not None and not self.dry_run:
            self.resume.finish()
        self.seconds = time.perf_counter() - t0
        return self

    def _add(self, b: "Batch") -> None:
        import numpy as np

        n = len(b)
        ids = np.empty(0, dtype=np.int64)
        if not self.dry_run:
            ts = b.timestamps
            missing = np.isnan(ts)
            if missing.any():
                ts = np.where(missing, time.time(), ts)
            if self.resume is not None:  # the write count the add moves by one: how a resume knows it landed
                self.resume.pending(n, writes=self.index.write_count, dedup=self.dedup)
            try:
                ids = self.index.add(b.x, contents=b.contents, tags=b.tags, timestamps=ts, importance=b.importance,
                                     sparse=b.sparse, dedup=self.dedup, **b.scope())
            except (TypeError, ValueError) as e:
                # the records passed the readers' checks, so this is a limit of the index (e.g.
                # its row limit); add() stores nothing of a batch it rejects
                if self.resume is not None:
                    self.resume.rejected()
                raise MigrationError(f"{self.source}, {self.unit} {b.lines[0]}-{b.lines[-1]}: the index rejected "
                                     f"this batch: {e}", path=self.source, line=b.lines[0]) from e
            ids = np.asarray(ids, dtype=np.int64)
            merged = self.index.last_add.merged
            if self.resume is not None:
                self.resume.added(n, new=n - merged, writes=self.index.write_count)
            self.imported += n
            self.merged += merged
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(b, ids)
        self.records += n
        log.debug("%s: %d records read, %d imported, %d of them merged (through %s %d)", self.source, self.records,
                  self.imported, self.merged, self.unit, b.lines[-1])
