"""Input readers: validated batches of memories from JSON Lines, .npy/.npz + payload JSONL, Parquet.

Every reader yields :class:`Batch` objects -- everything :meth:`MemoryIndex.add` takes for a
run of records, plus their line (or row) numbers -- after checking every record of the batch, so
that a bad record stops the input before anything of its batch is stored. The checks are of two
kinds: the input *format* (a line is a JSON object, ``"tags"`` is a list, an embedding has the
index's dimension), done here, and the *storage rules* (a tag's length, an importance in [0, 1],
finite vectors), which :mod:`.rules` takes from their owners.

A source object (:func:`open_source`) describes one input for the pipeline and the command line:
``path`` and ``unit`` name it in messages, ``total`` counts its records, ``dim`` is its
embeddings' dimension when known without reading (else :meth:`first_dim`), ``identity`` says
what a resumed ingest must find unchanged, and ``batches(index, batch_size, start=...)`` reads.

The JSON Lines record (the old naive store's format)::

    {"id": "m-1", "content": "...", "embedding": [0.1, ...],
     "metadata": {"timestamp": 1700000000.0, "importance": 0.7}, "tags": ["work"]}

``metadata.timestamp`` is epoch seconds or an ISO-8601 string (no UTC offset: UTC). A record
may also carry ``"namespace"`` (a string) and ``"valid_from"`` / ``"valid_to"`` (its validity
window, epoch seconds or ISO-8601; null or missing: open) at the top level.
``content``, ``tags``, ``metadata``, ``timestamp`` and ``importance`` may be missing (no content,
no tags, the time of the add, importance 0.5); the embedding may not. ``metadata`` may also be a
JSON-encoded string (the old store kept it that way); its other keys are ignored. Blank lines are
skipped; messages give the file's real 1-based line numbers.
"""
from __future__ import annotations

import collections
import itertools
import json
import logging
import os
import pathlib
import re
from typing import Iterator

import numpy as np

from ..records.metadata import DEFAULT_IMPORTANCE
from ..util.bounds import MAX_JSON_DEPTH
from . import rules
from .batch import Batch, identity, scope_columns
from .input_errors import InvalidRecord, MigrationError
from .npy_rows import ArrayReader

log = logging.getLogger(__name__)

__all__ = ["Batch", "JsonlSource", "ArraySource", "open_source", "records", "count_records", "loads",
           "parse_record", "parse_scope", "jsonl_batches", "first_dim", "identity", "ARRAY_SUFFIXES",
           "PARQUET_SUFFIXES"]

ARRAY_SUFFIXES = (".npy", ".npz")
PARQUET_SUFFIXES = (".parquet",)
_BOM = b"\xef\xbb\xbf"


# -- JSON Lines ---------------------------------------------------------------------------------
def records(path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines of ``path`` with their 1-based line numbers, one at a time."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw.strip():
                yield lineno, raw


def count_records(path) -> int:
    """The number of records (non-blank lines) of a JSONL file."""
    return sum(1 for _ in records(path))


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def check_depth(raw) -> None:
    """Refuse JSON nested deeper than ``util.bounds.MAX_JSON_DEPTH`` before it is parsed (the
    parser would end in a ``RecursionError``); cheap for ordinary records (a byte count)."""
    raw = raw.encode() if isinstance(raw, str) else bytes(raw)
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return
    opens = np.frombuffer(b"".join(_BRACKETS.findall(_STRING.sub(b"", raw))), dtype=np.uint8)
    step = np.where((opens == ord("[")) | (opens == ord("{")), 1, -1)
    depth = int(np.cumsum(step).max()) if len(step) else 0
    if depth > MAX_JSON_DEPTH:
        raise InvalidRecord(f"JSON nested {depth} levels deep; at most {MAX_JSON_DEPTH} "
                            "(lukhas_gpu.util.bounds.MAX_JSON_DEPTH)")


def loads(raw: bytes):
    """One JSON line -> its value; :class:`InvalidRecord` says why it is not JSON (or nested
    deeper than ``MAX_JSON_DEPTH``)."""
    check_depth(raw)
    try:
        return json.loads(raw)
    except RecursionError:  # pragma: no cover - check_depth refuses these first
        raise InvalidRecord("JSON nested too deep to parse") from None
    except json.JSONDecodeError as e:
        tail = "" if raw.rstrip().endswith(b"}") else " (the line ends mid-record: truncated?)"
        raise InvalidRecord(f"invalid JSON: {e.msg} at column {e.colno}{tail}") from None
    except UnicodeDecodeError as e:
        raise InvalidRecord(f"invalid UTF-8 at byte {e.start} of the line") from None


def first_dim(path) -> int:
    """The embedding length of the first record of a JSONL (for a new store's dimension)."""
    path = os.fspath(path)
    for lineno, raw in records(path):
        try:
            obj = loads(raw)
        except InvalidRecord as e:
            raise MigrationError(f"{path}, line {lineno}: {e}", path=path, line=lineno) from None
        emb = obj.get("embedding") if isinstance(obj, dict) else None
        if not isinstance(emb, list) or not emb:
            raise MigrationError(f"{path}, line {lineno}: no \"embedding\" list to take the store's "
                                 f"dimension from (pass --dim)", path=path, line=lineno)
        return len(emb)
    raise ValueError(f"{path} holds no records: nothing to create a store from (pass --dim)")


_jtype = rules.json_type


def parse_record(obj, *, dim: int | None):
    """One JSON record -> ``(old id, content, embedding float64 (dim,) or None, tags, timestamp,
    importance)``, checking its format (the storage rules are checked batch-wise, by :mod:`.rules`).

    The timestamp is NaN when the record has none. ``dim`` None: a payload record, whose
    embedding comes from elsewhere. Raises :class:`InvalidRecord`.
    """
    if not isinstance(obj, dict):
        raise InvalidRecord(f"expected a JSON object, got {_jtype(obj)}")
    old = obj.get("id")
    if old is not None and (isinstance(old, bool) or not isinstance(old, (str, int))):
        raise InvalidRecord(f'"id" must be a string or an integer, got {_jtype(old)}')

    emb = None if dim is None else _embedding(obj.get("embedding"), dim)

    content = obj.get("content")
    if content is not None and not isinstance(content, str):
        raise InvalidRecord(f'"content" must be a string or null, got {_jtype(content)}')

    tags = obj.get("tags")
    if tags is None:
        tags = []
    elif not isinstance(tags, list):
        raise InvalidRecord(f'"tags" must be a list of strings, got {_jtype(tags)} {json.dumps(tags)[:40]}')
    else:
        for t in tags:
            if not isinstance(t, str):
                raise InvalidRecord(f'"tags" must hold strings only, found {_jtype(t)}')

    meta, imp = _metadata(obj.get("metadata"))
    return old, content, emb, tags, rules.epoch_seconds(meta.get("timestamp")), imp


def parse_scope(obj: dict) -> tuple:
    """A record's ``(namespace or None, valid_from or None, valid_to or None)`` (top-level keys),
    their format checked (the rules are the scopes', checked batch-wise). Raises :class:`InvalidRecord`."""
    ns = obj.get("namespace")
    if ns is not None and not isinstance(ns, str):
        raise InvalidRecord(f'"namespace" must be a string or null, got {_jtype(ns)}')
    return ns, rules.window_seconds(obj.get("valid_from"), "valid_from"), \
        rules.window_seconds(obj.get("valid_to"), "valid_to")


def _embedding(raw, dim: int) -> np.ndarray:
    """A record's ``"embedding"``: a float array ``(dim,)`` or :class:`InvalidRecord` saying what is wrong."""
    if raw is None:
        raise InvalidRecord('missing "embedding"')
    if not isinstance(raw, list):
        raise InvalidRecord(f'"embedding" must be a list of numbers, got {_jtype(raw)}')
    if len(raw) == 0:
        raise InvalidRecord('"embedding" is empty')
    if len(raw) != dim:
        raise InvalidRecord(f'"embedding" has dimension {len(raw)}, the index expects {dim}')
    try:
        emb = np.array(raw)
    except (TypeError, ValueError, OverflowError):
        emb = None
    # a string, null, nested list or bool among the numbers gives another dtype or shape
    if emb is None or emb.ndim != 1 or emb.dtype.kind not in "fiu":
        bad = next((v for v in raw if isinstance(v, bool) or not isinstance(v, (int, float))), None)
        raise InvalidRecord(f'"embedding" must hold numbers only, found {_jtype(bad)}')
    return emb


def _metadata(meta) -> tuple[dict, float]:
    """A record's ``"metadata"`` (an object, or the JSON string the old store kept) and its importance."""
    if isinstance(meta, str):  # the old store kept metadata as a JSON-encoded string
        try:
            check_depth(meta)
            meta = json.loads(meta)
        except InvalidRecord:
            raise
        except (ValueError, RecursionError):
            raise InvalidRecord('"metadata" is a string but not a JSON object') from None
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise InvalidRecord(f'"metadata" must be an object, got {_jtype(meta)}')
    imp = meta.get("importance")
    if imp is None:
        imp = DEFAULT_IMPORTANCE
    elif isinstance(imp, bool) or not isinstance(imp, (int, float)):
        raise InvalidRecord(f'"importance" must be a number in [0, 1], got {_jtype(imp)}')
    try:
        imp = float(imp)
    except OverflowError:
        imp = float("inf")
    return meta, imp


def jsonl_batches(path: str, index, batch_size: int, *, rows: ArrayReader | None = None,
                  npz_path: str | None = None, start: int = 0, seen: set | None = None) -> Iterator[Batch]:
    """Validated batches of the JSONL ``path``; embeddings from its lines, or from ``rows``
    (row i goes with record i, ``npz_path`` names the array in messages). ``seen``: a set the
    scope fields (:data:`~.rules.SCOPE_FIELDS`) some record gave are added to.

    ``start`` records (and rows) are skipped first, neither parsed nor validated (a resumed
    ingest). Raises :class:`MigrationError` naming the file and line of the first bad record of
    a batch; nothing of that batch has been yielded.
    """
    dim = index.dim
    cosine = index.config.metric == "cosine"
    max_content = index.config.max_content_bytes
    with_embedding = rows is None
    it = records(path)
    collections.deque(itertools.islice(it, start), maxlen=0)
    if rows is not None:
        rows.skip(start)
    record = start  # records before the current batch
    warned_embedding = False
    while True:
        m = batch_size if rows is None else min(batch_size, rows.n - record)
        if m <= 0:
            return
        x = np.empty((m, dim), dtype=np.float32)
        if rows is not None:
            x[:] = rows.read(m)
        lines, old_ids, contents, tags, ts, imp, scopes = [], [], [], [], [], [], []
        bad = None  # (index in the batch, line, why) of a record whose format is wrong
        for j, (lineno, raw) in zip(range(m), it):
            try:
                obj = loads(raw)
                if not with_embedding and not warned_embedding and isinstance(obj, dict) and "embedding" in obj:
                    log.warning("%s carries 'embedding' keys; they are ignored (the rows of %s are used)",
                                path, npz_path)
                    warned_embedding = True
                old, content, emb, tg, t, im = parse_record(obj, dim=dim if with_embedding else None)
                scope = parse_scope(obj)
            except InvalidRecord as e:
                bad = (j, lineno, str(e))
                break
            if with_embedding:
                with np.errstate(over="ignore"):  # beyond float32: infinite, rejected below
                    x[j] = emb
            lines.append(lineno)
            old_ids.append(old)
            contents.append(content)
            tags.append(tg)
            ts.append(t)
            imp.append(im)
            scopes.append(scope)
        got = len(lines)
        ts_a, imp_a = np.asarray(ts, dtype=np.float64), np.asarray(imp, dtype=np.float64)
        ns, vf, vt = _scopes(scopes, seen)
        # the storage rules over the records read; the first bad record of the batch is reported
        found = [] if bad is None else [(bad[0], 2, bad[1], bad[2])]
        limit = min(got + 1, m) if bad is not None and rows is not None else got  # an array row has no format
        i, why = rules.bad_embedding(x[:limit], cosine=cosine)
        if i < limit:
            where = lines[i] if i < got else bad[1]
            found.append((i, 0, where, why if rows is None else f"row {record + i} of {npz_path}: {why}"))
        i, _, why = rules.first_problem(got, contents=contents, max_content=max_content, tags=tags, importance=imp_a,
                                        namespaces=ns, valid_from=vf, valid_to=vt)
        if i < got:
            found.append((i, 1, lines[i], why))
        if found:
            i, _, lineno, why = min(found)
            raise MigrationError(f"{path}, line {lineno}: {why}", path=path, line=lineno, in_batch=i)
        if got < m:
            if rows is not None:  # the payload shrank after it was counted
                raise MigrationError(f"{path} ended after {record + got} records, {npz_path} holds "
                                     f"{rows.n} rows", path=path)
            x = x[:got]
        if got:
            yield Batch(lines, old_ids, x, contents, tags, ts_a, imp_a, namespace=ns, valid_from=vf, valid_to=vt)
            record += got
        if got < batch_size or (rows is not None and record == rows.n):
            return


def _scopes(scopes: list, seen: set | None) -> tuple:
    """A batch's namespace and window columns from its records' :func:`parse_scope` tuples;
    the fields given added to ``seen``."""
    cols = list(zip(*scopes)) if scopes else [(), (), ()]
    if seen is not None:
        seen.update(f for f, vals in zip(rules.SCOPE_FIELDS, cols) if any(v is not None for v in vals))
    return scope_columns(*cols)


# -- sources ------------------------------------------------------------------------------------
class JsonlSource:
    """A JSON Lines file with embedded vectors (the old naive store's format)."""

    unit = "lines"
    dim = None

    def __init__(self, path):
        self.path = os.fspath(path)
        self._total = None
        self.scope_fields: set = set()  # the scope fields a record read so far gave

    @property
    def total(self) -> int:
        if self._total is None:
            self._total = count_records(self.path)
        return self._total

    def identity(self) -> dict:
        return {"input": identity(self.path), "payloads": None, "npz_key": None, "embedding_column": None}

    def first_dim(self) -> int:
        return first_dim(self.path)

    def batches(self, index, batch_size: int, *, start: int = 0) -> Iterator[Batch]:
        return jsonl_batches(self.path, index, batch_size, start=start, seen=self.scope_fields)

    def close(self) -> None:
        pass


class ArraySource:
    """Embeddings from a ``.npy`` / ``.npz`` (never loaded whole) with a JSONL of payloads:
    row ``i`` goes with the ``i``-th record line. Messages name the payload file's lines."""

    unit = "lines"

    def __init__(self, array_path, payloads, key: str = "embeddings"):
        self.array_path, self.path, self.key = os.fspath(array_path), os.fspath(payloads), key
        self.rows = ArrayReader(self.array_path, key)
        self.dim = self.rows.dim
        self.total = self.rows.n
        self.scope_fields: set = set()

    def identity(self) -> dict:
        return {"input": identity(self.array_path), "payloads": identity(self.path),
                "npz_key": self.key if self.array_path.lower().endswith(".npz") else None, "embedding_column": None}

    def check_counts(self) -> None:
        """Raise :class:`MigrationError` unless the payload holds one record per array row."""
        n_payload = count_records(self.path)
        if n_payload != self.total:
            raise MigrationError(f"count mismatch: {self.array_path} holds {self.total} embeddings, {self.path} holds "
                                 f"{n_payload} payload records (row i must go with record line i)", path=self.path)

    def first_dim(self) -> int:
        return self.dim

    def batches(self, index, batch_size: int, *, start: int = 0) -> Iterator[Batch]:
        return jsonl_batches(self.path, index, batch_size, rows=self.rows, npz_path=self.array_path, start=start,
                             seen=self.scope_fields)

    def close(self) -> None:
        self.rows.close()


def open_source(path, *, payloads=None, npz_key: str = "embeddings", embedding_column: str = "embedding"):
    """The source for an input file, chosen by its suffix: ``.npy``/``.npz`` (with ``payloads``),
    ``.parquet`` (needs pyarrow), anything else JSON Lines.

    Raises
    ------
    ValueError
        An array without ``payloads``, or ``payloads`` with another kind of input.
    MigrationError
        The file cannot be read as its kind (not an array, not Parquet, no such column...).
    MissingExtra
        A Parquet input without pyarrow installed.
    """
    path = os.fspath(path)
    suffix = pathlib.Path(path).suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        if payloads is None:
            raise ValueError(f"{path} is an array of embeddings: its records come from a payload JSONL")
        return ArraySource(path, payloads, npz_key)
    if payloads is not None:
        raise ValueError(f"payloads go with a .npy/.npz input; {path} is read as "
                         f"{'Parquet' if suffix in PARQUET_SUFFIXES else 'JSONL with embedded vectors'}")
    if suffix in PARQUET_SUFFIXES:
        from .parquet import ParquetSource

        return ParquetSource(path, embedding_column)
    return JsonlSource(path)
