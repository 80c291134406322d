"""``MemoryIndex``: the facade users hold. It validates, locks and routes each call to the part
that owns it (see ``ARCHITECTURE.md``):

* components (``self.parts``, :class:`~.parts.IndexParts`); :mod:`.writes` (validate, then
  apply), :mod:`.lifecycle` (training), :mod:`.mirror_upkeep`, :mod:`.quality` (the recall probe);
* :mod:`lukhas_gpu.query.executor` (how a search runs), :mod:`.durable` (the store on disk),
  :mod:`lukhas_gpu.capacity.accounting` (``stats()``); mixins add documents, sparse and tuning.

Ids are int64 assigned by the index (dense row numbers, never reused after a delete). torch is
imported on first use of the vectors, so opening a store to read contents never loads it.
"""
from __future__ import annotations

import logging
import pathlib
import weakref

import numpy as np

from ..config import IndexConfig, as_config
from ..store import layout
from ..util.bounds import check_dim
from ..util.checks import check_positive, check_queries
from ..util.device import resolve_backend
from ..util.memtrim import TRIM_SEARCH_EVERY_S, maybe_trim, trim
from . import durable, verification
from .documents import DocumentsMixin
from .driftwatch import DriftMixin
from .locking import SharedLock, locked as _locked, locked_shared, search_exclusive
from .memops import MemOpsMixin
from .parts import IndexParts, IndexState
from .results import SearchResult
from .scopes import ScopesMixin
from .sparse_search import SparseSearchMixin
from .trials import TrialsMixin
from .tuning import TuningMixin

log = logging.getLogger(__name__)

__all__ = ["MemoryIndex"]


class MemoryIndex(ScopesMixin, DocumentsMixin, SparseSearchMixin, TuningMixin, MemOpsMixin, DriftMixin,
                  TrialsMixin):
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

    path: pathlib.Path | None = None
    mode: str | None = None
    salvage_report: dict | None = None  # what open(salvage=True) kept and lost (durable.salvage_wal)

    def __init__(self, dim: int, config: IndexConfig | str | None = None, *, _vectors=None):
        dim = check_dim(dim)  # before anything is allocated (dim=2**40 asked for 1 TiB)
        config = as_config(config)
        self.dim, self.config = int(dim), config
        self.backend = resolve_backend(config.backend)
        if config.threads:
            from ..util.device import faiss_module

            faiss_module().omp_set_num_threads(config.threads)
        self.parts = IndexParts(self.dim, config, vectors=_vectors)
        self.parts.bind_device(self.backend)
        self.parts.mirror_wanted = config.resident_on(self.backend)
        self.last_plan = None  # the plan of the last filtered search (for introspection)
        self.timings: dict[str, float] = {}
        self.state = IndexState()  # the store's log, lock and reader cursor; the tuner's (parts.py)
        self.lock = SharedLock()  # exclusive (with index.lock:) or .shared (searches): locking.py

    # -- the torch side, on first use ------------------------------------------------------------
    @property
    def encoder(self):
        """The :class:`~lukhas_gpu.Encoder` (built on first use: imports torch, sets its threads)."""
        return self.parts.encoder

    @property
    def device(self):
        import torch
        return torch.device(self.backend)

    @property
    def faiss_gpu_wanted(self) -> bool:
        """A faiss-gpu copy of the IVF helps only where the resident scan does not serve."""
        return self.backend == "cuda" and not self.parts.mirror_wanted

    # -- durable store ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path, dim: int, config: IndexConfig | str | None = None) -> "MemoryIndex":
        """Create a store at ``path`` (a new or empty directory) and return it open for writing.

        Raises
        ------
        StoreError
            ``path`` already holds a store (open it instead).
        """
        return durable.create(cls, path, dim, config)

    @classmethod
    def open(cls, path, mode: str = "r", *, verify: bool = False, salvage: bool = False,
             recover: bool = False) -> "MemoryIndex":
        """Open the store at ``path``: ``mode="r"`` (a reader: the last checkpoint plus every
        complete record of the write-ahead log, changing no file and taking no lock; many may
        run beside the writer, see :meth:`refresh`) or ``"w"`` (the one writer: takes the lock,
        verifies what it will carry forward and replays the log on top of the last checkpoint).

        Bulk files are memory-mapped; ``verify=True`` checks their CRC-32 too. Writers only:
        ``salvage=True`` keeps every valid record of a log damaged in the middle, moves it aside
        and reports the lost ids (``salvage_report``); ``recover=True`` first publishes the newest
        generation that verifies if ``CURRENT`` or its generation is damaged.

        Raises StoreError, CorruptStoreError or StoreLockedError: no store there, a newer format,
        a truncated or altered file (named), a damaged log (offset, sequence numbers), a writer.
        """
        if mode == "r" and not (salvage or recover):  # changes no file, takes no lock (reader.py)
            from . import reader
            return reader.open_reader(cls, path, verify=verify)
        return durable.open_store(cls, path, mode, verify=verify, salvage=salvage, recover=recover)

    @_locked
    def refresh(self) -> dict:
        """Catch up with the writer (a reader only): load a generation published since, then
        apply the log's new records; costs what is new, never blocks the writer.

        Returns ``generation``, ``records`` applied, ``added``, ``updated``, ``deleted``
        (memories), ``reloaded`` (a new generation was loaded), ``count`` (live), ``seconds``.
        """
        if self.mode != "r" or self.state.reader is None:
            raise layout.StoreError("refresh() follows a store opened with mode='r'")
        from . import reader
        return reader.refresh(self)

    def _require_writable(self) -> None:
        if self.mode == "r":
            raise layout.StoreError(f"{self.path} is open read-only (mode='r'); open it with mode='w' to change it")

    @_locked
    def checkpoint(self) -> pathlib.Path:
        """Write a new generation of the store and publish it atomically; the previous one is
        kept for :meth:`rollback`, older ones removed, and the write-ahead log restarted."""
        self._require_writable()
        if self.path is None:
            raise layout.StoreError("this index has no store; use save(path) or MemoryIndex.create(path, ...)")
        gen = durable.write(self, self.path)
        durable.reset_wal(self, layout.generation_number(gen))
        trim()  # the generation's write buffers
        return gen

    @_locked
    def save(self, path) -> pathlib.Path:
        """Write this index as a new store at ``path`` (which must not hold one yet)."""
        path = pathlib.Path(path)
        if (path / layout.CURRENT).exists():
            raise layout.StoreError(f"{path} already holds a store")
        return durable.write(self, path)

    @classmethod
    def rollback(cls, path, *, discard_log: bool = False) -> pathlib.Path:
        """Publish the parent of the published generation of the closed store at ``path`` again, once
        verified; refuses while the log holds acknowledged records unless ``discard_log`` (kept aside)."""
        return durable.rollback(path, discard_log=discard_log)

    @_locked
    def verify(self) -> dict:
        """Check the store's published generation (every file's size and CRC-32) and this index's
        internal consistency (every live id has its vector, content, metadata and tags).

        Returns a report dict; raises :class:`CorruptStoreError` naming the first bad file.
        """
        return verification.verify(self)

    def close(self, *, checkpoint: bool = True) -> None:
        """Close the store; a writer first checkpoints if its log holds records (unless
        ``checkpoint=False``: they stay in the log, replayed by the next open), then releases
        the log and the lock (also when the checkpoint fails). A background tuning run is
        stopped first."""
        from . import tuning
        tuning.wait(self, cancel=True)
        durable.close(self, checkpoint=checkpoint)

    def __enter__(self) -> "MemoryIndex":
        return self

    def __exit__(self, exc_type, *exc) -> None:  # checkpoints unless an exception is on its way
        self.close(checkpoint=exc_type is None)

    # -- size ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.parts.live

    @property
    def is_trained(self) -> bool:
        """True once the IVF-PQ index serves searches (before that: exact int8 scans)."""
        return self.parts.ann is not None

    @property
    def dim_out(self) -> int:
        return self.parts.dim_out

    def __repr__(self) -> str:
        ann = self.parts.ann
        phase = f"IVF{ann.nlist},PQ{ann.pq_m}x4fs" if ann is not None else "exact-int8"
        return f"MemoryIndex(dim={self.dim}, count={len(self)}, phase={phase}, backend={self.backend!r})"

    # -- add -----------------------------------------------------------------------------------
    @_locked
    def add(self, embeddings, contents=None, tags=None, timestamps=None, importance=None, *, ids=None,
            metadata=None, sparse=None, namespace=None, valid_from=None, valid_to=None,
            dedup: str | None = None) -> np.ndarray:
        """Add a batch of memories; returns their row ids, ``(n,)`` int64.

        Parameters
        ----------
        embeddings : (n, dim) or (dim,) float array (numpy or torch, any device)
        contents : sequence of str / bytes / None, optional
            The memories' texts (or bytes), compressed losslessly; at most
            ``config.max_content_bytes`` each.
        tags : sequence of lists of str, optional
        timestamps : sequence of epoch seconds, or datetime64 array, optional
            Default: now.
        importance : sequence of floats in [0, 1] (or one float for all), optional
            Default 0.5.
        ids : sequence of str (or int), required with ``config.external_ids``
            The memories' own ids; an id already live is replaced (upsert, in one log record).
        metadata : sequence of dict / None, optional
            Free JSON-like dicts, round-tripped exactly (``config.metadata_fields`` are columns).
        sparse : scipy.sparse matrix (n rows) or list of (indices, values), optional
            Sparse vectors (e.g. SPLADE), searched by ``search(..., sparse=)``; see
            :mod:`lukhas_gpu.sparse.sparse_input` for the rules.
        namespace : str or sequence of str (one per memory), optional
            Default ``""``; ``search(namespace=)`` never returns another namespace's memories.
        valid_from, valid_to : epoch seconds (one for all, or one per memory), optional
            The window ``[valid_from, valid_to)`` searches see a memory in (default: always).
        dedup : {"off", "exact", "near"}, optional
            Over ``config.dedup``: a duplicate gets the id it merged into (:mod:`.dedup`; ``last_add``).

        With a 1-D embedding (one memory) the others may be given unwrapped: a str content, a
        list of tags, a scalar timestamp and importance.

        Raises
        ------
        TypeError, ValueError
            Non-float dtype, wrong rank or dimension, empty batch, NaN/inf, an all-zero vector
            under cosine, lengths that disagree, importance outside [0, 1], non-UTF-8 text, a
            content over the size limit, bad tags, or more than util.bounds.MAX_ROWS memories. Nothing is
            stored and nothing is logged.
        """
        from . import writes  # torch and the vector path load on first use
        self._require_writable()
        batch = writes.prepare_add(self, embeddings, contents, tags, timestamps, importance, ids=ids, metadata=metadata,
                                   sparse=sparse, namespace=namespace, valid_from=valid_from, valid_to=valid_to,
                                   dedup=dedup)
        if self.state.wal is not None:  # write-ahead: logged (and synced) once valid, before anything changes
            self.state.wal.append(durable.OP_ADD, batch.log_fields())
        rows = writes.commit_add(self, batch)  # apply, train on crossing the threshold, trim
        if self.config.target_recall is not None:
            from . import tuning
            tuning.maybe_retune(self)
        return rows

    @_locked
    def train(self) -> None:
        """Fit the projection and train the IVF-PQ index on the vectors held, then index them.

        Called automatically when ``add`` crosses ``config.train_threshold``; calling it earlier
        (with at least 1024 vectors) switches to the ANN phase at once.
        """
        from . import lifecycle
        lifecycle.train(self)

    # -- search --------------------------------------------------------------------------------
    @locked_shared(exclusive_if=search_exclusive)
    def search(self, queries, k: int = 10, *, where=None, rank=None, nprobe: int | None = None,
               rerank: int | None = None, target_recall: float | None = None, text=None, sparse=None,
               fusion=None, diversity: float = 0.0, namespace: str | None = None, as_of=None,
               follow_links: int = 0) -> SearchResult:
        """Top-k memories for each query.

        Parameters
        ----------
        queries : (nq, dim) or (dim,) float array (numpy or torch, any device)
        k : int
            Results per query, 1..100,000 (``util.checks.MAX_K``; at most 10**8 results per call).
            Missing results are padded with id -1.
        where : Filter, optional
            Only memories that satisfy it are returned. Small subsets are scanned exactly; large
            ones searched through the IVF with an id selector (see ``config.filter_exact_max``).
        rank : Rank, optional
            Memory-aware ranking: weighted similarity + recency decay + importance, applied
            exactly to an oversampled candidate set plus every memory whose recency and
            importance could still lift it into the top-k.
        nprobe, rerank : int, optional
            Fixed parameters for this call (over the tuned choice and the config's).
        target_recall : float, optional
            The recall to hold (default ``config.target_recall``): a lookup in :meth:`tune`'s table.
        text, sparse, fusion : optional
            Hybrid search (see :mod:`lukhas_gpu.index.sparse_search`): BM25 query texts and/or
            sparse query vectors, fused with the dense results (``queries``, or None for sparse
            alone) by ``fusion`` ("rrf", the default, "weighted" or a ``Fusion``).
        diversity : float in [0, 1], default 0 (off)
            Maximal marginal relevance over ``max(4k, 50)`` candidates (:mod:`lukhas_gpu.query.mmr`).
        namespace : str, optional; as_of : epoch seconds, optional
            Only this namespace's memories; those valid at ``as_of`` (default: now, once per call).
        follow_links : int, default 0
            Hops along out-links whose memories are appended, marked by ``linked_from`` (:mod:`.memops`).

        Returns
        -------
        SearchResult
            ``ids`` (nq, k) int64 and ``scores`` (nq, k) float32 (the fused score under a
            ``rank``; cosine similarities clipped at 1), in the queries' kind/device;
            ``.contents()`` / ``.memories()`` hydrate.
        """
        from . import single

        options = (where, rank, nprobe, rerank, target_recall, text, sparse, fusion, namespace, as_of)
        if (plain := single.search_plain(self, queries, k, options, diversity, follow_links)) is not None:
            self.last_plan = None  # a plain search of numpy queries (the lean route, :mod:`.single`)
            return plain
        from ..query import executor, filters, mmr, ranking
        from ..util.arrays import as_batch, check_nonzero
        from . import mirror_upkeep as device_mirror, tuning

        where = filters.scoped(where, namespace, as_of)  # one "now" for every route of the call
        if text is not None or sparse is not None:
            if mmr.check_diversity(diversity, 1) is not None:
                raise ValueError("diversity applies to dense searches (not with text= or sparse=)")
            return self._with_links(self._hybrid_search(queries, k, where=where, rank=rank, nprobe=nprobe,
                                                        rerank=rerank, text=text, sparse=sparse, fusion=fusion,
                                                        target_recall=target_recall), follow_links, where)
        q, kind = as_batch(queries, self.dim, "queries")
        cfg, parts = self.config, self.parts
        if cfg.metric == "cosine":
            check_nonzero(q, "queries")
        chosen = tuning.search_params(self, None if nprobe is None else check_positive("nprobe", nprobe),
                                      None if rerank is None else check_positive("rerank", rerank), target_recall)
        s = executor.Search(k=check_queries(q.shape[0], k), exact_max=cfg.filter_exact_max,
                            cosine=cfg.metric == "cosine", **chosen)
        lam, k = mmr.check_diversity(diversity, s.k), s.k
        s = s if lam is None else s.with_k(check_queries(q.shape[0], mmr.pool(k)))  # its candidates bounded too
        allowed = filters.allowed_rows(parts, where)  # the one filter rule of every route
        if rank is not None and not isinstance(rank, ranking.Rank):
            raise TypeError(f"rank must be a lukhas_gpu.Rank, got {type(rank).__name__}")
        enc = self.encoder
        parts.probe.queries.offer(q, transform=enc.normalized_queries)
        mirror = device_mirror.mirror_ready(self)
        if rank is None or rank.is_plain:
            scores, ids, self.last_plan = executor.similar(parts, q, s, allowed, mirror)
            if rank is not None:
                scores = scores * rank.similarity
        else:
            scores, ids, self.last_plan = executor.ranked(parts, q, s, allowed, rank, mirror=mirror,
                                                          oversample=cfg.rank_oversample)
        self.last_plan = filters.labelled(self.last_plan, parts, where)
        if lam is not None:
            scores, ids = mmr.select(scores, ids, self.dequantized, self.dim, k, lam, cosine=s.cosine)
        maybe_trim(every=TRIM_SEARCH_EVERY_S)
        if cfg.target_recall is not None:
            tuning.maybe_retune(self)
        return self._with_links(SearchResult(ids=kind.out(ids), scores=kind.out(scores), _index_ref=weakref.ref(self)),
                                follow_links, where)

    # -- records -------------------------------------------------------------------------------
    def _check_ids(self, ids) -> np.ndarray:  # external ids resolved (documents.py)
        return self.parts.tombstones.check(self._rows_for(ids), self.parts.rows)

    @_locked
    def contents(self, ids) -> list:
        """The contents (str, bytes or None) of these live ids, in the order given."""
        return self.parts.contents.get(self._check_ids(ids))

    @_locked
    def contains(self, ids) -> np.ndarray:
        """Boolean mask: which ids are live memories."""
        return self._contains_ids(ids)

    @_locked
    def delete(self, ids) -> int:
        """Delete memories by id (from the index, the tags, the filters and the links); returns the
        count. ValueError for an id never assigned or already deleted: nothing is deleted then."""
        from . import writes
        self._require_writable()
        rows = writes.prepare_delete(self, self._rows_for(ids))
        if len(rows) == 0:
            return 0
        if self.state.wal is not None:
            self.state.wal.append(durable.OP_DELETE, {"ids": rows})
        writes.apply_delete(self, rows)
        return len(rows)

    @_locked
    def compact(self) -> int:
        """Drop the bytes of deleted memories and of replaced contents and tag lists.

        Deleted memories keep their (int8) row, since ids are row numbers; their content, tags,
        links and IVF entries go (their lists re-encoded). Returns the bytes reclaimed.
        """
        from . import writes
        return writes.compact(self)

    # -- monitoring ----------------------------------------------------------------------------
    @_locked
    def quality(self, queries=None, k: int = 10, *, nprobe: int | None = None, rerank: int | None = None,
                max_queries: int = 20000, confidence: float = 0.95) -> dict:
        """Estimate the live index's recall@k against exact float search, with a confidence interval.

        Recall is the product of what the two stages keep: ``ann_recall``, the share of the exact
        int8 top-k (an exact scan of the whole store per probe query) that the live index
        returns; and ``int8_recall``, the expected share of the true float top-k that the int8
        rows keep (``monitor.recall.int8_model``: the int8 score error measured on the sampled
        originals). The interval is the delta-method interval of that product, per query.

        Parameters
        ----------
        queries : (nq, dim) float array, optional
            Probe queries. Default: the sampled queries of past searches (when 64 or more have
            been seen), else the sampled memories themselves, each excluding itself.
        k, nprobe, rerank, max_queries : int, optional
            The search to evaluate (default: the config's); ``confidence``: the interval's level.

        Returns
        -------
        dict
            ``recall``, ``ci`` (low, high), ``confidence``, ``ann_recall``, ``int8_recall``, ``int8_sampled``
            (counted on the originals' ``hits``), ``queries``, ``source`` ("given", "queries" or "memories"),
            ``sample``, ``k``, ``nprobe``, ``rerank``, ``seconds``. Cost: one exact int8 scan of
            the store per probe query (~1 s per 1,000 queries per 100k).
        """
        from . import quality
        return quality.estimate(self, queries, k, nprobe=nprobe, rerank=rerank, max_queries=max_queries,
                                confidence=confidence)

    def retrain(self, *, background: bool = False, queries=None, tolerance: float = 0.0):
        """Rebuild the projection and the IVF-PQ index on a fresh sample of the store, and keep
        the new ones only if the recall probe says they are not worse.

        The build runs without holding the index (searches and writes go on; rows added
        meanwhile are caught up at the end); old and new are compared on the same probe queries
        and ground truth, and the new one is swapped in if its probe recall is at least the old
        one's minus ``tolerance``. A store open for writing is then checkpointed (the previous
        generation stays for :meth:`rollback`).

        Returns
        -------
        dict (or a ``concurrent.futures.Future`` of it with ``background=True``)
            ``accepted``, ``old`` and ``new`` probe recall with intervals, ``hits``, ``nlist``,
            ``seconds``, ``generation`` (the checkpoint written, if any); ``live`` and ``candidate``
            as in :meth:`trial` (a retrain is the trial of the current config without a QPS rule).
        """
        from . import lifecycle
        self._require_writable()
        return lifecycle.start_retrain(self, queries=queries, tolerance=tolerance, background=background)

    # -- introspection -------------------------------------------------------------------------
    @_locked
    def stats(self) -> dict:
        """Counts, phase, parameters and where the bytes are: one schema, documented in
        :mod:`lukhas_gpu.capacity.stats` (``memory`` per place and component, ``process`` the
        measured ``RssAnon``)."""
        from ..capacity.stats import index_stats

        return index_stats(self)
