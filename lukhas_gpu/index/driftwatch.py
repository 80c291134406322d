"""Drift, whole-store and per tag: ``MemoryIndex.drift()`` (:class:`DriftMixin`) and the
per-tag references wired to the write paths (:mod:`lukhas_gpu.monitor.tagdrift` owns the
figures and the rules).

A reference is taken on the write path (:func:`observe`, from ``writes.apply_add`` and
``apply_update``: a replay of the log takes the same ones, so a reader sees them), at training
and at a kept retrain or trial (:func:`reset_all`), and by ``drift(reset=True)``; it is saved in
every checkpoint (``layout.TAG_DRIFT``).
"""
from __future__ import annotations

import numpy as np

from ..monitor.tagdrift import TAG_DRIFT_SHIFT, TAG_DRIFT_SPREAD, TAG_MIN_COUNT, TAG_WINDOW

__all__ = ["DriftMixin", "observe", "reset_all", "tag_report"]


def _recent(parts, name: str) -> tuple[np.ndarray, int]:
    """The dequantized newest ``TAG_WINDOW`` live rows of tag ``name`` and its live count."""
    bm = parts.tags.bitmap(name)  # deleted rows leave their tags' bitmaps
    rows = np.asarray(bm[-TAG_WINDOW:].to_array(), dtype=np.int64) if len(bm) else np.zeros(0, np.int64)
    if not len(rows):
        return np.zeros((0, parts.dim), np.float32), 0
    return parts.encoder.dequantize(np.asarray(parts.vectors[rows])).cpu().numpy(), len(bm)


def observe(parts, norm_tags) -> None:
    """After an add or an update of tags: a tag without a reference that now has
    ``TAG_MIN_COUNT`` live memories gets one."""
    if not norm_tags:
        return
    td = parts.tagdrift
    new = {t for row in norm_tags for t in row if not td.has(t)}
    for name in sorted(new):
        if parts.tags.cardinality(name) >= TAG_MIN_COUNT:
            x, count = _recent(parts, name)
            td.set(name, x, count)


def reset_all(parts) -> int:
    """Every tag with ``TAG_MIN_COUNT`` live memories takes its newest rows as its reference
    (tags below it lose theirs); returns the tags with a reference."""
    td = parts.tagdrift
    td.clear()
    for name in _tags(parts):
        if parts.tags.cardinality(name) >= TAG_MIN_COUNT:
            x, count = _recent(parts, name)
            td.set(name, x, count)
    return len(td)


def _tags(parts) -> list[str]:
    return parts.tags.names()


#: Tags measured per hold of the index's lock (a server's searches wait at most that long).
TAGS_PER_LOCK = 64


def tag_report(parts, lock) -> dict:
    """``drift(by_tag=True)``'s ``tags`` (per tag with a reference and enough live memories),
    ``drifted_tags`` (most shifted first) and the rules; warns once per crossing. ``lock`` (the
    index's) is held for :data:`TAGS_PER_LOCK` tags at a time, not for all of them."""
    td = parts.tagdrift
    with lock:
        names = list(td.names)
    out = {}
    for start in range(0, len(names), TAGS_PER_LOCK):
        with lock:
            for name in names[start: start + TAGS_PER_LOCK]:
                if td.has(name) and parts.tags.cardinality(name) >= TAG_MIN_COUNT:
                    x, count = _recent(parts, name)
                    out[name] = td.compare(name, x, count)
    drifted = sorted((t for t, r in out.items() if r["drifted"]), key=lambda t: -out[t]["shift"])
    with lock:
        td.alert(drifted)
    return {"tags": out, "drifted_tags": drifted, "tag_rules": {
        "min_count": TAG_MIN_COUNT, "window": TAG_WINDOW, "shift": TAG_DRIFT_SHIFT, "spread": TAG_DRIFT_SPREAD,
        "references": len(td)}}


class DriftMixin:
    """``drift()``: the whole-store monitor and, with ``by_tag=True``, the per-tag references."""

    def drift(self, *, by_tag: bool = False, reset: bool = False) -> dict:
        """How far recent batches have drifted from the data the index was trained on.

        Returns ``baseline`` and ``recent`` values of each measure (int8 ``quant`` error, IVF
        ``coarse`` residual, ``pq`` error, list ``imbalance``), their ``ratios``, ``score``,
        ``worst``, ``threshold``, ``retrain_recommended``, ``batches``, ``rows_measured``,
        ``trained`` and the per-batch ``history`` (see :class:`~lukhas_gpu.monitor.probe.DriftMonitor`).

        With ``by_tag=True`` also ``tags``: per tag with a reference and at least
        ``monitor.tagdrift.TAG_MIN_COUNT`` live memories, ``shift`` (between its reference
        centroid and its newest ``TAG_WINDOW`` rows', in reference spreads), ``distance``,
        ``cosine_distance``, ``spread``, ``reference_spread``, ``spread_ratio``, ``count``,
        ``reference_count``, ``drifted``; ``drifted_tags`` (most shifted first, logged once per
        crossing) and ``tag_rules``. See :mod:`lukhas_gpu.monitor.tagdrift` for when references
        are taken.

        ``reset=True`` (a writer, or an index without a store) first takes every tag's newest
        rows as its reference (a store is then checkpointed, so the references are durable).
        """
        if not isinstance(by_tag, bool) or not isinstance(reset, bool):
            raise TypeError(f"by_tag and reset must be bool, got {by_tag!r}, {reset!r}")
        with self.lock:
            if reset:
                self._require_writable()
                reset_all(self.parts)
                if self.path is not None and self.mode == "w":
                    self.checkpoint()
            rep = self.parts.drift.report()
            rep["trained"] = self.parts.ann is not None
            rep["history"] = self.parts.drift.history()
            parts = self.parts
        if by_tag:  # the lock is held a few tags at a time
            rep.update(tag_report(parts, self.lock))
        return rep
