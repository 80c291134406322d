"""``ShardedIndex``: search a sharded root as one index.

A sharded root (:mod:`.rootfiles`) holds ordinary stores, one per shard. ``ShardedIndex.open(root)``
opens every shard as a :class:`~lukhas_gpu.MemoryIndex` (a reader by default), in this process
(searched from a thread per shard) or as one Ray actor per shard (``actors=True``; the driver
fans out and merges, and only numpy arrays, ids and small parameter objects cross the wire).

Every search goes to every shard with the same parameters (filters and :class:`~lukhas_gpu.Rank`
pushed down; a ``Rank`` gets one ``now`` first), each shard returns its own top-k, and the
driver merges them exactly (:mod:`.merge`: the global top-k is the top-k of the union, ties by
the smaller global id). Hybrid searches merge each list globally, then fuse (:mod:`.fusion_merge`).

**Ids** are global: ``(shard << 32) | row`` (:func:`.rootfiles.global_ids`); ``get``, ``contents``
and ``contains`` take them, and an id whose shard is not in the root raises ``KeyError`` naming
it. Stores with ``IndexConfig.external_ids`` keep their keys per shard:
``SearchResult.external_ids`` and ``Memory.external_id`` give them, lookups take global ids.
"""
from __future__ import annotations

import logging
import pathlib
import weakref

import numpy as np

from ..index.results import SearchResult
from ..records.scopes import check_namespace
from ..store.layout import CorruptStoreError, StoreError
from ..util.checks import check_positive, check_queries
from ..util.ids import as_ids
from . import aggregate, rootfiles
from .merge import check_rank, check_where, fixed_rank, merge_topk
from .shardlinks import ShardLinksMixin

log = logging.getLogger(__name__)

__all__ = ["ShardedIndex"]


def check_root(root, doc: dict, shards: list[int]) -> None:
    """Every shard the root names is a directory, and no other ``shard-NNNNN`` is there."""
    root = pathlib.Path(root)
    present = {p.name for p in rootfiles.shard_dirs(root)}
    expected = {rootfiles.shard_name(i) for i in range(doc["shards"])}
    missing = sorted(expected - present)
    if missing:
        raise CorruptStoreError(root / missing[0], f"missing: the root names {doc['shards']} shards "
                                                   f"and {len(missing)} of them are absent ({', '.join(missing[:5])})")
    extra = sorted(present - expected)
    if extra:
        raise CorruptStoreError(root / extra[0], f"not a shard of this root, which names {doc['shards']} shards "
                                                 f"(shard-00000..{rootfiles.shard_name(doc['shards'] - 1)})")
    for s in shards:
        if not (isinstance(s, (int, np.integer)) and 0 <= s < doc["shards"]):
            raise ValueError(f"shard {s!r} is not in this root (0..{doc['shards'] - 1})")


class ShardedIndex(ShardLinksMixin):
    """The shards of a sharded root searched as one index (module docstring).

    Open it with :meth:`open`; the methods mirror :class:`~lukhas_gpu.MemoryIndex` where they
    make sense over several stores (search, search_text, get, contents, contains, stats,
    quality, refresh, verify, close; link, unlink, links, lineage, follow and
    ``search(follow_links=)`` with links inside a shard: :mod:`.shardlinks`).
    """

    def __init__(self, root, doc: dict, fan, infos: list[dict], mode: str, actors: bool):
        self.root, self.mode, self.actors = pathlib.Path(root), mode, actors
        self.n_shards, self.dim, self.state = doc["shards"], doc["dim"], doc["state"]
        self.shards = [i["shard"] for i in infos]
        self.metric = infos[0]["metric"]
        self._pos = {s: i for i, s in enumerate(self.shards)}
        self._fan = fan
        self._closed = False

    @classmethod
    def open(cls, root, mode: str = "r", *, actors: bool = False, address=None, verify: bool = False,
             shards=None) -> "ShardedIndex":
        """Open the sharded root at ``root``.

        Parameters
        ----------
        mode : {"r", "w"}
            Each shard's ``MemoryIndex.open`` mode: readers (default: no lock, no file changed;
            :meth:`refresh` follows the writers) or each shard's one writer.
        actors : bool
            One Ray actor per shard (resources sized from the cluster: a fractional CPU share,
            and a GPU share where the cluster has GPUs) instead of this process's threads.
            Connects to ``address`` (``ray.init``) unless Ray is initialised already.
        verify : bool
            Check every shard's files against their CRC-32 as they open.
        shards : list of int, optional
            Open only these shards (a serving replica's group); default all.

        Raises
        ------
        FileNotFoundError
            ``root`` is no sharded root (no ``shards.json``).
        CorruptStoreError
            The root file is damaged, a shard it names is missing (named), a ``shard-NNNNN``
            directory it does not name is there, or the shards disagree (dim, metric).
        StoreError
            A shard cannot be opened (its error, noting the shard).
        """
        if mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' (readers) or 'w' (writers), got {mode!r}")
        root = pathlib.Path(root)
        doc = rootfiles.read_root(root)
        wanted = list(range(doc["shards"])) if shards is None else [int(s) for s in shards]
        if not wanted or len(set(wanted)) != len(wanted):
            raise ValueError(f"shards must name distinct shards of the root, got {shards!r}")
        check_root(root, doc, wanted)
        if doc["state"] != "complete":
            log.warning("%s: the root is in state %r (an ingest has not finished); searching what the shards "
                        "hold so far", root, doc["state"])
        from . import fanout

        if actors:
            fan = fanout.ActorFan.open(root, wanted, mode, verify, address)
        else:
            fan = fanout.LocalFan.open(root, wanted, mode, verify)
        try:
            infos = fan.run([(i, "describe", ()) for i in range(len(wanted))])
            _check_shards(root, doc, infos)
        except BaseException:
            fan.close(checkpoint=False)
            raise
        return cls(root, doc, fan, infos, mode, actors)

    # -- fan-out ---------------------------------------------------------------------------------
    def run_all(self, name: str, *args) -> list:
        """Call ``name(*args)`` on every shard (a :class:`~.shard.ShardHost` method); the answers in
        shard order."""
        self._require_open()
        return self._fan.run([(i, name, args) for i in range(len(self.shards))])

    def _require_open(self) -> None:
        if self._closed:
            raise StoreError(f"the ShardedIndex of {self.root} is closed")

    def _route(self, ids, name: str):
        """Run ``name`` on the rows of each shard the global ``ids`` fall in; the answers back
        in the order of ``ids`` (a list, or a bool array for ``contains_rows``)."""
        self._require_open()
        ids = as_ids(ids)
        shard, row = rootfiles.split_ids(ids, self.n_shards)
        order = np.argsort(shard, kind="stable")
        uniq, starts = np.unique(shard[order], return_index=True)
        groups = np.split(order, starts[1:]) if len(order) else []
        calls = []
        for s, idx in zip(uniq.tolist(), groups):
            if s not in self._pos:
                raise KeyError(f"id {int(ids[idx[0]])} is in {rootfiles.shard_name(s)}, which this ShardedIndex "
                               f"did not open (shards {self.shards})")
            calls.append((self._pos[s], name, (row[idx],)))
        answers = self._fan.run(calls) if calls else []
        if name == "contains_rows":
            out = np.zeros(len(ids), dtype=bool)
            for idx, a in zip(groups, answers):
                out[idx] = a
            return out
        out = [None] * len(ids)
        for idx, a in zip(groups, answers):
            for j, v in zip(idx.tolist(), a):
                out[j] = v
        return out

    # -- search ----------------------------------------------------------------------------------
    def search(self, queries, k: int = 10, *, where=None, rank=None, nprobe: int | None = None,
               rerank: int | None = None, target_recall: float | None = None, text=None, sparse=None,
               fusion=None, diversity: float = 0.0, namespace: str | None = None, as_of=None,
               follow_links: int = 0) -> SearchResult:
        """Top-k memories for each query over every shard: the arguments and the result of
        :meth:`MemoryIndex.search <lukhas_gpu.MemoryIndex.search>`, with global ids
        (``namespace`` and ``as_of`` merged into ``where`` once, "now" the driver's clock).

        With ``diversity`` every shard returns its top ``max(4k, 50)``, the lists are merged and
        MMR picks the k at the root (the candidates' vectors fetched from their shards), so the
        picks are those of one index holding every memory.

        Each shard searches with the parameters given (``nprobe``/``rerank``/``target_recall``:
        its own tuned choice when unset), returns its top-k, and the lists are merged exactly.
        A ``rank`` without ``now`` is given the driver's clock once, so all shards score alike.
        ``follow_links``: the merged hits followed along their shards' links, as one index would
        (:mod:`.shardlinks`; ``linked_from`` with global ids).
        """
        import torch

        from ..query.filters import scoped
        from ..util.arrays import as_batch, check_nonzero

        where = scoped(where, namespace, as_of)  # one "now" for every shard
        if text is not None or sparse is not None:
            from ..query.mmr import check_diversity
            from .fusion_merge import hybrid_search
            if check_diversity(diversity, 1) is not None:
                raise ValueError("diversity applies to dense searches (not with text= or sparse=)")
            res = hybrid_search(self, queries, k, where=where, rank=rank, nprobe=nprobe, rerank=rerank,
                                target_recall=target_recall, text=text, sparse=sparse, fusion=fusion)
            return self._with_links(res, follow_links, check_where(where))
        q, kind = as_batch(queries, self.dim, "queries")
        if self.metric == "cosine":
            check_nonzero(q, "queries")
        k = check_queries(q.shape[0], k)
        where, rank = check_where(where), check_rank(rank)
        nprobe = None if nprobe is None else check_positive("nprobe", nprobe)
        rerank = None if rerank is None else check_positive("rerank", rerank)
        ids, scores = self.search_arrays(q.to("cpu", torch.float32).numpy(), k, where, fixed_rank(rank),
                                         nprobe, rerank, target_recall, diversity)
        return self._with_links(SearchResult(ids=kind.out(ids), scores=kind.out(scores), _index_ref=weakref.ref(self)),
                                follow_links, where)

    def search_arrays(self, q: np.ndarray, k: int, where=None, rank=None, nprobe=None, rerank=None,
                      target_recall=None, diversity=None) -> tuple[np.ndarray, np.ndarray]:
        """The fan-out and merge of :meth:`search` on checked arguments: ``q`` ``(nq, dim)``
        float32 numpy, ``rank`` with its ``now`` fixed (:func:`.merge.fixed_rank`); returns
        ``(ids (nq, k), scores (nq, k))`` numpy (a serving replica's batch, a benchmark)."""
        from ..query import mmr

        lam = mmr.check_diversity(diversity, k)
        kk = k if lam is None else check_queries(len(q), mmr.pool(k))
        parts = self.run_all("search", q, kk, where, rank, nprobe, rerank, target_recall)
        ids, scores = merge_topk(parts, kk)
        if lam is None:
            return ids, scores
        import torch
        s, i = mmr.select(torch.from_numpy(scores), torch.from_numpy(ids), self.vectors_at, self.dim, k, lam,
                          cosine=self.metric == "cosine")
        return i.numpy(), s.numpy()

    def search_text(self, texts, k: int = 10, *, where=None, namespace: str | None = None,
                    as_of=None) -> SearchResult:
        """BM25 top-k over every shard's contents, scored with the statistics of the whole root
        (as one index over all the memories would score); see ``MemoryIndex.search_text``."""
        from ..query.filters import scoped
        from .fusion_merge import text_search
        return text_search(self, texts, k, where=check_where(scoped(where, namespace, as_of)))

    # -- records ---------------------------------------------------------------------------------
    def get(self, ids, *, namespace: str | None = None) -> list:
        """:class:`~lukhas_gpu.Memory` records of these global ids, in order (``Memory.id`` is the
        global id). ``KeyError``: an id in no shard of the root; ``ValueError``: unknown or
        deleted in its shard, or (with ``namespace``) in another namespace."""
        if namespace is not None:
            namespace = check_namespace(namespace)
        got = self._route(ids, "get_at")
        for m in got:
            if namespace is not None and m.namespace != namespace:
                raise ValueError(f"id {m.id} is not in namespace {namespace!r}")
        return got

    def namespaces(self) -> dict:
        """``{name: live memories}`` of every namespace holding one, summed over the shards."""
        out: dict = {}
        for part in self.run_all("namespaces"):
            for name, n in part.items():
                out[name] = out.get(name, 0) + n
        return out

    def contents(self, ids) -> list:
        """The contents of these global ids, in order."""
        return self._route(ids, "contents_at")

    def contains(self, ids) -> np.ndarray:
        """Boolean mask: which global ids are live memories (``KeyError`` for an id in no shard)."""
        return self._route(ids, "contains_rows")

    def vectors_at(self, ids) -> np.ndarray:
        """The dequantized stored vectors of these global ids, ``(n, dim)`` float32, in order."""
        rows = self._route(ids, "vectors_at")
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    # the SearchResult protocol (``.contents()``, ``.memories()``, ``.external_ids``): by global id
    def contents_at(self, ids) -> list:
        """:meth:`contents` (``MemoryIndex.contents_at``'s part of the SearchResult protocol)."""
        return self.contents(ids)

    def memories_at(self, ids) -> list:
        """:meth:`get` (``MemoryIndex.memories_at``'s part of the SearchResult protocol)."""
        return self.get(ids)

    def external_ids_of(self, ids) -> list:
        """The external ids of global ids (``None`` for -1 padding); the global ids themselves
        where the shards assign their own."""
        ids = as_ids(ids)
        out: list = [None] * len(ids)
        ok = np.flatnonzero(ids >= 0)
        for j, v in zip(ok.tolist(), self._route(ids[ok], "external_ids_of") if len(ok) else []):
            out[j] = v
        return out

    def __len__(self) -> int:
        return int(sum(self.run_all("count")))

    # -- the stores ------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Totals over the shards and each shard's own ``stats()`` (see :func:`.aggregate.stats`)."""
        return aggregate.stats(self.run_all("stats"), self.n_shards)

    def quality(self, queries=None, k: int = 10, *, nprobe: int | None = None, rerank: int | None = None,
                max_queries: int = 20000, confidence: float = 0.95) -> dict:
        """The recall@k estimate of the sharded search, from every shard's ``quality()`` (the
        same arguments; the rule is :func:`.aggregate.quality`'s)."""
        per = self.run_all("quality", queries, k, nprobe, rerank, max_queries, confidence)
        return aggregate.quality(per, self.run_all("count"), confidence)

    def refresh(self) -> list[dict]:
        """Every shard catches up with its writer (readers only); their reports, in shard order."""
        return self.run_all("refresh")

    def verify(self) -> dict:
        """Every shard's ``verify()``: ``ok``, ``count``, and the ``shards``' reports; raises the
        first shard's :class:`CorruptStoreError` (noting the shard)."""
        reports = self.run_all("verify")
        return {"ok": all(r.get("ok") for r in reports), "count": sum(r["count"] for r in reports),
                "shards": reports, "root": str(self.root), "state": self.state}

    def close(self, *, checkpoint: bool = True) -> None:
        """Close every shard (writers checkpoint unless ``checkpoint=False``); actors are ended."""
        if self._closed:
            return
        self._closed = True
        self._fan.close(checkpoint)

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(checkpoint=exc_type is None)

    def __repr__(self) -> str:
        how = "actors" if self.actors else "local"
        return f"ShardedIndex({str(self.root)!r}, shards={len(self.shards)}/{self.n_shards}, dim={self.dim}, {how})"


def _check_shards(root, doc: dict, infos: list[dict]) -> None:
    for info in infos:
        where = rootfiles.shard_dir(root, info["shard"])
        if info["dim"] != doc["dim"]:
            raise CorruptStoreError(where, f"dim {info['dim']}, the root's is {doc['dim']}")
        if info["metric"] != infos[0]["metric"]:
            raise CorruptStoreError(where, f"metric {info['metric']!r}, {rootfiles.shard_name(infos[0]['shard'])}'s is "
                                           f"{infos[0]['metric']!r}: scores would not compare across shards")
