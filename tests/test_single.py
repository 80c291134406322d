"""The lean route of plain numpy searches (``index/single.py``), one query or a batch: the same
ids and scores as the general route and as a batch, for every candidate structure, with deletions,
namespaces, filters and validity windows present (where it must step aside), against an exact
float32 reference (seeded data)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lukhas_gpu
from lukhas_gpu import Filter, IndexConfig
from lukhas_gpu.index import single
from lukhas_gpu.monitor.probe import Reservoir
from lukhas_gpu.query import executor
from lukhas_gpu.tools.synthetic import builtin_model

N, NQ, D, K = 5000, 300, 384, 10
TRAFFIC = 200  # queries the tuner sees; the rest are judged


@pytest.fixture(scope="module")
def data():
    model = builtin_model()
    xb = model.sample(N, seed=21)
    xq = model.queries(NQ, seed=22).astype(np.float32)
    gt = np.argsort(-(xq @ xb.T), axis=1)[:, :K]
    return xb, xq, gt


def _index(xb, **kw):
    cfg = IndexConfig(train_threshold=4096, nlist=64, target_recall=0.9, auto_tune=False, probe_queries=256, seed=5,
                      ann_ram_budget=100_000, gpu_resident="off", **kw)
    index = lukhas_gpu.MemoryIndex(D, cfg)
    index.add(xb[: N // 2], namespace="a")
    index.add(xb[N // 2:], namespace="b")  # namespaces present, searched without one
    assert index.is_trained
    return index


@pytest.fixture()
def spy(monkeypatch):
    calls = []
    real = executor.similar_plain
    monkeypatch.setattr(executor, "similar_plain", lambda *a: calls.append(1) or real(*a))
    return calls


def _general(index, q, monkeypatch, **kw):
    monkeypatch.setattr(single, "ENABLED", False)
    try:
        return index.search(q, K, **kw)
    finally:
        monkeypatch.setattr(single, "ENABLED", True)


def _recall(ids, gt) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / K for a, b in zip(ids, gt)]))


def _check_same(index, xq, gt, monkeypatch, spy, dead=()):
    judged = xq[TRAFFIC:]
    n = len(spy)
    batch = index.search(judged, K)
    assert len(spy) == n + 1, "the plain batch took the general route"
    ref = _general(index, judged, monkeypatch)
    assert np.array_equal(batch.ids, ref.ids) and np.array_equal(batch.scores, ref.scores)
    lean = []
    for i, v in enumerate(judged):
        n = len(spy)
        one = index.search(v, K)
        assert len(spy) == n + 1, "the plain one-query search took the general route"
        ref = _general(index, v, monkeypatch)
        assert one.ids.shape == (K,) and one.ids.dtype == np.int64 and one.scores.dtype == np.float32
        assert np.array_equal(one.ids, ref.ids) and np.array_equal(one.scores, ref.scores)
        two = index.search(v[None], K)  # (1, dim): a (1, k) result
        assert two.ids.shape == (1, K) and np.array_equal(two.ids[0], one.ids)
        if i == 0:  # a read-only query (a request body, a mapped file): no copy warning, the same answer
            ro = v.copy()
            ro.setflags(write=False)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = index.search(ro, K)
            assert np.array_equal(got.ids, one.ids) and np.array_equal(got.scores, one.scores)
        if i < 5:  # a small batch: the same numbers for its first row
            few = index.search(judged[i: i + 3], K)
            assert np.array_equal(few.ids[0], one.ids) and np.array_equal(few.scores[0], one.scores)
        lean.append(one.ids)
    lean = np.array(lean)
    assert np.array_equal(lean, batch.ids)  # a query's answer does not depend on its batch
    assert not np.isin(lean, np.asarray(list(dead), dtype=np.int64)).any()
    live_gt = gt[TRAFFIC:]
    if len(dead):
        assert _recall(lean, live_gt) >= 0.6  # the reference's dead rows are missing on purpose
    else:
        assert _recall(lean, live_gt) >= 0.8
    return lean


@pytest.mark.parametrize("structure", ["ivf", "rabitq", "graph", "ivf-spill", "exact"])
def test_one_query_route_is_the_general_route(data, structure, monkeypatch, spy):
    xb, xq, gt = data
    index = _index(xb)
    index.search(xq[:TRAFFIC], K)  # the process's first search window (util.runtime) is taken
    rep = index.tune(queries=xq[:TRAFFIC], structure=structure)
    assert rep["kind"] == structure or (structure == "ivf" and rep["kind"] in ("fixed", "adaptive"))
    _check_same(index, xq, gt, monkeypatch, spy)
    dead = np.unique(gt[TRAFFIC:, :2].ravel())[:40]  # deletions among the true neighbours
    index.delete(dead)
    _check_same(index, xq, gt, monkeypatch, spy, dead=dead)


def test_the_route_steps_aside_where_it_does_not_apply(data, monkeypatch, spy):
    xb, xq, gt = data
    index = _index(xb)
    index.search(xq[:TRAFFIC], K)
    index.tune(queries=xq[:TRAFFIC], structure="rabitq")
    v = xq[TRAFFIC]
    for kw in ({"namespace": "a"}, {"where": Filter(namespace="b")}, {"nprobe": 8}, {"rerank": 2},
               {"target_recall": 0.95}, {"diversity": 0.5}):
        n = len(spy)
        got = index.search(v, K, **kw)
        assert len(spy) == n, kw
        ref = _general(index, v, monkeypatch, **kw)
        assert np.array_equal(got.ids, ref.ids) and np.array_equal(got.scores, ref.scores)
    ns = index.search(v, K, namespace="a").ids
    assert (ns[ns >= 0] < N // 2).all()
    n = len(spy)
    for q in (torch.from_numpy(v), v.astype(np.float64), v[None, :, None]):  # other kinds, dtypes, shapes
        if q.ndim == 3:
            with pytest.raises(ValueError, match="1-D"):
                index.search(q, K)
        else:
            index.search(q, K)
    assert len(spy) == n
    for bad in (np.stack([v, np.full(D, np.nan, dtype=np.float32)]), np.stack([v, np.zeros(D, np.float32)]),
                np.zeros((0, D), np.float32)):  # a batch the general route must name
        with pytest.raises(ValueError, match="NaN|zero|empty"):
            index.search(bad, K)
    assert len(spy) == n
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full(D, np.nan, dtype=np.float32), K)
    with pytest.raises(ValueError, match="zero"):
        index.search(np.zeros(D, dtype=np.float32), K)
    with pytest.raises(ValueError):
        index.search(v, 0)
    with pytest.raises(ValueError):
        index.search(v[:10], K)
    # a validity window anywhere: every search tests it (the general route)
    index.add(xb[:3], valid_from=0.0, valid_to=1.0)  # expired long ago: never returned
    n = len(spy)
    got = index.search(xb[0].astype(np.float32), K)
    assert len(spy) == n and not np.isin(got.ids, np.arange(N, N + 3)).any()


def test_one_row_offers_keep_a_uniform_deterministic_sample():
    def run():
        r = Reservoir(100, 4, seed=3)
        for i in range(5000):
            r.offer(np.full((1, 4), i, dtype=np.float32), ids=np.array([i]))
        return r
    a, b = run(), run()
    assert a.seen == 5000 and len(a) == 100
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.vectors, b.vectors)
    assert np.allclose(a.vectors[:, 0], a.ids, rtol=1e-3)  # each row with its id (float16)
    assert 1800 < a.ids.mean() < 3200  # uniform over 0..4999: mean 2500, sd of the mean ~144


def test_the_numpy_forms_follow_the_encoders_buffers():
    import copy

    from lukhas_gpu.vectors.encoder import Encoder

    enc = Encoder(32, dim_out=16)
    enc.fitted[1] = True
    x = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    qw, _ = enc.query_forms_np(x)
    twin = copy.deepcopy(enc)  # a retrain's candidate encoder, then fitted in place
    twin.scale.copy_(torch.full((32,), 2.0))
    twin.components.copy_(torch.randn(16, 32, generator=torch.Generator().manual_seed(0)))
    tw, tp = twin.query_forms_np(x)
    ref_w, ref_p = twin.query_forms(torch.from_numpy(np.repeat(x, 20, axis=0)))  # the torch route (20 rows)
    assert np.allclose(tw, 2 * qw) and np.allclose(tw, ref_w[0].numpy(), atol=1e-6)
    assert np.allclose(tp, ref_p[0], atol=1e-6)
    assert np.array_equal(enc.query_forms_np(x)[0], qw)  # the original kept its own


@pytest.mark.parametrize("kc, pad", [(30, 0), (30, 7), (10, 0), (4, 1), (1, 0)])
def test_rerank_one_is_the_batch_kernel(kc, pad):
    from lukhas_gpu.vectors import exact

    rng = np.random.default_rng(kc + pad)
    table = rng.integers(-127, 128, size=(500, 48), dtype=np.int8)
    for _ in range(20):
        q = rng.standard_normal((1, 48)).astype(np.float32)
        cand = rng.choice(500, size=(1, kc), replace=False).astype(np.int64)
        cand[0, kc - pad:] = -1
        s, i = exact.rerank_one(q, table, cand, K)
        rs, ri = exact.top_candidates(exact.candidate_scores(q, table, cand), cand, K)
        assert np.array_equal(s, rs) and np.array_equal(i, ri)
        live = cand[0][cand[0] >= 0]
        ref = np.sort(table[live].astype(np.float64) @ q[0].astype(np.float64))[::-1][:K]  # exact scores
        assert (i[0] >= 0).sum() == len(ref) and np.allclose(s[0][:len(ref)], ref, rtol=1e-5, atol=1e-3)


def test_a_scan_of_a_few_queries_runs_on_the_calling_thread():
    from lukhas_gpu.vectors import exact

    before = torch.get_num_threads()
    with exact.calling_thread(1, torch.device("cpu")):
        inside = torch.get_num_threads()
    assert torch.get_num_threads() == before
    if exact._torch_omp() is not None:
        assert inside == 1
    with exact.calling_thread(64, torch.device("cpu")):  # a batch keeps the process's threads
        assert torch.get_num_threads() == before
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, size=(3000, 40), dtype=np.int8)
    q = torch.from_numpy(rng.standard_normal((6, 40)).astype(np.float32))
    batch = exact.scan(q, codes, 12)  # six queries: the process's threads; one: the calling thread
    for i in range(6):
        s, ids = exact.scan(q[i: i + 1], codes, 12)
        assert torch.equal(ids[0], batch[1][i]) and torch.equal(s[0], batch[0][i])


def test_an_untrained_projecting_store_is_served_by_its_scan(data, monkeypatch, spy):
    """Before training, a store that will project has no fitted projection: the lean route's
    forms skip it (the exact scan serves), for one query and for a batch, as the general route."""
    xb, xq, _ = data
    index = lukhas_gpu.MemoryIndex(D, IndexConfig(train_threshold=10_000, dim_out=128, gpu_resident="off"))
    index.add(xb[:500])
    assert not index.is_trained
    index.search(xq[:4], K)  # the process's first search window
    for q in (xq[0], xq[:20]):
        n = len(spy)
        got = index.search(q, K)
        assert len(spy) == n + 1
        ref = _general(index, q, monkeypatch)
        assert np.array_equal(got.ids, ref.ids) and np.array_equal(got.scores, ref.scores)
        assert (np.asarray(got.ids) < 500).all()
