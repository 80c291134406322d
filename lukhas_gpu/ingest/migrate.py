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
the file's real 1-based line number.

Every import reports a :class:`MigrationReport`, including a **parity** check: query vectors
sampled from the input (plus a small seeded perturbation) are searched in the new index and
compared with the exact cosine top-10 over the *original* float embeddings. The reference is
streamed: only the sampled queries and their running top-10 are held, the input's embeddings are
scanned batch by batch as they are imported.

:func:`write_naive_jsonl` writes the old format (for tests, benchmarks and round trips).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import itertools
import json
import logging
import math
import os
import random
import struct
import time
import zipfile
from typing import Iterator

import numpy as np

from ..index.facade import MemoryIndex
from ..records.metadata import DEFAULT_IMPORTANCE
from ..records.tags import MAX_TAG_BYTES, MAX_TAGS_PER_MEMORY

log = logging.getLogger(__name__)

__all__ = ["MigrationReport", "MigrationError", "migrate_jsonl", "migrate_npz", "write_naive_jsonl",
           "DEFAULT_BATCH_SIZE", "PARITY_K", "PARITY_NOISE"]

#: Records validated and added per batch: the unit of atomicity and of transient memory
#: (``batch_size * dim * 4`` bytes of float32 plus the batch's texts and tags).
DEFAULT_BATCH_SIZE = 10_000
#: Neighbours compared by the parity check.
PARITY_K = 10
#: Norm of the Gaussian perturbation added to a (unit) sampled embedding to make a parity query:
#: close enough that its neighbourhood is the sample's, far enough that it is not an exact copy
#: (cosine to the sample about 0.999).
PARITY_NOISE = 0.05

_F32_MAX = float(np.finfo(np.float32).max)
_BOM = b"\xef\xbb\xbf"


class MigrationError(ValueError):
    """A bad input record (or a batch the index rejected).

    Attributes
    ----------
    path : str
        The file holding the bad record.
    line : int or None
        Its 1-based line number (``None`` when the problem is not one line's, e.g. counts).
    report : MigrationReport or None
        What was imported before the error: the batches before the bad record's batch stay in the
        index, nothing of that batch was added.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 report: "MigrationReport | None" = None):
        super().__init__(message)
        self.path = path
        self.line = line
        self.report = report
        self._read_in_batch = 0  # valid records of the failing batch read before the bad one


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
def migrate_jsonl(src, index: MemoryIndex, *, batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False,
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
    src = os.fspath(src)
    parity = None
    if not dry_run and parity_queries > 0:
        t0 = time.perf_counter()
        parity = _jsonl_parity(src, index, parity_queries, seed)
        parity.seconds += time.perf_counter() - t0
    batches = _read_batches(src, index, batch_size, rows=None)
    return _run(batches, index, source=src, dry_run=dry_run, parity=parity, id_map_path=id_map_path)


def migrate_npz(npz_path, payload_jsonl, index: MemoryIndex, *, key: str = "embeddings",
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
        rows = _ArrayReader(npz_path, key)
    except MigrationError as e:
        e.report = _empty_report(payload_jsonl, dry_run)
        raise
    try:
        try:
            if rows.dim != index.dim:
                raise MigrationError(f"{npz_path}: embeddings have dimension {rows.dim}, the index expects "
                                     f"{index.dim}", path=npz_path)
            n_payload = _count_records(payload_jsonl)
            if n_payload != rows.n:
                raise MigrationError(f"count mismatch: {npz_path} holds {rows.n} embeddings, {payload_jsonl} holds "
                                     f"{n_payload} payload records (row i must go with record line i)",
                                     path=payload_jsonl)
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
            parity = _Parity.from_samples(pick, rows.take(pick), index, rows.n, rng)
            parity.seconds += time.perf_counter() - t0
        batches = _read_batches(payload_jsonl, index, batch_size, rows=rows, npz_path=npz_path)
        return _run(batches, index, source=payload_jsonl, dry_run=dry_run, parity=parity, id_map_path=id_map_path)
    finally:
        rows.close()


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


# -- driver -----------------------------------------------------------------------------------
def _check_args(index, batch_size, parity_queries) -> None:
    if not isinstance(index, MemoryIndex):
        raise TypeError(f"index must be a lukhas_gpu.MemoryIndex, got {type(index).__name__}")
    for name, v, low in (("batch_size", batch_size, 1), ("parity_queries", parity_queries, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


def _empty_report(source: str, dry_run: bool) -> MigrationReport:
    return MigrationReport(source=source, records=0, imported=0, skipped=0, seconds=0.0, records_per_second=0.0,
                           dry_run=dry_run, id_map=np.empty(0, dtype=np.int64))


@dataclasses.dataclass
class _Batch:
    """One validated batch: everything :meth:`MemoryIndex.add` takes, plus line numbers."""

    lines: list
    old_ids: list
    x: np.ndarray  # (b, d) float32
    contents: list
    tags: list
    timestamps: np.ndarray  # float64, NaN where the record had none
    importance: np.ndarray  # float64


def _run(batches: Iterator[_Batch], index: MemoryIndex, *, source: str, dry_run: bool,
         parity: "_Parity | None", id_map_path) -> MigrationReport:
    t_start = time.perf_counter()
    count_before = len(index)
    new_ids: list[np.ndarray] = []
    records = imported = 0
    parity_s = 0.0
    id_map_path = None if id_map_path is None else os.fspath(id_map_path)
    if id_map_path is not None and dry_run:
        log.info("dry run: no id map is written to %s", id_map_path)
    out = open(id_map_path, "w", encoding="utf-8") if id_map_path is not None and not dry_run else None

    def report(seconds: float, par: dict | None) -> MigrationReport:
        ids = np.concatenate(new_ids) if new_ids else np.empty(0, dtype=np.int64)
        return MigrationReport(source=source, records=records, imported=imported, skipped=0, seconds=seconds,
                               records_per_second=records / seconds if seconds > 0 else 0.0,
                               dry_run=dry_run, id_map=ids, parity=par,
                               id_map_path=id_map_path if out is not None else None)

    try:
        for b in batches:
            n = len(b.lines)
            if not dry_run:
                ts = b.timestamps
                missing = np.isnan(ts)
                if missing.any():
                    ts = np.where(missing, time.time(), ts)
                try:
                    ids = index.add(b.x, contents=b.contents, tags=b.tags, timestamps=ts, importance=b.importance)
                except (TypeError, ValueError) as e:
                    # the records passed this module's checks, so this is a limit of the index
                    # (e.g. its row limit); add() stores nothing of a batch it rejects
                    err = MigrationError(f"{source}, lines {b.lines[0]}-{b.lines[-1]}: the index rejected "
                                         f"this batch: {e}", path=source, line=b.lines[0])
                    raise err from e
                new_ids.append(np.asarray(ids, dtype=np.int64))
                imported += n
                if out is not None:
                    out.write("".join(f'{{"old": {json.dumps(o)}, "new": {int(i)}}}\n'
                                      for o, i in zip(b.old_ids, ids.tolist())))
                    out.flush()
                if parity is not None:
                    t0 = time.perf_counter()
                    parity.update(b.x, records)
                    parity_s += time.perf_counter() - t0
            records += n
            log.debug("%s: %d records read, %d imported (through line %d)", source, records, imported, b.lines[-1])
    except MigrationError as e:
        records += e._read_in_batch
        e.report = report(time.perf_counter() - t_start - parity_s, None)
        log.warning("migration of %s stopped after %d imported records: %s", source, imported, e)
        raise
    finally:
        if out is not None:
            out.close()
    seconds = time.perf_counter() - t_start - parity_s
    par = None
    if not dry_run:
        t0 = time.perf_counter()
        ids = np.concatenate(new_ids) if new_ids else np.empty(0, dtype=np.int64)
        par = _Parity.empty() if parity is None else parity
        par.seconds += parity_s
        par = par.finish(index, ids, count_match=len(index) - count_before == imported)
        par["seconds"] += time.perf_counter() - t0
    rep = report(seconds, par)
    log.info("%s %s: %d records in %.2f s (%.0f records/s)%s", "validated" if dry_run else "migrated", source,
             records, seconds, rep.records_per_second,
             "" if par is None else f"; parity top-{par['k']} overlap {par['top10_overlap']}, "
                                    f"count match {par['count_match']}")
    return rep


# -- reading ----------------------------------------------------------------------------------
class _Invalid(Exception):
    """A record-level problem; the reader adds the file and line."""


def _records(path: str) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines of ``path`` with their 1-based line numbers, one at a time."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw.strip():
                yield lineno, raw


def _count_records(path: str) -> int:
    return sum(1 for _ in _records(path))


def _loads(raw: bytes):
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        tail = "" if raw.rstrip().endswith(b"}") else " (the line ends mid-record: truncated?)"
        raise _Invalid(f"invalid JSON: {e.msg} at column {e.colno}{tail}") from None
    except UnicodeDecodeError as e:
        raise _Invalid(f"invalid UTF-8 at byte {e.start} of the line") from None


def _read_batches(path: str, index: MemoryIndex, batch_size: int, *, rows: "_ArrayReader | None",
                  npz_path: str | None = None, start: int = 0) -> Iterator[_Batch]:
    """Validated batches of ``path``; embeddings from the lines, or from ``rows`` (row i, line i).

    ``start`` records (and rows) are skipped first, neither parsed nor validated (a resumed
    ingest)."""
    dim = index.dim
    cosine = index.config.metric == "cosine"
    max_content = index.config.max_content_bytes
    with_embedding = rows is None
    it = _records(path)
    collections.deque(itertools.islice(it, start), maxlen=0)
    if rows is not None:
        done = 0
        while done < start:  # a compressed member is a stream: read past the skipped rows
            step = min(65536, start - done)
            rows.read(step)
            done += step
    record = start  # records before the current batch
    warned_embedding = False
    while True:
        m = batch_size if rows is None else min(batch_size, rows.n - record)
        if m <= 0:
            return
        x = np.empty((m, dim), dtype=np.float32)
        bad_row = m
        if rows is not None and m:
            x[:] = rows.read(m)
            bad_row, row_msg = _first_bad_row(x, cosine)
        lines, old_ids, contents, tags, ts, imp = [], [], [], [], [], []
        for j, (lineno, raw) in zip(range(m), it):
            try:
                if j == bad_row:
                    raise _Invalid(f"row {record + j} of {npz_path}: {row_msg}")
                obj = _loads(raw)
                if not with_embedding and not warned_embedding and isinstance(obj, dict) and "embedding" in obj:
                    log.warning("%s carries 'embedding' keys; they are ignored (the rows of %s are used)",
                                path, npz_path)
                    warned_embedding = True
                rec = _parse(obj, dim=dim if with_embedding else None, cosine=cosine, max_content=max_content)
            except _Invalid as e:
                err = MigrationError(f"{path}, line {lineno}: {e}", path=path, line=lineno)
                err._read_in_batch = j
                raise err from None
            old, content, emb, tg, t, im = rec
            if with_embedding:
                x[j] = emb
            lines.append(lineno)
            old_ids.append(old)
            contents.append(content)
            tags.append(tg)
            ts.append(t)
            imp.append(im)
        if len(lines) < m:
            if rows is not None:  # the payload shrank after it was counted
                raise MigrationError(f"{path} ended after {record + len(lines)} records, {npz_path} holds "
                                     f"{rows.n} rows", path=path)
            x = x[: len(lines)]
        if lines:
            yield _Batch(lines, old_ids, x, contents, tags, np.asarray(ts, dtype=np.float64),
                         np.asarray(imp, dtype=np.float64))
            record += len(lines)
        if len(lines) < batch_size or (rows is not None and record == rows.n):
            return


def _first_bad_row(x: np.ndarray, cosine: bool) -> tuple[int, str]:
    """Index of the first row that is not finite (or all zeros under cosine) and why; len(x) if none."""
    bad = ~np.isfinite(x).all(axis=1)
    if cosine:
        bad |= ~x.any(axis=1)
    if not bad.any():
        return len(x), ""
    i = int(np.flatnonzero(bad)[0])
    if not np.isfinite(x[i]).all():
        return i, "embedding contains NaN or infinity (or a value beyond the float32 range)"
    return i, "embedding is all zeros, which has no direction under metric='cosine'"


def _jtype(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _parse(obj, *, dim: int | None, cosine: bool, max_content: int):
    """One record -> (old id, content, embedding float64 (dim,) or None, tags, timestamp, importance).

    The timestamp is NaN when the record has none (filled with the time of the add). ``dim``
    None: a payload record, whose embedding comes from elsewhere.
    """
    if not isinstance(obj, dict):
        raise _Invalid(f"expected a JSON object, got {_jtype(obj)}")
    old = obj.get("id")
    if old is not None and (isinstance(old, bool) or not isinstance(old, (str, int))):
        raise _Invalid(f'"id" must be a string or an integer, got {_jtype(old)}')

    emb = None
    if dim is not None:
        raw = obj.get("embedding")
        if raw is None:
            raise _Invalid('missing "embedding"')
        if not isinstance(raw, list):
            raise _Invalid(f'"embedding" must be a list of numbers, got {_jtype(raw)}')
        if len(raw) == 0:
            raise _Invalid('"embedding" is empty')
        if len(raw) != dim:
            raise _Invalid(f'"embedding" has dimension {len(raw)}, the index expects {dim}')
        try:
            emb = np.array(raw)
        except (TypeError, ValueError, OverflowError):
            emb = None
        # a string, null, nested list or bool among the numbers gives another dtype or shape
        if emb is None or emb.ndim != 1 or emb.dtype.kind not in "fiu":
            bad = next((v for v in raw if isinstance(v, bool) or not isinstance(v, (int, float))), None)
            raise _Invalid(f'"embedding" must hold numbers only, found {_jtype(bad)}')
        emb = emb.astype(np.float64, copy=False)
        if not np.isfinite(emb).all():
            raise _Invalid("embedding contains NaN or infinity")
        if (np.abs(emb) > _F32_MAX).any():
            raise _Invalid("embedding has a value beyond the float32 range")
        if cosine and not emb.any():
            raise _Invalid("embedding is all zeros, which has no direction under metric='cosine'")

    content = obj.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise _Invalid(f'"content" must be a string or null, got {_jtype(content)}')
        try:
            nbytes = len(content.encode("utf-8"))
        except UnicodeEncodeError:
            raise _Invalid('"content" is not valid Unicode (it holds a lone surrogate escape)') from None
        if nbytes > max_content:
            raise _Invalid(f'"content" is {nbytes} bytes of UTF-8, over the index\'s max_content_bytes '
                           f"({max_content})")

    tags = obj.get("tags")
    if tags is None:
        tags = []
    elif not isinstance(tags, list):
        raise _Invalid(f'"tags" must be a list of strings, got {_jtype(tags)} {json.dumps(tags)[:40]}')
    else:
        for t in tags:
            if not isinstance(t, str):
                raise _Invalid(f'"tags" must hold strings only, found {_jtype(t)}')
            if not t or "\x00" in t:
                raise _Invalid(f'tag {t!r} is empty or contains NUL')
            try:
                nb = len(t.encode("utf-8"))
            except UnicodeEncodeError:
                raise _Invalid(f"tag {t!r} is not valid Unicode") from None
            if nb > MAX_TAG_BYTES:
                raise _Invalid(f"a tag of {nb} UTF-8 bytes is over the limit of {MAX_TAG_BYTES}")
        if len(tags) > MAX_TAGS_PER_MEMORY and len(set(tags)) > MAX_TAGS_PER_MEMORY:
            raise _Invalid(f"{len(set(tags))} distinct tags, at most {MAX_TAGS_PER_MEMORY} per memory")

    meta = obj.get("metadata")
    if isinstance(meta, str):  # the old store kept metadata as a JSON-encoded string
        try:
            meta = json.loads(meta)
        except ValueError:
            raise _Invalid('"metadata" is a string but not a JSON object') from None
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise _Invalid(f'"metadata" must be an object, got {_jtype(meta)}')
    return old, content, emb, tags, _timestamp(meta.get("timestamp")), _importance(meta.get("importance"))


def _timestamp(v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, str):
        return _iso_seconds(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(f'"timestamp" must be epoch seconds or an ISO-8601 string, got {_jtype(v)}')
    try:
        t = float(v)
    except OverflowError:
        t = math.inf
    if not math.isfinite(t):
        raise _Invalid(f'"timestamp" must be finite, got {v!r}')
    return t


def _iso_seconds(s: str) -> float:
    """ISO-8601 (extended format) -> epoch seconds; no UTC offset means UTC."""
    text = s.strip()
    if text[-1:] in ("Z", "z"):  # datetime.fromisoformat accepts it only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise _Invalid(f'"timestamp" {s!r} is not an ISO-8601 date-time') from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


def _importance(v) -> float:
    if v is None:
        return DEFAULT_IMPORTANCE
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(f'"importance" must be a number in [0, 1], got {_jtype(v)}')
    if not 0.0 <= v <= 1.0:  # NaN fails too
        raise _Invalid(f'"importance" must be in [0, 1], got {v!r}')
    return float(v)


def _plain(v):
    """numpy scalars and datetimes -> what json.dumps writes."""
    if isinstance(v, np.datetime64):
        return str(np.datetime_as_string(v, unit="us"))  # naive ISO-8601, read back as UTC
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, (_dt.datetime, _dt.date)):
        return v.isoformat()
    return v


# -- embeddings from .npy / .npz --------------------------------------------------------------
class _ArrayReader:
    """Rows of a 2-D float array in a ``.npy`` file or a ``.npz`` member, never loaded whole.

    ``access`` says how: ``"mmap"`` (a ``.npy``, or an uncompressed member, mapped at its offset
    inside the archive), ``"stream"`` (a compressed member, decompressed batch by batch) or
    ``"loaded"`` (a compressed Fortran-ordered member, see below).
    """

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        self._mm = None
        self._zip = self._info = self._fp = None
        self._pos = 0
        if zipfile.is_zipfile(path):
            self._open_member(key)
        else:
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise MigrationError(f"{path}: not a readable .npy or .npz file: {e}", path=path) from e
            self._check(arr.shape, arr.dtype, path)
            self._mm, self.access = arr, "mmap"

    def _check(self, shape, dtype, where: str) -> None:
        if dtype.hasobject or dtype.kind != "f":
            raise MigrationError(f"{where}: embeddings must be a float array, got dtype {dtype}", path=self.path)
        if len(shape) != 2:
            raise MigrationError(f"{where}: embeddings must be 2-D (n, dim), got shape {shape}", path=self.path)
        self.n, self.dim = int(shape[0]), int(shape[1])
        self.dtype = np.dtype(dtype)

    def _open_member(self, key: str) -> None:
        zf = zipfile.ZipFile(self.path)
        name = key + ".npy"
        if name not in zf.namelist():
            keys = [k[:-4] for k in zf.namelist() if k.endswith(".npy")]
            zf.close()
            raise MigrationError(f"{self.path} has no array {key!r}; it holds {keys}", path=self.path)
        info = zf.getinfo(name)
        where = f"{self.path}[{key!r}]"
        try:
            with zf.open(info) as fp:
                shape, fortran, dtype = _read_npy_header(fp, where)
                self._check(shape, dtype, where)
                data_offset = fp.tell()
        except BaseException:
            zf.close()
            raise
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            start = _member_data_start(self.path, info) + data_offset
            if self.n == 0:
                self._mm = np.empty(shape, dtype=dtype)
            else:
                self._mm = np.memmap(self.path, dtype=dtype, mode="r", offset=start, shape=shape,
                                     order="F" if fortran else "C")
            zf.close()
            self.access = "mmap"
        elif fortran:
            # a compressed Fortran-ordered array is stored column by column, so rows cannot be
            # streamed: it is decompressed and loaded once, whole (never with pickle)
            with zf.open(info) as f:
                self._mm = np.lib.format.read_array(f, allow_pickle=False)
            zf.close()
            self.access = "loaded"
            log.warning("%s is compressed and Fortran-ordered: loaded whole (%d MB)", where,
                        self._mm.nbytes >> 20)
        else:
            self._zip, self._info = zf, info
            self._fp = zf.open(info)
            _read_npy_header(self._fp, where)
            self.access = "stream"

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` rows, as a float32 copy."""
        a, b = self._pos, self._pos + count
        if b > self.n:
            raise MigrationError(f"{self.path}: asked for rows {a}..{b - 1}, it holds {self.n}", path=self.path)
        self._pos = b
        if self._mm is not None:
            return _to_f32(self._mm[a:b])
        return _to_f32(self._read_stream(self._fp, count))

    def _read_stream(self, fp, count: int) -> np.ndarray:
        nbytes = count * self.dim * self.dtype.itemsize
        buf = fp.read(nbytes)
        if len(buf) != nbytes:
            raise MigrationError(f"{self.path}[{self.key!r}] is truncated: {len(buf)} of {nbytes} bytes",
                                 path=self.path)
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, self.dim)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32 (a stream is decompressed once more for them)."""
        if self._mm is not None:
            return _to_f32(self._mm[rows])
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        step = 16384
        with self._zip.open(self._info) as fp:
            _read_npy_header(fp, self.path)
            for a in range(0, self.n, step):
                m = min(step, self.n - a)
                block = self._read_stream(fp, m)
                sel = (rows >= a) & (rows < a + m)
                if sel.any():
                    out[sel] = _to_f32(block[rows[sel] - a])
        return out

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
        if self._zip is not None:
            self._zip.close()
        self._mm = None


def _to_f32(a: np.ndarray) -> np.ndarray:
    # values beyond the float32 range become inf here and are rejected as non-finite
    with np.errstate(over="ignore"):
        return np.array(a, dtype=np.float32)


def _read_npy_header(fp, where: str):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            return fmt.read_array_header_1_0(fp)
        if version == (2, 0):
            return fmt.read_array_header_2_0(fp)
    except ValueError as e:
        raise MigrationError(f"{where}: not a .npy array: {e}") from e
    raise MigrationError(f"{where}: .npy format version {version} is not supported for float arrays")


def _member_data_start(path: str, info: zipfile.ZipInfo) -> int:
    """Offset of a member's data in the archive: after its local header, whose name and extra
    field lengths may differ from the central directory's (zip64 extras)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    sig, *_, name_len, extra_len = struct.unpack("<4s5H3L2H", header)
    if sig != b"PK\x03\x04":
        raise MigrationError(f"{path}: bad zip local header for {info.filename}", path=path)
    return info.header_offset + 30 + name_len + extra_len


# -- parity -----------------------------------------------------------------------------------
class _Parity:
    """Streamed exact cosine top-k of sampled queries over the input, then the index's answer."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q = queries  # (m, d) float32, unit rows
        self.k = k
        m = len(queries)
        self.best_s = np.full((m, k), -np.inf, dtype=np.float32)
        self.best_i = np.full((m, k), -1, dtype=np.int64)
        self.seconds = 0.0

    @classmethod
    def empty(cls) -> "_Parity":
        return cls(np.empty((0, 0), dtype=np.float32), 0)

    @classmethod
    def from_samples(cls, rows: np.ndarray, x: np.ndarray, index: MemoryIndex, n: int,
                     rng: np.random.Generator) -> "_Parity":
        """Queries from sampled input rows ``x`` (rows that would be rejected are dropped)."""
        x = np.asarray(x, dtype=np.float32)
        keep = np.isfinite(x).all(axis=1) & x.any(axis=1)
        x = x[keep].astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        noise = rng.standard_normal(x.shape) * (PARITY_NOISE / math.sqrt(max(x.shape[1], 1)))
        q = x + noise
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        log.debug("parity: %d query vectors from %d sampled rows", len(q), len(rows))
        return cls(q.astype(np.float32), min(PARITY_K, n))

    def update(self, x: np.ndarray, first: int) -> None:
        """Merge the rows ``x`` (records ``first, first + 1, ...``) into the running top-k."""
        if not len(self.q):
            return
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        s = self.q @ (x / np.maximum(norms, 1e-30)).T  # (m, b) cosine
        k = self.k
        if s.shape[1] > k:
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(s, top, 1)
        else:
            top = np.broadcast_to(np.arange(s.shape[1]), s.shape)
        all_s = np.concatenate([self.best_s, s], axis=1)
        all_i = np.concatenate([self.best_i, top + first], axis=1)
        keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        self.best_s = np.take_along_axis(all_s, keep, 1)
        self.best_i = np.take_along_axis(all_i, keep, 1)

    def finish(self, index: MemoryIndex, id_map: np.ndarray, *, count_match: bool) -> dict:
        m, k = len(self.q), self.k
        overlap = None
        if m and k and len(id_map):
            if len(index) > len(id_map):
                log.warning("parity: the index held %d memories before the import; the reference covers "
                            "only the %d imported", len(index) - len(id_map), len(id_map))
            got = np.asarray(index.search(self.q, k=k).ids)
            assert (self.best_i >= 0).all()  # k <= records, so every slot was filled
            ref = id_map[self.best_i]
            hits = sum(len(np.intersect1d(g[g >= 0], r)) for g, r in zip(got, ref))
            overlap = hits / (m * k)
        return {"queries": m, "k": k or PARITY_K, "top10_overlap": overlap, "count_match": bool(count_match),
                "noise": PARITY_NOISE, "seconds": self.seconds}


def _jsonl_parity(src: str, index: MemoryIndex, n_queries: int, seed: int) -> _Parity:
    """Sample query lines in one pass (reservoir sampling, seeded; only the sampled lines are
    parsed), so that the exact reference can be scanned during the import itself."""
    rnd = random.Random(seed)
    sample: list[tuple[int, bytes]] = []
    n = 0
    for _, raw in _records(src):
        if n < n_queries:
            sample.append((n, raw))
        else:
            j = rnd.randrange(n + 1)
            if j < n_queries:
                sample[j] = (n, raw)
        n += 1
    sample.sort()
    rows, vecs = [], []
    for i, raw in sample:
        # a bad sampled line is only left out here; the import reports it with its line number
        try:
            obj = json.loads(raw)
            emb = np.asarray(obj["embedding"], dtype=np.float64)
        except Exception:  # noqa: BLE001 -- any failure means "not a usable query"
            continue
        if emb.shape == (index.dim,) and np.isfinite(emb).all() and (np.abs(emb) <= _F32_MAX).all():
            rows.append(i)
            vecs.append(emb)
    x = np.array(vecs, dtype=np.float32).reshape(-1, index.dim)
    return _Parity.from_samples(np.asarray(rows, dtype=np.int64), x, index, n,
                                np.random.default_rng(seed))
