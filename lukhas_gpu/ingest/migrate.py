"""Importers from the old system's naive formats into a :class:`~lukhas_gpu.MemoryIndex`.

Two source layouts are read, both streamed in batches so that memory stays bounded by the batch,
never by the file:

* **JSON Lines**, one memory per line::

      {"id": "m-1", "content": "...", "embedding": [0.1, ...],
       "metadata": {"timestamp": 1700000000.0, "importance": 0.7}, "tags": ["work"]}

  ``metadata.timestamp`` is epoch seconds or an ISO-8601 string (a string without a UTC offset
  is read as UTC). ``content``, ``tags``, ``metadata``, ``timestamp`` and ``importance`` may be
  missing (the defaults of :meth:`MemoryIndex.add`: no content, no tags, the time of the import,
  importance 0.5); the embedding may not. ``metadata`` may also be a JSON-encoded string (the
  old store kept it that way); keys other than ``timestamp`` and ``importance`` are ignored.
* **.npz (or .npy) of embeddings + a JSONL of payloads**: row ``i`` of the array goes with the
  ``i``-th record line of the JSONL (same fields, no ``embedding``).

Blank lines are skipped (they hold no record and do not count as one); every error still names
the file's real 1-based line number. The readers are :mod:`.sources`; the records go through the
one ingest loop, :class:`~lukhas_gpu.ingest.pipeline.Pipeline`.

Every import reports a :class:`MigrationReport`, including a **parity** check: query vectors
sampled from the input (plus a small seeded perturbation) are searched in the new index and
compared with the exact cosine top-10 over the *original* float embeddings. The reference is
streamed: only the sampled queries and their running top-10 are held, the input's embeddings are
scanned batch by batch as they are imported.

:func:`write_naive_jsonl` writes the old format (for tests, benchmarks and round trips).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from .input_errors import MigrationError
from .npy_rows import ArrayReader
from .parity import PARITY_K, PARITY_NOISE, Parity, jsonl_parity
from .pipeline import DEFAULT_BATCH_SIZE, Pipeline
from .sources import ArraySource, JsonlSource

if TYPE_CHECKING:
    from .. import MemoryIndex

log = logging.getLogger(__name__)

__all__ = ["MigrationReport", "MigrationError", "migrate_jsonl", "migrate_npz", "write_naive_jsonl",
           "DEFAULT_BATCH_SIZE", "PARITY_K", "PARITY_NOISE"]


@dataclasses.dataclass
class MigrationReport:
    """The outcome of one migration.

    Attributes
    ----------
    source : str
        The input file (the payload JSONL for :func:`migrate_npz`).
    records : int
        Records read and validated (on error: those before the bad record).
    imported : int
        Records added to the index (0 for a dry run).
    skipped : int
        Records left out (always 0: a bad record stops the import).
    seconds : float
        Wall time of reading, validating and adding (the parity work is timed apart, in
        ``parity["seconds"]``).
    records_per_second : float
        ``records / seconds``.
    dry_run : bool
        True when nothing was added.
    id_map : (imported,) int64 ndarray
        The new id of each imported record, in input order.
    parity : dict or None
        ``queries`` (query vectors used), ``k``, ``top10_overlap`` (mean ``|new top-k ∩ exact
        top-k| / k``; None without queries), ``count_match`` (the index grew by exactly
        ``imported``), ``noise`` and ``seconds``. None for a dry run or a failed import. The
        reference is cosine: for an index with ``metric="ip"`` over vectors of unequal norms the
        overlap also measures the difference between the two metrics; and it covers the imported
        records only, so memories the index held before can only lower it.
    id_map_path : str or None
        The JSONL file of ``{"old": ..., "new": ...}`` pairs, when one was asked for.
    """

    source: str
    records: int
    imported: int
    skipped: int
    seconds: float
    records_per_second: float
    dry_run: bool
    id_map: np.ndarray
    parity: dict | None = None
    id_map_path: str | None = None


# -- public entry points ----------------------------------------------------------------------
def migrate_jsonl(src, index: "MemoryIndex", *, batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False,
                  parity_queries: int = 200, seed: int = 0, id_map_path=None) -> MigrationReport:
    """Import a naive JSON Lines file (one memory per line, with its embedding) into ``index``.

    Parameters
    ----------
    src : str or os.PathLike
        The JSONL file. It is read line by line; at most one batch is held at a time.
    index : MemoryIndex
        Receives the memories (new int64 ids, assigned by the index).
    batch_size : int, default 10_000
        Records per :meth:`MemoryIndex.add` call. Every record of a batch is parsed and validated
        before the batch is added.
    dry_run : bool, default False
        Parse and validate everything, add nothing (the index is unchanged), write no id map;
        ``parity`` is None.
    parity_queries : int, default 200
        Query vectors for the parity check (sampled from the input's records, seeded, then
        perturbed by :data:`PARITY_NOISE`); 0 skips the overlap (``count_match`` is still
        reported). Sampling reads the file once more before the import (no JSON parsing but of
        the sampled lines).
    seed : int, default 0
        Seed of the query sampling and perturbation.
    id_map_path : str or os.PathLike, optional
        Write ``{"old": <input id>, "new": <index id>}`` per imported record, one JSON object a
        line, in input order (``old`` is null for a record without an id). Written batch by
        batch: after an error it holds exactly the batches that were imported.

    Returns
    -------
    MigrationReport

    Raises
    ------
    MigrationError (a ValueError)
        A bad record: invalid JSON (a truncated line included), a missing or empty embedding,
        one of the wrong dimension or holding NaN/infinity (or, under ``metric="cosine"``, all
        zeros), importance outside [0, 1], a bad timestamp, tags that are not a list of strings,
        a content too large for the index. The message names the file and the 1-based line.
        **Batches before the bad record's batch stay in the index** (their ids are in
        ``error.report.id_map``); nothing from the bad record's batch is added.
    TypeError
        ``index`` is not a :class:`MemoryIndex`.

    Notes
    -----
    The ids of the old system are not checked for uniqueness (that would hold one Python object
    per record); they are only carried to the id map.
    """
    _check_args(index, batch_size, parity_queries)
    source = JsonlSource(src)
    parity = None
    if not dry_run and parity_queries > 0:
        t0 = time.perf_counter()
        parity = jsonl_parity(source.path, index, parity_queries, seed)
        parity.seconds += time.perf_counter() - t0
    return _run(source, index, batch_size=batch_size, dry_run=dry_run, parity=parity, id_map_path=id_map_path)


def migrate_npz(npz_path, payload_jsonl, index: "MemoryIndex", *, key: str = "embeddings",
                batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False, parity_queries: int = 200,
                seed: int = 0, id_map_path=None) -> MigrationReport:
    """Import embeddings from a ``.npz`` (or ``.npy``) plus a JSONL of payloads into ``index``.

    Row ``i`` of the array is matched with the ``i``-th record line of ``payload_jsonl``. The
    array is never loaded whole: a ``.npy`` and an uncompressed ``.npz`` member
    (``numpy.savez``) are memory-mapped; a compressed member (``numpy.savez_compressed``) is
    decompressed as a stream, batch by batch.

    Parameters
    ----------
    npz_path : str or os.PathLike
        ``.npz`` archive (or a plain ``.npy`` file, for which ``key`` is ignored) holding a 2-D
        float array ``(n, index.dim)``.
    payload_jsonl : str or os.PathLike
        One JSON object per record: the fields of :func:`migrate_jsonl` without ``embedding``
        (an ``embedding`` key there is ignored).
    index : MemoryIndex
    key : str, default "embeddings"
        The array's name in the archive.
    batch_size, dry_run, parity_queries, seed, id_map_path
        As in :func:`migrate_jsonl`.

    Returns
    -------
    MigrationReport

    Raises
    ------
    MigrationError (a ValueError)
        The array's row count differs from the payload's record count (both named; raised before
        anything is added), the array is missing, not 2-D, not float or of the wrong dimension,
        or a bad record/row (named by row and payload line). As in :func:`migrate_jsonl`, the
        batches before the bad record's batch stay in the index.
    """
    _check_args(index, batch_size, parity_queries)
    npz_path, payload_jsonl = os.fspath(npz_path), os.fspath(payload_jsonl)
    try:
        source = ArraySource(npz_path, payload_jsonl, key)
    except MigrationError as e:
        e.report = _empty_report(payload_jsonl, dry_run)
        raise
    try:
        rows: ArrayReader = source.rows
        try:
            if rows.dim != index.dim:
                raise MigrationError(f"{npz_path}: embeddings have dimension {rows.dim}, the index expects "
                                     f"{index.dim}", path=npz_path)
            source.check_counts()
        except MigrationError as e:
            e.report = _empty_report(payload_jsonl, dry_run)
            raise
        log.info("migrating %d records from %s (%s, %s) + %s", rows.n, npz_path, rows.access, rows.dtype,
                 payload_jsonl)
        parity = None
        if not dry_run and parity_queries > 0 and rows.n:
            t0 = time.perf_counter()
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(rows.n, min(parity_queries, rows.n), replace=False))
            parity = Parity.from_samples(pick, rows.take(pick), index, rows.n, rng)
            parity.seconds += time.perf_counter() - t0
        return _run(source, index, batch_size=batch_size, dry_run=dry_run, parity=parity, id_map_path=id_map_path)
    finally:
        source.close()


def write_naive_jsonl(path, embeddings, contents=None, tags=None, timestamps=None, importance=None,
                      ids=None) -> int:
    """Write memories in the old system's JSON Lines format; returns the number written.

    Parameters
    ----------
    path : str or os.PathLike
    embeddings : (n, d) float array, or None
        Written at float32 precision (9 significant digits, which round-trips float32 exactly).
        ``None`` writes payload lines without ``embedding`` (the JSONL half of the npz layout).
    contents : sequence of str (or None), optional
    tags : sequence of lists of str, optional
    timestamps : sequence of epoch seconds (number) or ISO-8601 str, optional
    importance : sequence of float, optional
    ids : sequence of str or int, optional
        Default ``0 .. n-1``.

    An argument left as None is omitted from every line (a missing field); a None entry of
    ``contents`` is written as ``null``. Only ``embeddings`` is checked (finite): the writer
    exists to produce inputs, bad ones included.

    Returns
    -------
    int
        The number of lines written.

    Raises
    ------
    ValueError
        Lengths that disagree, no argument giving ``n``, a non-finite embedding, a 1-D or 3-D
        embedding array.
    """
    columns = {"embeddings": embeddings, "contents": contents, "tags": tags, "timestamps": timestamps,
               "importance": importance, "ids": ids}
    lengths = {k: len(v) for k, v in columns.items() if v is not None}
    if not lengths:
        raise ValueError("write_naive_jsonl needs embeddings or at least one payload column")
    n = next(iter(lengths.values()))
    bad = {k: m for k, m in lengths.items() if m != n}
    if bad:
        raise ValueError(f"column lengths disagree: {lengths}")
    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (n, d), got shape {embeddings.shape}")
        # %.9g of a float32 value reads back as the same float32; a C-level % of a whole row is
        # an order of magnitude faster than json.dumps of a list of floats
        row_fmt = ",".join(["%.9g"] * embeddings.shape[1])
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, 4096):
            stop = min(n, start + 4096)
            block = None
            if embeddings is not None:
                block = np.asarray(embeddings[start:stop], dtype=np.float32)
                finite = np.isfinite(block).all(axis=1)
                if not finite.all():
                    raise ValueError(f"embeddings[{start + int(np.flatnonzero(~finite)[0])}] is not finite")
            lines = []
            for i in range(start, stop):
                parts = [f'"id": {json.dumps(_plain(ids[i]) if ids is not None else i)}']
                if contents is not None:
                    parts.append(f'"content": {json.dumps(contents[i])}')
                if block is not None:
                    parts.append(f'"embedding": [{row_fmt % tuple(block[i - start].tolist())}]')
                meta = {}
                if timestamps is not None:
                    meta["timestamp"] = _plain(timestamps[i])
                if importance is not None:
                    meta["importance"] = _plain(importance[i])
                if meta:
                    parts.append(f'"metadata": {json.dumps(meta)}')
                if tags is not None:
                    t = tags[i]  # written as given: a bare str stays one (a bad input, for tests)
                    t = list(t) if isinstance(t, (list, tuple, np.ndarray)) else _plain(t)
                    parts.append(f'"tags": {json.dumps(t)}')
                lines.append("{" + ", ".join(parts) + "}\n")
            f.write("".join(lines))
    return n



# -- driver ---
def _check_args(index, batch_size, parity_queries) -> None:
    from .. import MemoryIndex  # the index (and torch) only where an import runs

    if not isinstance(index, MemoryIndex):
        raise TypeError(f"index must be a lukhas_gpu.MemoryIndex, got {type(index).__name__}")
    for name, v, low in (("batch_size", batch_size, 1), ("parity_queries", parity_queries, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _empty_report(source: str, dry_run: bool) -> MigrationReport:
    return MigrationReport(source=source, records=0, imported=0, skipped=0, seconds=0.0, records_per_second=0.0,
                           dry_run=dry_run, id_map=np.empty(0, dtype=np.int64))


def _run(source, index, *, batch_size: int, dry_run: bool, parity: Parity | None, id_map_path) -> MigrationReport:
    """The source's batches through the ingest pipeline, with the id map and the parity reference
    kept batch by batch; the parity work is timed apart from the import."""
    count_before = len(index)
    new_ids: list[np.ndarray] = []
    parity_s = [0.0]
    id_map_path = None if id_map_path is None else os.fspath(id_map_path)
    if id_map_path is not None and dry_run:
        log.info("dry run: no id map is written to %s", id_map_path)
    out = open(id_map_path, "w", encoding="utf-8") if id_map_path is not None and not dry_run else None
    pipe = None

    def on_batch(b, ids: np.ndarray) -> None:
        if dry_run:
            return
        new_ids.append(ids)
        if out is not None:
            out.write("".join(f'{{"old": {json.dumps(o)}, "new": {int(i)}}}\n'
                              for o, i in zip(b.old_ids, ids.tolist())))
            out.flush()
        if parity is not None:
            t0 = time.perf_counter()
            parity.update(b.x, pipe.records)  # the batch's first record number
            parity_s[0] += time.perf_counter() - t0

    def report(par: dict | None) -> MigrationReport:
        ids = np.concatenate(new_ids) if new_ids else np.empty(0, dtype=np.int64)
        seconds = pipe.seconds - parity_s[0]
        return MigrationReport(source=source.path, records=pipe.records, imported=pipe.imported, skipped=0,
                               seconds=seconds, records_per_second=pipe.records / seconds if seconds > 0 else 0.0,
                               dry_run=dry_run, id_map=ids, parity=par,
                               id_map_path=id_map_path if out is not None else None)

    # dedup off: a migration imports every old record as a memory (its parity: the store grew by them all)
    pipe = Pipeline(index, dry_run=dry_run, on_batch=on_batch, total=None, source=source.path, unit=source.unit,
                    dedup="off")
    try:
        pipe.run(source.batches(index, batch_size))
    except MigrationError as e:
        e.report = report(None)
        log.warning("migration of %s stopped after %d imported records: %s", source.path, pipe.imported, e)
        raise
    finally:
        if out is not None:
            out.close()
    par = None
    if not dry_run:
        t0 = time.perf_counter()
        ids = np.concatenate(new_ids) if new_ids else np.empty(0, dtype=np.int64)
        par = Parity.empty() if parity is None else parity
        par.seconds += parity_s[0]
        par = par.finish(index, ids, count_match=len(index) - count_before == pipe.imported)
        par["seconds"] += time.perf_counter() - t0
    rep = report(par)
    log.info("%s %s: %d records in %.2f s (%.0f records/s)%s", "validated" if dry_run else "migrated", source.path,
             rep.records, rep.seconds, rep.records_per_second,
             "" if par is None else f"; parity top-{par['k']} overlap {par['top10_overlap']}, "
                                    f"count match {par['count_match']}")
    return rep


def _plain(v):
    """numpy scalars and datetimes -> what json.dumps writes."""
    if isinstance(v, np.datetime64):
        return str(np.datetime_as_string(v, unit="us"))  # naive ISO-8601, read back as UTC
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    return v
