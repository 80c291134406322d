"""Parquet input: one memory a row, read batch by batch, one column at a time (needs pyarrow).

Columns: ``embedding`` (``list<float>`` or ``fixed_size_list<float>``; another name with
``embedding_column``), and optionally ``content`` (string or binary), ``tags`` (``list<string>``),
``timestamp`` (epoch seconds, or a timestamp/date type; no time zone means UTC) and
``importance`` (a number in [0, 1]) and a sparse vector as two list columns of one length per
row, ``sparse_indices`` (``list<int>``) and ``sparse_values`` (``list<float>``), ``namespace``
(string) and a validity window, ``valid_from`` / ``valid_to`` (like ``timestamp``; null: open);
a null is a missing value. Other columns are not read.
Rows are numbered from 0 in messages.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from ..records.metadata import DEFAULT_IMPORTANCE
from . import rules
from .batch import Batch, identity, scope_columns
from .input_errors import MigrationError, MissingExtra
from .npy_rows import to_f32

__all__ = ["ParquetSource", "PARQUET_COLUMNS", "arrow_batch", "type_problem"]


def _pyarrow(path: str):
    """``(pyarrow, pyarrow.parquet, pyarrow.compute)``, imported on first use."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError as e:
        raise MissingExtra(f"{path}: reading Parquet needs pyarrow, which is not installed ({e}); "
                           'pip install "lukhas-gpu[parquet]"') from None
    return pyarrow, pyarrow.parquet, pyarrow.compute


_STRINGS = ("string", "large_string")
_NUMBERS = ("integer", "floating")
_LISTS = ("list", "large_list", "fixed_size_list")
#: The Parquet columns read besides the embeddings: the Arrow types each may have (by the names of
#: ``pyarrow.types.is_*``), those of a list's values, and the same in words. An all-null column
#: (Arrow type ``null``) is read as a missing one.
PARQUET_COLUMNS = {
    "content": (_STRINGS + ("binary", "large_binary"), None, "string or binary"),
    "tags": (_LISTS, _STRINGS, "list<string>"),
    "timestamp": (_NUMBERS + ("timestamp", "date"), None, "epoch seconds (a number), a timestamp or a date"),
    "importance": (_NUMBERS, None, "a number in [0, 1]"),
    "sparse_indices": (_LISTS, ("integer",), "list<int>"),
    "sparse_values": (_LISTS, ("floating",), "list<float>"),
    "namespace": (_STRINGS, None, "string"),
    "valid_from": (_NUMBERS + ("timestamp", "date"), None, "epoch seconds (a number), a timestamp or a date"),
    "valid_to": (_NUMBERS + ("timestamp", "date"), None, "epoch seconds (a number), a timestamp or a date"),
}
#: Seconds per unit of an Arrow timestamp.
_UNIT_SECONDS = {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def _arrow_is(t, kinds, values=None) -> bool:
    """Whether the Arrow type ``t`` is one of ``kinds`` (and, for a list, its values one of ``values``)."""
    import pyarrow.types as pat

    return any(getattr(pat, "is_" + k)(t) for k in kinds) and (values is None or _arrow_is(t.value_type, values))


def type_problem(role: str, t) -> str | None:
    """Why the Arrow type ``t`` cannot hold the column ``role`` (``"embedding"`` or a key of
    :data:`PARQUET_COLUMNS`), in words; None when it can."""
    import pyarrow as pa

    if role == "embedding":
        ok, expected = _arrow_is(t, _LISTS, _NUMBERS), "list<float> or fixed_size_list<float>"
    else:
        kinds, values, expected = PARQUET_COLUMNS[role]
        ok = _arrow_is(t, kinds, values) or pa.types.is_null(t)
    return None if ok else f"has type {t}, expected {expected}"


class ParquetSource:
    """The memories of a Parquet file, validated batch by batch.

    The vectors never become a Python object per row: each batch's embedding column is
    flattened into one float32 buffer and reshaped to ``(n, dim)``. ``total`` is the row count
    (from the footer), ``dim`` the list size of a ``fixed_size_list`` column (None for variable
    lists: every row's length is checked instead).
    """

    unit = "rows"

    def __init__(self, path, column: str = "embedding"):
        path = os.fspath(path)
        self._pa, pq, self._pc = _pyarrow(path)
        self.path, self.column = path, column
        try:
            self._file = pq.ParquetFile(path)
        except (self._pa.ArrowException, OSError) as e:
            raise MigrationError(f"{path}: not a readable Parquet file: {e}", path=path) from None
        schema = self._file.schema_arrow
        self.total = self._file.metadata.num_rows
        if column not in schema.names:
            raise MigrationError(f"{path} has no column {column!r} (it holds {schema.names}); name the "
                                 "embeddings' column with --embedding-column", path=path)
        t = schema.field(column).type
        self.dim = t.list_size if self._pa.types.is_fixed_size_list(t) else None
        self.columns = [column] + [name for name in PARQUET_COLUMNS if name != column and name in schema.names]
        self.ignored = [name for name in schema.names if name not in self.columns]  # said, never dropped silently
        for name in self.columns:
            why = type_problem("embedding" if name == column else name, schema.field(name).type)
            if why:
                raise MigrationError(f"{path}: column {name!r} {why}", path=path)

    def identity(self) -> dict:
        return {"input": identity(self.path), "payloads": None, "npz_key": None, "embedding_column": self.column}

    def first_dim(self) -> int:
        """The length of the first non-null embedding (for a new store's dimension)."""
        if self.dim is not None:
            return self.dim
        for rb in self._file.iter_batches(batch_size=1024, columns=[self.column]):
            lengths = self._pc.list_value_length(rb.column(0)).drop_null()
            if len(lengths):
                return lengths[0].as_py()
        raise ValueError(f"{self.path} holds no row with an embedding in column {self.column!r}: nothing to create a "
                         "store from (pass --dim)")

    def batches(self, index, batch_size: int, *, start: int = 0) -> Iterator[Batch]:
        """Validated batches (``lines`` holding row numbers) of ``batch_size`` rows, the last one
        shorter, from row ``start`` on; whole row groups before it are not read."""
        pa, meta = self._pa, self._file.metadata
        group, first = 0, 0
        while group < meta.num_row_groups and first + meta.row_group(group).num_rows <= start:
            first += meta.row_group(group).num_rows
            group += 1
        if group == meta.num_row_groups:
            return
        drop, row = start - first, start  # rows of the first group read to skip; the next batch's first row
        pending, have = [], 0  # record batches as read (their sizes vary): re-cut to batch_size rows
        for rb in self._file.iter_batches(batch_size=batch_size, row_groups=list(range(group, meta.num_row_groups)),
                                          columns=self.columns):
            if drop:
                k = min(drop, rb.num_rows)
                rb, drop = rb.slice(k), drop - k
            if rb.num_rows:
                pending.append(rb)
                have += rb.num_rows
            while have >= batch_size:
                table = pa.Table.from_batches(pending)
                yield self._batch(table.slice(0, batch_size), row, index)
                row += batch_size
                rest = table.slice(batch_size)
                pending, have = rest.to_batches(), rest.num_rows
        if have:
            yield self._batch(pa.Table.from_batches(pending), row, index)

    def _batch(self, table, first: int, index) -> Batch:
        batch, problem = arrow_batch(table, first, dim=index.dim, cosine=index.config.metric == "cosine",
                                     max_content=index.config.max_content_bytes, column=self.column)
        if problem is not None:
            i, why = problem
            raise MigrationError(f"{self.path}, row {first + i}: {why}", path=self.path, line=first + i, in_batch=i)
        return batch

    def close(self) -> None:
        self._file.close()


def arrow_batch(table, first: int, *, dim: int, cosine: bool, max_content: int,
                column: str = "embedding") -> tuple[Batch, tuple[int, str] | None]:
    """One Arrow table of memories -> its :class:`Batch` (``lines``: rows ``first...``) and the
    first problem, ``(row of the table, why)``, or None when every row is storable.

    The columns are named as in a Parquet input (:data:`PARQUET_COLUMNS`; the embeddings in
    ``column``), their types already checked; the rules are those of an index of dimension
    ``dim`` (``cosine``: its metric, ``max_content``: its ``max_content_bytes``). After a problem
    the batch's ``x`` may be None (its rows are not storable as a whole). The one conversion of
    both the Parquet reader and the Ray ingest (:mod:`lukhas_gpu.distributed`).
    """
    import pyarrow as pa

    n = table.num_rows
    problems: list[tuple[int, int, str]] = []  # (row in the batch, order, why): the first row's is reported
    cols = {name: table.column(name).combine_chunks() for name in table.column_names}
    x = _vectors(cols.pop(column), dim, cosine, problems)
    cols = {name: c for name, c in cols.items() if not pa.types.is_null(c.type)}
    contents = tags = None
    if "content" in cols:
        contents = cols["content"].to_pylist()
    if "tags" in cols:
        tags = _tags(cols["tags"], problems)
    ts, ts_given = _numbers(cols.get("timestamp"), n, np.nan)
    imp, _ = _numbers(cols.get("importance"), n, DEFAULT_IMPORTANCE)
    sparse = _sparse(cols.get("sparse_indices"), cols.get("sparse_values"), n, problems)
    ns, vf, vt = _scopes(cols, n)
    i, _, why = rules.first_problem(n, contents=contents, max_content=max_content, tags=tags,
                                    timestamps=ts, ts_given=ts_given, importance=imp, namespaces=ns,
                                    valid_from=vf, valid_to=vt)
    if i < n:
        problems.append((i, 1, why))
    problem = None
    if problems:
        i, _, why = min(problems)
        problem = (i, why)
    return Batch(range(first, first + n), [None] * n, x, contents, tags, ts, imp, sparse, ns, vf, vt), problem


def _scopes(cols: dict, n: int) -> tuple:
    """``(namespace, valid_from, valid_to)`` of :class:`Batch` from the columns (a null: none;
    each None when no row gives it)."""
    names, _ = scope_columns(cols["namespace"].to_pylist() if "namespace" in cols else [None] * n, [], [])[:2]
    (vf, f_given), (vt, t_given) = (_numbers(cols.get(c), n, d) for c, d in (("valid_from", -np.inf),
                                                                            ("valid_to", np.inf)))
    if not (f_given.any() or t_given.any()):
        return names, None, None
    return names, vf, vt


def _sparse(ind, val, n: int, problems: list):
    """``(indices, values)`` pairs from the two list columns (a null list: no vector), checked
    by the sparse rules; None without the columns."""
    import pyarrow.compute as pc

    if ind is None and val is None:
        return None
    if ind is None or val is None:
        problems.append((0, 2, "sparse_indices and sparse_values come together (one column is missing)"))
        return None
    from ..sparse.sparse_input import SparseInputError, pack_sparse

    li = pc.list_value_length(ind).fill_null(0).to_numpy(zero_copy_only=False)
    lv = pc.list_value_length(val).fill_null(0).to_numpy(zero_copy_only=False)
    if (li != lv).any():
        problems.append((int(np.flatnonzero(li != lv)[0]), 2, "sparse_indices and sparse_values differ in length"))
        return None
    flat_i = ind.flatten().to_numpy(zero_copy_only=False)
    flat_v = val.flatten().to_numpy(zero_copy_only=False)
    cut = np.cumsum(li)[:-1]
    pairs = list(zip(np.split(flat_i, cut), np.split(flat_v, cut)))
    try:
        pack_sparse(pairs, n)
    except SparseInputError as e:
        problems.append((e.row or 0, 2, str(e)))
    except (TypeError, ValueError) as e:
        problems.append((0, 2, str(e)))
    return pairs


def _vectors(col, dim: int, cosine: bool, problems: list):
    """``(n, dim)`` float32 from a list column, or None after adding its first bad row to ``problems``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    null = col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(col.type):
        lengths = np.full(n, col.type.list_size, dtype=np.int64)
    else:
        lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    # the non-null rows' values, end to end; a null inside a list reads as NaN
    values = to_f32(col.flatten().to_numpy(zero_copy_only=False))
    wrong = null | (lengths != dim)
    if not wrong.any():
        x = values.reshape(n, dim)
        i, why = rules.bad_embedding(x, cosine=cosine)
        if i < n:
            problems.append((i, 0, why))
        return x
    i = int(np.flatnonzero(wrong)[0])
    problems.append((i, 0, "embedding is null" if null[i] else
                     f"embedding has dimension {int(lengths[i])}, the store expects {dim}"))
    bad = np.flatnonzero(~np.isfinite(values))  # an earlier row may hold a NaN
    if bad.size:
        owner = np.repeat(np.arange(n), np.where(null, 0, lengths))
        problems.append((int(owner[bad[0]]), 0, rules.EMBEDDING_NOT_FINITE))
    return None


def _tags(col, problems: list) -> list:
    """The tag lists; a null tag inside a list is the file's problem (the index's rules are
    checked by :mod:`.rules`), a null list is no tags."""
    import pyarrow.compute as pc

    counts = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    null = col.flatten().is_null().to_numpy(zero_copy_only=False)
    if null.any():
        owner = np.repeat(np.arange(len(col)), counts)  # the row of each tag
        problems.append((int(owner[np.flatnonzero(null)[0]]), 0, "a tag is null"))
    return [t if t is not None else [] for t in col.to_pylist()]


def _numbers(col, n: int, default: float) -> tuple[np.ndarray, np.ndarray]:
    """A number (or timestamp, date) column as float64 (epoch seconds for times), ``default``
    where null or missing, and the mask of the rows that hold a value."""
    import pyarrow as pa

    if col is None:
        return np.full(n, default, dtype=np.float64), np.zeros(n, dtype=bool)
    t = col.type
    ok = ~col.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_timestamp(t):  # stored as UTC ticks, also when the type names a zone
        v = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False) * _UNIT_SECONDS[t.unit]
    elif pa.types.is_date32(t):
        v = col.cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False) * 86400.0
    elif pa.types.is_date64(t):
        v = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False) * 1e-3
    else:
        v = col.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
    return np.where(ok, np.asarray(v, dtype=np.float64), default), ok
