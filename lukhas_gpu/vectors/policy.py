"""Sizing policy of the vector path: one owner for the numbers the index builds with and the
capacity planner predicts with (``lukhas_gpu.capacity.sizing`` imports them from here).

* when ``add`` trains the IVF (:func:`train_at`) and how many lists it gets (:func:`planned_nlist`);
* which coarse quantizer (:func:`coarse_for`) and how many PQ sub-quantizers (``auto_pq_m``);
* the samples: int8 scales (``FIT_SAMPLE``, ``CALIBRATION_ROWS``), IVF training (``TRAIN_SAMPLE``
  and ``train_sample_size``);
* the vector store's growth (:func:`vector_capacity`);
* when the IVF lists' dead entries are purged (``ANN_DEAD_FRACTION``).
"""
from __future__ import annotations

import numpy as np

from ..util.bounds import MAX_DIM_OUT
from .ann import HNSW_COARSE_FROM, TWO_LEVEL_FROM, auto_nlist, auto_pq_m, train_sample_size

__all__ = ["MAX_DIM_OUT", "dim_out_for", "encoder_bytes", "FIT_SAMPLE", "CALIBRATION_ROWS", "TRAIN_SAMPLE",
           "VECTOR_MIN_ROWS", "MIN_TRAIN_ROWS", "ANN_DEAD_FRACTION",
           "HNSW_COARSE_FROM", "TWO_LEVEL_FROM", "auto_nlist", "auto_pq_m", "train_sample_size",
           "planned_nlist", "nlist_at", "train_rows", "train_at", "coarse_for", "vector_capacity", "sample_index"]

#: Rows sampled from the first batch to fit the int8 scales.
FIT_SAMPLE = 100_000
#: The int8 scales are refitted on every add until this many rows have arrived (the first rows
#: are kept as float32 until then; see ``index.training.calibrate``).
CALIBRATION_ROWS = 1024
#: Rows sampled from the store to fit the projection and train the IVF (k-means takes
#: ``train_sample_size(nlist)`` of them); more when the lists need more (:func:`train_rows`).
TRAIN_SAMPLE = 262_144
#: The vector store's first capacity (rows); it doubles from there.
VECTOR_MIN_ROWS = 4096
#: Fewer live rows than this cannot be trained or retrained.
MIN_TRAIN_ROWS = 1024
#: Deleted rows' entries stay in the IVF lists (excluded at search time; FAISS's removal from
#: fast-scan lists corrupts later codes). Once they pass this share of the lists' entries, a
#: delete re-encodes every list holding one (``index.ivflists.purge``): until then they cost
#: their code bytes and scan time, at most this share more.
ANN_DEAD_FRACTION = 0.2


def dim_out_for(dim: int, cfg=None) -> int:
    """The projected dimension of an index of ``dim``: ``cfg.dim_out`` (a preset's value above
    ``dim`` means no projection), else ``min(dim, MAX_DIM_OUT)`` (``util.bounds``)."""
    if cfg is not None and cfg.dim_out:
        return min(int(cfg.dim_out), dim)
    return min(dim, MAX_DIM_OUT)


def encoder_bytes(dim: int, dim_out: int) -> int:
    """Bytes of the encoder's buffers: int8 scales (float32 per input dim), then with a
    projection its components and the projected space's scales, and two "fitted" flags."""
    proj = 4 * dim_out * dim + 4 * dim_out if dim_out < dim else 0
    return 4 * dim + proj + 2


def planned_nlist(n: int, cfg) -> int:
    """Lists of an IVF trained when the store holds ``n`` rows: ``cfg.nlist``, else sized for
    ``max(n, cfg.capacity)`` (a batch job that passes its size gets the IVF of the whole set)."""
    return cfg.nlist or auto_nlist(max(n, cfg.capacity or 0))


def train_rows(nlist: int) -> int:
    """Rows sampled from the store to train an IVF of ``nlist`` lists: ``TRAIN_SAMPLE``, or what
    k-means needs (``train_sample_size``) when that is more."""
    return max(TRAIN_SAMPLE, train_sample_size(nlist))


def train_at(cfg) -> int:
    """Count at which ``add`` trains: ``cfg.train_threshold``, raised to the sample that the lists
    planned for ``cfg.capacity`` need (never above the capacity itself)."""
    if not cfg.capacity:
        return cfg.train_threshold
    want = train_sample_size(planned_nlist(cfg.capacity, cfg))
    return max(cfg.train_threshold, min(want, cfg.capacity))


def nlist_at(count: int, cfg) -> int:
    """Lists of an index grown to ``count`` rows: trained at ``train_at(cfg)`` with
    ``planned_nlist`` of that; then, with a ``target_recall`` and ``auto_tune`` (and no fixed
    ``nlist``), retrained with ``planned_nlist(n)`` each time that reaches twice its lists (the
    restructure of :mod:`lukhas_gpu.index.tuning`, taken at the first such ``n``)."""
    n0 = train_at(cfg)
    nl = planned_nlist(n0, cfg)
    if cfg.nlist or getattr(cfg, "target_recall", None) is None or not getattr(cfg, "auto_tune", False):
        return nl
    while planned_nlist(max(count, n0), cfg) >= 2 * nl:
        lo, hi = n0, max(count, n0)  # the first n whose planned lists reach 2 * nl
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if planned_nlist(mid, cfg) >= 2 * nl else (mid, hi)
        n0, nl = hi, planned_nlist(hi, cfg)
    return nl


def coarse_for(nlist: int, cfg) -> str:
    """The coarse quantizer: ``cfg.coarse``, or under ``"auto"`` an HNSW graph from
    ``HNSW_COARSE_FROM`` lists up (a flat scan of 4096+ centroids costs more than the lists)."""
    if cfg.coarse != "auto":
        return cfg.coarse
    return "hnsw" if nlist >= HNSW_COARSE_FROM else "flat"


def vector_capacity(count: int, cfg) -> int:
    """Rows the vector store reserves for ``count`` rows: the configured capacity, or doubling
    from ``VECTOR_MIN_ROWS``."""
    cap = cfg.capacity or 0
    if count <= cap:
        return cap
    rows = max(VECTOR_MIN_ROWS, cap)
    while rows < count:
        rows *= 2
    return rows


def sample_index(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted rows of a uniform sample of at most ``limit`` of ``n`` (all of them if fewer)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
