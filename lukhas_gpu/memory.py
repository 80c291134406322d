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
import logging
import time

import numpy as np
import torch
from pyroaring import BitMap64

from . import exact
from ._arrays import as_batch, as_ids, check_nonzero
from .ann import HNSW_COARSE_FROM, IVFPQIndex, auto_nlist, auto_pq_m, train_sample_size
from .config import IndexConfig
from .device import capabilities, faiss_module, resolve_backend
from .encode import Encoder
from .vectors import VectorStore

log = logging.getLogger(__name__)

__all__ = ["MemoryIndex", "SearchResult"]

#: Rows sampled from the first batch to fit the int8 scales, and from the store to train the IVF.
FIT_SAMPLE = 100_000
#: The int8 scales are refitted on every add until this many rows have arrived (see _calibrate).
CALIBRATION_ROWS = 1024
TRAIN_SAMPLE = 262_144


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

    def __iter__(self):  # allows ``ids, scores = index.search(...)``
        yield self.ids
        yield self.scores

    def __len__(self) -> int:
        return len(self.ids)


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
        self._deleted = BitMap64()
        self._calib: np.ndarray | None = None  # float32 first rows while the scales calibrate
        self._ann: IVFPQIndex | None = None
        self._timings: dict[str, float] = {}

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
    def add(self, embeddings) -> np.ndarray:
        """Add a batch of embeddings; returns their ids, ``(n,)`` int64.

        Parameters
        ----------
        embeddings : (n, dim) or (dim,) float array (numpy or torch, any device)

        Raises
        ------
        TypeError, ValueError
            Non-float dtype, wrong rank or dimension, empty batch, NaN/inf. Nothing is stored.
        """
        x, _ = as_batch(embeddings, self.dim, "embeddings")
        if self.config.metric == "cosine":
            check_nonzero(x, "embeddings")
        self._calibrate(x)
        codes, proj = self.encoder(x)
        codes_np = codes.cpu().numpy()
        start = len(self._vectors)
        ids = np.arange(start, start + codes_np.shape[0], dtype=np.int64)
        if self._ann is not None:
            t0 = time.perf_counter()
            self._ann.add(proj.cpu().numpy(), ids)
            self._timings["ann_add"] = self._timings.get("ann_add", 0.0) + time.perf_counter() - t0
        self._vectors.append(codes_np)
        if self._ann is None and len(self._vectors) >= self._train_at():
            self.train()
        return ids

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
        d = self.encoder.dim_out
        nlist = self._planned_nlist(n)
        coarse = cfg.coarse if cfg.coarse != "auto" else ("hnsw" if nlist >= HNSW_COARSE_FROM else "flat")
        ann = IVFPQIndex(d, nlist=nlist, pq_m=auto_pq_m(d, cfg.pq_m), coarse=coarse, seed=cfg.seed)
        ann.train(self.encoder.project(sample).cpu().numpy())
        dead = self._deleted_array()
        for start in range(0, n, cfg.batch_size):
            stop = min(n, start + cfg.batch_size)
            ids = np.arange(start, stop, dtype=np.int64)
            if len(dead):
                ids = ids[~np.isin(ids, dead)]
            if len(ids):
                proj = self.encoder.project(self.encoder.dequantize(self._vectors[ids]))
                ann.add(proj.cpu().numpy(), ids)
        if self.backend == "cuda":
            ann.to_gpu()
        self._ann = ann
        self._timings["train"] = time.perf_counter() - t0
        log.info("index trained: %d vectors, IVF%d,PQ%dx4fs (%s coarse) in %.1f s",
                 n, nlist, ann.pq_m, coarse, self._timings["train"])

    # -- search --------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, *, nprobe: int | None = None, rerank: int | None = None) -> SearchResult:
        """Top-k memories for each query.

        Parameters
        ----------
        queries : (nq, dim) or (dim,) float array (numpy or torch, any device)
        k : int
            Results per query (> 0). Missing results are padded with id -1.
        nprobe, rerank : int, optional
            Override ``config.nprobe`` / ``config.rerank`` for this call.

        Returns
        -------
        SearchResult
            ``ids`` (nq, k) int64 and ``scores`` (nq, k) float32, in the queries' kind/device.
        """
        q, kind = as_batch(queries, self.dim, "queries")
        if self.config.metric == "cosine":
            check_nonzero(q, "queries")
        k = _check_k(k)
        nprobe = self.config.nprobe if nprobe is None else _check_positive("nprobe", nprobe)
        rerank = self.config.rerank if rerank is None else _check_positive("rerank", rerank)
        scores, ids = self._search(q, k, nprobe, rerank)
        return SearchResult(ids=kind.out(ids), scores=kind.out(scores))

    def _search(self, q: torch.Tensor, k: int, nprobe: int, rerank: int) -> tuple[torch.Tensor, torch.Tensor]:
        qw = self.encoder.query_weights(q)
        codes = self._vectors.array
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

    # -- delete --------------------------------------------------------------------------------
    def delete(self, ids) -> int:
        """Delete memories by id; returns how many were deleted.

        Raises
        ------
        ValueError
            An id that was never assigned or is already deleted; nothing is deleted then.
        """
        ids = np.unique(as_ids(ids))
        if len(ids) == 0:
            return 0
        bad = ids[(ids < 0) | (ids >= len(self._vectors))]
        if len(bad):
            raise ValueError(f"unknown id(s): {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}")
        gone = [int(i) for i in ids[:10_000] if int(i) in self._deleted]
        if self._deleted and len(ids) > 10_000:
            gone = (self._deleted & BitMap64(ids.tolist())).to_array().tolist()
        if gone:
            raise ValueError(f"id(s) already deleted: {gone[:10]}")
        if self._ann is not None:
            self._ann.remove(ids)
        self._deleted.update(ids.tolist())
        return len(ids)

    def _deleted_array(self) -> np.ndarray:
        return np.asarray(self._deleted.to_array(), dtype=np.int64)

    def contains(self, ids) -> np.ndarray:
        """Boolean mask: which ids are live memories."""
        ids = as_ids(ids)
        live = (ids >= 0) & (ids < len(self._vectors))
        if self._deleted:
            live &= ~np.isin(ids, self._deleted_array())
        return live

    # -- introspection -------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counts and bytes per component.

        ``anon_bytes`` counts what lives in anonymous RAM (the number that bounds how many
        memories fit on a node); ``mapped_bytes`` what lives in file-backed pages.
        """
        n = len(self)
        vec_bytes = self._vectors.nbytes()
        components = {"vectors_int8": vec_bytes, "encoder": self.encoder.nbytes(),
                      "tombstones": len(self._deleted.serialize()) if self._deleted else 0}
        if self._ann is not None:
            components.update({f"ann_{k}": v for k, v in self._ann.nbytes().items()})
        mapped = vec_bytes if self._vectors.storage == "mmap" else 0
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
            "bytes": components,
            "anon_bytes": anon,
            "mapped_bytes": mapped,
            "bytes_per_memory": (anon + mapped) / n if n else 0.0,
            "anon_bytes_per_memory": anon / n if n else 0.0,
            "train_seconds": self._timings.get("train"),
            "capabilities": capabilities(),
            "config": self.config.to_dict(),
        }


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


def _sample_index(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def _sample_rows(x: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    return x[torch.from_numpy(_sample_index(x.shape[0], limit, seed)).to(x.device)]
