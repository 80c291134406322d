"""Trials with automatic rollback: ``MemoryIndex.trial()`` and ``trials()`` (:class:`TrialsMixin`).

A trial builds a candidate ANN beside the live one from the index's config with some fields
changed (:data:`TRIAL_FIELDS`: lists, PQ size, projection, coarse quantizer, probes, rerank
depth; or another candidate structure, ``structure=``, :mod:`.stagetrial`), by the path of a retrain
(:func:`.lifecycle.retrain`: sampled, trained and filled without holding the index, caught up and
compared under the lock). Both sides run the same probe queries (the recorded queries, or
``queries=``) against the same exact neighbours: recall with its interval
(:func:`lukhas_gpu.monitor.probe.recall_estimate`), QPS (the fastest of
interleaved runs, ``lifecycle.QPS_REPEATS`` or more), bytes and parameters. The candidate is promoted
only if its recall is at least the live one's less ``recall_tolerance`` and its QPS at least
``1 - qps_tolerance`` times the live one's; otherwise it is discarded and nothing changed.

Durability follows retrain: a promoted candidate, its config and the reports are published by
one checkpoint (atomic: a crash before it reopens the live index as it was; after it, the
promoted one). ``retrain()`` is the trial of the current config with no QPS rule. The last
:data:`MAX_TRIAL_REPORTS` reports are kept (``trials()``) and saved with every checkpoint
(``layout.TRIALS``). A discarded trial's report is logged when it is decided (``OP_TRIAL``, replayed
by :func:`apply_report`), so ``trials()`` after a reopen (or a reader's refresh) has it before any
checkpoint; the log then holds a record, so a ``rollback`` refuses to drop it unless told.
"""
from __future__ import annotations

import datetime as _dt
import json

import numpy as np

from ..store.walcodec import OP_TRIAL
from ..util.bounds import MAX_DIM_OUT, MAX_NLIST, MAX_NPROBE, MAX_RERANK, is_int
from .candidates import STRUCTURE_CHOICES, check_structure
from .locking import locked

__all__ = ["TrialsMixin", "TRIAL_FIELDS", "MAX_TRIAL_REPORTS", "OP_TRIAL", "trial_reports", "check_changes",
           "apply_report"]

#: Config fields a trial may change (each shapes the ANN or how it is searched).
TRIAL_FIELDS = ("nlist", "pq_m", "dim_out", "coarse", "nprobe", "rerank")
#: The candidate structure beside the IVF (``tune(structure=)``'s names): tried alone, by
#: :mod:`.stagetrial`.
STRUCTURE = "structure"
#: Reports kept by ``trials()`` and in the checkpoint.
MAX_TRIAL_REPORTS = 16
#: Bytes of the saved reports at most (a report is ~1 kB).
MAX_REPORTS_BYTES = 1 << 20
DEFAULT_RECALL_TOLERANCE = 0.01
DEFAULT_QPS_TOLERANCE = 0.2
_BOUNDS = {"nlist": MAX_NLIST, "pq_m": MAX_DIM_OUT, "dim_out": MAX_DIM_OUT, "nprobe": MAX_NPROBE,
           "rerank": MAX_RERANK}


def check_changes(index, changes: dict):
    """The candidate's config: ``index.config`` with ``changes`` (None for a ``structure`` trial);
    TypeError / ValueError naming a field a trial cannot change or a value of the wrong type or out
    of bounds."""
    cfg = index.config
    allowed = TRIAL_FIELDS + (STRUCTURE,)
    bad = sorted(set(changes) - set(allowed))
    if bad:
        raise ValueError(f"a trial cannot change {bad}; it changes {list(allowed)}")
    if not changes:
        raise ValueError(f"a trial needs at least one change of {list(allowed)} (retrain() rebuilds as it is)")
    if STRUCTURE in changes:
        if len(changes) > 1:
            raise ValueError(f"structure= is tried alone (a candidate stage beside the live index), not with "
                             f"{sorted(set(changes) - {STRUCTURE})}")
        if changes[STRUCTURE] is None or check_structure(changes[STRUCTURE]) is None:
            raise ValueError(f"structure must be one of {STRUCTURE_CHOICES}, got None")
        return None  # the config stays: the structure is the tuner's choice (index/stagetrial.py)
    for name, v in changes.items():
        if name in _BOUNDS and not (is_int(v) and 1 <= v <= _BOUNDS[name]):
            raise ValueError(f"{name} must be an int in [1, {_BOUNDS[name]}], got {v!r}")
    live = index.parts.live
    if "nlist" in changes and changes["nlist"] * 4 > live:
        raise ValueError(f"nlist={changes['nlist']} needs at least {4 * changes['nlist']} live memories "
                         f"(4 per list), the index holds {live}")
    return cfg.replace(**changes)  # the config's own checks name a bad coarse or structure


def _check_tolerance(name: str, v, *, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1]{' or None' if optional else ''}, got {v!r}")
    return float(v)


def trial_reports(buf) -> list[dict]:
    """The reports saved in a generation (JSON bytes); ValueError when they are not a list of dicts."""
    data = np.asarray(buf, dtype=np.uint8)
    if len(data) > MAX_REPORTS_BYTES:
        raise ValueError(f"trial reports of {len(data)} bytes, at most {MAX_REPORTS_BYTES}")
    reports = json.loads(data.tobytes().decode())
    if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
        raise ValueError("trial reports are not a list of objects")
    return reports[-MAX_TRIAL_REPORTS:]


def apply_report(parts, f: dict) -> None:
    """A logged report (``OP_TRIAL``) appended to ``parts.trials`` (ValueError: not an object)."""
    rep = f.get("report")
    if not isinstance(rep, dict):
        raise ValueError(f"a trial record holds {type(rep).__name__}, not a report (a JSON object)")
    parts.trials = (parts.trials + [rep])[-MAX_TRIAL_REPORTS:]


def _log_report(index, rep: dict) -> None:
    """A discarded trial's report, durable at once: logged, then applied (the lock is held)."""
    if index.state.wal is not None:
        index.state.wal.append(OP_TRIAL, {"report": rep})
    apply_report(index.parts, {"report": rep})


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    return v


class TrialsMixin:
    """``trial()`` and ``trials()`` (see the module docstring)."""

    def trial(self, *, queries=None, recall_tolerance: float = DEFAULT_RECALL_TOLERANCE,
              qps_tolerance: float | None = DEFAULT_QPS_TOLERANCE, **changes) -> dict:
        """Build a candidate with ``changes`` to the config beside the live index, compare, and
        promote it or roll it back.

        Parameters
        ----------
        queries : (nq, dim) float array, optional
            Probe queries (default: the recorded queries of past searches, else sampled memories).
        recall_tolerance : float in [0, 1], default 0.01
            The candidate's probe recall may be this much below the live one's.
        qps_tolerance : float in [0, 1] or None, default 0.2
            Its QPS on the probe queries may be this share below the live one's (None: not judged).
        **changes
            ``nlist``, ``pq_m``, ``dim_out``, ``coarse``, ``nprobe``, ``rerank``; or ``structure``
            alone (``"graph"``, ``"rabitq"``, ``"ivf-spill"``, ``"ivf"``, ``"exact"``: the tuner's choice at the recall
            target forced to it, built beside the live one, :mod:`.stagetrial`). Without ``nprobe``,
            a candidate with other lists is measured (and promoted) at the same share of lists as
            the live index probes.

        Returns
        -------
        dict
            ``decision`` ("promoted" / "rolled back"), ``promoted``, ``reason``, ``changes``,
            ``live`` and ``candidate`` (``recall``, ``ci``, ``qps``, ``bytes``, ``params``), ``old`` /
            ``new`` (the recall estimates), ``hits``, ``queries``, ``source``, tolerances,
            ``seconds``, ``time``, ``generation`` (the checkpoint of a promotion, if any).
        """
        from ..util.arrays import as_batch
        from . import lifecycle

        self._require_writable()
        recall_tolerance = _check_tolerance("recall_tolerance", recall_tolerance)
        qps_tolerance = _check_tolerance("qps_tolerance", qps_tolerance, optional=True)
        if queries is not None:
            as_batch(queries, self.dim, "queries")
        with self.lock:
            if self.parts.ann is None:
                raise ValueError("the index is not trained yet: a trial compares two trained indexes")
            cand = check_changes(self, changes)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        meta = {"kind": "trial", "changes": _jsonable(changes), "recall_tolerance": recall_tolerance,
                "qps_tolerance": qps_tolerance, "time": now}

        def record(out: dict) -> None:  # under the lock, before a promotion's checkpoint
            out.update(meta, promoted=out["accepted"], decision="promoted" if out["accepted"] else "rolled back")
            rep = _jsonable({**out, "generation": None})
            if out["accepted"]:  # saved by the promotion's checkpoint
                self.parts.trials = (self.parts.trials + [rep])[-MAX_TRIAL_REPORTS:]
            else:
                _log_report(self, rep)

        if cand is None:
            from . import stagetrial
            return stagetrial.run(self, changes[STRUCTURE], queries, recall_tolerance, qps_tolerance, record)
        return lifecycle.retrain(self, queries, recall_tolerance, config=cand, qps_tolerance=qps_tolerance,
                                 record=record)

    @locked
    def trials(self) -> list[dict]:
        """The last trials' reports (at most ``MAX_TRIAL_REPORTS``), oldest first; saved with each
        checkpoint, so a reader sees those of the generation it shows."""
        return [dict(r) for r in self.parts.trials]
