"""The FAISS index lifecycle: IVF with 4-bit fast-scan PQ codes, trained once the store is large.

Kept thin on purpose: this module owns the FAISS object (build, train, add, search with an id
selector, list rebuilds, byte accounting, GPU clone when FAISS has GPUs); the exact int8 phase and
the rerank live in :mod:`lukhas_gpu.exact`, orchestration in :mod:`lukhas_gpu.memory`.

Nothing is ever removed from the lists with FAISS's ``remove_ids``: on fast-scan lists (FAISS
1.15.1, ``BlockInvertedLists::remove_ids``) it moves the last entries into the holes and shrinks
the list, but leaves the moved codes' 4-bit nibbles in the tail of the last block, and the next
``add`` ORs its codes into them (``pq4_pack_codes_range`` assumes zeroed blocks): entries added
after a removal get wrong codes (self-recall 0.30 instead of 0.93, measured). So a deleted row's
entry stays in its list and searches exclude it (``exclude``: the tombstones, as an id
selector); :meth:`IVFPQIndex.rebuild_lists` empties lists to size 0 (zeroed when they grow
again) and adds back their live entries re-encoded, which is how dead entries are purged and
how an updated row's old entry goes. ``tests/test_faiss_upstream.py`` pins the upstream bug.
"""
from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np

from ..util.device import faiss_gpus, faiss_module
from ..util.memory import PAGE
from .faisscalls import (
    exclusion as _exclusion,
    search_into as _search_into,
    search_params as _search_params,
    set_fastscan_search,
    threads_for as _threads_for,
)

log = logging.getLogger(__name__)

#: The faiss-gpu copy takes ``nprobe`` as a setting of the shared object, not per call: its
#: searches (concurrent under the index's shared lock) set it and search one at a time.
_GPU_SEARCH = threading.Lock()

__all__ = ["IVFPQIndex", "auto_nlist", "auto_pq_m", "gpu_pq_m", "train_sample_size", "two_level_kmeans",
           "aligned_capacity", "fastscan_list_bytes", "list_sizes", "fastscan_resident", "hnsw_graph_bytes",
           "FASTSCAN_BBS", "LIST_OVERHEAD", "HNSW_M", "LIST_STATES", "DEAD_ENTRIES"]

#: What faiss's GPU IVF-PQ accepts: bytes per code (8-bit sub-quantizers) and dimensions per
#: sub-quantizer (GpuIndexIVFPQ's documented limits). It has no 4-bit fast-scan layout, no HNSW
#: coarse quantizer, no id selectors and no removal.
GPU_PQ_M = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
GPU_PQ_DSUB = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)
#: Deleted ids the GPU copy filters from its results before it is dropped (its lists still hold
#: them, and each one costs an over-fetched candidate per query).
GPU_MAX_REMOVED_FRACTION = 0.1
#: What saved lists hold for deleted rows (a generation manifest's ``ann["dead"]``): their
#: entries, kept and excluded at search time. Generations without the key removed them with
#: FAISS's ``remove_ids``, which corrupts the codes added after it: those lists are re-encoded
#: when such a store with deletions is opened.
DEAD_ENTRIES = "kept"


def gpu_pq_m(d: int, code_bytes: int) -> int | None:
    """8-bit sub-quantizers for faiss's GPU IVF-PQ in ``d`` dims, at most ``code_bytes`` per
    vector (the CPU index's fast-scan code size): the most that faiss's GPU accepts, or None."""
    ok = [m for m in GPU_PQ_M if m <= code_bytes and d % m == 0 and d // m in GPU_PQ_DSUB]
    return max(ok) if ok else None

#: From this many lists up, ``coarse="auto"`` assigns with an HNSW graph over the centroids.
HNSW_COARSE_FROM = 4096
#: k-means iterations. With the sample size below, training 4096 lists over 384 dims takes
#: about 30 s on 2 cores (k-means is a GEMM of sample x nlist x d per iteration).
KMEANS_NITER = 10
#: Whether the 4-bit PQ codes encode a row's residual to its list centroid (FAISS's default) or the
#: row itself. On held-out real queries that do not look like the stored memories the direct codes
#: rank the candidates better: MiniLM WordNet 117k, IVF1024 PQ96x4fs, recall@10 after reranking 80
#: candidates at nprobe 128: 0.958 direct vs 0.921 residual; Debian 50k, IVF512: 0.952 vs 0.909.
#: In-distribution synthetic queries lose a little (0.983 vs 0.987 at nprobe 8) and the tuner's rerank
#: covers it. Stores keep the choice they were trained with (FAISS writes it in the index file).
PQ_BY_RESIDUAL = False


#: From this many lists up, the coarse centroids come from a two-level k-means (sqrt(nlist)
#: clusters, each split in proportion to its size): O(n sqrt(nlist) d) instead of O(n nlist d)
#: per iteration, which is what keeps 16,384 lists trainable on 2 cores.
TWO_LEVEL_FROM = 8192


def two_level_kmeans(x: np.ndarray, k: int, *, seed: int = 1234, niter: int = KMEANS_NITER) -> np.ndarray:
    """``k`` spherical k-means centroids of ``x`` by two levels of k-means, float32 ``(k, d)``."""
    faiss = faiss_module()
    n, d = x.shape
    k1 = max(1, int(round(math.sqrt(k))))
    top = faiss.Kmeans(d, k1, niter=niter, seed=seed, spherical=True, max_points_per_centroid=1024)
    top.train(x)
    _, assign = top.index.search(x, 1)
    assign = assign.ravel()
    counts = np.bincount(assign, minlength=k1)
    # split k among the top clusters in proportion to their sizes (largest remainders), never
    # more sub-centroids than a cluster has points
    share = counts * (k / n)
    alloc = np.minimum(np.floor(share).astype(np.int64), counts)
    for c in np.argsort(-(share - np.floor(share))):
        if alloc.sum() >= k:
            break
        if alloc[c] < counts[c]:
            alloc[c] += 1
    out = []
    order = np.argsort(assign, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for c in range(k1):
        m = int(alloc[c])
        if m == 0:
            continue
        sub = x[order[bounds[c]: bounds[c + 1]]]
        if len(sub) <= m:
            out.append(sub[:m])
            continue
        km = faiss.Kmeans(d, m, niter=niter, seed=seed + 1 + c, spherical=True)
        km.train(np.ascontiguousarray(sub))
        out.append(km.centroids)
    centroids = np.vstack(out).astype(np.float32)
    if len(centroids) < k:  # only if there are fewer points than lists
        extra = x[np.random.default_rng(seed).choice(n, k - len(centroids), replace=n < k - len(centroids))]
        centroids = np.vstack([centroids, extra])
    return np.ascontiguousarray(centroids[:k])


def train_sample_size(nlist: int) -> int:
    """Vectors k-means trains on: 64 per list up to 131,072, then no fewer than 40 per list
    (FAISS warns below 39; 16 per list, what a fixed 262,144-row sample gave 16,384 lists at
    10M, left recall 0.67 at the default probes)."""
    return min(64 * nlist, max(40 * nlist, 131_072))


#: Lists per square root of the rows (``auto_nlist``). Measured on the real sets with their
#: out-of-distribution queries (2026-12-07, tuned at 0.95, one thread): the Debian 50k set at
#: IVF256 / 512 / 1024 held 0.960 / 0.965 / 0.961 at ~3,450 / 3,350 / 3,000 single-query QPS and
#: ~8,400 / 7,400 / 7,000 batched; WordNet 117k at IVF512 / 1024: 0.969 / 0.968, ~3,350 / 3,100
#: single, ~9,100 / 6,900 batched. A fast-scan list costs about 0.55 us a probe whatever its size
#: (1.2 ns a code), so lists of ~50-100 rows (FAISS' usual ``4 * sqrt(n)``) pay more for being
#: visited than for being scanned, and coarser lists hold recall for queries unlike the rows.
LISTS_PER_SQRT = 1.5


def auto_nlist(n: int, per_sqrt: float = LISTS_PER_SQRT) -> int:
    """About ``per_sqrt * sqrt(n)`` lists, a power of two in [256, 16384]; fewer for tiny sets."""
    target = per_sqrt * math.sqrt(max(n, 1))
    nlist = 2 ** int(round(math.log2(max(target, 1.0))))
    nlist = max(256, min(16384, nlist))
    # k-means wants about 39 points per centroid at least
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return nlist


def auto_pq_m(d: int, target: int | None = None) -> int:
    """Sub-quantizers for dimension ``d``: the largest divisor of ``d`` not above ``target``
    (default ``d / 4``, i.e. 4 dims each, capped at 128: 64 B codes; one per dimension below 16
    dims, where 4 dims in 16 centroids rank too coarsely: self-recall@1 0.10 at 6 dims, 0.93
    with one sub-quantizer per dimension)."""
    target = max(1, min(d, target if target else (d if d < 16 else min(128, d // 4))))
    for m in range(target, 0, -1):
        if d % m == 0:
            return m
    return 1


# -- memory layout of FAISS's structures (shared with lukhas_gpu.capacity's predictions) ---------
#: Vectors per block of a fast-scan inverted list (FAISS's ``bbs``).
FASTSCAN_BBS = 32
#: Per inverted list: a ``std::vector`` of ids and an ``AlignedTable`` of codes (24 B each) and
#: the allocator's header of each of their buffers (16 B each).
LIST_OVERHEAD = 24 + 24 + 16 + 16
#: Neighbours per node on the base level of FAISS's ``IndexHNSWFlat`` is ``2 * M``.
HNSW_M = 32
#: How the inverted lists were allocated: grown by ``add`` in this process, or read from disk.
LIST_STATES = ("built", "opened")


def aligned_capacity(nbytes):
    """FAISS ``AlignedTable::round_capacity``: 0, or the smallest power of two >= max(n, 256).

    Works elementwise on an int array (returns int64).
    """
    n = np.asarray(nbytes, dtype=np.int64)
    cap = np.where(n > 0, 256, 0).astype(np.int64)
    big = n > 256
    if big.any():
        cap[big] = np.left_shift(1, np.ceil(np.log2(n[big].astype(np.float64))).astype(np.int64))
        cap[big] = np.where(cap[big] < n[big], 2 * cap[big], cap[big])  # float rounding guard
    return cap if cap.ndim else int(cap)


def fastscan_list_bytes(sizes, pq_m: int, bbs: int = FASTSCAN_BBS):
    """Code bytes of fast-scan lists holding ``sizes`` vectors: whole blocks of ``bbs`` vectors,
    ``bbs * M2 / 2`` bytes each (``M2`` is ``pq_m`` rounded up to even)."""
    m2 = pq_m + (pq_m & 1)
    sizes = np.asarray(sizes, dtype=np.int64)
    return -(-sizes // bbs) * (bbs * m2 // 2)


def fastscan_resident(code_bytes, state: str):
    """Resident bytes of fast-scan list buffers holding ``code_bytes`` each.

    Each inverted list keeps its codes in an ``AlignedTable`` whose capacity is rounded up to a
    power of two of at least 256 bytes (:func:`aligned_capacity`). A list grown by ``add``
    reallocates at each power of two and the freed buffers are reused by its neighbours in the
    heap, so its whole capacity ends up resident (``state="built"``). A list read back by
    ``read_index`` is allocated once at that capacity but only its codes are written: the
    untouched tail stays non-resident except for the page it shares with the next allocation
    (``"opened"``: ``min(capacity, codes + 4096)`` on average over the chunk's alignment).
    """
    cap = aligned_capacity(code_bytes)
    if state == "built":
        return cap
    if state == "opened":
        return np.minimum(cap, np.asarray(code_bytes, dtype=np.int64) + PAGE)
    raise ValueError(f"state must be 'built' or 'opened', got {state!r}")


def hnsw_graph_bytes(n_nodes: int, m: int = HNSW_M) -> int:
    """Expected bytes of an HNSW graph over ``n_nodes``: neighbour slots (int32; ``2m`` on the base
    level, ``m`` per upper level, a node reaching level ``l`` with probability ``m**-l``), the
    level of each node (int32) and its offset into the slots (int64)."""
    slots = 2 * m + m / (m - 1)
    return int(round(n_nodes * (4 * slots + 4 + 8) + 8))


class IVFPQIndex:
    """An ``IndexIVFPQFastScan`` (inner product, 4-bit PQ of the rows, see ``PQ_BY_RESIDUAL``) plus its
    coarse quantizer.

    Parameters
    ----------
    d : int
        Dimension of the (projected) vectors.
    nlist, pq_m : int
        Lists and sub-quantizers.
    coarse : {"flat", "hnsw"}
    seed : int
    """

    def __init__(self, d: int, *, nlist: int, pq_m: int, coarse: str = "flat", seed: int = 1234):
        faiss = faiss_module()
        if d % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
        self.d, self.nlist, self.pq_m, self.coarse, self.seed = d, nlist, pq_m, coarse, seed
        if coarse == "hnsw":
            self.quantizer = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            self.quantizer.hnsw.efConstruction = 80
        else:
            self.quantizer = faiss.IndexFlatIP(d)
        self.index = faiss.IndexIVFPQFastScan(self.quantizer, d, nlist, pq_m, 4, faiss.METRIC_INNER_PRODUCT)
        self.index.by_residual = PQ_BY_RESIDUAL
        set_fastscan_search(self.index)
        self.index.cp.niter = KMEANS_NITER
        self.index.cp.seed = seed
        self.index.cp.max_points_per_centroid = -(-train_sample_size(nlist) // nlist)
        self._clustering_index = None
        if coarse == "hnsw":
            # k-means assigns with a flat index; the graph is built once over the final centroids
            self._clustering_index = faiss.IndexFlatIP(d)
            self.index.clustering_index = self._clustering_index
        self.gpu_index = None
        self.train_seconds = 0.0

    @classmethod
    def from_faiss(cls, index, *, nlist: int, pq_m: int, coarse: str, seed: int = 1234) -> "IVFPQIndex":
        """Wrap an ``IndexIVFPQFastScan`` read back from disk."""
        faiss = faiss_module()
        self = cls.__new__(cls)
        self.d, self.nlist, self.pq_m, self.coarse, self.seed = int(index.d), nlist, pq_m, coarse, seed
        self.index = index
        set_fastscan_search(index)
        self.quantizer = faiss.downcast_index(index.quantizer)
        self._clustering_index = None
        self.gpu_index = None
        self.train_seconds = 0.0
        return self

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def opened(self) -> bool:
        """Whether the FAISS index was read from disk (``read_index`` makes it own its
        quantizer; one constructed here does not)."""
        return bool(getattr(self.index, "own_fields", False))

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def train(self, x: np.ndarray) -> None:
        """Train the coarse k-means and the PQ on ``x`` (n, d) float32 (subsampled as needed)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        limit = train_sample_size(self.nlist)
        if x.shape[0] > limit:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(x.shape[0], limit, replace=False))]
        t0 = time.perf_counter()
        if self.nlist >= TWO_LEVEL_FROM:
            # the quantizer then holds nlist centroids, so FAISS's train() only trains the PQ
            self.quantizer.add(two_level_kmeans(x, self.nlist, seed=self.seed, niter=KMEANS_NITER))
        self.index.train(x)
        self.train_seconds = time.perf_counter() - t0
        log.info("trained IVF%d,PQ%dx4fs on %d vectors in %.1f s", self.nlist, self.pq_m, x.shape[0],
                 self.train_seconds)

    def add(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        if self.gpu_index is not None:
            self.gpu_index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32),
                                        np.ascontiguousarray(ids, dtype=np.int64))

    def search(self, q: np.ndarray, k: int, *, nprobe: int, selector=None,
               exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k: ``(scores (nq, k) float32, ids (nq, k) int64, -1 padded)``.

        ``selector``: a FAISS id selector of the ids allowed (a filter, which leaves the deleted
        rows out itself); else ``exclude``: the deleted rows (a ``Tombstones``: ``len``,
        ``packed()``, ``array()``), whose entries the lists still hold, never returned.
        """
        faiss = faiss_module()
        q = np.ascontiguousarray(q, dtype=np.float32)
        nprobe = min(nprobe, self.nlist)
        if self.gpu_index is not None and selector is None and self._gpu_serves(exclude):
            return self._gpu_search(q, k, nprobe, exclude)
        keep = None
        if selector is None:
            selector, keep = _exclusion(exclude)
        params = _search_params(faiss, nprobe, selector, self.coarse == "hnsw")
        with _threads_for(faiss, q.shape[0]):
            out = _search_into(faiss, self.index, q, k, params)
        del keep  # the bit array the selector reads lives until the search is done
        return out

    def coarse_search(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` best lists of each query: ``(scores (nq, n) float32, lists (nq, n) int64)``,
        best first (inner products with the centroids; approximate under an HNSW coarse quantizer)."""
        faiss = faiss_module()
        q = np.ascontiguousarray(q, dtype=np.float32)
        n = max(1, min(int(n), self.nlist))
        with _threads_for(faiss, q.shape[0]):
            if self.coarse == "hnsw":
                return self.quantizer.search(q, n, params=faiss.SearchParametersHNSW(efSearch=max(2 * n, 64)))
            return self.quantizer.search(q, n)

    def search_lists(self, q: np.ndarray, k: int, lists: np.ndarray, scores: np.ndarray,
                     selector=None, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k over the lists given per query (``lists`` (nq, m) int64 from
        :meth:`coarse`, -1 where a query probes fewer): FAISS's ``search_preassigned``, so each
        query pays only for its own lists. ``selector`` and ``exclude`` and the return as in
        :meth:`search`."""
        faiss = faiss_module()
        q = np.ascontiguousarray(q, dtype=np.float32)
        lists = np.ascontiguousarray(lists, dtype=np.int64)
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        nq, m = lists.shape
        if q.shape[0] != nq or scores.shape != lists.shape:
            raise ValueError(f"lists {lists.shape} and scores {scores.shape} must be (nq={q.shape[0]}, m)")
        d_out = np.empty((nq, k), dtype=np.float32)
        i_out = np.empty((nq, k), dtype=np.int64)
        keep = None
        if selector is None:
            selector, keep = _exclusion(exclude)
        params = _search_params(faiss, max(m, 1), selector, False)
        with _threads_for(faiss, nq):
            self.index.search_preassigned_c(nq, faiss.swig_ptr(q), k, faiss.swig_ptr(lists), faiss.swig_ptr(scores),
                                            faiss.swig_ptr(d_out), faiss.swig_ptr(i_out), False, params)
        del keep
        return d_out, i_out

    # -- the lists' entries: dead ones stay until a rebuild ------------------------------------
    def list_ids(self, lst: int) -> np.ndarray:
        """The ids list ``lst`` holds, int64 (a copy)."""
        inv = self.index.invlists
        n = int(inv.list_size(int(lst)))
        if not n:
            return np.zeros(0, dtype=np.int64)
        return faiss_module().rev_swig_ptr(inv.get_ids(int(lst)), n).astype(np.int64, copy=True)

    def lists_holding(self, member) -> np.ndarray:
        """The lists holding an id for which ``member(ids) -> bool mask`` is true, sorted int64."""
        inv = self.index.invlists
        return np.array([i for i in range(self.nlist) if inv.list_size(i) and member(self.list_ids(i)).any()],
                        dtype=np.int64)

    def locate(self, ids: np.ndarray, guess: np.ndarray) -> np.ndarray:
        """The lists holding ``ids`` (sorted unique int64). ``guess`` (n,): the list each id is
        expected in (:meth:`assign` of its vector), checked first; the lists of ids not found
        there are searched for in every list. Ids in no list add nothing."""
        ids = np.asarray(ids, dtype=np.int64)
        guess = np.asarray(guess, dtype=np.int64)
        found, where = np.zeros(len(ids), dtype=bool), []
        for lst in np.unique(guess[guess >= 0]):
            hit = np.isin(ids, self.list_ids(lst))
            if hit.any():
                where.append(int(lst))
                found |= hit
        if not found.all():
            missing = ids[~found]
            where.extend(self.lists_holding(lambda got: np.isin(got, missing)).tolist())
        return np.unique(np.asarray(where, dtype=np.int64))

    def rebuild_lists(self, lists: np.ndarray, keep, vectors_of, batch: int = 65536) -> int:
        """Empty ``lists`` and add back the entries whose ids pass ``keep(ids) -> bool mask``,
        re-encoded from ``vectors_of(ids) -> (n, d) float32``; returns the entries dropped.

        A list resized to 0 is zeroed when it grows again, so the codes added back (and any
        later) are exact, unlike after FAISS's ``remove_ids`` (see the module's docstring).
        An entry goes back to the list of its vector's nearest centroid, usually the one it
        left. The GPU copy keeps its entries: a live row's is unchanged, a dead one's filtered.
        """
        inv = self.index.invlists
        held = [self.list_ids(lst) for lst in np.asarray(lists, dtype=np.int64)]
        ids = np.concatenate(held) if held else np.zeros(0, dtype=np.int64)
        for lst in np.asarray(lists, dtype=np.int64):
            inv.resize(int(lst), 0)
        self.index.ntotal = self.ntotal - len(ids)
        back = np.sort(ids[keep(ids)]) if len(ids) else ids
        for a in range(0, len(back), batch):
            part = back[a: a + batch]
            self.index.add_with_ids(np.ascontiguousarray(vectors_of(part), dtype=np.float32), part)
        return int(len(ids) - len(back))

    def drop_gpu(self, why: str) -> None:
        """Search the IVF on the CPU from now on (the GPU copy cannot drop or replace entries)."""
        if self.gpu_index is not None:
            log.info("%s: searching the IVF on the CPU from now on", why)
            self.gpu_index = None

    def _gpu_serves(self, exclude) -> bool:
        n_dead = len(exclude) if exclude is not None else 0
        return n_dead <= GPU_MAX_REMOVED_FRACTION * max(self.gpu_index.ntotal, 1)

    def note_deleted(self, n_dead: int) -> None:
        """Past ``GPU_MAX_REMOVED_FRACTION`` deleted rows, the GPU copy (which filters them from
        over-fetched results) is dropped."""
        if self.gpu_index is not None and n_dead > GPU_MAX_REMOVED_FRACTION * max(self.gpu_index.ntotal, 1):
            self.drop_gpu(f"{n_dead} of {self.gpu_index.ntotal} ids deleted since the GPU copy was made")

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The list each row of ``x`` (n, d) falls in (what ``add`` would choose), int64 (n,)."""
        return self.coarse_search(x, 1)[1].ravel()

    def residuals(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For rows ``x`` (n, d): their list (n,), their residual to its centroid (n, d) and the
        PQ reconstruction of that residual (n, d) -- what an ``add`` would store, for measuring."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.coarse == "hnsw":
            faiss = faiss_module()
            params = faiss.SearchParametersHNSW(efSearch=64)
            _, assign = self.quantizer.search(x, 1, params=params)
        else:
            _, assign = self.quantizer.search(x, 1)
        assign = assign.ravel()
        resid = x - self.quantizer.reconstruct_batch(assign)
        pq, coded = self.index.pq, (resid if self.index.by_residual else x)
        # ``resid - recon`` is the PQ error of what an ``add`` stores (the residual, or the row itself)
        return assign, resid, resid - (coded - pq.decode(pq.compute_codes(coded)))

    # -- GPU (faiss-gpu, capability-detected) ---------------------------------------------------
    def gpu_twin(self, train_x: np.ndarray):
        """A CPU ``IndexIVFPQ`` that faiss can clone to a GPU, equivalent to this index: the
        same coarse centroids (a flat quantizer: the GPU has no HNSW one), 8-bit PQ codes of at
        most the fast-scan code size (64 B at 512 dims: ``PQ64x8`` where the CPU has
        ``PQ128x4fs``), trained on ``train_x`` (n, d). Empty; ``None`` if no code size fits."""
        faiss = faiss_module()
        m = gpu_pq_m(self.d, self.pq_m // 2)
        if m is None:
            return None
        quantizer = faiss.IndexFlatIP(self.d)
        quantizer.add(self.quantizer.reconstruct_n(0, self.nlist))
        twin = faiss.IndexIVFPQ(quantizer, self.d, self.nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        twin.by_residual = bool(self.index.by_residual)
        twin.train(np.ascontiguousarray(train_x, dtype=np.float32))  # the PQ only: 'quantizer' is full
        return twin

    def to_gpu(self, train_x: np.ndarray, device: int = 0, *, cpu_ids: bool = False) -> bool:
        """Put a GPU copy of the (still empty) index on faiss's GPU ``device``; later ``add``
        calls fill both, searches without a selector go to the GPU.

        The copy is :meth:`gpu_twin` cloned with options that save GPU memory: ids as 32-bit
        (row numbers < 2**31) or kept on the CPU (``cpu_ids``), float16 lookup tables. The CPU
        index stays the one that is saved, filtered with id selectors and rebuilt; deleted rows
        (the ``exclude`` of a search) are filtered out of the GPU's results (over-fetched), and
        past ``GPU_MAX_REMOVED_FRACTION`` of them (:meth:`note_deleted`), or once a row's vector
        is replaced, the GPU copy is dropped. False (CPU only) when faiss has no GPUs or the
        clone fails.
        """
        if faiss_gpus() == 0:
            return False
        if self.ntotal:
            raise RuntimeError("to_gpu() must run before vectors are added (the GPU copy is filled by add)")
        faiss = faiss_module()
        try:
            twin = self.gpu_twin(train_x)
            if twin is None:
                log.warning("no faiss GPU IVF-PQ code size fits %d dims; searching the IVF on the CPU", self.d)
                return False
            if not hasattr(self, "_gpu_res"):
                self._gpu_res = faiss.StandardGpuResources()
            co = faiss.GpuClonerOptions()
            co.indicesOptions = faiss.INDICES_CPU if cpu_ids else faiss.INDICES_32_BIT
            co.useFloat16 = True  # float16 lookup tables: what lets 8-bit PQ fit in shared memory
            self.gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, device, twin, co)
            return True
        except Exception as e:  # pragma: no cover - needs faiss-gpu
            log.warning("FAISS GPU clone failed (%s); searching the IVF on the CPU", e)
            self.gpu_index = None
            return False

    def _gpu_search(self, q: np.ndarray, k: int, nprobe: int, exclude) -> tuple[np.ndarray, np.ndarray]:
        """Search the GPU copy, dropping the deleted rows ``exclude`` (over-fetched to k)."""
        gi = self.gpu_index
        removed = exclude.array() if exclude is not None and len(exclude) else np.zeros(0, dtype=np.int64)
        extra = min(len(removed), 4 * k) if len(removed) else 0
        kk = k + extra
        with _GPU_SEARCH:
            gi.nprobe = nprobe
            s, i = gi.search(q, kk)
        if not extra:
            return s, i
        gone = np.isin(i, removed) | (i < 0)
        order = np.argsort(gone, axis=1, kind="stable")[:, :k]  # live first, in score order
        s = np.take_along_axis(s, order, 1)
        i = np.take_along_axis(i, order, 1)
        dead = np.take_along_axis(gone, order, 1)
        s[dead], i[dead] = -np.inf, -1
        return s, i

    # -- accounting ----------------------------------------------------------------------------
    def nbytes(self) -> dict[str, int]:
        """Bytes by part: list codes (block-padded) and ids, centroids and PQ tables, coarse graph."""
        faiss = faiss_module()
        ivf = self.index
        inv = ivf.invlists
        bbs = int(ivf.bbs)
        per_block = bbs * int(ivf.M2) // 2
        codes = ids = 0
        for i in range(ivf.nlist):
            n = inv.list_size(i)
            codes += -(-n // bbs) * per_block
            ids += 8 * n
        centroids = self.nlist * self.d * 4
        pq = int(ivf.pq.M * ivf.pq.ksub * ivf.pq.dsub * 4)
        graph = 0
        if self.coarse == "hnsw":
            graph = int(faiss.downcast_index(self.quantizer).hnsw.neighbors.size()) * 4
        return {"codes": codes, "ids": ids, "centroids": centroids + pq, "coarse_graph": graph}

    def memory_usage(self, state: str | None = None) -> dict:
        """Where the index's bytes live (see :mod:`lukhas_gpu.util.memory` for the contract).

        Parameters
        ----------
        state : {"built", "opened"}, optional
            How the inverted lists were allocated (:func:`fastscan_resident`); default
            ``"opened"`` when the index was read from disk (:attr:`opened`), else ``"built"``.
            A caller that knows the lists grew since they were read passes ``"built"``.

        Returns
        -------
        dict
            ``anon``: ``ann_codes`` (block-padded codes), ``ann_codes_slack`` (the lists'
            resident capacity beyond them), ``ann_ids``, ``ann_centroids`` (and PQ tables),
            ``ann_overhead`` (per-list structures, HNSW levels and offsets), ``ann_coarse_graph``
            (HNSW coarse quantizer only) and ``ann_clustering_index`` (the flat index k-means
            assigned with, while it holds the centroids); ``gpu``: ``ann``, a faiss GPU copy.
        """
        if state is None:
            state = "opened" if self.opened else "built"
        nb = self.nbytes()
        codes = fastscan_list_bytes(self.list_sizes(), self.pq_m, int(self.index.bbs))
        anon = {"ann_codes": nb["codes"],
                "ann_codes_slack": int(fastscan_resident(codes, state).sum()) - nb["codes"],
                "ann_ids": nb["ids"], "ann_centroids": nb["centroids"]}
        overhead = LIST_OVERHEAD * self.nlist
        if self.coarse == "hnsw":
            anon["ann_coarse_graph"] = nb["coarse_graph"]
            overhead += 12 * self.nlist + 8  # levels (int32) and offsets (int64) per node
        anon["ann_overhead"] = overhead
        clus = self._clustering_index
        if clus is not None and clus.ntotal:  # the flat index k-means assigned with keeps the centroids
            anon["ann_clustering_index"] = int(clus.ntotal) * int(clus.d) * 4
        out = {"anon": anon}
        if self.gpu_index is not None:  # pragma: no cover - needs faiss-gpu
            out["gpu"] = {"ann": nb["codes"] + nb["ids"] // 2 + nb["centroids"]}  # 32-bit ids on the GPU
        return out

    def list_sizes(self) -> np.ndarray:
        return list_sizes(self.index)


def list_sizes(ivf) -> np.ndarray:
    """Entries in each inverted list of the FAISS IVF index ``ivf``: int64 (nlist,)."""
    inv = ivf.invlists
    return np.array([inv.list_size(i) for i in range(int(ivf.nlist))], dtype=np.int64)
