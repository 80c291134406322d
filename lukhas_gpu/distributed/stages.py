"""The Ray Data side of the distributed ingest: reading the input, the encode and prepare stages,
and how much of the cluster each part reserves.

Nothing here imports Ray at import time; the stage callables run inside Ray Data's tasks and
actors, on Arrow tables (``batch_format="pyarrow"``), and never raise on a bad row: the prepare
stage marks the first bad row of its batch in the ``_problem`` column, and the driver, which
alone knows the rows' global numbers, names it (:mod:`.ingestion`).

**The prepared table** (every column named by its role, whatever the input called it):
``embedding`` (``fixed_size_list<float32>[dim]``), ``content`` and ``tags`` (as in the input,
when read), ``timestamp`` (float64 epoch seconds, NaN: the time of the add), ``importance``
(float64), ``_problem`` (the reason of the batch's first bad row, ``""`` elsewhere),
``_encode_s`` and ``_prepare_s`` (the seconds each stage spent on the batch, on its first row).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import time

import numpy as np

from ..ingest.sources import PARQUET_SUFFIXES

__all__ = ["PROBLEM", "TIMES", "HEAD_ROWS", "Resources", "plan_resources", "read_input", "input_files",
           "input_columns", "jsonl_rows", "EncodeStage", "PrepareStage", "head_digest", "content_digest", "arrow_type"]

PROBLEM = "_problem"
TIMES = ("_encode_s", "_prepare_s")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
#: The input's first rows, whose digest identifies it on resume.
HEAD_ROWS = 256
#: Files listed at most for an input directory's identity.
MAX_FILES = 1_000_000


# -- resources ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Resources:
    """What each part of an ingest reserves on the cluster (Ray's logical resources).

    Attributes
    ----------
    writer_cpus : float
        Per shard writer actor.
    encode_actors : int
        Actors of the encode pool (0 without ``encode``).
    encode_cpus, encode_gpus : float
        Per encode actor.
    task_cpus : float
        Per read and prepare task (equal, so Ray Data fuses the prepare stage into the read).
    """

    writer_cpus: float
    encode_actors: int
    encode_cpus: float
    encode_gpus: float
    task_cpus: float

    def held_cpus(self, shards: int) -> float:
        """CPUs the writers and the encode pool hold for the whole run (Ray Data leaves them)."""
        return round(self.writer_cpus * shards + self.encode_cpus * self.encode_actors, 4)


def plan_resources(cluster: dict, shards: int, *, encode: bool) -> Resources:
    """Reservations sized from ``ray.cluster_resources()`` (``{"CPU": .., "GPU": ..}``).

    Ray Data's read and map tasks ask for a whole CPU by default, and actors that hold every
    CPU leave none for them: the pipeline deadlocks (an actor pool at ``num_cpus=1`` per actor
    on a 2-CPU node does). So one CPU (a quarter of a larger cluster) stays free for the tasks;
    the writers share the rest -- half of it beside an encode pool on CPUs -- at most one CPU
    each. With GPUs the encode pool runs one actor per GPU (at most 64) with ``num_gpus=1``. On
    a cluster of less than 2 CPUs everything gets a fraction (a read of a ``ray.data.Dataset``
    built elsewhere keeps its own reservation: at 1 CPU it cannot start there).
    The writers' work (quantizing, k-means, PQ codes, zstd) is real CPU time whatever they
    reserve: the reservation only keeps the scheduler from overcommitting the tasks.
    """
    cpus = float(cluster.get("CPU", 0.0))
    gpus = int(cluster.get("GPU", 0.0))
    if cpus <= 0:
        raise ValueError(f"the Ray cluster has no CPUs ({cluster})")
    spare = max(1.0, 0.25 * cpus) if cpus >= 2 else 0.5 * cpus
    budget = cpus - spare
    if encode and not gpus:
        actors = max(1, min(64, int(budget / 2)))
        enc_cpus = min(1.0, budget / 2 / actors)
        writers_budget = budget / 2
    elif encode:
        actors = min(gpus, 64)
        enc_cpus = min(1.0, 0.25 * budget / actors)
        writers_budget = budget - enc_cpus * actors
    else:
        actors, enc_cpus, writers_budget = 0, 0.0, budget
    return Resources(writer_cpus=ray_fraction(min(1.0, writers_budget / shards)), encode_actors=actors,
                     encode_cpus=ray_fraction(enc_cpus), encode_gpus=1.0 if encode and gpus else 0.0,
                     task_cpus=ray_fraction(min(1.0, spare)))


def ray_fraction(v: float) -> float:
    """A reservation Ray accepts (steps of 1e-4, above zero), rounded down so that n shares of
    ``total / n`` never ask for more than ``total``."""
    return max(1e-4, math.floor(v * 1e4 + 1e-9) / 1e4)


# -- the input ----------------------------------------------------------------------------------
def input_files(path) -> list[pathlib.Path]:
    """The files of a path input: the file itself, or a directory's Parquet / JSONL files (sorted,
    as Ray Data reads them). Raises ``FileNotFoundError``, ``ValueError`` (no such files, or
    both kinds in one directory)."""
    p = pathlib.Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or directory")
    found = []
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(PARQUET_SUFFIXES + JSONL_SUFFIXES) and not name.startswith((".", "_")):
                found.append(pathlib.Path(root) / name)
                if len(found) > MAX_FILES:
                    raise ValueError(f"{p} holds more than {MAX_FILES:,} input files")
    if not found:
        raise ValueError(f"{p} holds no .parquet or .jsonl files")
    kinds = {_kind(f) for f in found}
    if len(kinds) > 1:
        raise ValueError(f"{p} holds both Parquet and JSONL files; ingest them separately")
    return sorted(found)


def _kind(path: pathlib.Path) -> str:
    return "parquet" if path.name.lower().endswith(PARQUET_SUFFIXES) else "jsonl"


def read_input(path, num_cpus: float = 1.0, *, progress: bool = True):
    """A Parquet file or directory (``ray.data.read_parquet``) or JSON Lines (``read_json``:
    Arrow's reader, one memory a line, the columns at the top level) as a ``ray.data.Dataset``;
    each read task
    reserves ``num_cpus``; ``progress`` False silences the read's own bars (file sampling)."""
    import ray.data

    files = input_files(path)
    ctx = ray.data.DataContext.get_current()
    # Ray 2.5x's DataSourceV2 Parquet read lists the files in a task of its own first: 2.6-4.3 s
    # to the first batch of a 6k-row file against 0.3 s for the read planned on the driver
    # (measured on a 2-core node); the rows and their order are the same
    saved = {k: getattr(ctx, k) for k in ("use_datasource_v2", "enable_progress_bars") if hasattr(ctx, k)}
    try:
        if "use_datasource_v2" in saved:
            ctx.use_datasource_v2 = False
        ctx.enable_progress_bars = saved["enable_progress_bars"] and progress
        if _kind(files[0]) == "parquet":
            return ray.data.read_parquet(os.fspath(path), num_cpus=num_cpus)
        return ray.data.read_json(os.fspath(path), num_cpus=num_cpus)  # Arrow's reader: typed lists, no pandas
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


def jsonl_rows(path) -> int | None:
    """The rows of a JSON Lines input (its non-blank lines, as Arrow's reader counts them),
    counted without parsing; None for Parquet (whose footers ``ds.count()`` reads)."""
    from ..ingest.sources import count_records

    files = input_files(path)
    return None if _kind(files[0]) == "parquet" else sum(count_records(f) for f in files)


def input_columns(path) -> list[str]:
    """The column names of a path input, from its first file (pyarrow only: no Ray)."""
    first = input_files(path)[0]
    if _kind(first) == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(first).names)
    import pyarrow as pa
    import pyarrow.json as pj

    with open(first, "rb") as f:
        head = f.read(1 << 20)
    head = head[: head.rfind(b"\n") + 1] or head  # whole lines only
    return list(pj.read_json(pa.BufferReader(head)).schema.names)


def arrow_type(t):
    """The storage type of an Arrow extension type (Ray's tensor columns), else ``t``."""
    import pyarrow as pa

    return t.storage_type if isinstance(t, pa.ExtensionType) else t


# -- the stages ---------------------------------------------------------------------------------
class EncodeStage:
    """The encode pool's callable: the user's ``encode`` on a batch, its output appended as the
    embedding column.

    ``encode`` is a function or a class (instantiated once per actor: load a model there), called
    with the batch as ``{column: numpy array}`` (strings as object arrays) and returning
    ``(n, dim)`` floats. The batch's own embedding column, if any, is replaced.
    """

    def __init__(self, encode, column: str):
        self.fn = encode() if isinstance(encode, type) else encode
        self.column = column

    def __call__(self, table):
        import pyarrow as pa

        t0 = time.perf_counter()
        batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        x = np.asarray(self.fn(batch))
        n = table.num_rows
        if x.ndim != 2 or x.shape[0] != n or x.dtype.kind not in "fiu":
            raise ValueError(f"encode returned an array of shape {x.shape} and dtype {x.dtype} for a batch of {n} "
                             "rows; it must return (rows, dim) numbers")
        x = np.ascontiguousarray(x, dtype=np.float32)
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        if self.column in table.column_names:
            table = table.drop_columns([self.column])
        seconds = np.zeros(n)
        seconds[:1] = time.perf_counter() - t0
        return table.append_column(self.column, emb).append_column(TIMES[0], pa.array(seconds))


class PrepareStage:
    """The prepare tasks' callable: the input's columns -> the prepared table (the module's
    docstring), each row checked by the rules of :func:`lukhas_gpu.ingest.parquet.arrow_batch`.

    Parameters
    ----------
    columns : dict
        Role -> the input's column name, for the roles read (``embedding`` always).
    dim : int or None
        The shards' dimension; None: the batch's own (a fixed-size column's, e.g. the encoder's,
        else its first row's).
    cosine : bool
    max_content : int
    """

    def __init__(self, columns: dict, dim: int | None, cosine: bool, max_content: int):
        self.columns, self.dim, self.cosine, self.max_content = dict(columns), dim, cosine, max_content

    def __call__(self, table):
        import pyarrow as pa

        from ..ingest.parquet import arrow_batch, type_problem
        from ..records.metadata import DEFAULT_IMPORTANCE

        t0 = time.perf_counter()
        n = table.num_rows
        cols, why = {}, ""
        for role, name in self.columns.items():
            col = table.column(name).combine_chunks()
            cols[role] = col.storage if isinstance(col.type, pa.ExtensionType) else col
            bad = type_problem(role, cols[role].type)
            why = why or (f"column {name!r} ({role}) {bad}" if bad else "")
        dim = self.dim or _width(cols["embedding"])
        x, ts, imp = None, np.full(n, np.nan), np.full(n, DEFAULT_IMPORTANCE)
        problem = np.full(n, "", dtype=object)
        if why:
            problem[:1] = why
        else:
            batch, found = arrow_batch(pa.table(cols), 0, dim=dim, cosine=self.cosine, max_content=self.max_content)
            x, ts, imp = batch.x, batch.timestamps, batch.importance
            if found is not None:
                problem[found[0]] = found[1]
        if x is None:
            x = np.zeros((n, dim), dtype=np.float32)
        flat = pa.array(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))
        fields = {"embedding": pa.FixedSizeListArray.from_arrays(flat, dim)}
        fields.update({role: cols[role] for role in ("content", "tags") if role in cols and not why})
        fields["timestamp"] = pa.array(ts, type=pa.float64())
        fields["importance"] = pa.array(imp, type=pa.float64())
        fields[PROBLEM] = pa.array(problem, type=pa.string())
        fields[TIMES[0]] = (table.column(TIMES[0]).combine_chunks() if TIMES[0] in table.column_names
                            else pa.array(np.zeros(n)))
        seconds = np.zeros(n)
        seconds[:1] = time.perf_counter() - t0
        fields[TIMES[1]] = pa.array(seconds)
        return pa.table(fields)


def _width(col) -> int:
    """The embeddings' dimension a batch implies when none is known yet: a fixed-size list's, else
    its first non-null row's (the rows that differ are then reported against it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_fixed_size_list(col.type):
        return col.type.list_size
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        return 1  # a mistyped column: reported by its type
    lengths = pc.list_value_length(col).drop_null()
    return max(1, lengths[0].as_py()) if len(lengths) else 1


# -- identity -----------------------------------------------------------------------------------
def content_digest(value) -> str | None:
    """A short digest of one content (str or bytes), None for no content."""
    if value is None:
        return None
    data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def head_digest(table) -> str:
    """A digest of the input's first :data:`HEAD_ROWS` rows (prepared: embeddings and contents),
    whatever the batch size: what says, on resume, that the input starts as it did."""
    import pyarrow as pa

    head = table.slice(0, HEAD_ROWS)
    h = hashlib.blake2b(digest_size=16)
    emb = head.column("embedding").combine_chunks()
    h.update(np.ascontiguousarray(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).tobytes())
    if "content" in head.column_names:
        for v in head.column("content").to_pylist():
            h.update(b"\0" if v is None else (content_digest(v) or "").encode())
    h.update(str(pa.types.is_fixed_size_list(emb.type)).encode())
    return h.hexdigest()
