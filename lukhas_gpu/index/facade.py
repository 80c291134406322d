"""``MemoryIndex``: the facade users hold.

Lifecycle of the vector path:

1. **Small** (fewer than ``config.train_threshold`` vectors): vectors are stored as int8 rows
   (per-dimension scales calibrated on the first 1024 rows) and every search is an exact scan
   of them (int8 x int8 candidates re-scored with the float query). No training is asked of
   the user.
2. **Trained**: the ``add`` that crosses the threshold fits the projection and trains an IVF
   index with 4-bit fast-scan PQ codes on the vectors held, then indexes them all. Later vectors
   are searchable as soon as ``add`` returns. A search fetches ``k * rerank`` candidates from the
   IVF and re-scores them exactly with the int8 rows.

Ids are int64 assigned by the index (dense row numbers, never reused after a delete).
"""
from __future__ import annotations

import dataclasses
import concurrent.futures
import copy
import functools
import logging
import pathlib
import threading
import time
import weakref

import numpy as np
import torch
from pyroaring import BitMap

from ..store import layout as storage
from ..store import persist
from ..vectors import exact
from ..util.arrays import as_batch, as_ids, check_nonzero
from ..vectors.ann import HNSW_COARSE_FROM, IVFPQIndex, auto_nlist, auto_pq_m, train_sample_size
from ..config import IndexConfig
from ..util.device import capabilities, faiss_module, resolve_backend
from ..vectors.encoder import Encoder
from ..query.filters import Filter, evaluate, plan
from ..records.metadata import MetadataColumns
from ..monitor.probe import DRIFT_WINDOW, DriftMonitor, Probe, recall_estimate
from ..records.contents import ContentArena
from ..vectors.mirror import ResidentVectors
from ..query.ranking import Rank
from ..records.tags import TagIndex
from ..vectors.store import VectorStore

log = logging.getLogger(__name__)

__all__ = ["MemoryIndex", "SearchResult", "Memory"]

#: Rows sampled from the first batch to fit the int8 scales, and from the store to train the IVF.
FIT_SAMPLE = 100_000
#: The int8 scales are refitted on every add until this many rows have arrived (see _calibrate).
CALIBRATION_ROWS = 1024
#: Rows a memory-aware search may add to its candidates because recency/importance could lift
#: them into the top-k (the highest priors first).
RANK_EXTRA_MAX = 65536
#: Write-ahead log operations.
OP_ADD, OP_UPDATE, OP_DELETE = 1, 2, 3
TRAIN_SAMPLE = 262_144
#: Queries per chunk of the recall probe (bounds its temporary score matrices).
PROBE_CHUNK = 256


def _locked(method):
    """Run ``method`` holding the index's lock (see ``MemoryIndex._lock``)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


@dataclasses.dataclass
class SearchResult:
    """Top-k results of a batch of queries.

    Attributes
    ----------
    ids : (nq, k) int64, -1 where fewer than k memories exist
    scores : (nq, k) float32, descending; ``-inf`` where padded
    Both are numpy arrays for numpy queries, and torch tensors on the query's device for torch
    queries; a 1-D query gives 1-D results.
    """

    ids: np.ndarray | torch.Tensor
    scores: np.ndarray | torch.Tensor
    # a weak reference: results must not keep an index (and its memory maps) alive
    _index_ref: "weakref.ref | None" = dataclasses.field(default=None, repr=False, compare=False)

    def __iter__(self):  # allows ``ids, scores = index.search(...)``
        yield self.ids
        yield self.scores

    def __len__(self) -> int:
        return len(self.ids)

    def _rows(self) -> np.ndarray:
        ids = self.ids.cpu().numpy() if isinstance(self.ids, torch.Tensor) else np.asarray(self.ids)
        return ids

    @property
    def _index(self) -> "MemoryIndex":
        index = self._index_ref() if self._index_ref is not None else None
        if index is None:
            raise RuntimeError("the index this SearchResult came from is gone")
        return index

    def _hydrate(self, fetch):
        ids = self._rows()
        flat = ids.reshape(-1)
        live = flat >= 0
        got = fetch(flat[live]) if live.any() else []
        out, it = [], iter(got)
        for ok in live:
            out.append(next(it) if ok else None)
        if ids.ndim == 1:
            return out
        k = ids.shape[1]
        return [out[i * k:(i + 1) * k] for i in range(ids.shape[0])]

    def contents(self) -> list:
        """Contents of the results, shaped like ``ids`` (lists), ``None`` where padded."""
        return self._hydrate(lambda ids: self._index._contents_of(ids))

    def memories(self) -> list:
        """:class:`Memory` records of the results, shaped like ``ids``, ``None`` where padded."""
        return self._hydrate(lambda ids: self._index.get(ids))


@dataclasses.dataclass(frozen=True)
class Memory:
    """One memory as returned by :meth:`MemoryIndex.get` (built on demand, never stored)."""

    id: int
    content: str | bytes | None
    tags: list[str]
    timestamp: float
    importance: float


class MemoryIndex:
    """A vector memory index: int8 vectors, IVF-PQ candidates, exact rerank.

    Parameters
    ----------
    dim : int
        Dimension of the embeddings added and queried.
    config : IndexConfig or str, optional
        A config, or the name of a preset in ``configs/`` (default: ``IndexConfig()``).

    Examples
    --------
    >>> import numpy as np, lukhas_gpu
    >>> index = lukhas_gpu.MemoryIndex(64)
    >>> ids = index.add(np.random.default_rng(0).standard_normal((100, 64), dtype=np.float32))
    >>> res = index.search(np.ones(64, dtype=np.float32), k=5)
    >>> res.ids.shape
    (5,)
    """

    def __init__(self, dim: int, config: IndexConfig | str | None = None):
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if isinstance(config, str):
            config = IndexConfig.preset(config)
        elif config is None:
            config = IndexConfig()
        elif not isinstance(config, IndexConfig):
            raise TypeError(f"config must be an IndexConfig or a preset name, got {type(config).__name__}")
        self.dim = int(dim)
        self.config = config
        self.backend = resolve_backend(config.backend)
        self.device = torch.device(self.backend)
        if config.threads:
            torch.set_num_threads(config.threads)
            faiss_module().omp_set_num_threads(config.threads)
        # a preset's dim_out above the input dimension means "no projection"
        dim_out = min(config.dim_out, dim) if config.dim_out else None
        self.encoder = Encoder(dim, dim_out=dim_out, metric=config.metric,
                               quantile=config.quantile, batch_size=config.batch_size).to(self.device)
        self._vectors = VectorStore(dim, storage=config.vector_storage, spill_dir=config.spill_dir)
        if config.capacity:
            self._vectors.reserve(config.capacity)  # untouched capacity is not resident
        self._deleted = BitMap()  # tombstones (row numbers < 2**32)
        self._contents = ContentArena(level=config.zstd_level, max_content_bytes=config.max_content_bytes)
        self._tags = TagIndex()
        self._meta = MetadataColumns()
        self.last_plan = None  # the filter plan of the last filtered search (for introspection)
        self._wal = None  # the write-ahead log of a store open for writing
        self._calib: np.ndarray | None = None  # float32 first rows while the scales calibrate
        self._ann: IVFPQIndex | None = None
        # the device mirror of the search codes (see resident.py), built on first use
        self._resident: ResidentVectors | None = None
        self._resident_wanted = config.resident_on(self.backend)
        self._timings: dict[str, float] = {}
        # the recall probe's samples and the drift measures (see monitor.py)
        self._probe = Probe(dim, size=config.probe_size, queries=config.probe_queries, seed=config.seed)
        self._drift = DriftMonitor(config.drift_threshold, seed=config.seed)
        # held by every call that reads or changes the index, so a background retrain can swap
        # its result in between two calls
        self._lock = threading.RLock()

    # -- durable store ---------------------------------------------------------------------------
    path: pathlib.Path | None = None
    mode: str | None = None

    @classmethod
    def create(cls, path, dim: int, config: IndexConfig | str | None = None) -> "MemoryIndex":
        """Create a store at ``path`` (a new or empty directory) and return it open for writing.

        Raises
        ------
        StoreError
            ``path`` already holds a store (open it instead).
        """
        path = pathlib.Path(path)
        if (path / storage.CURRENT).exists():
            raise storage.StoreError(f"{path} already holds a store; use MemoryIndex.open({str(path)!r}, mode='w')")
        path.mkdir(parents=True, exist_ok=True)
        storage.acquire_lock(path)
        try:
            index = cls(dim, config)
            index._bind(path, "w")
            index.checkpoint()
        except BaseException:
            storage.release_lock(path)
            raise
        return index

    @classmethod
    def open(cls, path, mode: str = "r", *, verify: bool = False) -> "MemoryIndex":
        """Open the store at ``path``: ``mode="r"`` (read the last checkpoint; many readers may
        run beside the writer) or ``"w"`` (the one writer: takes the lock and replays the
        write-ahead log on top of the last checkpoint).

        The int8 vectors and the content records are memory-mapped, so opening reads little and
        the anonymous RAM per memory is the ANN codes plus the packed metadata. ``verify=True``
        also checks the CRC-32 of the memory-mapped files (see :meth:`verify`).

        Raises
        ------
        StoreError, CorruptStoreError, StoreLockedError
            No store there, a format this version cannot read (the message says how to upgrade),
            a truncated or altered file (named), or another writer holding the lock.
        """
        if mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")
        path = pathlib.Path(path)
        storage.current_generation(path)  # a clear error before taking any lock
        if mode == "w":
            storage.acquire_lock(path)
        try:
            gen_dir = storage.current_generation(path)  # read under the lock: no checkpoint races it
            index, _ = persist.load_generation(cls, path, gen_dir, writable=mode == "w",
                                               checksums=True if verify else "small")
            index._bind(path, mode)
            if mode == "w":
                index._replay_wal()
        except BaseException:
            if mode == "w":
                storage.release_lock(path)
            raise
        return index

    def _bind(self, path: pathlib.Path, mode: str) -> None:
        self.path, self.mode = path, mode

    def _reset_wal(self, base: int) -> None:
        """Start an empty log that follows generation ``base`` (after a checkpoint)."""
        from ..store.wal import WriteAheadLog

        if self._wal is None:
            wal_path = self.path / storage.WAL
            wal_path.unlink(missing_ok=True)  # only at create: nothing to keep
            self._wal = WriteAheadLog(wal_path, base=base, sync=self.config.wal_sync)
        else:
            self._wal.reset(base)

    def _replay_wal(self) -> None:
        """Apply the operations logged since the published generation, then keep logging.

        A torn tail (a crash mid-append: that call never returned) is cut, never replayed. A log
        that follows another generation (a crash between publishing a checkpoint and restarting
        the log: its records are in the checkpoint) is dropped.
        """
        from ..store.wal import WalReader, WriteAheadLog

        wal_path = self.path / storage.WAL
        base = int(storage.current_generation(self.path).name[4:])
        applied = 0
        if wal_path.exists():
            with WalReader(wal_path) as reader:
                stale = reader.base != base
                if not stale:
                    for rec in reader:
                        self._apply(rec.op, rec.fields)
                        applied += 1
            if stale:
                log.warning("%s follows generation %s, the store is at %s: its records are in the checkpoint; "
                            "dropped", wal_path, reader.base, base)
                wal_path.unlink()
        self._wal = WriteAheadLog(wal_path, base=base, sync=self.config.wal_sync)
        if applied:
            log.info("replayed %d logged operations from %s", applied, wal_path)

    def _apply(self, op: int, f: dict) -> None:
        wal, self._wal = self._wal, None  # replayed operations are not logged again
        try:
            if op == OP_ADD:
                self.add(f["x"], contents=f["contents"], tags=f["tags"], timestamps=f["ts"], importance=f["imp"])
            elif op == OP_UPDATE:
                self.update(f["ids"], contents=f["contents"], tags=f["tags"], timestamps=f["ts"], importance=f["imp"])
            elif op == OP_DELETE:
                self.delete(f["ids"])
            else:
                raise storage.CorruptStoreError(self.path / storage.WAL, f"unknown operation {op}")
        finally:
            self._wal = wal

    def _close_wal(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise storage.StoreError(f"{self.path} is open read-only (mode='r'); open it with mode='w' to change it")

    @_locked
    def checkpoint(self) -> pathlib.Path:
        """Write a new generation of the store and publish it atomically; the previous one is
        kept for :meth:`rollback`, older ones removed, and the write-ahead log restarted."""
        self._require_writable()
        if self.path is None:
            raise storage.StoreError("this index has no store; use save(path) or MemoryIndex.create(path, ...)")
        gen = persist.write_generation(self, self.path)
        self._reset_wal(int(gen.name[4:]))
        return gen

    @_locked
    def save(self, path) -> pathlib.Path:
        """Write this index as a new store at ``path`` (which must not hold one yet)."""
        path = pathlib.Path(path)
        if (path / storage.CURRENT).exists():
            raise storage.StoreError(f"{path} already holds a store")
        return persist.write_generation(self, path)

    @classmethod
    def rollback(cls, path) -> pathlib.Path:
        """Publish the previous generation of the closed store at ``path`` again (and drop the
        write-ahead log, which belongs to the newer one). Returns the generation now current."""
        path = pathlib.Path(path)
        storage.acquire_lock(path)
        try:
            prev = storage.previous_generation(path)
            if prev is None:
                raise storage.StoreError(f"{path} has no previous generation to roll back to")
            storage.read_manifest(prev)
            storage.publish(path, prev.name)
            (path / storage.WAL).unlink(missing_ok=True)
            return prev
        finally:
            storage.release_lock(path)

    @_locked
    def verify(self) -> dict:
        """Check the store's published generation (every file's size and CRC-32) and this index's
        internal consistency (every live id has its vector, content, metadata and tags).

        Returns a report dict; raises :class:`CorruptStoreError` naming the first bad file.
        """
        report = {"rows": len(self._vectors), "count": len(self)}
        if self.path is not None:
            gen_dir = storage.current_generation(self.path)
            manifest = storage.read_manifest(gen_dir)
            storage.check_files(gen_dir, manifest, checksums=True)
            report.update(generation=manifest["generation"], files=len(manifest["files"]))
        n = len(self._vectors)
        for part, m in (("metadata", len(self._meta)), ("content", len(self._contents)), ("tags", len(self._tags))):
            if m != n:
                raise storage.CorruptStoreError(self.path or "<memory>", f"{part} holds {m} rows, the vectors {n}")
        if self._ann is not None and self._ann.ntotal != len(self):
            raise storage.CorruptStoreError(self.path or "<memory>",
                                            f"the ANN holds {self._ann.ntotal} vectors, the index {len(self)} live memories")
        try:  # every record decodes
            for start in range(0, n, 65536):
                self._contents.get(np.arange(start, min(n, start + 65536)))
        except Exception as e:
            raise storage.CorruptStoreError((self.path or "<memory>") and f"{self.path}/content.bin",
                                            f"a content record does not decode ({type(e).__name__}: {e})") from None
        report["ok"] = True
        return report

    def close(self) -> None:
        """Release the writer's lock and the write-ahead log (nothing is checkpointed)."""
        if self.mode == "w" and self.path is not None:
            self._close_wal()
            storage.release_lock(self.path)
        self.mode = None

    def __enter__(self) -> "MemoryIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- size ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._vectors) - len(self._deleted)

    @property
    def is_trained(self) -> bool:
        """True once the IVF-PQ index serves searches (before that: exact int8 scans)."""
        return self._ann is not None

    @property
    def dim_out(self) -> int:
        return self.encoder.dim_out

    def __repr__(self) -> str:
        phase = f"IVF{self._ann.nlist},PQ{self._ann.pq_m}x4fs" if self._ann else "exact-int8"
        return f"MemoryIndex(dim={self.dim}, count={len(self)}, phase={phase}, backend={self.backend!r})"

    # -- add -----------------------------------------------------------------------------------
    @_locked
    def add(self, embeddings, contents=None, tags=None, timestamps=None, importance=None) -> np.ndarray:
        """Add a batch of memories; returns their ids, ``(n,)`` int64.

        Parameters
        ----------
        embeddings : (n, dim) or (dim,) float array (numpy or torch, any device)
        contents : sequence of str / bytes / None, optional
            The memories' texts (or bytes), compressed losslessly; at most
            ``config.max_content_bytes`` each.
        tags : sequence of lists of str, optional
            Tags per memory.
        timestamps : sequence of epoch seconds, or datetime64 array, optional
            Default: now.
        importance : sequence of floats in [0, 1] (or one float for all), optional
            Default 0.5.

        With a 1-D embedding (one memory) the others may be given unwrapped: a str content, a
        list of tags, a scalar timestamp and importance.

        Raises
        ------
        TypeError, ValueError
            Non-float dtype, wrong rank or dimension, empty batch, NaN/inf, an all-zero vector
            under cosine, lengths that disagree, importance outside [0, 1], non-UTF-8 text, a
            content over the size limit, bad tags. Nothing is stored.
        """
        self._require_writable()
        x, kind = as_batch(embeddings, self.dim, "embeddings")
        n = x.shape[0]
        if kind.single:
            contents = [contents] if isinstance(contents, (str, bytes)) else contents
            tags = [tags] if tags is not None and (len(tags) == 0 or isinstance(next(iter(tags)), str)) else tags
            timestamps = None if timestamps is None else np.atleast_1d(np.asarray(timestamps))
            importance = None if importance is None else np.atleast_1d(np.asarray(importance))
        if self.config.metric == "cosine":
            check_nonzero(x, "embeddings")
        raw_contents = contents
        if contents is not None:
            if isinstance(contents, (str, bytes)) or not hasattr(contents, "__len__"):
                raise TypeError(f"contents must be a sequence of str/bytes/None, one per memory, got {type(contents).__name__}")
            if len(contents) != n:
                raise ValueError(f"contents has {len(contents)} entries, expected {n} (one per memory)")
            contents = self._contents.validate(contents)
        norm_tags = self._tags.validate(tags, n) if tags is not None else None
        ts, imp = MetadataColumns.validate(n, timestamps, importance)
        if self._wal is not None:  # write-ahead: logged (and synced) before anything changes
            self._wal.append(OP_ADD, {"x": x.to("cpu", torch.float32).numpy(), "ts": ts, "imp": imp,
                                      "contents": list(raw_contents) if raw_contents is not None else None,
                                      "tags": [list(t) for t in norm_tags] if norm_tags is not None else None})
        if len(self._vectors) + n >= 2**32:
            raise ValueError(f"an index holds at most 2**32 - 1 memories; this batch of {n} would exceed it")
        # -- everything is valid: from here on the batch is stored whole
        self._calibrate(x)
        codes, proj = self.encoder(x)
        codes_np = codes.cpu().numpy()
        start = len(self._vectors)
        ids = np.arange(start, start + n, dtype=np.int64)
        if self._ann is not None:
            self._ann.add(proj.cpu().numpy(), ids)
        self._vectors.append(codes_np)
        self._contents.append(contents if contents is not None else [None] * n)
        self._tags.append(tags, n)
        self._meta.append(ts, imp)
        if self._resident is not None:
            self._grow_resident(lambda: self.encoder.resident_from(codes, proj))
        self._observe(x, codes, proj, ids)
        if self._ann is None and len(self._vectors) >= self._train_at():
            self.train()
        return ids

    def _observe(self, x: torch.Tensor, codes: torch.Tensor, proj: torch.Tensor, ids: np.ndarray) -> None:
        """Feed an added batch to the probe's sample of originals and to the drift monitor."""
        enc = self.encoder
        self._probe.memories.offer(x, ids, transform=lambda r: enc.normalize(r).cpu().numpy())
        rows = self._drift.sample_rows(len(ids), int(ids[0]))
        if len(rows) == 0:
            return
        r = torch.from_numpy(rows)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[r.to(t.device)]

        m = DriftMonitor.measure(enc.normalize(pick(x)).cpu().numpy(), enc.dequantize(pick(codes)).cpu().numpy(),
                                 pick(proj).cpu().numpy(), self._ann)
        self._drift.record(m)

    def _calibrate(self, x: torch.Tensor) -> None:
        """Fit the int8 scales, refitting them on each add until ``CALIBRATION_ROWS`` arrived.

        Scales fitted once on a tiny first batch clip every later vector wherever that batch
        happened to be small (recall@10 0.65 after a one-vector first batch, measured). So the
        first rows are also kept as float32 (at most ``CALIBRATION_ROWS``) until enough have
        arrived; each add in between refits the scales on them plus the new batch and
        re-quantizes the stored ones from their floats (no double rounding).
        """
        seed = self.config.seed
        if len(self._vectors) == 0:
            self.encoder.fit_quantizer(_sample_rows(x, FIT_SAMPLE, seed))
            if x.shape[0] < CALIBRATION_ROWS:
                self._calib = x.to("cpu", torch.float32).numpy().copy()
            return
        if self._calib is None:
            return
        old = self._calib
        new = x.to("cpu", torch.float32).numpy()
        sample = new if len(new) <= FIT_SAMPLE else new[_sample_index(len(new), FIT_SAMPLE, seed)]
        self.encoder.fit_quantizer(np.concatenate([old, sample]))
        self._vectors[: len(old)] = self.encoder.quantize(old).cpu().numpy()
        self._resident = None  # its codes were at the old scales: rebuilt on the next search
        total = len(old) + len(new)
        self._calib = np.concatenate([old, new]) if total < CALIBRATION_ROWS else None

    def _planned_nlist(self, n: int) -> int:
        cfg = self.config
        return cfg.nlist or auto_nlist(max(n, cfg.capacity or 0))

    def _train_at(self) -> int:
        """Count at which ``add`` trains: the threshold, raised to the sample that the lists
        planned for ``capacity`` need (never above the capacity itself)."""
        cfg = self.config
        if not cfg.capacity:
            return cfg.train_threshold
        want = train_sample_size(self._planned_nlist(cfg.capacity))
        return max(cfg.train_threshold, min(want, cfg.capacity))

    @_locked
    def train(self) -> None:
        """Fit the projection and train the IVF-PQ index on the vectors held, then index them.

        Called automatically when ``add`` crosses ``config.train_threshold``; calling it earlier
        (with at least 1024 vectors) switches to the ANN phase at once.
        """
        n = len(self._vectors)
        if n < 1024:
            raise ValueError(f"training needs at least 1024 vectors, the index holds {n}")
        cfg = self.config
        t0 = time.perf_counter()
        rows = _sample_index(n, TRAIN_SAMPLE, cfg.seed)
        sample = self.encoder.dequantize(self._vectors[rows])
        if self.encoder.projects:
            self.encoder.fit_projection(sample)
            self._resident = None  # a new projected space
        d = self.encoder.dim_out
        nlist = self._planned_nlist(n)
        coarse = cfg.coarse if cfg.coarse != "auto" else ("hnsw" if nlist >= HNSW_COARSE_FROM else "flat")
        ann = IVFPQIndex(d, nlist=nlist, pq_m=auto_pq_m(d, cfg.pq_m), coarse=coarse, seed=cfg.seed)
        proj = self.encoder.project(sample).cpu().numpy()
        self._drift.set_baseline(_train_ann(ann, sample, proj, cfg.seed, self._faiss_gpu_wanted), nlist=ann.nlist)
        del proj
        dead = self._deleted_array()
        for start in range(0, n, cfg.batch_size):
            stop = min(n, start + cfg.batch_size)
            ids = np.arange(start, stop, dtype=np.int64)
            if len(dead):
                ids = ids[~np.isin(ids, dead)]
            if len(ids):
                proj = self.encoder.project(self.encoder.dequantize(self._vectors[ids]))
                ann.add(proj.cpu().numpy(), ids)
        self._ann = ann
        self._timings["train"] = time.perf_counter() - t0
        log.info("index trained: %d vectors, IVF%d,PQ%dx4fs (%s coarse) in %.1f s",
                 n, nlist, ann.pq_m, coarse, self._timings["train"])

    @property
    def _faiss_gpu_wanted(self) -> bool:
        """A faiss-gpu copy of the IVF helps only where the resident scan does not serve."""
        return self.backend == "cuda" and not self._resident_wanted

    # -- the device-resident codes ---------------------------------------------------------------
    def _resident_ready(self) -> ResidentVectors | None:
        """The resident mirror, built from the host rows on first use; ``None`` when the mode is
        off, nothing is stored, the projection is not fitted yet (the exact host scan serves
        those small stores), or the device had no room for it."""
        if self._resident is not None or not self._resident_wanted:
            return self._resident
        enc = self.encoder
        n = len(self._vectors)
        if n == 0 or not enc.quantizer_fitted or not enc.projection_fitted:
            return None
        if not enc.resident_fitted:  # a store written before the resident mode existed
            enc.fit_resident(enc.dequantize(self._vectors[_sample_index(n, FIT_SAMPLE, self.config.seed)]))
        self._resident = ResidentVectors(enc.dim_out, self.device, capacity=max(n, self.config.capacity or 0))
        step = self.config.batch_size
        for a in range(0, n, step):
            rows = exact._from_numpy(np.ascontiguousarray(self._vectors[a: min(n, a + step)]))
            if not self._grow_resident(lambda: enc.resident_from(rows)):
                return None
        if self._deleted:
            self._resident.delete(self._deleted_array())
        return self._resident

    def _grow_resident(self, codes) -> bool:
        """Append ``codes()`` to the mirror; out of device memory, drop the mirror for good."""
        try:
            self._resident.append(codes())
            return True
        except torch.cuda.OutOfMemoryError:
            log.warning("gpu_resident: the %s device has no room for %d more rows of %d B; searches "
                        "go back to the IVF candidates", self.device, len(self._vectors), self.encoder.dim_out)
            self._resident, self._resident_wanted = None, False
            return False

    def _resident_search(self, q: torch.Tensor, k: int, rerank: int, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact int8 scan of the resident codes (or of ``rows`` of them), then the exact rerank.

        Without a projection the resident codes are the stored rows: the int8 x int8 scan takes
        ``2k + 16`` candidates and the float query re-scores them on the device, the CPU exact
        path's result. With one, the scan in the projected space takes ``k * rerank`` and the
        full-dimension int8 rows (on the host) re-score them.
        """
        enc, res = self.encoder, self._resident
        qw = enc.query_weights(q)
        qr = enc.resident_query_weights(q) if enc.projects else qw  # the same without a projection
        if rows is not None:
            rows = torch.from_numpy(rows).to(res.device)
        kc = 2 * k + 16 if not enc.projects else max(k * rerank, 2 * k + 16)
        _, cand = exact.scan(qr, res.rows, kc, rows=rows, dead=res.dead, kernel=exact.int8_kernel)
        table = res.rows if not enc.projects else self._vectors.array
        return exact.rerank(qw, table, cand, k)

    # -- search --------------------------------------------------------------------------------
    @_locked
    def search(self, queries, k: int = 10, *, where: Filter | None = None, rank: Rank | None = None,
               nprobe: int | None = None, rerank: int | None = None) -> SearchResult:
        """Top-k memories for each query.

        Parameters
        ----------
        queries : (nq, dim) or (dim,) float array (numpy or torch, any device)
        k : int
            Results per query (> 0). Missing results are padded with id -1.
        where : Filter, optional
            Only memories that satisfy it are returned. Small subsets are scanned exactly; large
            ones searched through the IVF with an id selector (see ``config.filter_exact_max``).
        rank : Rank, optional
            Memory-aware ranking: weighted similarity + recency decay + importance, applied
            exactly to an oversampled candidate set plus every memory whose recency and
            importance could still lift it into the top-k.
        nprobe, rerank : int, optional
            Override ``config.nprobe`` / ``config.rerank`` for this call.

        Returns
        -------
        SearchResult
            ``ids`` (nq, k) int64 and ``scores`` (nq, k) float32 (the fused score under a
            ``rank``), in the queries' kind/device; ``.contents()`` / ``.memories()`` hydrate.
        """
        q, kind = as_batch(queries, self.dim, "queries")
        if self.config.metric == "cosine":
            check_nonzero(q, "queries")
        k = _check_k(k)
        nprobe = self.config.nprobe if nprobe is None else _check_positive("nprobe", nprobe)
        rerank = self.config.rerank if rerank is None else _check_positive("rerank", rerank)
        if where is not None and not isinstance(where, Filter):
            raise TypeError(f"where must be a lukhas_gpu.Filter, got {type(where).__name__}")
        if rank is not None and not isinstance(rank, Rank):
            raise TypeError(f"rank must be a lukhas_gpu.Rank, got {type(rank).__name__}")
        enc = self.encoder
        self._probe.queries.offer(q, transform=lambda r: enc.normalize(r).cpu().numpy())
        allowed = None
        if where is not None and not where.is_empty():
            allowed = evaluate(where, tags=self._tags, metadata=self._meta, n_rows=len(self._vectors),
                               deleted=self._deleted)
        if rank is None or rank.is_plain:
            scores, ids = self._similar(q, k, nprobe, rerank, allowed)
            if rank is not None:
                scores = scores * rank.similarity
        else:
            scores, ids = self._ranked(q, k, nprobe, rerank, allowed, rank)
        return SearchResult(ids=kind.out(ids), scores=kind.out(scores), _index_ref=weakref.ref(self))

    def _similar(self, q: torch.Tensor, k: int, nprobe: int, rerank: int, allowed: BitMap | None,
                 resident: bool = True):
        """Top-k by similarity, optionally restricted to ``allowed`` rows: (scores, ids) tensors.

        ``resident=False`` searches as if the mode were off (a retrain compares IVF indexes)."""
        res = self._resident_ready() if resident else None
        if res is not None:
            rows = None
            if allowed is not None:  # any width: the device scans the subset exactly
                p = plan(allowed, n_live=len(self), trained=False, exact_max=0, nprobe=nprobe, nlist=1)
                self.last_plan = dataclasses.replace(p, strategy="resident")
                rows = p.rows
            else:
                self.last_plan = None
            return self._resident_search(q, k, rerank, rows)
        qw = self.encoder.query_weights(q)
        codes = self._vectors.array
        if allowed is None:
            self.last_plan = None
            if self._ann is None:
                # int8 x int8 scan for candidates (2.2x the float GEMM's speed, 50x for single
                # queries), then the float query re-scores them: exact top-k of the int8 vectors
                # unless the query's own rounding pushed a true neighbour below rank 2k + 16
                dead = self._deleted_array() if self._deleted else None
                _, cand = exact.scan(qw, codes, 2 * k + 16, exclude=dead, kernel=exact.int8_kernel)
                return exact.rerank(qw, codes, cand.cpu().numpy(), k)
            qp = self.encoder.project(q).cpu().numpy()
            kc = min(max(k * rerank, k), max(len(self), 1))
            _, cand = self._ann.search(qp, kc, nprobe=nprobe)
            return exact.rerank(qw, codes, cand, k)
        p = plan(allowed, n_live=len(self), trained=self._ann is not None, exact_max=self.config.filter_exact_max,
                 nprobe=nprobe, nlist=self._ann.nlist if self._ann else 1)
        self.last_plan = p
        if p.strategy == "exact":
            _, cand = exact.scan(qw, codes, 2 * k + 16, rows=p.rows, kernel=exact.int8_kernel)
            return exact.rerank(qw, codes, cand.cpu().numpy(), k)
        faiss = faiss_module()
        bits = np.zeros(len(self._vectors), dtype=bool)
        bits[p.rows] = True
        packed = np.packbits(bits, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(packed))
        qp = self.encoder.project(q).cpu().numpy()
        kc = min(max(k * rerank, k), len(p.rows))
        _, cand = self._ann.search(qp, kc, nprobe=p.nprobe, selector=selector)
        del selector, packed
        return exact.rerank(qw, codes, cand, k)

    def _ranked(self, q: torch.Tensor, k: int, nprobe: int, rerank: int, allowed: BitMap | None, rank: Rank):
        """Exact top-k of the fused score over (approximate) similarity candidates.

        ``fused = a * sim + prior(row)``. Candidates come by similarity (``k * rank_oversample``
        of them); any row outside them has ``sim <= s_min``, the lowest candidate similarity,
        so it can only enter the top-k if ``prior(row) > tau_k - a * s_min`` (``tau_k`` the
        k-th best fused score among the candidates). Those rows are few unless recency and
        importance dominate; they are scored exactly too (at most ``RANK_EXTRA_MAX``, the
        highest priors first). Torch throughout, on the device the candidates come from; the
        prior is computed on the host (it reads the metadata columns) and moved once.
        """
        now = rank.reference_time()
        n_rows = len(self._vectors)
        prior_np = rank.prior(self._meta.timestamp.view(), self._meta.importance(), now)
        kc = k * self.config.rank_oversample
        sims, cand = self._similar(q, kc, nprobe, rerank, allowed)
        prior = torch.from_numpy(prior_np).to(sims.device)
        a = float(rank.similarity)
        valid = cand >= 0
        fused = torch.where(valid, a * sims + prior[cand.clamp_min(0)], -float("inf"))
        n_allowed = len(allowed) if allowed is not None else len(self)
        if n_allowed > kc:
            tau = torch.topk(fused, k, dim=1).values[:, -1]
            s_min = torch.where(valid, sims, float("inf")).amin(dim=1)
            bound = float((tau - a * s_min).min())
            eligible = prior_np > bound
            if self._deleted:
                eligible[self._deleted_array()] = False
            if allowed is not None:
                mask = np.zeros(n_rows, dtype=bool)
                mask[np.asarray(allowed.to_array(), dtype=np.int64)] = True
                eligible &= mask
            extra = np.flatnonzero(eligible)
            if len(extra) > RANK_EXTRA_MAX:
                extra = extra[np.argpartition(-prior_np[extra], RANK_EXTRA_MAX)[:RANK_EXTRA_MAX]]
            if len(extra):
                e_s, e_i = self._fused_scan(q, extra, prior, a, k)
                fused = torch.cat([fused, e_s.to(fused.device)], dim=1)
                cand = torch.cat([cand, e_i.to(cand.device)], dim=1)
        return _topk_unique(fused, cand, k)

    def _fused_scan(self, q: torch.Tensor, rows: np.ndarray, prior: torch.Tensor, a: float, k: int):
        """Exact fused top-k over ``rows``: (scores (nq, k), ids (nq, k)) tensors. Reads the
        resident codes when they are the stored rows (no projection), else the host rows."""
        res = self._resident if self._resident is not None and not self.encoder.projects else None
        qw = self.encoder.query_weights(q)
        table = res.rows if res is not None else self._vectors.array
        rows_t = torch.from_numpy(rows).to(qw.device)
        pr = prior.to(qw.device)[rows_t]
        best_s = best_i = None
        step = max(1024, exact.DEFAULT_BUDGET // max(q.shape[0], 1))
        for s0 in range(0, len(rows), step):
            ids = rows_t[s0: s0 + step]
            if res is not None:
                block = table.index_select(0, ids)
            else:
                block = torch.from_numpy(np.ascontiguousarray(table[rows[s0: s0 + step]])).to(qw.device)
            fused = a * exact.float_kernel(qw, block) + pr[s0: s0 + step]
            top = torch.topk(fused, min(k, fused.shape[1]), dim=1)
            best_s, best_i = exact.merge_topk(best_s, best_i, top.values, ids[top.indices], k)
        return best_s, best_i

    def _contents_of(self, ids) -> list:
        return self._contents.get(self._live_rows(ids))

    # -- payload -------------------------------------------------------------------------------
    def _live_rows(self, ids, name: str = "ids") -> np.ndarray:
        ids = as_ids(ids, name)
        bad = ids[(ids < 0) | (ids >= len(self._vectors))]
        if len(bad):
            raise ValueError(f"unknown id(s): {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}")
        if self._deleted:
            dead = np.isin(ids, self._deleted_array())
            if dead.any():
                raise ValueError(f"deleted id(s): {ids[dead][:10].tolist()}")
        return ids

    @_locked
    def get(self, ids) -> list[Memory]:
        """The memories with these ids, in the order given.

        Raises
        ------
        ValueError
            An id that was never assigned or has been deleted.
        """
        rows = self._live_rows(ids)
        contents = self._contents.get(rows)
        tags = self._tags.get(rows)
        ts = self._meta.timestamp[rows]
        imp = self._meta.importance(rows)
        return [Memory(int(r), c, t, float(a), float(b)) for r, c, t, a, b in zip(rows, contents, tags, ts, imp)]

    @_locked
    def update(self, ids, *, contents=None, tags=None, timestamps=None, importance=None) -> None:
        """Change the content, tags, timestamp or importance of existing memories.

        Each argument, when given, has one entry per id. The whole call is validated first and
        applied only if everything is valid.
        """
        self._require_writable()
        rows = self._live_rows(ids)
        n = len(rows)
        if len(np.unique(rows)) != n:
            raise ValueError("update ids must be unique")
        raw_contents = contents
        if contents is not None:
            if isinstance(contents, (str, bytes)) or len(contents) != n:
                raise ValueError(f"contents must have {n} entries, one per id")
            contents = self._contents.validate(contents)
        norm_tags = self._tags.validate(tags, n) if tags is not None else None
        ts = imp = None
        if timestamps is not None or importance is not None:
            ts, imp = MetadataColumns.validate(n, timestamps, importance)
        if self._wal is not None:
            self._wal.append(OP_UPDATE, {
                "ids": rows, "contents": list(raw_contents) if raw_contents is not None else None,
                "tags": [list(t) for t in norm_tags] if norm_tags is not None else None,
                "ts": ts if timestamps is not None else None, "imp": imp if importance is not None else None})
        if contents is not None:
            self._contents.replace(rows, contents)
        if tags is not None:
            self._tags.replace(rows, tags)
        if timestamps is not None:
            self._meta.timestamp[rows] = ts
        if importance is not None:
            self._meta.importance_q[rows] = MetadataColumns.quantize_importance(imp)

    # -- delete --------------------------------------------------------------------------------
    @_locked
    def delete(self, ids) -> int:
        """Delete memories by id (from the index, the tags and the filters); returns the count.

        Raises
        ------
        ValueError
            An id that was never assigned or is already deleted; nothing is deleted then.
        """
        self._require_writable()
        ids = np.unique(as_ids(ids))
        if len(ids) == 0:
            return 0
        bad = ids[(ids < 0) | (ids >= len(self._vectors))]
        if len(bad):
            raise ValueError(f"unknown id(s): {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}")
        gone = ids[np.isin(ids, self._deleted_array())] if self._deleted else ids[:0]
        if len(gone):
            raise ValueError(f"id(s) already deleted: {gone[:10].tolist()}")
        if self._wal is not None:
            self._wal.append(OP_DELETE, {"ids": ids})
        if self._ann is not None:
            self._ann.remove(ids)
        if self._resident is not None:
            self._resident.delete(ids)
        self._deleted.update(ids.astype(np.uint32))
        self._tags.delete(ids)
        self._meta.mark_deleted(ids)
        return len(ids)

    def _deleted_array(self) -> np.ndarray:
        return np.asarray(self._deleted.to_array(), dtype=np.int64)

    @_locked
    def compact(self) -> int:
        """Drop the bytes of deleted memories and of replaced contents and tag lists.

        Deleted memories keep their (int8) row, since ids are row numbers; their content,
        tags and ANN entry are gone. Returns the bytes reclaimed.
        """
        def held() -> int:  # content records plus tag-list entries, live and garbage
            return self._contents.nbytes()["records"] + self._tags.nbytes()["flat"] + 4 * self._tags.garbage

        before = held()
        live = np.ones(len(self._vectors), dtype=bool)
        if self._deleted:
            live[self._deleted_array()] = False
        self._contents.compact(np.flatnonzero(live))
        self._tags.compact()
        return int(before - held())

    def contains(self, ids) -> np.ndarray:
        """Boolean mask: which ids are live memories."""
        ids = as_ids(ids)
        live = (ids >= 0) & (ids < len(self._vectors))
        if self._deleted:
            live &= ~np.isin(ids, self._deleted_array())
        return live

    # -- monitoring ----------------------------------------------------------------------------
    @_locked
    def quality(self, queries=None, k: int = 10, *, nprobe: int | None = None, rerank: int | None = None,
                max_queries: int = 20000, confidence: float = 0.95) -> dict:
        """Estimate the live index's recall@k against exact float search, with a confidence interval.

        The index keeps a uniform sample of the originals it was given (``config.probe_size``
        rows, float16) and of the queries it was asked (``config.probe_queries``). Recall is the
        product of what the two stages keep:

        * ``ann_recall``: the share of the exact int8 top-k (an exact scan of the whole store per
          probe query) that the live index returns -- what the IVF probes, the PQ codes and the
          rerank depth lose. ``k`` neighbours per query: a tight estimate.
        * ``int8_recall``: the share of the true float top-k neighbours that the int8 vectors
          still rank in the top-k -- what quantization loses. Estimated on the sampled
          originals: a sampled memory whose original scores at least the k-th exact score is a
          true neighbour; it is kept when its int8 row scores that too.

        The interval is the delta-method normal interval of that product of ratio estimators,
        linearised per query (hits that cluster in a few queries widen it).

        Parameters
        ----------
        queries : (nq, dim) float array, optional
            Probe queries. Default: the sampled queries of past searches (when 64 or more have
            been seen), else the sampled memories themselves, each excluding itself.
        k : int
        nprobe, rerank : int, optional
            The search parameters to evaluate (default: the config's).
        max_queries : int
            At most this many probe queries are used.
        confidence : float
            Level of the interval.

        Returns
        -------
        dict
            ``recall``, ``ci`` (low, high), ``confidence``, ``ann_recall``, ``int8_recall``,
            ``hits`` (sampled true neighbours behind ``int8_recall``), ``queries``, ``source``
            ("given", "queries" or "memories"), ``sample`` (live sampled memories), ``k``,
            ``nprobe``, ``rerank``, ``seconds``.

        Cost: one exact int8 scan of the store per probe query (about a second per 1,000
        queries per 100k memories on 2 cores).
        """
        t0 = time.perf_counter()
        k = _check_k(k)
        nprobe = self.config.nprobe if nprobe is None else _check_positive("nprobe", nprobe)
        rerank = self.config.rerank if rerank is None else _check_positive("rerank", rerank)
        if not 0.0 < float(confidence) < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
        probe = self._probe_setup(queries, k, _check_positive("max_queries", max_queries))
        found = self._probe_eval(probe, k, nprobe, rerank)
        est = recall_estimate(found, probe["exact_n"], probe["kept"], probe["true"], confidence)
        return {**est, "confidence": confidence, "queries": len(probe["q"]), "source": probe["source"],
                "sample": probe["sample"], "k": k, "nprobe": nprobe, "rerank": rerank,
                "seconds": time.perf_counter() - t0}

    def _probe_setup(self, queries, k: int, max_queries: int) -> dict:
        """What the recall probe needs that does not depend on the ANN: the queries, their exact
        int8 top-k, and per query the sampled true neighbours and how many int8 keeps."""
        if self.config.probe_size == 0:
            raise ValueError("the recall probe is off (config.probe_size=0)")
        mem = self._probe.memories
        live = self.contains(mem.ids) if len(mem) else np.zeros(0, dtype=bool)
        if not live.any():
            raise ValueError("the recall probe has no sampled memories yet (add memories first)")
        s_ids = mem.ids[live]
        s_vec = mem.vectors[live].astype(np.float32)
        self_ids = None
        if queries is not None:
            q, _ = as_batch(queries, self.dim, "queries")
            if self.config.metric == "cosine":
                check_nonzero(q, "queries")
            q = self.encoder.normalize(q).cpu().numpy()
            source = "given"
        elif len(self._probe.queries) >= 64:
            q, source = self._probe.queries.vectors.astype(np.float32), "queries"
        else:
            q, self_ids, source = s_vec, s_ids, "memories"
        q = q[:max_queries]
        if self_ids is not None:
            self_ids = self_ids[:max_queries]
        kk = k + 1 if self_ids is not None else k
        codes = self._vectors.array
        s_codes = torch.from_numpy(np.array(codes[s_ids]))
        dead = self._deleted_array() if self._deleted else None
        exact_ids = np.full((len(q), k), -1, dtype=np.int64)
        true = np.zeros(len(q), dtype=np.int64)
        kept = np.zeros(len(q), dtype=np.int64)
        for c0 in range(0, len(q), PROBE_CHUNK):
            qc = torch.from_numpy(np.ascontiguousarray(q[c0: c0 + PROBE_CHUNK]))
            qw = self.encoder.query_weights(qc)
            _, cand = exact.scan(qw, codes, 2 * kk + 16, exclude=dead, kernel=exact.int8_kernel)
            sc, ids = exact.rerank(qw, codes, cand.cpu().numpy(), kk)
            sc, ids = sc.cpu().numpy(), ids.cpu().numpy()
            if self_ids is not None:  # the query's own row is not its neighbour
                ids, sc = _drop_own(ids, self_ids[c0: c0 + PROBE_CHUNK], sc)
            sc, ids = sc[:, :k], ids[:, :k]
            exact_ids[c0: c0 + len(ids)] = np.where(np.isfinite(sc), ids, -1)
            tau = sc[:, k - 1]
            t = qc.numpy() @ s_vec.T >= tau[:, None]  # true neighbours among the sampled originals
            # the k-th row itself, when sampled, scores tau up to float rounding (another
            # summation order): a relative tolerance keeps it
            eps = 1e-5 * np.maximum(1.0, np.abs(tau))[:, None]
            s8 = exact.float_kernel(qw, s_codes.to(qw.device)).cpu().numpy() >= tau[:, None] - eps
            if self_ids is not None:
                t &= s_ids[None, :] != self_ids[c0: c0 + PROBE_CHUNK, None]
            true[c0: c0 + len(t)] = t.sum(1)
            kept[c0: c0 + len(t)] = (t & s8).sum(1)
        return {"q": q, "self_ids": self_ids, "exact_ids": exact_ids, "exact_n": (exact_ids >= 0).sum(1),
                "true": true, "kept": kept, "source": source, "sample": len(s_ids)}

    def _probe_eval(self, probe: dict, k: int, nprobe: int, rerank: int, resident: bool = True) -> np.ndarray:
        """Per probe query: how many of its exact int8 top-k the live index returns."""
        q, self_ids, exact_ids = probe["q"], probe["self_ids"], probe["exact_ids"]
        kk = k + 1 if self_ids is not None else k
        found = np.zeros(len(q), dtype=np.int64)
        for c0 in range(0, len(q), PROBE_CHUNK):
            qc = torch.from_numpy(np.ascontiguousarray(q[c0: c0 + PROBE_CHUNK]))
            _, ids = self._similar(qc, kk, nprobe, rerank, None, resident=resident)
            ids = ids.cpu().numpy()
            if self_ids is not None:  # drop the query's own row, keep k others
                ids = _drop_own(ids, self_ids[c0: c0 + PROBE_CHUNK])[0][:, :k]
            e = exact_ids[c0: c0 + len(ids)]
            found[c0: c0 + len(ids)] = ((e[:, :, None] == ids[:, None, :]) & (e[:, :, None] >= 0)).any(2).sum(1)
        return found

    def _requantize(self, old_scale: torch.Tensor) -> None:
        """Re-express every stored int8 row at the encoder's (wider) scales."""
        ratio = (old_scale / self.encoder.scale).to(torch.float32)
        n, step = len(self._vectors), self.config.batch_size
        for a in range(0, n, step):
            b = min(n, a + step)
            block = torch.from_numpy(np.array(self._vectors[a:b])).to(ratio.device, torch.float32)
            self._vectors[a:b] = torch.round(block * ratio).clamp_(-127, 127).to(torch.int8).cpu().numpy()
        self._resident = None  # rebuilt from the requantized rows on the next search
        log.info("int8 scales widened on %d dimensions; %d rows requantized",
                 int((ratio < 1).sum()), n)

    @_locked
    def drift(self) -> dict:
        """How far recent batches have drifted from the data the index was trained on.

        Returns
        -------
        dict
            ``baseline`` and ``recent`` values of each measure (int8 ``quant`` error, IVF
            ``coarse`` residual energy, ``pq`` reconstruction error -- each relative to the
            squared norm -- and list ``imbalance``), their ``ratios``, the ``score`` (the largest
            ratio) and the measure it comes from (``worst``), ``threshold``
            (``config.drift_threshold``), ``retrain_recommended``, ``batches``,
            ``rows_measured`` and the per-batch ``history`` (numpy arrays).

        A warning is logged when an ``add`` takes the score past the threshold.
        """
        rep = self._drift.report()
        rep["trained"] = self._ann is not None
        rep["history"] = self._drift.history()
        return rep

    def retrain(self, *, background: bool = False, queries=None, tolerance: float = 0.0):
        """Rebuild the projection and the IVF-PQ index on a fresh sample of the store, and keep
        the new ones only if the recall probe says they are not worse.

        The build runs without holding the index (searches and writes go on; rows added
        meanwhile are caught up at the end). Then, on the same probe queries and ground truth,
        the old and the new index are compared; the new one is swapped in if its probe recall
        is at least the old one's minus ``tolerance``. A store open for writing is then
        checkpointed: the previous generation stays on disk for :meth:`rollback`. The int8
        scales are kept (the originals they would need are not stored); ``drift()`` reports
        the int8 error separately.

        Parameters
        ----------
        background : bool
            Return at once a ``concurrent.futures.Future`` of the report.
        queries : (nq, dim) float array, optional
            Probe queries (see :meth:`quality`).
        tolerance : float
            Recall the new index may lose on the probe and still be kept (default 0).

        Returns
        -------
        dict (or a Future of it)
            ``accepted``, ``old`` and ``new`` probe recall with intervals, ``hits``, ``nlist``,
            ``seconds``, ``generation`` (the checkpoint written, if any).
        """
        self._require_writable()
        if self._ann is None:
            raise ValueError("the index is not trained yet: there is nothing to retrain (train() trains it)")
        if not 0.0 <= float(tolerance) < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        if queries is not None:
            as_batch(queries, self.dim, "queries")  # fail now, not in the background
        if not background:
            return self._retrain(queries, float(tolerance))
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            try:
                fut.set_result(self._retrain(queries, float(tolerance)))
            except BaseException as e:  # surfaced by fut.result()
                fut.set_exception(e)

        threading.Thread(target=run, name="lukhas-gpu-retrain", daemon=True).start()
        return fut

    def _retrain(self, queries, tolerance: float) -> dict:
        t0 = time.perf_counter()
        cfg = self.config
        with self._lock:  # a fresh sample of the live rows, copied out
            n0 = len(self._vectors)
            dead0 = BitMap(self._deleted)
            live = np.ones(n0, dtype=bool)
            if self._deleted:
                live[self._deleted_array()] = False
            live_rows = np.flatnonzero(live)
            if len(live_rows) < 1024:
                raise ValueError(f"retraining needs at least 1024 live memories, the index holds {len(live_rows)}")
            pick = _sample_index(len(live_rows), TRAIN_SAMPLE, cfg.seed + 1 + self._drift.batches)
            sample_codes = np.array(self._vectors[live_rows[pick]])
            encoder = copy.deepcopy(self.encoder)
            quant_base = self._drift.baseline.get("quant")
            mem = self._probe.memories
            originals = mem.vectors[self.contains(mem.ids)].astype(np.float32) if len(mem) else None
        old_scale = encoder.scale.clone()
        sample = encoder.dequantize(sample_codes)
        del sample_codes
        # int8 scales: refitted on the sampled originals when they clip twice as often as the
        # scales' quantile allows, and only ever widened (the stored rows are requantized from
        # their codes, never clipped more)
        clipped = 0.0
        if originals is not None and len(originals) >= 256:
            clipped = float((np.abs(originals) > 127.5 * old_scale.cpu().numpy()).mean())
        rescale = clipped > max(2 * (1.0 - cfg.quantile), 1e-5)
        if rescale:
            encoder.fit_quantizer(originals)
            encoder.scale.copy_(torch.maximum(encoder.scale, old_scale))
            codes_o = encoder.quantize(originals)
            quant_base = float((((originals - encoder.dequantize(codes_o).cpu().numpy()) ** 2).sum(1)
                                / np.maximum((originals ** 2).sum(1), 1e-30)).mean())
        if encoder.projects:
            encoder.fit_projection(sample)
        d = encoder.dim_out
        nlist = self._planned_nlist(len(live_rows))
        coarse = cfg.coarse if cfg.coarse != "auto" else ("hnsw" if nlist >= HNSW_COARSE_FROM else "flat")
        ann = IVFPQIndex(d, nlist=nlist, pq_m=auto_pq_m(d, cfg.pq_m), coarse=coarse, seed=cfg.seed)
        proj = encoder.project(sample).cpu().numpy()
        baseline = _train_ann(ann, sample, proj, cfg.seed, self._faiss_gpu_wanted)
        del proj, sample

        def index_rows(start: int, stop: int) -> None:  # called holding the lock for the copy only
            with self._lock:
                ids = np.arange(start, stop, dtype=np.int64)
                if self._deleted:
                    ids = ids[~np.isin(ids, self._deleted_array())]
                block = np.array(self._vectors[ids]) if len(ids) else None
            if block is not None:  # stored codes are at the old scales until the swap
                x = torch.from_numpy(block).to(encoder.device, torch.float32) * old_scale
                ann.add(encoder.project(x).cpu().numpy(), ids)

        for start in range(0, n0, cfg.batch_size):
            index_rows(start, min(n0, start + cfg.batch_size))
        with self._lock:  # catch up, compare on the probe, swap or discard
            n1 = len(self._vectors)
            for start in range(n0, n1, cfg.batch_size):
                index_rows(start, min(n1, start + cfg.batch_size))
            gone = np.asarray((self._deleted - dead0).to_array(), dtype=np.int64)
            if len(gone):
                ann.remove(gone)
            probe = self._probe_setup(queries, 10, 20000)
            old_found = self._probe_eval(probe, 10, cfg.nprobe, cfg.rerank, resident=False)
            old_encoder, old_ann = self.encoder, self._ann
            new_scale = encoder.scale.clone()
            encoder.scale.copy_(old_scale)  # the stored codes are still at the old scales
            self.encoder, self._ann = encoder, ann
            try:
                new_found = self._probe_eval(probe, 10, cfg.nprobe, cfg.rerank, resident=False)
                encoder.scale.copy_(new_scale)
            except BaseException:
                self.encoder, self._ann = old_encoder, old_ann
                raise
            hits = int(probe["exact_n"].sum())
            # paired: the same queries and exact neighbours; the int8 stage is the same for both
            accepted = new_found.sum() >= old_found.sum() - tolerance * hits
            generation = None
            if accepted:
                self._resident = None  # new projection or scales: rebuilt on the next search
                if rescale:
                    self._requantize(old_scale)
                self._drift.set_baseline(baseline, nlist=ann.nlist, quant=quant_base)
                self._timings["train"] = time.perf_counter() - t0
                if self.path is not None and self.mode == "w":
                    generation = self.checkpoint().name
            else:
                self.encoder, self._ann = old_encoder, old_ann
                rescale = False
            old, new = (recall_estimate(f, probe["exact_n"], probe["kept"], probe["true"])
                        for f in (old_found, new_found))
            log.log(logging.INFO if accepted else logging.WARNING,
                    "retrain: probe recall %.3f -> %.3f on %d sampled neighbours: %s", old["recall"] or 0.0,
                    new["recall"] or 0.0, hits, "new index kept" if accepted else "new index discarded")
        return {"accepted": bool(accepted), "old": old, "new": new, "hits": hits, "source": probe["source"],
                "rescaled": bool(rescale), "clipped": clipped,
                "nlist": nlist, "rows": n1, "seconds": time.perf_counter() - t0, "generation": generation}

    # -- introspection -------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counts and bytes per component.

        ``bytes``, ``anon_bytes`` and ``mapped_bytes`` are the logical sizes of the data
        structures, as they always were. ``memory`` is where the bytes really are (see
        :mod:`lukhas_gpu.accounting`): ``memory[place]`` for each place -- ``"anon"`` (anonymous
        RAM, the number that bounds how many memories fit on a node), ``"mapped"`` (file-backed
        pages), ``"disk"`` (the store's files), ``"gpu"`` -- maps components to bytes, with the
        totals ``memory["anon_bytes"]``, ``["mapped_bytes"]``, ``["disk_bytes"]``,
        ``["gpu_bytes"]`` and ``memory["per_memory"]``; ``plan()`` predicts the same fields.
        """
        from ..capacity.accounting import breakdown, logical_bytes

        n = len(self)
        components, mapped = logical_bytes(self)
        anon = sum(components.values()) - mapped
        return {
            "count": n,
            "rows": len(self._vectors),
            "deleted": len(self._deleted),
            "dim": self.dim,
            "dim_out": self.encoder.dim_out,
            "phase": "ivfpq" if self._ann is not None else "exact",
            "nlist": self._ann.nlist if self._ann else None,
            "pq_m": self._ann.pq_m if self._ann else None,
            "coarse": self._ann.coarse if self._ann else None,
            "backend": self.backend,
            "vector_storage": self._vectors.storage,
            "gpu_resident": self._resident is not None,
            "bytes": components,
            "anon_bytes": anon,
            "mapped_bytes": mapped,
            "memory": breakdown(self),
            "bytes_per_memory": (anon + mapped) / n if n else 0.0,
            "anon_bytes_per_memory": anon / n if n else 0.0,
            "content_raw_bytes": self._contents.raw_bytes,
            "content_stored_bytes": self._contents.stored_bytes,
            "tag_vocabulary": self._tags.vocab_size,
            "train_seconds": self._timings.get("train"),
            "capabilities": capabilities(),
            "config": self.config.to_dict(),
        }

    # TEMPORARY (records branch): the lead's facade provides ``parts``; dropped at merge.
    parts = property(lambda self: __import__("types").SimpleNamespace(
        vectors=self._vectors, tombstones=self._deleted, contents=self._contents, tags=self._tags, meta=self._meta,
        encoder=self.encoder, ann=self._ann, mirror=self._resident, probe=self._probe, drift=self._drift,
        calib=self._calib))


def _check_k(k) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    return int(k)


def _check_positive(name: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _drop_own(ids: np.ndarray, own_ids: np.ndarray, scores: np.ndarray | None = None):
    """Move each row's own id (a probe query that is a stored memory) to the end of its results,
    as id -1 and score -inf, keeping the order of the others: ``(ids, scores)``."""
    own = ids == own_ids[:, None]
    order = np.argsort(own, axis=1, kind="stable")
    ids = np.take_along_axis(np.where(own, -1, ids), order, 1)
    if scores is not None:
        scores = np.take_along_axis(np.where(own, -np.inf, scores), order, 1)
    return ids, scores


def _topk_unique(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row of candidates that may repeat an id (found both by similarity and by the
    prior bound): one entry per id, ``-1`` / ``-inf`` padding."""
    by_id, perm = torch.sort(ids, dim=1)
    s = torch.gather(scores, 1, perm)
    repeat = torch.zeros_like(by_id, dtype=torch.bool)
    repeat[:, 1:] = by_id[:, 1:] == by_id[:, :-1]
    s = s.masked_fill(repeat | (by_id < 0), -float("inf"))
    kk = min(k, s.shape[1])
    top = torch.topk(s, kk, dim=1)
    out_s = torch.full((ids.shape[0], k), -float("inf"), device=scores.device)
    out_i = torch.full((ids.shape[0], k), -1, dtype=torch.int64, device=scores.device)
    out_s[:, :kk] = top.values
    out_i[:, :kk] = torch.gather(by_id, 1, top.indices)
    out_i[torch.isinf(out_s)] = -1
    return out_s, out_i


def _train_ann(ann: IVFPQIndex, sample: torch.Tensor, proj: np.ndarray, seed: int, gpu: bool = False) -> dict:
    """Train ``ann`` on (part of) a sample and return the drift measures that become its baseline;
    with ``gpu``, also give it its faiss-gpu copy (if faiss has GPUs) before anything is added.

    k-means fits its own training rows better than new ones (by 10-20% in residual energy at
    ~64 rows per list, measured), so the baseline is taken on rows of the sample that the
    training did not see whenever the sample has 1,024 of them to spare.
    """
    limit = train_sample_size(ann.nlist)
    order = np.random.default_rng(seed).permutation(len(proj))
    fit, held = order[:limit], order[limit:][:DRIFT_WINDOW]
    train_x = proj[np.sort(fit)]
    ann.train(train_x)
    if gpu:
        ann.to_gpu(train_x)
    del train_x
    rows = np.sort(held) if len(held) >= 1024 else np.sort(fit[:DRIFT_WINDOW])
    deq = sample[torch.from_numpy(rows).to(sample.device)].cpu().numpy()
    return DriftMonitor.measure(deq, deq, proj[rows], ann)


def _sample_index(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _sample_rows(x: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    return x[torch.from_numpy(_sample_index(x.shape[0], limit, seed)).to(x.device)]
