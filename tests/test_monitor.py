"""The recall probe, drift detection and retraining (monitor.py and their MemoryIndex methods)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.index import quality
from lukhas_gpu.monitor.probe import DriftMonitor, Reservoir, imbalance_factor, recall_estimate

DIM = 48


# -- reservoir ----------------------------------------------------------------------------------
def _offer_all(res: Reservoir, n: int, batches) -> None:
    start = 0
    for b in batches:
        b = min(b, n - start)
        if b <= 0:
            break
        ids = np.arange(start, start + b)
        res.offer(np.repeat((ids % 2048)[:, None].astype(np.float32), 4, axis=1), ids)
        start += b


def test_reservoir_fills_then_samples_uniformly():
    n, cap = 200_000, 2000
    res = Reservoir(cap, 4, seed=3)
    rng = np.random.default_rng(0)
    _offer_all(res, n, rng.integers(1, 5000, 400))
    assert len(res) == cap and res.seen == n
    assert len(np.unique(res.ids)) == cap  # sampling without replacement
    # uniform over arrival order: ten bins hold ~cap/10 each (chi-square, 9 dof, p > 0.001)
    counts = np.bincount(res.ids * 10 // n, minlength=10)
    chi2 = ((counts - cap / 10) ** 2 / (cap / 10)).sum()
    assert chi2 < 27.9, counts


def test_reservoir_keeps_vectors_with_their_ids():
    res = Reservoir(100, 4, seed=1)
    _offer_all(res, 5000, [700, 1, 2300, 2000])
    # the vectors follow their ids (stored as id % 2048, exact in float16)
    np.testing.assert_array_equal(res.vectors[:, 0].astype(np.int64), res.ids % 2048)


def test_reservoir_is_deterministic_and_round_trips():
    a, b = Reservoir(64, 4, seed=5), Reservoir(64, 4, seed=5)
    for r in (a, b):
        _offer_all(r, 3000, [100, 900, 2000])
    np.testing.assert_array_equal(a.ids, b.ids)
    c = Reservoir(64, 4, seed=5)
    c.load_arrays(a.to_arrays("m"), "m")
    np.testing.assert_array_equal(c.ids, a.ids)
    np.testing.assert_array_equal(c.vectors, a.vectors)
    assert c.seen == a.seen


def test_reservoir_sample_does_not_depend_on_the_batching():
    """One rule for a row whatever its batch: a replay batched otherwise rebuilds the same sample,
    and the numpy draws are the scalar hash's, bit for bit."""
    from lukhas_gpu.monitor.probe import _NUMPY_DRAWS, _uniform, _uniforms

    t = np.array([0, 1, 2**31, 2**40 + 7, 2**62], dtype=np.int64)
    for seed in (0, 5, 2**63 + 11):
        steps = np.concatenate([t, np.arange(_NUMPY_DRAWS, dtype=np.int64) * 9_973])  # the numpy path
        want = np.array([_uniform(seed, int(x)) for x in steps])
        np.testing.assert_array_equal(_uniforms(seed, steps), want)
        np.testing.assert_array_equal(_uniforms(seed, steps[:3]), want[:3])  # the Python path
    runs = []
    for batches in ([1] * 3000, [3000], [7, 1, 250, 64, 2000, 678], _random_batches(3000)):
        r = Reservoir(100, 4, seed=9)
        _offer_all(r, 3000, batches)
        runs.append(r)
    for r in runs[1:]:
        np.testing.assert_array_equal(r.ids, runs[0].ids)
        np.testing.assert_array_equal(r.vectors, runs[0].vectors)


def _random_batches(n):
    return np.random.default_rng(4).integers(1, 40, n)


def test_reservoir_zero_capacity_and_bad_arrays():
    res = Reservoir(0, 4)
    _offer_all(res, 100, [100])
    assert len(res) == 0 and res.seen == 100 and res.nbytes() == 0
    r = Reservoir(8, 4)
    with pytest.raises(ValueError, match="reservoir has shape"):
        r.load_arrays({"m_vectors": np.zeros((9, 4), np.float16), "m_seen": np.array([9]),
                       "m_ids": np.arange(9)}, "m")


# -- estimator ----------------------------------------------------------------------------------
def test_recall_estimate_exact_cases():
    est = recall_estimate([10, 10], [10, 10], [3, 0], [3, 0])
    assert est["recall"] == 1.0 and est["ci"] == (1.0, 1.0)
    est = recall_estimate([5, 5], [10, 10], [1, 1], [2, 2])
    assert est["recall"] == pytest.approx(0.25)
    assert recall_estimate([], [], [], [])["recall"] is None


def test_recall_estimate_interval_covers_the_truth():
    """Simulated per-query hits with known recall: the 95% interval covers it ~95% of the time."""
    rng = np.random.default_rng(0)
    p_ann, p_int8, covered = 0.9, 0.97, 0
    for _ in range(300):
        nq = 300
        a = rng.binomial(10, p_ann, nq)
        d = rng.poisson(0.5, nq)
        c = rng.binomial(d, p_int8)
        lo, hi = recall_estimate(a, np.full(nq, 10), c, d)["ci"]
        covered += lo <= p_ann * p_int8 <= hi
    assert covered / 300 > 0.9


def test_imbalance_factor():
    assert imbalance_factor(np.full(16, 1000)) == pytest.approx(1.0, abs=0.02)
    assert imbalance_factor(np.array([1000] + [0] * 15)) == pytest.approx(16.0)
    assert imbalance_factor(np.array([1])) is None


# -- the probe on an index ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(request):
    from conftest import make_clustered

    xb, xq = make_clustered(12_000, DIM, n_queries=400, n_clusters=40, seed=11)
    cfg = IndexConfig(train_threshold=4096, nlist=64, nprobe=4, rerank=2, probe_size=3000, seed=7)
    index = MemoryIndex(DIM, cfg)
    index.add(xb)
    return index, xb, xq


def _true_recall(index, xb, xq, k=10, **kw):
    gt = np.argsort(-(xq @ xb.T), axis=1)[:, :k]
    ids = index.search(xq, k, **kw).ids
    return np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(ids, gt)])


@pytest.mark.parametrize("nprobe", [1, 4, 16])
def test_quality_estimates_true_recall(trained, nprobe):
    index, xb, xq = trained
    true = _true_recall(index, xb, xq, nprobe=nprobe)
    q = index.quality(xq, nprobe=nprobe)
    assert q["source"] == "given" and q["queries"] == len(xq) and q["sample"] == 3000
    assert abs(q["recall"] - true) < 0.03, (q, true)
    lo, hi = q["ci"]
    assert lo - 0.01 <= true <= hi + 0.01
    assert 0 < q["ann_recall"] <= 1 and 0.9 < q["int8_recall"] <= 1


def test_int8_model_matches_the_measured_int8_stage(trained):
    """The int8 stage's modelled recall vs what the exact int8 scan keeps of the float top-10,
    on data where the sampled originals hold few true neighbours per query."""
    index, xb, xq = trained
    gt = np.argsort(-(xq @ xb.T), axis=1)[:, :10]
    ids = index.search(xq, 10, nprobe=index.parts.ann.nlist, rerank=64).ids  # every list: exact int8
    measured = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, gt)])
    q = index.quality(xq, nprobe=index.parts.ann.nlist, rerank=64)
    assert q["ann_recall"] > 0.999
    assert abs(q["int8_recall"] - measured) < 0.01, (q["int8_recall"], measured)
    assert q["hits"] >= 0 and (q["int8_sampled"] is None or 0 <= q["int8_sampled"] <= 1)


def test_int8_model_edge_cases():
    from lukhas_gpu.monitor.recall import int8_model

    s = np.sort(np.random.default_rng(0).random((5, 40)).astype(np.float32), axis=1)[:, ::-1]
    assert np.array_equal(int8_model(s, np.zeros(5), 10), np.full(5, 10.0))  # no error: all kept
    noisy = int8_model(s, np.full(5, 0.5), 10)  # error far above the gaps: about k*k/depth kept
    assert (noisy < 6).all() and (noisy > 0).all()
    padded = s.copy()
    padded[:, 7:] = -np.inf  # fewer rows than k: the 7 there are kept
    assert np.array_equal(int8_model(padded, np.full(5, 1e-3), 10), np.full(5, 7.0))
    a, b = int8_model(s, np.full(5, 0.01), 10, seed=3), int8_model(s, np.full(5, 0.01), 10, seed=3)
    assert np.array_equal(a, b)  # seeded


def test_quality_sources(trained):
    index, xb, xq = trained
    fresh = MemoryIndex(DIM, index.config)
    fresh.add(xb[:5000])
    q = fresh.quality()
    assert q["source"] == "memories" and q["recall"] > 0.5  # leave-one-out on the sample
    fresh.search(xq[:100], 5)
    assert fresh.quality()["source"] == "queries"
    assert len(fresh.parts.probe.queries) == 100


def test_quality_exact_phase_is_int8_exact():
    from conftest import make_clustered

    xb, xq = make_clustered(3000, DIM, n_queries=200, seed=2)
    index = MemoryIndex(DIM, IndexConfig(probe_size=3000))
    index.add(xb)
    q = index.quality(xq)
    assert q["ann_recall"] > 0.99 and q["recall"] > 0.95


def test_quality_errors():
    index = MemoryIndex(DIM, IndexConfig(probe_size=0))
    index.add(np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32))
    with pytest.raises(ValueError, match="probe is off"):
        index.quality()
    empty = MemoryIndex(DIM)
    with pytest.raises(ValueError, match="no sampled memories"):
        empty.quality()
    index2 = MemoryIndex(DIM)
    index2.add(np.random.default_rng(0).standard_normal((50, DIM)).astype(np.float32))
    with pytest.raises(ValueError, match="dimension|shape"):
        index2.quality(np.zeros((3, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="confidence"):
        index2.quality(confidence=1.5)


def test_probe_skips_deleted_memories(trained):
    index, xb, xq = trained
    from conftest import make_clustered

    xb2, _ = make_clustered(6000, DIM, seed=11)
    idx = MemoryIndex(DIM, index.config.replace(train_threshold=100_000))
    idx.add(xb2)
    sampled = idx.parts.probe.memories.ids.copy()
    idx.delete(sampled[:1000])
    q = idx.quality(xq[:100])
    assert q["sample"] == len(sampled) - 1000


def test_probe_whose_sample_was_all_deleted_stands_in_stored_rows(caplog):
    """A mass delete leaves the reservoir a sample of dead rows beside live rows it never kept (soak
    seed 1021: tune() raised "no sampled memories" on a trained index): live stored rows stand in."""
    from conftest import make_clustered

    xb, xq = make_clustered(6000, DIM, n_queries=200, seed=5)
    idx = MemoryIndex(DIM, IndexConfig(train_threshold=2048, nlist=16, probe_size=300, seed=3))
    idx.add(xb)
    sampled = idx.parts.probe.memories.ids.copy()
    live = np.setdiff1d(np.arange(len(xb)), sampled)
    idx.delete(np.concatenate([sampled, live[:-500]]))  # the 500 rows left were never sampled
    assert not np.isin(idx.parts.probe.memories.ids, live[-500:]).any()
    with caplog.at_level(logging.WARNING, logger="lukhas_gpu.monitor"):
        q = idx.quality(xq[:100])
    assert q["sample"] == 300 and 0.0 <= q["recall"] <= 1.0
    assert any("stand in" in r.message for r in caplog.records)
    rep = idx.tune(0.9)  # the tuner's probe too
    assert rep["recall"] > 0


def test_probe_counted_in_stats(trained):
    index, _, _ = trained
    assert index.parts.probe.nbytes() == 3000 * (2 * DIM + 8) + 400 * 2 * DIM \
        or index.parts.probe.nbytes() > 3000 * 2 * DIM


# -- drift --------------------------------------------------------------------------------------
def _shifted(n, seed):
    from conftest import make_clustered

    return make_clustered(n, DIM, n_queries=300, n_clusters=40, seed=seed)


def test_drift_flags_a_shift_and_retrain_recovers(caplog):
    xa, qa = _shifted(20_000, 21)
    xb, qb = _shifted(16_000, 99)  # other cluster centres: a new distribution,
    xb[:, :4] *= 2.0  # wider in four dimensions, so that it clips the int8 scales (5x the rule's
    qb[:, :4] *= 2.0  # 2 * (1 - quantile) of clipped values; other centres alone clip ~1x)
    cfg = IndexConfig(train_threshold=8192, nlist=64, nprobe=2, rerank=4, seed=3)
    index = MemoryIndex(DIM, cfg)
    index.add(xa[:8192])
    assert index.is_trained
    for s in range(8192, 20_000, 1000):  # more of the training distribution: no alarm
        index.add(xa[s: s + 1000])
    d = index.drift()
    assert d["trained"] and not d["retrain_recommended"], d
    assert d["score"] < 1.3
    with caplog.at_level(logging.WARNING, logger="lukhas_gpu.monitor"):
        for s in range(0, 16_000, 2000):
            index.add(xb[s: s + 2000])
    d = index.drift()
    assert d["retrain_recommended"] and d["score"] > cfg.drift_threshold, d
    assert d["worst"] in ("quant", "coarse", "pq", "imbalance")
    assert sum("retrain is recommended" in r.message for r in caplog.records) == 1  # once per crossing
    assert len(d["history"]["score"]) == d["batches"]

    before = index.quality(qb)
    gt_all = np.concatenate([xa, xb])
    true_before = _true_recall(index, gt_all, qb)
    old_ann = index.parts.ann
    report = index.retrain(queries=qb)
    assert report["accepted"] and index.parts.ann is not old_ann
    assert report["new"]["recall"] >= report["old"]["recall"]
    after = index.quality(qb)
    true_after = _true_recall(index, gt_all, qb)
    assert true_after > true_before + 0.05, (true_before, true_after)
    assert after["recall"] > before["recall"] + 0.05
    # the new distribution clips the int8 scales: they are refitted (widened)
    assert report["rescaled"] and report["clipped"] > 2 * (1 - cfg.quantile)
    d = index.drift()
    assert not d["retrain_recommended"] and d["recent"]["rows"] == 0
    index.add(xb[:10_000])  # the new distribution is now the trained one
    d = index.drift()
    assert d["score"] < cfg.drift_threshold, (report, d["ratios"])
    assert len(index) == 46_000 and index.parts.ann.ntotal == 46_000


def test_retrain_discards_a_worse_index(monkeypatch):
    xa, qa = _shifted(10_000, 5)
    index = MemoryIndex(DIM, IndexConfig(train_threshold=8192, nlist=64, nprobe=4, seed=3))
    index.add(xa)
    old_ann, calls = index.parts.ann, []
    real = quality.found

    def worse_second(index, probe, k, nprobe, rerank, **kw):  # the new index finds one neighbour less
        found = real(index, probe, k, nprobe, rerank, **kw)
        calls.append(1)
        return found - (len(calls) == 2) * (found > 0)

    monkeypatch.setattr(quality, "found", worse_second)
    report = index.retrain(queries=qa)
    assert not report["accepted"] and index.parts.ann is old_ann
    assert report["new"]["recall"] < report["old"]["recall"]


def test_retrain_in_background_catches_up_writes():
    xa, qa = _shifted(12_000, 8)
    index = MemoryIndex(DIM, IndexConfig(train_threshold=8192, nlist=64, nprobe=8, seed=3))
    index.add(xa[:10_000])
    fut = index.retrain(background=True, tolerance=0.05)  # this test is about catching up
    new_ids = index.add(xa[10_000:])  # while the new index builds
    index.delete(np.arange(0, 500))
    report = fut.result(timeout=120)
    assert report["accepted"], report
    assert index.parts.ann.ntotal == len(index) == 11_500
    hits = index.search(xa[10_000:], 10).ids[:, 0]
    assert np.mean(hits == new_ids) > 0.99
    assert not np.isin(index.search(qa, 10).ids, np.arange(500)).any()


def test_retrain_errors():
    index = MemoryIndex(DIM)
    index.add(np.random.default_rng(0).standard_normal((100, DIM)).astype(np.float32))
    with pytest.raises(ValueError, match="not trained"):
        index.retrain()


def test_retrain_checkpoints_and_keeps_the_old_generation(tmp_path):
    xa, qa = _shifted(9000, 4)
    cfg = IndexConfig(train_threshold=8192, nlist=32, nprobe=4, seed=3, wal_sync="none")
    with MemoryIndex.create(tmp_path / "s", DIM, cfg) as index:
        index.add(xa)
        index.checkpoint()
        report = index.retrain(queries=qa, tolerance=0.5)
        assert report["accepted"] and report["generation"]
        gen = report["generation"]
    from lukhas_gpu.store import layout as storage

    assert storage.current_generation(tmp_path / "s").name == gen
    assert storage.previous_generation(tmp_path / "s") is not None
    MemoryIndex.rollback(tmp_path / "s")
    assert storage.current_generation(tmp_path / "s").name != gen


def test_probe_and_drift_survive_save_and_wal_replay(tmp_path):
    xa, qa = _shifted(9000, 6)
    cfg = IndexConfig(train_threshold=8192, nlist=32, nprobe=4, seed=3, wal_sync="none")
    index = MemoryIndex.create(tmp_path / "s", DIM, cfg)
    index.add(xa[:8500])
    index.search(qa[:80], 3)
    index.checkpoint()
    index.add(xa[8500:])  # in the log only
    want_ids = index.parts.probe.memories.ids.copy()
    want_drift = index.drift()
    index.close()
    again = MemoryIndex.open(tmp_path / "s", mode="w")
    np.testing.assert_array_equal(again.parts.probe.memories.ids, want_ids)
    assert len(again.parts.probe.queries) == 80
    got = again.drift()
    assert got["baseline"] == pytest.approx(want_drift["baseline"])
    assert got["batches"] == want_drift["batches"]
    again.close()


def test_drift_monitor_measures_against_baseline():
    mon = DriftMonitor(1.5)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    mon.record(DriftMonitor.measure(x, x + 0.01, x, None))
    mon.set_baseline(None, nlist=4)
    assert mon.baseline["quant"] == pytest.approx(8e-4 / np.mean((x * x).sum(1)) * 1, rel=0.5)
    mon.record(DriftMonitor.measure(x[:100], x[:100] + 0.05, x[:100], None))
    assert mon.report()["score"] is None  # too few rows measured since the baseline to compare
    mon.record(DriftMonitor.measure(x, x + 0.05, x, None))  # 25x the error
    rep = mon.report()
    assert rep["worst"] == "quant" and rep["retrain_recommended"]
