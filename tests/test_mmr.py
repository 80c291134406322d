"""``search(..., diversity=)``: maximal marginal relevance against a plain numpy reference on
seeded data (the same picks, with filters, ``Rank``, trained or not, a sharded root), diversity 0
equal to the plain search, near-copies pushed out of the top-k, the argument's checks, the
server's body and the CLI."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import types

import numpy as np
import pytest

from lukhas_gpu import Filter, IndexConfig, MemoryIndex, Rank
from lukhas_gpu.distributed import ShardedIndex, rootfiles
from lukhas_gpu.query import mmr

N, DIM, T0 = 1500, 24, 1_700_000_000


def _data(seed: int = 5):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((N - 300, DIM)).astype(np.float32)
    copies = base[:300] + 0.02 * rng.standard_normal((300, DIM)).astype(np.float32)  # near-copies of rows 0..299
    x = np.concatenate([base, copies])
    return {"embeddings": x, "tags": [["even"] if i % 2 == 0 else [] for i in range(N)],
            "timestamps": (T0 + rng.integers(0, 1000, N)).astype(np.float64),
            "importance": rng.choice([0.0, 0.5, 1.0], N), "metadata": [{"g": int(i % 3)} for i in range(N)]}


DATA = _data()


def _queries(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(11)
    return DATA["embeddings"][:n] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)


def reference(rel: np.ndarray, ids: np.ndarray, vecs: np.ndarray, k: int, lam: float, cosine: bool = True):
    """Greedy MMR in plain numpy (float64) over one query's candidates."""
    ok = ids >= 0
    rel, ids, vecs = rel[ok].astype(np.float64), ids[ok], vecs[ok].astype(np.float64)
    sim = vecs @ vecs.T
    if cosine:
        sim = np.minimum(sim, 1.0)
    picks: list[int] = []
    for _ in range(min(k, len(ids))):
        if picks:
            score = lam * rel - (1 - lam) * sim[:, picks].max(axis=1)
        else:
            score = rel.copy()
        score[picks] = -np.inf
        picks.append(int(np.argmax(score)))
    return ids[picks].tolist()


@pytest.fixture(scope="module", params=["exact", "ivf"])
def index(request):
    trained = request.param == "ivf"
    ix = MemoryIndex(DIM, IndexConfig(auto_tune=False, nlist=16, train_threshold=1024 if trained else 1 << 30))
    ix.add(**DATA)
    ix.delete(np.arange(7, N, 97))
    assert ix.is_trained == trained
    return ix


CASES = [(0.3, None, None), (0.7, None, None), (1.0, None, None), (0.5, Filter(tags_any="even"), None),
         (0.5, Filter(meta={"g": {"$ne": 1}}), None), (0.4, None, Rank(1.0, 0.3, 0.2, half_life=300, now=T0 + 999))]


@pytest.mark.parametrize("diversity,where,rank", CASES, ids=range(len(CASES)))
def test_mmr_picks_those_of_a_numpy_reference(index, diversity, where, rank):
    q, k = _queries(), 10
    kw = {"where": where, "rank": rank, "nprobe": 16, "rerank": 50}
    pool = index.search(q, mmr.pool(k), **kw)  # the candidates the usual route returns
    got = index.search(q, k, diversity=diversity, **kw)
    for r in range(len(q)):
        ids = pool.ids[r]
        vecs = index.vectors_at(ids[ids >= 0])
        full = np.zeros((len(ids), DIM), np.float32)
        full[ids >= 0] = vecs
        want = reference(pool.scores[r], ids, full, k, 1.0 - diversity)
        assert got.ids[r].tolist() == want
        by_id = dict(zip(ids.tolist(), pool.scores[r].tolist()))
        assert np.allclose(got.scores[r], [by_id[i] for i in want])  # the picks' relevance, in pick order


def test_vectors_at_are_the_dequantized_rows_searches_score(index):
    q = _queries(1)
    res = index.search(q, 5)
    qn = q[0] / np.linalg.norm(q[0])
    assert np.allclose(index.vectors_at(res.ids[0]) @ qn, res.scores[0], atol=1e-5)
    with pytest.raises(ValueError):
        index.vectors_at([7])  # deleted


def test_diversity_zero_is_the_plain_search(index):
    q = _queries()
    plain = index.search(q, 10, where=Filter(tags_any="even"), nprobe=16)
    for d in (0, 0.0, None):
        res = index.search(q, 10, where=Filter(tags_any="even"), nprobe=16, diversity=d)
        assert (res.ids == plain.ids).all() and np.array_equal(res.scores, plain.scores)


def test_near_copies_leave_the_top_k(index):
    """Queries near memory i: plain search returns i and its planted near-copy (row i + 1200)
    together; with diversity the pair is split and the relevance mostly kept."""
    q, k = _queries(), 10
    plain = index.search(q, k, nprobe=16, rerank=50)
    div = index.search(q, k, nprobe=16, rerank=50, diversity=0.5)

    def pairs(ids):
        s = set(ids.tolist())
        return sum(1 for i in s if i < 300 and i + (N - 300) in s)

    assert sum(pairs(r) for r in plain.ids) >= len(q)  # every query has its memory and the copy
    assert sum(pairs(r) for r in div.ids) == 0
    assert (div.scores[:, 0] == plain.scores[:, 0]).all()  # the best match stays first


def test_diversity_is_checked(index):
    q = _queries(1)
    for bad in (True, "0.5", [0.5]):
        with pytest.raises(TypeError, match="diversity"):
            index.search(q, 5, diversity=bad)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="diversity"):
            index.search(q, 5, diversity=bad)
    with pytest.raises(ValueError, match="MAX_MMR_K"):
        index.search(q, 5000, diversity=0.5)
    small = MemoryIndex(DIM, IndexConfig(text_index=True))
    small.add(DATA["embeddings"][:20], contents=[f"w{i}" for i in range(20)])
    with pytest.raises(ValueError, match="dense"):
        small.search(q, 5, text=["w1"], diversity=0.5)
    res = small.search(q, 30, diversity=0.5)  # fewer memories than k: padded
    assert (res.ids[0, 20:] == -1).all() and sorted(res.ids[0, :20].tolist()) == list(range(20))


def test_a_sharded_root_merges_then_picks(tmp_path):
    """Every shard's top max(4k, 50), merged, then MMR at the root over the candidates' vectors
    (each shard quantizes with its own scales, so the reference is the root's own merged list)."""
    root = tmp_path / "root"
    cut = [0, 700, N]
    cfg = IndexConfig(auto_tune=False, train_threshold=1 << 30)
    rootfiles.write_root(root, shards=2, dim=DIM, state="complete")
    for s in range(2):
        with MemoryIndex.create(rootfiles.shard_dir(root, s), DIM, cfg) as ix:
            ix.add(**{key: v[cut[s]:cut[s + 1]] for key, v in DATA.items()})
    q, k = _queries(), 10
    with ShardedIndex.open(root) as sh:
        for diversity, where in ((0.3, None), (0.6, Filter(tags_any="even"))):
            pool = sh.search(q, mmr.pool(k), where=where)
            got = sh.search(q, k, where=where, diversity=diversity)
            for r in range(len(q)):
                want = reference(pool.scores[r], pool.ids[r], sh.vectors_at(pool.ids[r]), k, 1.0 - diversity)
                assert got.ids[r].tolist() == want
        with pytest.raises(ValueError, match="dense"):
            sh.search(None, 5, text=["x"], diversity=0.5)


def test_the_server_body_and_the_cli_take_diversity(tmp_path, capsys):
    from conftest import optional_import

    optional_import("fastapi")
    from lukhas_gpu import cli
    from lukhas_gpu.serve import search as serve_search
    from lukhas_gpu.serve.app import _State
    from lukhas_gpu.serve.batcher import Batcher

    path = tmp_path / "s"
    with MemoryIndex.create(path, DIM, IndexConfig(auto_tune=False)) as ix:
        ix.add(**DATA)
    ix = MemoryIndex.open(path, mode="r")
    q = _queries(2)
    want = ix.search(q, 5, diversity=0.4, where=Filter(meta={"g": 2}))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    holder = types.SimpleNamespace(index=ix)
    st = types.SimpleNamespace(index=ix, options=types.SimpleNamespace(timeout_s=30.0),
                               batcher=Batcher(lambda key, x: _State._search(holder, key, x), pool, max_batch=64,
                                               max_wait_s=0.001, max_queue=100))
    body = json.dumps({"vectors": q.tolist(), "k": 5, "diversity": 0.4, "where": {"meta": {"g": 2}}}).encode()

    async def post(obj_or_body):
        st.batcher.start()
        try:
            data = obj_or_body if isinstance(obj_or_body, bytes) else json.dumps(obj_or_body).encode()
            return await serve_search.run_search(st, {"content-type": "application/json"}, "", data)
        finally:
            await st.batcher.stop()

    status, _, data, _ = asyncio.run(post(body))
    assert status == 200 and json.loads(data)["ids"] == want.ids.tolist()
    for bad in (True, 2.0):
        with pytest.raises(Exception, match="diversity"):
            asyncio.run(post({"vectors": q.tolist(), "diversity": bad}))
    pool.shutdown()
    qf = tmp_path / "q.npy"
    np.save(qf, q)
    capsys.readouterr()
    assert cli.main(["search", str(path), "--query-file", str(qf), "-k", "5", "--diversity", "0.4", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["ids"] for r in lines] == ix.search(q, 5, diversity=0.4).ids.tolist()
    assert cli.main(["search", str(path), "--query-file", str(qf), "-k", "5", "--diversity", "0.4", "--json",
                     "--meta", '{"g": 2}']) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["ids"] for r in lines] == want.ids.tolist()
    ix.close()
