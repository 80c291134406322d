"""One filter rule for every route: the same ``Filter`` through dense (exact scan and IVF, plain and
ranked), sparse, BM25 text, hybrid, ``select`` and a sharded root gives the rows a plain-Python
evaluation of the filter allows (tags any/all/none, time range, importance, declared metadata fields), deleted rows
excluded. Every row scores on every route (a shared term, a shared sparse dimension) and ``k`` is
the store's size, so each route's answer *is* its allowed set."""
from __future__ import annotations

import numpy as np
import pytest

from lukhas_gpu import Filter, IndexConfig, MemoryIndex, Rank
from lukhas_gpu.distributed import ShardedIndex, rootfiles
from lukhas_gpu.query import metafilter

N, DIM, NLIST, T0 = 1200, 32, 8, 1_700_000_000
DELETED = np.arange(5, N, 37)
FIELDS = {"user": "str", "turn": "int"}
RANK = Rank(1.0, 0.5, 0.5, half_life=300, now=T0 + 1000)
SPARSE_Q = (np.array([0], np.int64), np.array([1.0], np.float32))


def _mixed(i: int):
    """An undeclared key's value of every kind: mostly ints, some floats, bools, None, lists."""
    for m, v in ((29, [1, 2]), (23, None), (19, True), (17, i % 9 + 0.5), (31, 300 + i)):
        if i % m == 0:
            return v
    return i % 9


def _free(i: int) -> dict:
    """Keys never declared (read from the records), after a nested value the scan must skip."""
    d = {"nest": {"k": [i % 3, {"x": "y" * (i % 200)}]}} if i % 2 else {}
    if i % 13:
        d["author"] = f"a{i % 5}"
    if i % 37 != 1:
        d["n"] = _mixed(i)
    return d


def _data():
    rng = np.random.default_rng(7)
    tags = [[t for t, on in (("a", i % 2), ("b", i % 3 == 0), ("c", i % 5 == 0)) if on] for i in range(N)]
    meta = [None if i % 11 == 0 else {**_free(i), "user": f"u{i % 4}", **({"turn": int(i % 6)} if i % 7 else {})}
            for i in range(N)]
    sparse = [(np.array([0, 1 + i % 50], np.int64), np.array([0.5 + (i % 3), 1.0], np.float32)) for i in range(N)]
    return {"embeddings": rng.standard_normal((N, DIM)).astype(np.float32),
            "contents": [f"common word{i % 7}" for i in range(N)], "tags": tags,
            "timestamps": (T0 + rng.integers(0, 1000, N)).astype(np.float64),
            "importance": rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], N), "metadata": meta, "sparse": sparse}


DATA = _data()
FILTERS = [
    Filter(tags_any=["a", "c"]),
    Filter(tags_all=["a", "c"]),
    Filter(tags_none="b"),
    Filter(since=T0 + 200, until=T0 + 600),
    Filter(min_importance=0.5),
    Filter(meta={"user": "u1"}),
    Filter(tags_any="a", meta={"turn": {"$gte": 3}}),
    Filter(min_importance=0.25, meta={"$or": [{"user": "u0"}, {"turn": {"$lt": 2}}]}),
    Filter(meta={"turn": {"$ne": 2}}),
    Filter(meta={"turn": {"$exists": False}}),
    Filter(tags_all="c", tags_none="b", since=T0 + 100, meta={"user": {"$in": ["u2", "u3"]}}),
    Filter(meta={"user": "nobody"}),
    # keys never declared: a scan of the records, the same operators
    Filter(meta={"author": "a1"}),
    Filter(meta={"author": {"$in": ["a2", "a3"]}}),
    Filter(meta={"author": {"$nin": ["a0"]}}),
    Filter(meta={"$not": {"author": {"$lt": "a2"}}}),
    Filter(meta={"n": {"$gte": 4}}),
    Filter(meta={"n": {"$gt": 2.5, "$lte": 7}}),
    Filter(meta={"n": {"$ne": 3}}),
    Filter(meta={"n": {"$exists": False}}),
    Filter(meta={"n": 1}),
    Filter(meta={"n": True}),
    Filter(tags_any="a", meta={"n": {"$in": [0, 8.5, 1.0, 301]}}),
    Filter(since=T0 + 100, meta={"$or": [{"author": "a0"}, {"user": "u1"}]}),
    Filter(meta={"missing_key": {"$exists": True}}),
]


def reference(f: Filter) -> set:
    d, gone = DATA, set(DELETED.tolist())
    return {i for i in range(N) if i not in gone
            and f.matches(d["tags"][i], d["timestamps"][i], d["importance"][i])
            and (f.meta is None or metafilter.matches(f.meta, d["metadata"][i]))}


def _config(trained: bool) -> IndexConfig:
    return IndexConfig(metric="ip", text_index=True, metadata_fields=FIELDS, auto_tune=False, nlist=NLIST,
                       train_threshold=1024 if trained else 1 << 30, filter_exact_max=1)


def _found(ids) -> set:
    ids = np.asarray(ids).ravel()
    return set(ids[ids >= 0].tolist())


@pytest.fixture(scope="module", params=["exact", "ivf"])
def index(request):
    ix = MemoryIndex(DIM, _config(request.param == "ivf"))
    ix.add(**DATA)
    ix.delete(DELETED)
    assert ix.is_trained == (request.param == "ivf")
    return ix


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("congruence") / "root"
    cut = [0, 500, N]
    rootfiles.write_root(root, shards=2, dim=DIM, state="complete")
    for s in range(2):
        with MemoryIndex.create(rootfiles.shard_dir(root, s), DIM, _config(False)) as ix:
            ix.add(**{k: v[cut[s]:cut[s + 1]] for k, v in DATA.items()})
            gone = DELETED[(DELETED >= cut[s]) & (DELETED < cut[s + 1])] - cut[s]
            ix.delete(gone)
    with ShardedIndex.open(root) as sh:
        yield sh, np.asarray(cut, np.int64)


@pytest.mark.parametrize("f", FILTERS, ids=range(len(FILTERS)))
def test_every_route_allows_the_reference_rows(index, f):
    want = reference(f)
    q = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)
    routes = {
        "dense": index.search(q, N, where=f, nprobe=NLIST, rerank=N).ids,
        "dense_ranked": index.search(q, N, where=f, nprobe=NLIST, rerank=N, rank=RANK).ids,
        "sparse": index.search(None, N, where=f, sparse=SPARSE_Q).ids,
        "text": index.search_text("common", N, where=f).ids,
        "hybrid": index.search(q, N, where=f, text="common", nprobe=NLIST, rerank=N).ids,
        "hybrid_sparse_text": index.search(None, N, where=f, text="common", sparse=SPARSE_Q).ids,
        "select": index.select(f),
    }
    for route, ids in routes.items():
        assert _found(ids) == want, route


@pytest.mark.parametrize("f", FILTERS, ids=range(len(FILTERS)))
def test_a_sharded_root_allows_the_reference_rows(sharded, f):
    sh, cut = sharded
    want = reference(f)
    q = np.random.default_rng(1).standard_normal(DIM).astype(np.float32)

    def single(gids):
        gids = np.asarray(gids, np.int64).ravel()
        gids = gids[gids >= 0]
        return set((cut[gids >> rootfiles.SHARD_SHIFT] + (gids & rootfiles.ROW_MASK)).tolist())

    assert single(sh.search(q, N, where=f).ids) == want
    assert single(sh.search(q, N, where=f, rank=RANK).ids) == want
    assert single(sh.search_text("common", N, where=f).ids) == want
    assert single(sh.search(None, N, where=f, sparse=SPARSE_Q).ids) == want
    assert single(sh.search(q, N, where=f, text="common").ids) == want
    assert single(sh.search(None, N, where=f, text="common", sparse=SPARSE_Q).ids) == want


TWIN_FILTERS = [{"author": "a2"}, {"author": {"$ne": "a2"}}, {"author": {"$in": ["a0", "a4", "zz"]}},
                {"author": {"$nin": ["a1"]}}, {"author": {"$exists": True}}, {"n": 3}, {"n": {"$ne": 3}},
                {"n": {"$in": [1, 5, 7]}}, {"n": {"$nin": [2]}}, {"n": {"$gt": 4}}, {"n": {"$gte": 4}},
                {"n": {"$lt": 2.5}}, {"n": {"$lte": 2}}, {"n": {"$exists": False}}, {"f": {"$gt": 0.3}},
                {"f": 0.5}, {"b": True}, {"b": {"$ne": False}},
                {"$or": [{"author": "a1"}, {"n": {"$gte": 8}}]}, {"$not": {"$and": [{"b": False}, {"n": 2}]}}]


@pytest.mark.parametrize("spec", TWIN_FILTERS, ids=range(len(TWIN_FILTERS)))
def test_undeclared_keys_match_a_declared_twin(spec):
    """Congruence: every operator on undeclared keys (the records) gives the rows of the same
    filter on a twin store that declares them (the columns), and of plain Python."""
    n = 300
    rng = np.random.default_rng(3)
    meta = [None if i % 10 == 0 else {k: v for k, v in (("author", f"a{i % 5}"), ("n", int(i % 9)),
                                                       ("f", float(i % 4) / 4), ("b", bool(i % 3)))
                                     if (i + len(k)) % 7} for i in range(n)]
    x = rng.standard_normal((n, 8)).astype(np.float32)
    f = Filter(meta=spec)
    want = {i for i in range(n) if i % 23 and metafilter.matches(f.meta, meta[i])}
    got = {}
    for name, fields in (("declared", {"author": "str", "n": "int", "f": "float", "b": "bool"}), ("records", None)):
        ix = MemoryIndex(8, IndexConfig(metadata_fields=fields, auto_tune=False))
        ix.add(x, metadata=meta)
        ix.delete(np.arange(0, n, 23))
        got[name] = set(ix.select(f).tolist())
        ix.search(x[1], 5, where=f)
        assert ix.last_plan.metadata == ("columns" if fields else "records")
    assert got["declared"] == got["records"] == want


@pytest.mark.parametrize("cache_bytes", [64 << 20, 2000, 0])
def test_undeclared_filters_stay_exact_among_writes(tmp_path, cache_bytes):
    """The scan cache among adds (appended rows scanned alone), metadata updates, deletes,
    compaction and a reopen: every step's rows are the plain-Python reference's (a cache smaller
    than a key's values, or none, gives the same answers)."""
    rng = np.random.default_rng(4)
    ix = MemoryIndex.create(tmp_path / "s", 8, IndexConfig(metadata_fields={"user": "str"}, auto_tune=False))
    ix.parts.docmeta.scans.max_bytes = cache_bytes
    meta: dict[int, dict | None] = {}
    specs = [{"who": "w1"}, {"n": {"$gte": 5}}, {"who": {"$nin": ["w0", "w2"]}}, {"late": {"$exists": True}},
             {"$or": [{"user": "u1"}, {"n": {"$lt": 2}}]}]

    def check():
        for spec in specs:
            f = Filter(meta=spec)
            want = sorted(i for i, d in meta.items() if metafilter.matches(f.meta, d))
            assert ix.select(f).tolist() == want, spec
        assert ix.parts.docmeta.scans.nbytes() <= cache_bytes

    def add(n, late=False):
        ds = [None if j % 9 == 0 else {"user": f"u{j % 3}", "who": f"w{(j * 7) % 4}", "n": int(j % 11),
                                       **({"late": True} if late else {})} for j in range(n)]
        ids = ix.add(rng.standard_normal((n, 8)).astype(np.float32), metadata=ds)
        meta.update(zip(ids.tolist(), ds))

    add(200)
    check()
    add(50, late=True)  # a key that did not exist before
    check()
    ix.update([3, 4, 210], metadata=[{"who": "w1", "n": 9}, None, {"user": "u1"}])
    meta.update({3: {"who": "w1", "n": 9}, 4: None, 210: {"user": "u1"}})
    check()
    ix.delete([5, 6, 220])
    for i in (5, 6, 220):
        meta.pop(i)
    check()
    ix.compact()
    check()
    add(30)
    check()
    ix.close()
    ix = MemoryIndex.open(tmp_path / "s", mode="r")
    ix.parts.docmeta.scans.max_bytes = cache_bytes
    check()
    ix.close()
