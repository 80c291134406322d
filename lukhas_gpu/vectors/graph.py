"""Candidate stages beside the IVF-PQ: an HNSW graph over 4-bit scalar codes and IVF-RaBitQ.

Both search the projected space the IVF searches (the encoder's ``project``) and hand back row
numbers that the exact int8 rerank re-scores, so a candidate's score is always the stored row's.
FAISS numbers the entries of both 0, 1, 2, ... in the order they were added (a *node*); a node
is a row until a row's vector is replaced (``update(embeddings=)``): then its old node is kept
and excluded (*superseded*) and the new vector goes in as a new node, so the moved row is found
where its new vector is and never where its old one was. Until the first replacement nodes and
rows are the same numbers and no map is held (0 B per memory); after it :class:`NodeMap` holds
``node -> row`` and ``row -> node`` (int64 each). Nothing is removed from a FAISS structure:
deleted rows' nodes are excluded at search time with an id selector (``Tombstones.packed()``,
as the IVF does; see :mod:`lukhas_gpu.vectors.ann`).

* ``graph``: ``IndexHNSWSQ`` (4-bit scalar quantizer, inner product, ``M`` = :data:`GRAPH_M`),
  its parameter ``efSearch``. Measured at 20k synthetic MiniLM-like rows (384-d, candidates
  re-scored exactly, recall@10, one thread, batches of 500): SQ4 M16 0.986 at ef 64 (6.4k
  QPS), SQ8 M16 0.982 at ef 64 (7.5k QPS) for 528 B on disk a vector against 336, SQ8 M32
  0.993 at 656 B; HNSW over 8-bit PQ codes (``IndexHNSWPQ``) held 0.24-0.43 with inner
  product and is not offered.
* ``rabitq``: ``IndexIVFRaBitQ`` (1 bit a dimension plus per-vector factors, 74 B a vector at
  384-d), its parameter ``nprobe`` (0.949 at 8 of 128 lists, 13.5k QPS in the same run). The
  fast-scan variant (``"IVF..,RaBitQfs4"``) held 249 B a vector and ran at 0.9k QPS there.
* ``ivf-spill``: a second entry of every row in the store's IVF-PQ lists (4-bit PQ of the rows,
  ``PQ_BY_RESIDUAL`` off, so a row's code is the same in any list): the store's IVF holds each row
  in its nearest list, the stage in a second one chosen by SOAR's rule (Sun et al. 2023;
  :func:`soar_lists`); its parameter ``nprobe``, the same lists probed in both, a row's second hit
  dropped (:func:`distinct`). On the Debian 50k real set (IVF512, out-of-distribution queries, 100
  candidates reranked) it reached 0.946 recall scanning 6,679 rows a query where one list a row
  needed 12,874 for 0.943; WordNet 117k (IVF1024): 0.962 at 7,690 against 0.960 at 14,926.
"""
from __future__ import annotations

import numpy as np

from ..util.device import faiss_module
from .ann import auto_nlist, auto_pq_m, fastscan_list_bytes, list_sizes, train_sample_size
from .faisscalls import set_fastscan_search, threads_for

__all__ = ["NodeMap", "GraphStage", "RaBitQStage", "SpillStage", "soar_lists", "distinct",
           "STRUCTURES", "GRAPH_M", "GRAPH_EF", "RABITQ_NPROBES", "rabitq_nlist",
           "stage_bytes", "new_stage", "stage_from_arrays", "planned_stage"]

#: The candidate stages a store may hold beside its IVF-PQ (``Tuned.kind`` names them too).
STRUCTURES = ("graph", "rabitq", "ivf-spill")
#: The stages ``tune()`` builds and measures on its own (no ``structure``); the others only when
#: forced (``tune(structure=)``, ``trial(structure=)``). The spilled lists are left out: measured on
#: the real sets at the tuner's settings (2026-12-07, RESULTS "Session 10 figures") they cut
#: single-query QPS by 10-19% (two FAISS scans and a merge a query) for +18% batched, and the
#: tuner costs batches while servers send one query at a time.
AUTO_STRUCTURES = ("graph", "rabitq")
#: Neighbours per node (``2 * M`` on the base level).
GRAPH_M = 16
GRAPH_EF_CONSTRUCTION = 80
#: ``efSearch`` values the tuner tries, ascending.
GRAPH_EF = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
#: ``nprobe`` values the tuner tries on IVF-RaBitQ, ascending.
RABITQ_NPROBES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
#: SOAR's weight of the residual-parallel part of a second list's error (the paper's lambda), and
#: the nearest centroids of a row its second list is chosen among.
SOAR_LAMBDA, SOAR_CANDIDATES = 1.0, 8
#: IVF-RaBitQ's lists per square root of the rows (``rabitq_nlist``): FAISS' usual 4, not the
#: fast-scan IVF's ``ann.LISTS_PER_SQRT``. Measured at 1M generator rows with real WordNet queries
#: (2026-12-07): with 2,048 lists the tuner needed nprobe 32 rerank 32 for 0.967 (3,840 QPS
#: batched, 1,891 one at a time), with 4,096 nprobe 16 rerank 24 for 0.962 (6,652 / 2,531): a
#: 1-bit code is cheap to scan, a list's rows many.
RABITQ_LISTS_PER_SQRT = 4.0


def rabitq_nlist(n: int) -> int:
    """Lists of an IVF-RaBitQ stage over ``n`` rows."""
    return auto_nlist(n, RABITQ_LISTS_PER_SQRT)


#: Rows added to a FAISS structure per call while building.
BUILD_BATCH = 16384


def _grow(a: np.ndarray, n: int, fill) -> np.ndarray:
    """``a`` with room for at least ``n`` entries (doubling), new entries ``fill``."""
    if len(a) >= n:
        return a
    out = np.full(max(n, 2 * len(a), 1024), fill, dtype=a.dtype)
    out[:len(a)] = a
    return out


class NodeMap:
    """Nodes (FAISS's numbering) and rows (the store's): identity until a row is re-added.

    ``n`` nodes; once mapped, ``row_of[:n]`` (node -> row), ``node_of[:rows]`` (row -> its
    current node, -1 before it has one) and ``superseded[:n]`` (nodes whose row moved on)."""

    def __init__(self):
        self.n = 0
        self.row_of = self.node_of = self.superseded = None
        self._cache = (None, None)

    @property
    def mapped(self) -> bool:
        return self.row_of is not None

    def _materialise(self) -> None:
        self.row_of = np.arange(self.n, dtype=np.int64)
        self.node_of = np.arange(self.n, dtype=np.int64)
        self.superseded = np.zeros(self.n, dtype=bool)

    def add(self, rows: np.ndarray, *, moved: bool = False) -> np.ndarray:
        """New nodes for ``rows`` (``moved``: rows that had a node, now superseded); their ids."""
        rows = np.asarray(rows, dtype=np.int64)
        nodes = np.arange(self.n, self.n + len(rows), dtype=np.int64)
        if not self.mapped and (moved or not np.array_equal(rows, nodes)):
            self._materialise()
        if self.mapped:
            end = self.n + len(rows)
            self.row_of = _grow(self.row_of, end, -1)
            self.superseded = _grow(self.superseded, end, False)
            self.node_of = _grow(self.node_of, int(rows.max()) + 1 if len(rows) else 0, -1)
            if moved:
                old = self.node_of[rows]
                self.superseded[old[old >= 0]] = True
            self.row_of[self.n:end] = rows
            self.node_of[rows] = nodes
        self.n += len(rows)
        self._cache = (None, None)
        return nodes

    def rows(self, nodes: np.ndarray) -> np.ndarray:
        """Rows of FAISS's result ``nodes`` (-1 stays -1)."""
        if not self.mapped:
            return nodes
        return np.where(nodes >= 0, self.row_of[np.maximum(nodes, 0)], -1)

    def excluded(self, exclude):
        """The packed bit array of nodes never to return (deleted rows' nodes, superseded ones),
        or None: ``exclude`` (a ``Tombstones``) as is while nodes are rows."""
        n_dead = len(exclude) if exclude is not None else 0
        if not self.mapped:
            return exclude.packed() if n_dead else None
        key = (self.n, n_dead, id(exclude), int(exclude.array()[-1]) if n_dead else -1)  # tombstones only grow
        hit = self._cache  # one read: concurrent searches may replace it (with the same bits)
        if hit[0] != key:
            bits = self.superseded[:self.n].copy()
            if n_dead:
                dead = exclude.array()
                dead = dead[dead < len(self.node_of)]
                nodes = self.node_of[dead]
                bits[nodes[nodes >= 0]] = True
            hit = self._cache = (key, np.packbits(bits, bitorder="little") if bits.any() else None)
        return hit[1]

    def nbytes(self) -> int:
        return 0 if not self.mapped else int(self.row_of.nbytes + self.node_of.nbytes + self.superseded.nbytes)

    def to_arrays(self, rows: int) -> dict:
        if not self.mapped:
            return {"n": np.array([self.n], dtype=np.int64)}
        return {"n": np.array([self.n], dtype=np.int64), "row_of": self.row_of[:self.n].copy(),
                "node_of": self.node_of[:rows].copy(), "superseded": self.superseded[:self.n].copy()}

    @classmethod
    def from_arrays(cls, a: dict, rows: int) -> "NodeMap":
        self = cls()
        self.n = int(np.asarray(a["n"]).ravel()[0])
        if "row_of" in a:
            self.row_of = np.asarray(a["row_of"], dtype=np.int64).copy()
            self.node_of = np.asarray(a["node_of"], dtype=np.int64).copy()
            self.superseded = np.asarray(a["superseded"], dtype=bool).copy()
            if len(self.row_of) != self.n or len(self.superseded) != self.n or len(self.node_of) > rows \
                    or (self.row_of >= rows).any() or (self.node_of >= self.n).any():
                raise ValueError("the candidate stage's node map does not fit its nodes and rows")
        elif self.n > rows:
            raise ValueError(f"the candidate stage holds {self.n} nodes for {rows} rows")
        return self


class _Stage:
    """What both stages share: the node map, adds, replacements, the selector, persistence."""

    kind = ""

    def __init__(self, index, nodes: NodeMap | None = None):
        self.index = index
        self.nodes = nodes if nodes is not None else NodeMap()
        #: False while the tuner builds it (searches do not use it; adds past it wait for the build)
        self.ready = False
        self._cached: dict = {}  # param -> (search parameters, packed, its length, selectors)

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def covered(self) -> int:
        """Rows ``0..covered()-1`` have a node (rows are added in order)."""
        nm = self.nodes
        return nm.n if not nm.mapped else int(len(nm.node_of) and (nm.node_of >= 0).sum())

    def add(self, x: np.ndarray, rows: np.ndarray) -> None:
        """Nodes for new ``rows`` (their projected vectors ``x``)."""
        if len(rows):
            self._add(np.ascontiguousarray(x, dtype=np.float32), self.nodes.add(rows))

    def replace(self, x: np.ndarray, rows: np.ndarray) -> None:
        """New vectors for ``rows`` that have nodes: the old nodes superseded, new ones added."""
        rows = np.asarray(rows, dtype=np.int64)
        have = rows < self.covered()
        if have.any():
            self._add(np.ascontiguousarray(x[have], dtype=np.float32), self.nodes.add(rows[have], moved=True))

    def _add(self, x, nodes) -> None:
        raise NotImplementedError

    def search(self, q: np.ndarray, k: int, param: int, *, exclude=None) -> np.ndarray:
        """``k`` candidate rows per projected query (int64 (nq, k), -1 padded), ``param`` the
        stage's search parameter; ``exclude`` the tombstones."""
        params, keep = self._search_params(int(param), self.nodes.excluded(exclude))
        _, nodes = self.index.search(np.ascontiguousarray(q, dtype=np.float32), int(k), params=params)
        del keep  # the bit array and the selectors live until the search is done
        return self.nodes.rows(nodes)

    def _search_params(self, param: int, packed):
        """``(params, keep-alive)`` of a search with ``param`` excluding the nodes of ``packed``
        (a packed bit array or None), kept per ``param`` while ``packed`` is the same array of the
        same length (FAISS only reads them; a delete within its length sets bits in place, which the
        selector reads), so one query per call builds no SWIG object."""
        hit = self._cached.get(param)
        if hit is not None and hit[1] is packed and hit[2] == (0 if packed is None else len(packed)):
            return hit[0], hit
        faiss = faiss_module()
        params, sel = self._params(param), None
        if packed is not None:
            inner = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
            sel = (faiss.IDSelectorNot(inner), inner)
            params.sel = sel[0]
        entry = (params, packed, 0 if packed is None else len(packed), sel)
        if len(self._cached) >= 64:
            self._cached.clear()
        self._cached[param] = entry
        return params, entry

    def _params(self, param: int):
        raise NotImplementedError

    def bind(self, base) -> None:
        """The store's IVF beside the stage (a spilled stage searches it too; the others ignore it)."""

    def problems(self, base) -> str | None:
        """What is wrong with the FAISS structure's entries beyond their count, or None (``base``:
        the store's IVF now)."""
        return None

    def memory_usage(self) -> dict:
        return {"anon": {f"stage_{self.kind}": self.nbytes()}}

    def to_arrays(self, rows: int) -> dict:
        out = {f"nodes_{k}": v for k, v in self.nodes.to_arrays(rows).items()}
        out["kind"] = np.frombuffer(self.kind.encode(), dtype=np.uint8).copy()
        out["index"] = faiss_module().serialize_index(self.index)
        return out


class GraphStage(_Stage):
    """``IndexHNSWSQ`` (4-bit codes, inner product) over the projected vectors."""

    kind = "graph"

    @classmethod
    def new(cls, d: int, sample: np.ndarray, m: int = GRAPH_M) -> "GraphStage":
        faiss = faiss_module()
        ix = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_4bit, m, faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.efConstruction = GRAPH_EF_CONSTRUCTION
        ix.train(np.ascontiguousarray(sample, dtype=np.float32))
        return cls(ix)

    def _add(self, x, nodes) -> None:
        self.index.add(x)  # HNSW numbers its nodes in order: the same as ``nodes``

    def _params(self, param: int):
        return faiss_module().SearchParametersHNSW(efSearch=param)

    def nbytes(self) -> int:
        """Codes, neighbour slots (int32), levels (int32) and offsets (int64), the node map."""
        ix, h = self.index, self.index.hnsw
        codes = int(faiss_module().downcast_index(ix.storage).code_size) * self.ntotal
        return codes + 4 * int(h.neighbors.size()) + 4 * int(h.levels.size()) + 8 * int(h.offsets.size()) \
            + self.nodes.nbytes()


class RaBitQStage(_Stage):
    """``IndexIVFRaBitQ`` (inner product) with node ids."""

    kind = "rabitq"

    @classmethod
    def new(cls, d: int, sample: np.ndarray, n: int) -> "RaBitQStage":
        faiss = faiss_module()
        nlist = rabitq_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        ix = faiss.IndexIVFRaBitQ(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ix.own_fields = True
        quantizer.this.disown()
        ix.cp.max_points_per_centroid = -(-train_sample_size(nlist) // nlist)
        ix.train(np.ascontiguousarray(sample, dtype=np.float32))
        return cls(ix)

    def _add(self, x, nodes) -> None:
        self.index.add_with_ids(x, nodes)

    def _params(self, param: int):
        p = faiss_module().IVFRaBitQSearchParameters()
        p.nprobe = min(param, int(self.index.nlist))
        return p

    def nbytes(self) -> int:
        """Codes (with their factors) and ids of the lists, the centroids, the node map."""
        ix = self.index
        inv = ix.invlists
        n = sum(int(inv.list_size(i)) for i in range(ix.nlist))
        return n * (int(ix.code_size) + 8) + int(ix.nlist) * self.d * 4 + self.nodes.nbytes()


def soar_lists(x: np.ndarray, centroids: np.ndarray, scores: np.ndarray, lists: np.ndarray,
               lam: float = SOAR_LAMBDA) -> np.ndarray:
    """Each row's second list by SOAR's rule: among ``lists[:, 1:]`` (its nearest centroids after
    the first, ``scores`` their inner products with ``x`` (n, d)), the ``c`` minimising
    ``||x - c||^2 + lam * <r, x - c>^2 / ||r||^2``, ``r = x - c1`` the residual to its first list:
    a list whose centroid errs across ``r`` rather than along it, so a query that the first list
    misses along ``r`` finds the row there. int64 (n,); -1 where a row has no second candidate."""
    x = np.asarray(x, dtype=np.float32)
    lists = np.asarray(lists, dtype=np.int64)
    n = len(x)
    if lists.shape[1] < 2 or not n:
        return np.full(n, -1, dtype=np.int64)
    cand = lists[:, 1:]
    c1 = centroids[np.maximum(lists[:, 0], 0)]
    xx = np.einsum("nd,nd->n", x, x)
    rx = xx - scores[:, 0]  # <r, x>
    rr = np.maximum(np.einsum("nd,nd->n", x - c1, x - c1), 1e-12)
    cc = centroids[np.maximum(cand, 0)]  # (n, m, d)
    rc = scores[:, 1:] - np.einsum("nd,nmd->nm", c1, cc)  # <r, c>
    err = xx[:, None] - 2 * scores[:, 1:] + np.einsum("nmd,nmd->nm", cc, cc) \
        + lam * (rx[:, None] - rc) ** 2 / rr[:, None]
    err[cand < 0] = np.inf
    best = np.argmin(err, axis=1)
    out = cand[np.arange(n), best]
    return np.where(np.isfinite(err[np.arange(n), best]), out, -1)


def distinct(ids: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` distinct ids of each row of ``ids`` (nq, m) int64, in their order (a later
    copy of an id dropped), -1 padded."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, axis=1, kind="stable")  # a repeated id's first hit first among its copies
    s = np.take_along_axis(ids, order, 1)
    again = np.zeros(ids.shape, dtype=bool)
    again[:, 1:] = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
    dup = np.empty_like(again)
    np.put_along_axis(dup, order, again, 1)
    ids = np.where(dup, -1, ids)
    pos = np.argsort(ids < 0, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(ids, pos, 1)
    if out.shape[1] < k:
        out = np.hstack([out, np.full((len(out), k - out.shape[1]), -1, dtype=np.int64)])
    return out


class SpillStage(_Stage):
    """Every node's second entry: an ``IndexIVFPQFastScan`` with the store's IVF's lists and PQ
    (:attr:`base`, which holds the first entries, in their nearest lists) holding each node in its
    SOAR list (:func:`soar_lists`) only. A search probes the same lists of both and merges them
    (the same 4-bit codes and lookup tables: comparable scores), a row's second hit dropped.

    Its quantizer is empty (the base's assigns; ``search_preassigned`` needs none). FAISS 1.15.1's
    ``add_core`` with precomputed lists (and ``contrib.ivf_tools.add_preassigned``) corrupts the
    heap on fast-scan lists (``BlockInvertedLists::add_entries`` reads packed blocks,
    ``IndexIVF::add_core`` hands it flat codes): the rows are encoded once and each list grown by
    ``resize`` (zeroed blocks) and packed in place, as FAISS's own fast-scan ``add`` does."""

    kind = "ivf-spill"

    def __init__(self, index, nodes: NodeMap | None = None):
        super().__init__(index, nodes)
        set_fastscan_search(index)  # as the base's lists are searched
        #: The store's ``IVFPQIndex`` (its first entries, its centroids): :meth:`bind`.
        self.base = None

    @classmethod
    def new(cls, d: int, sample: np.ndarray, n: int, like=None) -> "SpillStage":
        """Empty, beside ``like`` (the store's trained ``IVFPQIndex``): its list count and PQ."""
        if like is None or not like.is_trained or like.d != d:
            raise ValueError("the spilled lists need the store's trained IVF beside them")
        faiss = faiss_module()
        quantizer = faiss.IndexFlatIP(d)
        ix = faiss.IndexIVFPQFastScan(quantizer, d, like.nlist, like.pq_m, 4, faiss.METRIC_INNER_PRODUCT)
        ix.own_fields = True
        quantizer.this.disown()
        ix.by_residual = False
        ix.pq = like.index.pq
        ix.is_trained = True
        stage = cls(ix)
        stage.bind(like)
        return stage

    def bind(self, base) -> None:
        """Search and add beside ``base``, the store's ``IVFPQIndex`` (ValueError if its lists or
        codes are not this stage's)."""
        if base is None or int(base.nlist) != int(self.index.nlist) or int(base.index.code_size) != \
                int(self.index.code_size):
            raise ValueError("the spilled lists do not fit the store's IVF (lists or code size differ)")
        self.base = base

    def _lists(self, x: np.ndarray) -> np.ndarray:
        """The second list of each row of ``x``: (n,) int64 (its first where it has no other)."""
        base = self.base
        scores, lists = base.coarse_search(x, min(SOAR_CANDIDATES, base.nlist))
        second = np.empty(len(x), dtype=np.int64)
        for a in range(0, len(x), 4096):  # (rows, candidates, d) floats per step
            li = lists[a: a + 4096]
            used = np.unique(li[li >= 0])
            cents = np.zeros((base.nlist, self.d), dtype=np.float32)  # only the centroids these rows need
            cents[used] = base.quantizer.reconstruct_batch(used)
            second[a: a + 4096] = soar_lists(x[a: a + 4096], cents, scores[a: a + 4096], li)
        return np.where(second >= 0, second, lists[:, 0])

    def _add(self, x, nodes) -> None:
        faiss = faiss_module()
        ix = self.index
        inv = ix.invlists
        lst = self._lists(x)
        codes = ix.pq.compute_codes(x)  # the rows' (not residuals'): (n, code_size) uint8, as the base's
        order = np.argsort(lst, kind="stable")
        bounds = np.searchsorted(lst[order], np.arange(int(ix.nlist) + 1))
        packer = ix.get_CodePacker()
        bbs, block = int(packer.nvec), int(packer.block_size)
        try:
            for li in np.flatnonzero(np.diff(bounds)):
                ent = order[bounds[li]: bounds[li + 1]]
                o, cnt = int(inv.list_size(int(li))), len(ent)
                inv.resize(int(li), o + cnt)  # the new blocks zeroed
                faiss.rev_swig_ptr(inv.get_ids(int(li)), o + cnt)[o:] = nodes[ent]
                blocks = faiss.rev_swig_ptr(inv.get_codes(int(li)), -(-(o + cnt) // bbs) * block)
                part = np.ascontiguousarray(codes[ent])
                head = min(cnt, (-o) % bbs)  # into the list's last, partly filled block
                for i in range(head):
                    packer.pack_1_c(faiss.swig_ptr(part[i]), o + i, faiss.swig_ptr(blocks))
                rest = part[head:]
                if len(rest):  # whole blocks, the last one padded with zero codes
                    full = np.zeros((-(-len(rest) // bbs) * bbs, part.shape[1]), dtype=np.uint8)
                    full[:len(rest)] = rest
                    b0 = (o + head) // bbs
                    for b in range(len(full) // bbs):
                        packer.pack_all(faiss.swig_ptr(full[b * bbs:]), faiss.swig_ptr(blocks[(b0 + b) * block:]))
        finally:
            del packer
        ix.ntotal = int(ix.ntotal) + len(lst)

    def search(self, q: np.ndarray, k: int, param: int, *, exclude=None) -> np.ndarray:
        """``k`` candidate rows per query (int64 (nq, k), -1 padded): the ``param`` best lists of
        each query searched in the base (its rows, ``exclude`` left out) and here (the nodes of
        the rows, deleted and superseded ones left out), merged by score, a row's second hit
        dropped."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = int(k)
        cs, lists = self.base.coarse_search(q, int(param))
        d1, r1 = self.base.search_lists(q, k, lists, cs, exclude=exclude)
        params, keep = self._search_params(int(param), self.nodes.excluded(exclude))
        faiss, nq = faiss_module(), len(q)
        lists, cs = np.ascontiguousarray(lists, dtype=np.int64), np.ascontiguousarray(cs, dtype=np.float32)
        d2, n2 = np.empty((nq, k), dtype=np.float32), np.empty((nq, k), dtype=np.int64)
        with threads_for(faiss, nq):  # one query: one OpenMP thread, as the IVF's own search
            self.index.search_preassigned_c(nq, faiss.swig_ptr(q), k, faiss.swig_ptr(lists), faiss.swig_ptr(cs),
                                            faiss.swig_ptr(d2), faiss.swig_ptr(n2), False, params)
        del keep
        r2 = self.nodes.rows(n2)
        d = np.hstack([np.where(r1 >= 0, d1, -np.inf), np.where(r2 >= 0, d2, -np.inf)])
        order = np.argsort(-d, axis=1, kind="stable")
        return distinct(np.take_along_axis(np.hstack([r1, r2]), order, 1), k)

    def _params(self, param: int):
        return faiss_module().SearchParametersIVF(nprobe=min(param, int(self.index.nlist)))

    def problems(self, base) -> str | None:
        """Bound to the store's IVF ``base``, every node in exactly one entry here (its first is the
        base's)."""
        if self.base is not base:
            return "the spilled lists are not bound to the store's IVF"
        inv, faiss = self.index.invlists, faiss_module()
        held = [faiss.rev_swig_ptr(inv.get_ids(i), int(inv.list_size(i))) for i in range(int(self.index.nlist))
                if inv.list_size(i)]
        ids = np.concatenate(held) if held else np.zeros(0, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.nodes.n):
            return f"the spilled lists hold ids outside their {self.nodes.n} nodes"
        count = np.bincount(ids, minlength=self.nodes.n)
        if (count != 1).any():
            bad = int(np.flatnonzero(count != 1)[0])
            return f"the spilled lists hold node {bad} {int(count[bad])} times, not once"
        return None

    def nbytes(self) -> int:
        """Block-padded codes and ids of every node's second entry, the node map."""
        ix = self.index
        sizes = list_sizes(ix)
        return int(fastscan_list_bytes(sizes, int(ix.pq.M), int(ix.bbs)).sum() + 8 * sizes.sum()) \
            + self.nodes.nbytes()


def stage_bytes(kind: str, n: int, d: int, m: int = GRAPH_M, nlist: int | None = None) -> int:
    """Expected bytes of a stage over ``n`` rows of ``d`` projected dims (before a replacement):
    the graph's 4-bit codes, ``2m`` int32 slots at level 0 and ``m`` per upper level (a node
    reaching level ``l`` with probability ``m**-l``), a level (int32) and an offset (int64) per
    node; IVF-RaBitQ's bit codes and factors (``d / 8 + 8`` B), ids and centroids; the spilled
    IVF's second entry a node in ``nlist`` lists (the store's IVF's)."""
    if kind == "graph":
        slots = 2 * m + m / (m - 1)
        return int(round(n * (-(-d // 2) + 4 * slots + 12)))
    if kind == "rabitq":
        return int(n * (-(-d // 8) + 8 + 8) + rabitq_nlist(max(n, 1)) * d * 4)
    if kind == "ivf-spill":  # a second entry a node (a 4-bit code, an id), half a block of 32 a list
        nlist = nlist or auto_nlist(max(n, 1))  # the store's IVF's lists, which it shares
        m2 = auto_pq_m(d) + (auto_pq_m(d) & 1)
        return int(n * (m2 // 2 + 8) + nlist * 8 * m2)
    raise ValueError(f"unknown candidate stage {kind!r}; expected one of {STRUCTURES}")


def planned_stage(n: int, d: int, budget: int, ivf_bytes: int, nlist: int | None = None) -> tuple[str | None, int]:
    """The largest stage the tuner may build beside an IVF of ``ivf_bytes`` over ``n`` rows
    within ``budget`` bytes per memory, and its expected bytes: ``(None, 0)`` when none fits."""
    fits = [(stage_bytes(kind, n, d, nlist=nlist), kind) for kind in AUTO_STRUCTURES
            if ivf_bytes + stage_bytes(kind, max(n, 1), d, nlist=nlist) <= budget * max(n, 1)]
    if not fits:
        return None, 0
    nbytes, kind = max(fits)
    return kind, nbytes


def new_stage(kind: str, d: int, sample: np.ndarray, n: int, like=None):
    """An empty trained stage of ``kind`` for about ``n`` rows (``like``: the store's IVF, whose
    centroids and PQ the spilled lists share)."""
    if kind == "graph":
        return GraphStage.new(d, sample)
    if kind == "rabitq":
        return RaBitQStage.new(d, sample, n)
    if kind == "ivf-spill":
        return SpillStage.new(d, sample, n, like)
    raise ValueError(f"unknown candidate stage {kind!r}; expected one of {STRUCTURES}")


def stage_from_arrays(a: dict, rows: int):
    """A stage saved with ``to_arrays`` (ValueError when its parts disagree)."""
    faiss = faiss_module()
    kind = bytes(np.asarray(a["kind"], dtype=np.uint8)).decode()
    cls = {"graph": GraphStage, "rabitq": RaBitQStage, "ivf-spill": SpillStage}.get(kind)
    if cls is None:
        raise ValueError(f"unknown candidate stage {kind!r}")
    ix = faiss.deserialize_index(np.ascontiguousarray(a["index"], dtype=np.uint8))
    nodes = NodeMap.from_arrays({k[6:]: v for k, v in a.items() if k.startswith("nodes_")}, rows)
    if int(ix.ntotal) != nodes.n:
        raise ValueError(f"the candidate stage holds {ix.ntotal} entries, its node map {nodes.n}")
    stage = cls(ix, nodes)
    stage.ready = True
    return stage
