"""Distributed batch ingestion on Ray: an input -> a sharded root of ordinary stores.

::

    input: a ray.data.Dataset, or a Parquet / JSONL path read with Ray Data
      -> encode (optional): map_batches on an actor pool, one GPU per actor where there are GPUs
      -> prepare: map_batches tasks (Arrow) -- columns by role, every row checked by the ingest
         rules, the first bad row of each batch marked (stages.PrepareStage)
      -> the driver: the prepared batches in input order (preserve_order), numbered; a bad row
         stops the ingest naming its row and column; row r goes to shard r % shards
      -> one writer actor per shard (writers.ShardWriter), at most IN_FLIGHT batches queued each:
         MemoryIndex.add -> the shard's write-ahead log (the acknowledgement)
      -> at the end: every shard checkpoints; shards.json says "complete"

**Why the driver sequences the batches.** Resuming needs stable row numbers, and only the
ordered stream gives them: a Ray Data write task sees a block, not its offset in the input. The
prepared batches pass through the driver (zero-copy on its node, the network from others), which
only numbers them, takes each shard's rows and queues them; the work -- reading, encoding,
checking, adding, training -- runs in tasks and actors. Each row crosses the driver's link once,
so with very many shards on many nodes that link bounds the total rate.

**Training.** Each shard's config gets ``capacity`` = its row count (known from
``ds.count()`` before the first row), so the index sizes ``nlist`` for its final size and
trains once, when the sample those lists need has arrived (``vectors.policy.train_at``); a shard
below the config's ``train_threshold`` stays exact. See :mod:`.partition` for the partition rule and
the resume bookkeeping, :mod:`.stages` for the resources each part reserves.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import pathlib
import time
from typing import Callable

import numpy as np

from ..ingest.input_errors import MigrationError
from ..ingest.pipeline import DEFAULT_BATCH_SIZE, Progress
from ..util.bounds import MAX_DIM, MAX_INGEST_BATCH, MAX_ROWS
from . import rootfiles
from .partition import PARTITION, check_same, files_identity, identity, shard_rows
from .report import IngestReport
from .stages import (
    HEAD_ROWS,
    PROBLEM,
    TIMES,
    EncodeStage,
    PrepareStage,
    arrow_type,
    content_digest,
    head_digest,
    input_files,
    jsonl_rows,
    plan_resources,
    read_input,
)
from .writers import NAMESPACE, ShardWriter, actor_name

log = logging.getLogger(__name__)

__all__ = ["ingest", "MAX_BATCH", "IN_FLIGHT"]

#: Rows per prepared batch at most (``batch_size``; ``util.bounds``).
MAX_BATCH = MAX_INGEST_BATCH
#: Bytes of float32 vectors per prepared batch at most (``batch_size * dim * 4``).
MAX_BATCH_BYTES = 1 << 30
#: Batches queued per shard writer beyond the one it is adding.
IN_FLIGHT = 2
#: Seconds a writer waits for a killed run's process to release its shard (lock, actor name).
LOCK_WAIT = 60.0


def ingest(dataset, root, *, shards: int, dim: int | None = None, config=None, embedding_column: str = "embedding",
           content_column: str | None = "content", tags_column: str | None = None,
           timestamp_column: str | None = None, importance_column: str | None = None, encode=None,
           batch_size: int = DEFAULT_BATCH_SIZE, address: str | None = None,
           progress: bool | Callable[[Progress], None] = True) -> IngestReport:
    """Ingest ``dataset`` into the sharded root ``root``, resuming an interrupted ingest of it.

    Parameters
    ----------
    dataset : ray.data.Dataset or path
        The memories, one a row; a path is a Parquet file or directory (``read_parquet``) or JSON
        Lines (``read_json``, the columns at the top level of each line). It must read in the
        same order every time (files are; a random shuffle is not).
    root : path
        The sharded root (``layout``): created, or the one an interrupted ingest of the same
        input left (it continues where that stopped; a different input is refused).
    shards : int
        Shard stores, ``1..layout.MAX_SHARDS``; an existing root's count.
    dim : int, optional
        The embeddings' dimension; default: the root's, the column type's, or the first row's.
    config : IndexConfig or preset name, optional
        Every shard's config (default ``IndexConfig()``); its ``capacity`` is set per shard to
        the shard's row count, which sizes and times the IVF's training. External ids are not
        supported (rows are partitioned by number).
    embedding_column : str
        The vectors: ``list<float>``, ``fixed_size_list<float>`` or a Ray tensor column; with
        ``encode``, the column its output is written to.
    content_column : str or None
        Texts (string or binary). A missing ``"content"`` column means no contents; any other
        name must exist. None: no contents.
    tags_column, timestamp_column, importance_column : str, optional
        ``list<string>``; epoch seconds or a timestamp/date type (null: the time of the add);
        a number in [0, 1] (null: 0.5). None: not read.
    encode : callable or class, optional
        Turns a batch into vectors: called with ``{column: numpy array}`` (strings as object
        arrays), returns ``(rows, dim)`` floats. A class is instantiated once per actor of the
        encode pool (load the model there); it runs with ``num_gpus=1`` where the cluster has
        GPUs. Sized from ``ray.cluster_resources()`` (:func:`.stages.plan_resources`).
    batch_size : int
        Rows per prepared batch (``1..MAX_BATCH``): the unit of checking, of the encoder's calls
        and, split over the shards, of each add.
    address : str, optional
        The Ray cluster to connect to when Ray is not initialized yet (None: ``RAY_ADDRESS`` or
        a new local cluster, shut down at the end).
    progress : bool or callable
        True: Ray Data's progress bars; a callable gets a
        :class:`~lukhas_gpu.ingest.pipeline.Progress` after every acknowledged write.

    Returns
    -------
    IngestReport

    Raises
    ------
    MigrationError
        A row that cannot be stored (its row number, from 0 in input order, and column named; the
        batches before its batch are in the shards and the root stays ``"ingesting"``: nothing of
        its batch is written), or a missing or mistyped column.
    ValueError
        Bad arguments, or a root that holds another input's ingest (or other files).
    """
    _check_args(shards, dim, batch_size, encode)
    cfg = _config(config)
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address)
    try:
        return _Run(dataset, pathlib.Path(root), shards, dim, cfg, encode, batch_size, progress,
                    dict(embedding=embedding_column, content=content_column, tags=tags_column,
                         timestamp=timestamp_column, importance=importance_column)).run()
    finally:
        if started:
            ray.shutdown()


def _check_args(shards, dim, batch_size, encode) -> None:
    def whole(name, v, hi, optional=False):
        if optional and v is None:
            return
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= hi:
            raise ValueError(f"{name} must be an int in 1..{hi:,}, got {v!r}")

    whole("shards", shards, rootfiles.MAX_SHARDS)
    whole("dim", dim, MAX_DIM, optional=True)
    whole("batch_size", batch_size, MAX_BATCH)
    if dim is not None and batch_size * dim * 4 > MAX_BATCH_BYTES:
        raise ValueError(f"batch_size {batch_size:,} x dim {dim} float32 exceeds {MAX_BATCH_BYTES:,} bytes per batch")
    if encode is not None and not callable(encode):
        raise TypeError(f"encode must be a callable or a class, got {type(encode).__name__}")


def _config(config):
    from ..config import IndexConfig

    cfg = IndexConfig.preset(config) if isinstance(config, str) else config or IndexConfig()
    if not isinstance(cfg, IndexConfig):
        raise TypeError(f"config must be an IndexConfig or a preset name, got {type(config).__name__}")
    if cfg.external_ids:
        raise ValueError("the distributed ingest partitions rows by number, so an external id could land in two "
                         "shards: use a config without external_ids")
    return cfg


class _Run:
    """One call of :func:`ingest` (the driver's state)."""

    def __init__(self, dataset, root, shards, dim, cfg, encode, batch_size, progress, names):
        self.root, self.shards, self.dim, self.cfg, self.encode = root, int(shards), dim, cfg, encode
        self.batch_size, self.progress, self.names = int(batch_size), progress, names
        self.dataset = dataset
        self.actors: list = []
        self.held = None  # rows each shard holds, once opened
        self.pending = [collections.deque() for _ in range(self.shards)]
        self.acked = 0
        self.times = {"read": 0.0, "encode": 0.0, "prepare": 0.0}

    # -- setup ------------------------------------------------------------------------------------
    def _input(self, task_cpus: float):
        import ray.data

        if isinstance(self.dataset, (str, os.PathLike)):
            self.source = os.fspath(self.dataset)
            files = files_identity(self.dataset, input_files(self.dataset))
            return read_input(self.dataset, task_cpus, progress=self.progress is True), files
        if not isinstance(self.dataset, ray.data.Dataset):
            raise TypeError(f"dataset must be a ray.data.Dataset or a path, got {type(self.dataset).__name__}")
        self.source = "the dataset"
        return self.dataset, None

    def _columns(self, schema) -> dict:
        """Role -> input column, for the roles read; checks they exist and their Arrow types."""
        import pyarrow as pa

        from ..ingest.parquet import type_problem

        names = list(schema.names)
        types = dict(zip(names, schema.types))
        cols = {}
        for role, name in self.names.items():
            if name is None or (role == "embedding" and self.encode is not None):
                continue
            if name not in names:
                if role == "content" and name == "content":
                    continue  # the default: no contents
                hint = "; or pass encode=" if role == "embedding" else ""
                raise MigrationError(f"{self.source} has no column {name!r} for the {role} (it holds {names}); "
                                     f"name it with {role}_column={hint}", path=self.source)
            t = arrow_type(types[name])
            why = type_problem(role, t) if isinstance(t, pa.DataType) else None
            if why:
                raise MigrationError(f"{self.source}: column {name!r} ({role}) {why}", path=self.source)
            cols[role] = name
        if self.dim is None and "embedding" in cols:
            t = arrow_type(types[cols["embedding"]])
            if isinstance(t, pa.DataType) and pa.types.is_fixed_size_list(t):
                self.dim = t.list_size  # bounded before a shard is created (util.bounds.MAX_DIM)
                _check_args(self.shards, self.dim, self.batch_size, self.encode)
        return cols

    def _pipeline(self, ds, columns: dict, res):
        import ray.data

        if self.encode is not None:
            ds = ds.map_batches(EncodeStage, fn_constructor_args=(self.encode, self.names["embedding"]),
                                batch_size=self.batch_size, batch_format="pyarrow",
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=res.encode_actors),
                                num_cpus=res.encode_cpus, num_gpus=res.encode_gpus or None)
            columns = {"embedding": self.names["embedding"], **columns}
        prep = PrepareStage(columns, self.dim, self.cfg.metric == "cosine", self.cfg.max_content_bytes)
        return ds.map_batches(prep, batch_format="pyarrow", batch_size=None, num_cpus=res.task_cpus)

    def _root(self, doc):
        """Check an existing root against this run (shard count, dimension, input)."""
        if doc is None:
            if self.root.exists() and any(self.root.iterdir()):
                raise ValueError(f"{self.root} exists and is not a sharded root (no {rootfiles.ROOT_FILE}); "
                                 "ingest into a new or empty directory")
            return
        if doc["shards"] != self.shards:
            raise ValueError(f"{self.root} has {doc['shards']} shards, the ingest was asked for {self.shards}")
        if self.dim is not None and self.dim != doc["dim"]:
            raise ValueError(f"{self.root} holds {doc['dim']}-d vectors, the input has dimension {self.dim}")
        self.dim = doc["dim"]
        if doc.get("partition") != PARTITION or not isinstance(doc.get("ingest"), dict):
            raise ValueError(f"{self.root} was not written by this ingest (partition {doc.get('partition')!r})")
        check_same(self.root, doc["ingest"], {k: v for k, v in self.ident.items() if k != "head"})

    def _spawn(self, res) -> None:
        """One writer actor per shard, named, so a second ingest into this root on this cluster
        cannot start."""
        import ray

        if self.actors:
            return
        cls = ray.remote(ShardWriter)
        threads = max(1, int(res.writer_cpus))
        deadline = time.monotonic() + LOCK_WAIT
        for s in range(self.shards):
            opts = dict(name=actor_name(self.root, s), namespace=NAMESPACE, num_cpus=res.writer_cpus,
                        max_restarts=0, max_task_retries=0)
            cfg = self.cfg.replace(capacity=self.counts[s] or None).to_dict()
            while True:
                try:
                    self.actors.append(cls.options(**opts).remote(rootfiles.shard_dir(self.root, s), s, self.dim, cfg,
                                                                  threads))
                    break
                except ValueError as e:  # the name is taken: another ingest, or a killed one's actor not gone yet
                    if time.monotonic() > deadline:
                        raise ValueError(f"shard {s} of {self.root} has a live writer on this cluster (another "
                                         f"ingest into this root?): {e}") from None
                    time.sleep(0.5)

    def _open(self) -> None:
        """Open (or create) every shard's store; the rows each holds already."""
        import ray

        opened = ray.get([a.open.remote(LOCK_WAIT) for a in self.actors])
        self.held = [o["rows"] for o in opened]
        self.next_row = list(self.held)
        self.last = [o["last_content"] for o in opened]
        for s, (h, n) in enumerate(zip(self.held, self.counts)):
            if h > n:
                raise ValueError(f"shard {s} of {self.root} holds {h:,} rows, its part of the input is {n:,}: it was "
                                 "written by something else than this ingest")

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> IngestReport:
        import ray
        import ray.data

        t_start = time.perf_counter()
        res = plan_resources(ray.cluster_resources(), self.shards, encode=self.encode is not None)
        ds, files = self._input(res.task_cpus)
        schema = ds.schema()
        if schema is None:
            raise MigrationError(f"{self.source} holds no rows", path=self.source)
        columns = self._columns(schema)
        total = jsonl_rows(self.dataset) if files is not None else None  # a JSON parse less
        total = ds.count() if total is None else total
        if total == 0:
            raise MigrationError(f"{self.source} holds no rows", path=self.source)
        if total > self.shards * MAX_ROWS:
            raise ValueError(f"{total:,} rows exceed {self.shards} shards of {MAX_ROWS:,} rows")
        self.total, self.counts = total, shard_rows(total, self.shards)
        self.ident = identity(rows=total, schema={n: str(t) for n, t in zip(schema.names, schema.types)},
                              files=files, columns=columns, encode=self.encode)
        doc = rootfiles.read_root(self.root) if rootfiles.is_sharded_root(self.root) else None
        self._root(doc)
        # a finished ingest of the same files (names, sizes, mtimes): nothing to read again
        finished_files = doc is not None and doc["state"] == "complete" and files is not None
        pipe = self._pipeline(ds, columns, res)
        ctx = pipe.context
        saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars,
                 ctx.execution_options.resource_limits)
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = self.progress is True
        # the writers' CPUs are not Ray Data's to schedule on
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            cpu=max(ray.cluster_resources().get("CPU", 1.0) - res.writer_cpus * self.shards, res.task_cpus))
        batches = None
        try:
            if self.dim is not None:
                self._spawn(res)  # the writers' processes start while the first batch is on its way
            if finished_files:
                self._open()
            if not (finished_files and self.held == self.counts):
                batches = pipe.iter_batches(batch_size=self.batch_size, batch_format="pyarrow", prefetch_batches=1)
                self._stream(batches, doc, res)
            self._drain()
            publish = doc is None or doc["state"] != "complete" or self.acked > 0
            finished = ray.get([a.finish.remote(publish) for a in self.actors])
        except BaseException:
            self._abort()
            raise
        finally:
            if batches is not None and hasattr(batches, "close"):
                batches.close()
            (ctx.execution_options.preserve_order, ctx.enable_progress_bars,
             ctx.execution_options.resource_limits) = saved
            for a in self.actors:
                ray.kill(a, no_restart=True)
        for f, n in zip(finished, self.counts):
            if f["rows"] != n:
                raise RuntimeError(f"shard {f['shard']} holds {f['rows']:,} rows, its part of the input is {n:,}")
        rootfiles.write_root(self.root, shards=self.shards, dim=self.dim, state="complete", partition=PARTITION,
                          ingest=self.ident)
        return self._report(finished, time.perf_counter() - t_start)

    def _timed(self, batches):
        """The prepared batches, the time spent waiting for each added to the ``read`` stage."""
        it = iter(batches)
        while True:
            t = time.perf_counter()
            table = next(it, None)
            self.times["read"] += time.perf_counter() - t
            if table is None:
                return
            if table.num_rows:
                yield table

    def _stream(self, batches, doc, res) -> None:
        import pyarrow as pa

        self.t0 = time.perf_counter()
        it = self._timed(batches)
        head, have = [], 0
        while have < min(HEAD_ROWS, self.total):  # the input's first rows, whatever the batch size
            table = next(it, None)
            if table is None:
                break
            head.append(table)
            have += table.num_rows
        self._first(pa.concat_tables(head), doc, res)
        r0 = 0
        for table in itertools.chain(head, it):
            n = table.num_rows
            bad = np.flatnonzero(table.column(PROBLEM).to_numpy(zero_copy_only=False) != "")
            if bad.size:
                i = int(bad[0])
                raise MigrationError(f"{self.source}, row {r0 + i}: {table.column(PROBLEM)[i].as_py()}",
                                     path=self.source, line=r0 + i)
            width = table.schema.field("embedding").type.list_size
            if width != self.dim:
                raise MigrationError(f"{self.source}, row {r0}: embedding has dimension {width}, the store expects "
                                     f"{self.dim}", path=self.source, line=r0)
            self.times["encode"] += float(np.sum(table.column(TIMES[0]).to_numpy()))
            self.times["prepare"] += float(np.sum(table.column(TIMES[1]).to_numpy()))
            self._check_order(table, r0)
            self._dispatch(table.drop_columns([PROBLEM, *TIMES]), r0)
            r0 += n
            if self.next_row == self.counts and not any(self.pending):
                return  # every shard held its rows already (the input's head was checked)
        if r0 != self.total:
            raise RuntimeError(f"{self.source} yielded {r0:,} rows, its count was {self.total:,}")

    def _first(self, head, doc, res) -> None:
        """The input's first rows: their digest, then (a new root) the root and its shards."""
        width = head.schema.field("embedding").type.list_size
        if self.dim is None:
            self.dim = width
            _check_args(self.shards, self.dim, self.batch_size, self.encode)
        elif width != self.dim:
            expects = "root holds" if doc else "ingest was asked for"
            raise MigrationError(f"{self.source}, row 0: embedding has dimension {width}, the {expects} {self.dim}",
                                 path=self.source, line=0)
        digest = head_digest(head)
        if doc is not None:
            check_same(self.root, doc["ingest"], {"head": digest})  # before any shard is opened
        else:
            self.ident["head"] = digest
            rootfiles.write_root(self.root, shards=self.shards, dim=self.dim, state="ingesting", partition=PARTITION,
                              ingest=self.ident)
        self._spawn(res)
        if self.held is None:
            self._open()

    def _check_order(self, table, r0: int) -> None:
        """Each shard's last held row must hold the content of the input row of its number."""
        if "content" not in table.column_names:
            return
        for s, (h, digest) in enumerate(zip(self.held, self.last)):
            r = s + (h - 1) * self.shards
            if h and digest is not None and r0 <= r < r0 + table.num_rows:
                if content_digest(table.column("content")[r - r0].as_py()) != digest:
                    raise ValueError(f"shard {s} of {self.root} holds another content at its row {h - 1} than the "
                                     f"input's row {r}: the input's order changed since the interrupted ingest; "
                                     "ingest it into a new root")

    def _dispatch(self, table, r0: int) -> None:
        """Send each shard its rows of the batch (those it does not hold yet)."""
        import ray

        n, S = table.num_rows, self.shards
        for s in range(S):
            i0 = (s - r0) % S  # the batch's first row of shard s
            if i0 >= n:
                continue
            first = (r0 + i0) // S  # its row in the shard
            m = len(range(i0, n, S))
            k = max(0, self.next_row[s] - first)  # rows of this batch the shard holds already
            if k >= m:
                continue
            idx = np.arange(i0 + k * S, n, S)
            part = table.slice(int(idx[0]), len(idx)) if S == 1 else table.take(idx)
            self.pending[s].append((self.actors[s].write.remote(first + k, part), len(idx)))
            self.next_row[s] = first + m
            while len(self.pending[s]) > IN_FLIGHT:
                ref, rows = self.pending[s].popleft()
                self._acked(ray.get(ref))

    def _acked(self, rows: int) -> None:
        self.acked += rows
        if callable(self.progress):
            done = sum(self.held) + self.acked
            self.progress(Progress(done, self.total, sum(self.held), time.perf_counter() - self.t0))

    def _drain(self) -> None:
        import ray

        for q in self.pending:
            while q:
                ref, _ = q.popleft()
                self._acked(ray.get(ref))

    def _abort(self) -> None:
        """After an error: let the queued writes end (their errors are not this one's), then close
        every live writer, publishing what it added."""
        import ray

        refs = [ref for q in self.pending for ref, _ in q]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=LOCK_WAIT)
        closing = [a.abort.remote(True) for a in self.actors]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=LOCK_WAIT)

    def _report(self, finished: list, seconds: float) -> IngestReport:
        def slowest(stage):
            return max(f["seconds"][stage] for f in finished)

        stages = dict(self.times, **{k: slowest(k) for k in ("open", "write", "train", "checkpoint")})
        return IngestReport(root=str(self.root), shards=self.shards, dim=int(self.dim), rows=self.total,
                            written=sum(f["written"] for f in finished), resumed=sum(f["found"] for f in finished),
                            seconds=seconds, stages=stages, shard_rows=[f["rows"] for f in finished],
                            shard_resumed=[f["found"] for f in finished], shard_nlist=[f["nlist"] for f in finished],
                            ram_bytes=sum(f["ram_bytes"] for f in finished),
                            disk_bytes=sum(f["disk_bytes"] for f in finished), shard_stats=finished)


def expected_nlist(total: int, shards: int, config=None) -> list:
    """The lists each shard's IVF gets for an input of ``total`` rows (None: stays exact), by the
    policy the stores apply (``vectors.policy``)."""
    from ..vectors.policy import nlist_at, train_at

    cfg = _config(config)
    out = []
    for n in shard_rows(total, shards):
        c = cfg.replace(capacity=n or None)
        out.append(nlist_at(n, c) if n and n >= train_at(c) else None)
    return out

