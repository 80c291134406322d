"""Per-call settings of FAISS searches, kept off the one-query path's bill.

* :func:`threads_for`: FAISS on the calling thread alone for a call of a few queries;
* :func:`exclusion`: the selector of every id but the deleted rows, built once per packed bit
  array of the tombstones (``Tombstones.packed``) rather than per call;
* :func:`search_params`: ``SearchParametersIVF`` reused per (nprobe, selector);
* :func:`search_into`: a search without the Python wrapper's per-call checks;
* :func:`set_fastscan_search`: the fast-scan implementation FAISS does not save with an index.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..util.device import faiss_module

__all__ = ["SINGLE_THREAD_QUERIES", "FASTSCAN_IMPLEM", "set_fastscan_search", "threads_for", "search_into",
           "exclusion", "search_params"]

#: Queries per call up to which FAISS runs on the calling thread alone: one query's lists are
#: too few to share, and an OpenMP region per call waits on a second core that another process
#: may hold (p99 of one nq=1 search, IVF1024 at 100k on 2 loaded cores: 7.8 ms on two threads,
#: 0.08 ms on one; the same p50). Per thread (OpenMP's ICV), so server workers do not interfere.
SINGLE_THREAD_QUERIES = 4
_CACHE_LOCK = threading.Lock()
_EXCLUDED: list = [None]  # (packed bit array, its length, selector, inner selector): the last one built
_PARAMS: dict = {}  # (nprobe, hnsw coarse, id(selector)) -> (SearchParametersIVF, selector)


@contextlib.contextmanager
def threads_for(faiss, nq: int):
    """FAISS on one OpenMP thread for this thread's calls of at most :data:`SINGLE_THREAD_QUERIES`."""
    before = faiss.omp_get_max_threads() if nq <= SINGLE_THREAD_QUERIES else 1
    if before > 1:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        if before > 1:
            faiss.omp_set_num_threads(before)


#: FAISS's fast-scan search implementation for our IVF lists (``IndexIVFFastScan.implem``, not
#: saved with the index: set on every one built or read). 11: each query's lists scanned in turn
#: into a reservoir of its ``k`` (``search_implem_10``; 10 is the same with a heap), where the
#: default (0) picks 13 for ``k > 20``, which groups the queries of a batch by list. The same
#: recall after our rerank (Debian 50k, IVF256 nprobe 128, 80 candidates: 0.9606 both; WordNet
#: 117k, IVF512 nprobe 96: 0.9650 vs 0.9651), measured on 2 threads (2026-12-07, medians of 3):
#: one query per call +31% / +29% QPS, batches of 1,000 +12% / +8%.
FASTSCAN_IMPLEM = 11


def set_fastscan_search(index) -> None:
    """A fast-scan IVF's search settings, which FAISS does not save (:data:`FASTSCAN_IMPLEM`)."""
    index.implem = FASTSCAN_IMPLEM


def search_into(faiss, index, q, k: int, params) -> tuple[np.ndarray, np.ndarray]:
    """``index.search(q, k, params=params)`` for a C-contiguous float32 ``q``, on this thread's
    FAISS team as it is set (the caller's :func:`threads_for`), without the Python wrapper's
    checks and conversions (the lean route's: a few microseconds of a one-query search's ~0.2 ms)."""
    n, d = q.shape
    if d != index.d or k < 1:
        raise ValueError(f"queries of {d} dims for an index of {index.d} (k={k})")
    dist, ids = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
    index.search_c(n, faiss.swig_ptr(q), k, faiss.swig_ptr(dist), faiss.swig_ptr(ids), params)
    return dist, ids


def exclusion(exclude):
    """``(selector, keep-alive)``: a FAISS selector of every id but the deleted rows ``exclude``
    (their packed bit array, see ``Tombstones.packed``), or ``(None, None)`` when none are.
    Reused while ``packed()`` returns the same array (a delete within its length sets bits in
    place, which the selector reads; a longer one, or a new ``Tombstones``, gives another array)."""
    if exclude is None or not len(exclude):
        return None, None
    faiss = faiss_module()
    packed = exclude.packed()
    hit = _EXCLUDED[0]
    if hit is not None and hit[0] is packed and hit[1] == len(packed):
        return hit[2], hit
    inner = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
    entry = (packed, len(packed), faiss.IDSelectorNot(inner), inner)
    with _CACHE_LOCK:
        _EXCLUDED[0] = entry
    return entry[2], entry


def search_params(faiss, nprobe: int, selector, hnsw: bool):
    """``SearchParametersIVF`` for ``nprobe`` lists with ``selector``; kept for reuse (FAISS only
    reads them) when the selector is none or the cached exclusion (a filter's is per call)."""
    cached = selector is None or (_EXCLUDED[0] is not None and selector is _EXCLUDED[0][2])
    key = (nprobe, hnsw, id(selector))
    hit = _PARAMS.get(key) if cached else None
    if hit is not None and hit[1] is selector:
        return hit[0]
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    if selector is not None:
        params.sel = selector
    if hnsw:
        params.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(2 * nprobe, 64))
    if cached:
        with _CACHE_LOCK:
            if len(_PARAMS) >= 256:
                _PARAMS.clear()
            _PARAMS[key] = (params, selector)
    return params
