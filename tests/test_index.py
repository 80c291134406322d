"""MemoryIndex end to end: exact phase, training transition, deletes, output kinds, stats, presets,
storage and backend selection."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from lukhas_gpu import IndexConfig, MemoryIndex, SearchResult
from lukhas_gpu.config import PRESET_DIR, preset_names

DIM = 64
NLIST = 32
#: Trains at 2048 vectors, into few lists; searches probe every list ("generous nprobe").
TRAINED = IndexConfig(train_threshold=2048, nlist=NLIST)


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _int8_scores(index: MemoryIndex, x, queries) -> np.ndarray:
    """Reference scores of the exact phase: normalised queries . dequantized int8 rows (float32)."""
    deq = index.encoder.dequantize(index.encoder.quantize(x)).cpu().numpy()
    q = _normalise(queries) if index.config.metric == "cosine" else np.asarray(queries, np.float32)
    return q @ deq.T


def _snapshot(index, queries, **kw):
    r = index.search(queries, 10, **kw)
    return len(index), r.ids.copy(), r.scores.copy()


@pytest.fixture(scope="module")
def data6k(clustered):
    return clustered(6000, DIM, n_queries=100, seed=31)


@pytest.fixture
def exact_index(data6k):
    x, _ = data6k
    index = MemoryIndex(DIM)
    index.add(x[:2000])
    index.add(x[2000:3000])
    return index


@pytest.fixture
def trained_index(data6k):
    x, _ = data6k
    index = MemoryIndex(DIM, TRAINED)
    index.add(x)
    assert index.is_trained
    return index


# -- exact phase --------------------------------------------------------------------------------
def _assert_close_to_int8_reference(index, x, q, res, k):
    """Every returned score is q . dequant(row) up to int8 query rounding (the int8 kernel), and the
    results are the reference top-k up to that rounding."""
    full = _int8_scores(index, x, q)
    qw = index.encoder.query_weights(torch.from_numpy(np.asarray(q, np.float32))).cpu().numpy()
    codes = index.encoder.quantize(x).cpu().numpy().astype(np.float32)
    step = np.abs(qw).max(axis=1, keepdims=True) / 127.0
    tol = 0.5 * step * np.abs(codes).sum(axis=1).max() + 1e-5  # per-query bound on |score error|
    got = np.take_along_axis(full, res.ids, 1)
    assert (res.ids >= 0).all()
    assert np.all(np.abs(res.scores - got) <= tol)
    kth = np.sort(full, axis=1)[:, -k]
    assert np.all(got.min(axis=1) >= kth - 2 * tol[:, 0])  # nothing much worse than the k-th best
    for row in res.ids:
        assert len(np.unique(row)) == k


def test_exact_phase_recall_and_scores(exact_index, data6k, exact_topk, recall_at_k):
    x, xq = data6k
    x = x[:3000]
    assert not exact_index.is_trained and len(exact_index) == 3000
    assert exact_index.stats()["phase"] == "exact"
    res = exact_index.search(xq, 10)
    truth, _ = exact_topk(xq, x, 10)  # float32 vectors, before int8
    assert recall_at_k(res.ids, truth) >= 0.98
    assert np.all(np.diff(res.scores, axis=1) <= 0)
    _assert_close_to_int8_reference(exact_index, x, xq, res, 10)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_exact_phase_is_exact_top_k_of_int8_vectors(metric, data6k, assert_exact_topk):
    x, xq = data6k
    x, q = x[:3000], xq
    if metric == "ip":  # norms that carry meaning
        x = x * np.random.default_rng(1).uniform(0.5, 2.0, (len(x), 1)).astype(np.float32)
        q = xq * 3.0
    index = MemoryIndex(DIM, IndexConfig(metric=metric))
    index.add(x[:2000])
    index.add(x[2000:])
    res = index.search(q, 10)
    assert_exact_topk(res.ids, res.scores, _int8_scores(index, x, q), 10)


def test_exact_phase_ip_metric_scores(data6k):
    x, xq = data6k
    x = x[:1500] * np.random.default_rng(1).uniform(0.5, 2.0, (1500, 1)).astype(np.float32)
    q = xq[:30] * 3.0
    index = MemoryIndex(DIM, IndexConfig(metric="ip"))
    index.add(x)
    res = index.search(q, 10)
    assert res.scores.max() > 2.0  # raw inner products, not cosines
    _assert_close_to_int8_reference(index, x, q, res, 10)


def test_empty_index_returns_padding():
    index = MemoryIndex(DIM)
    res = index.search(np.ones((2, DIM), np.float32), 4)
    assert (res.ids == -1).all() and np.isneginf(res.scores).all() and res.ids.shape == (2, 4)
    assert len(index) == 0 and index.stats()["count"] == 0


# -- training transition ------------------------------------------------------------------------
def test_small_to_trained_transition(data6k, exact_topk, recall_at_k):
    x, xq = data6k
    index = MemoryIndex(DIM, TRAINED)
    probe = np.arange(0, 2000, 10)
    for b in range(6):
        ids = index.add(x[b * 1000:(b + 1) * 1000])
        np.testing.assert_array_equal(ids, np.arange(b * 1000, (b + 1) * 1000))
        assert index.is_trained == ((b + 1) * 1000 >= 2048)
        if b == 1:  # 2000 vectors: still exact; every stored vector finds itself
            assert not index.is_trained
            np.testing.assert_array_equal(index.search(x[probe], 1).ids[:, 0], probe)
    assert len(index) == 6000
    st = index.stats()
    assert st["phase"] == "ivfpq" and st["nlist"] == NLIST and st["count"] == 6000
    # the ids assigned before training still name the same vectors
    np.testing.assert_array_equal(index.search(x[probe], 10, nprobe=NLIST).ids[:, 0], probe)
    res = index.search(xq, 10, nprobe=NLIST)
    truth, _ = exact_topk(xq, x, 10)
    assert recall_at_k(res.ids, truth) >= 0.9
    assert np.all(np.diff(res.scores, axis=1) <= 0)


def test_explicit_train_switches_phase(data6k):
    x, _ = data6k
    index = MemoryIndex(DIM, IndexConfig(nlist=16))
    index.add(x[:1500])
    assert not index.is_trained
    index.train()
    assert index.is_trained and len(index) == 1500
    np.testing.assert_array_equal(index.search(x[:50], 10, nprobe=16).ids[:, 0], np.arange(50))


def test_vectors_added_after_training_are_found_at_once(trained_index, clustered):
    new, _ = clustered(80, DIM, seed=32)
    ids = trained_index.add(new[:60])
    np.testing.assert_array_equal(ids, np.arange(6000, 6060))
    res = trained_index.search(new[:60], 10, nprobe=NLIST)
    np.testing.assert_array_equal(res.ids[:, 0], ids)
    assert np.all(res.scores[:, 0] > 0.95)
    for j in range(60, 80):  # one at a time, each searchable as soon as add returns
        (i,) = trained_index.add(new[j])
        assert i == 6000 + j
        assert trained_index.search(new[j], 10, nprobe=NLIST).ids[0] == i
    assert len(trained_index) == 6080


# -- delete -------------------------------------------------------------------------------------
def test_delete_in_exact_phase(exact_index, data6k, exact_topk, recall_at_k):
    x, xq = data6k
    before = exact_index.search(xq, 10)
    victims = np.unique(before.ids[:, :3])
    wide = exact_index.search(xq, 10 + len(victims))
    assert exact_index.delete(victims) == len(victims)
    assert len(exact_index) == 3000 - len(victims)
    assert not exact_index.contains(victims).any()
    after = exact_index.search(xq, 10)
    assert not np.isin(after.ids, victims).any()
    # the same scan with the victims skipped: the earlier wider results minus the victims
    for r in range(len(xq)):
        keep = ~np.isin(wide.ids[r], victims)
        np.testing.assert_array_equal(after.ids[r], wide.ids[r][keep][:10])
        np.testing.assert_array_equal(after.scores[r], wide.scores[r][keep][:10])
    live = np.ones(3000, bool)
    live[victims] = False
    truth, _ = exact_topk(xq, x[:3000], 10, mask=live)
    assert recall_at_k(after.ids, truth) >= 0.98
    st = exact_index.stats()
    assert st["count"] == len(exact_index) and st["deleted"] == len(victims) and st["rows"] == 3000


def test_delete_in_trained_phase(trained_index, data6k, exact_topk, recall_at_k):
    x, xq = data6k
    before = trained_index.search(xq, 10, nprobe=NLIST)
    victims = np.unique(before.ids[:, :2])
    assert trained_index.delete(victims) == len(victims)
    assert len(trained_index) == 6000 - len(victims)
    after = trained_index.search(xq, 10, nprobe=NLIST)
    assert not np.isin(after.ids, victims).any()
    live = np.ones(6000, bool)
    live[victims] = False
    truth, _ = exact_topk(xq, x, 10, mask=live)
    assert recall_at_k(after.ids, truth) >= 0.9
    # a deleted vector searched for itself is not found
    assert not np.isin(trained_index.search(x[victims], 10, nprobe=NLIST).ids, victims).any()
    st = trained_index.stats()
    assert st["count"] == 6000 - len(victims) and st["ann_dead"] == len(victims)  # kept, excluded
    assert st["memory"]["logical"]["ann_ids"] == 8 * (st["count"] + st["ann_dead"])


def test_delete_before_training_stays_deleted_after(data6k):
    x, _ = data6k
    index = MemoryIndex(DIM, TRAINED)
    index.add(x[:1500])
    victims = np.random.default_rng(2).choice(1500, 300, replace=False)
    index.delete(victims)
    index.add(x[1500:])
    assert index.is_trained and len(index) == 5700
    found = index.search(x[victims], 10, nprobe=NLIST).ids
    assert not np.isin(found, victims).any()
    st = index.stats()
    assert (st["count"], st["rows"], st["deleted"]) == (5700, 6000, 300)
    assert st["memory"]["logical"]["ann_ids"] == 8 * 5700


@pytest.mark.parametrize("phase", ["exact", "trained"])
@pytest.mark.parametrize("bad, match", [
    ([5], "already deleted"),
    ([6, 5], "already deleted"),
    ([7, 10**9], "unknown id"),
    ([-1], "unknown id"),
    ([8, 6000], "unknown id"),
])
def test_bad_delete_raises_and_changes_nothing(phase, bad, match, data6k):
    x, xq = data6k
    index = MemoryIndex(DIM, TRAINED)
    index.add(x if phase == "trained" else x[:2000])
    index.delete([5])
    kw = {"nprobe": NLIST} if phase == "trained" else {}
    n0, ids0, s0 = _snapshot(index, xq, **kw)
    with pytest.raises(ValueError, match=match):
        index.delete(bad)
    n1, ids1, s1 = _snapshot(index, xq, **kw)
    assert n1 == n0 and index.stats()["deleted"] == 1
    np.testing.assert_array_equal(ids1, ids0)
    np.testing.assert_array_equal(s1, s0)
    assert index.contains([6, 7, 8]).all() and not index.contains([5]).any()


@pytest.mark.parametrize("phase", ["exact", "trained"])
def test_delete_everything(phase, data6k):
    x, xq = data6k
    index = MemoryIndex(DIM, TRAINED)
    index.add(x[:2100] if phase == "trained" else x[:500])
    n = len(index)
    assert index.delete(np.arange(n)) == n
    assert len(index) == 0 and index.stats()["count"] == 0
    res = index.search(xq[:3], 5, nprobe=NLIST)
    assert (res.ids == -1).all() and np.isneginf(res.scores).all()


def test_delete_accepts_any_integer_ids(exact_index):
    assert exact_index.delete(np.int64(1)) == 1
    assert exact_index.delete(torch.tensor([2, 3])) == 2
    assert exact_index.delete(4) == 1
    assert exact_index.delete(np.array([[5, 6]], dtype=np.int32)) == 2
    assert exact_index.delete([7, 7]) == 1  # duplicates count once
    assert len(exact_index) == 3000 - 7
    np.testing.assert_array_equal(exact_index.contains(np.arange(9)), [True] + [False] * 7 + [True])


# -- output kinds and padding ------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["exact", "trained"])
def test_output_kind_follows_input(phase, exact_index, trained_index, data6k):
    index = trained_index if phase == "trained" else exact_index
    _, xq = data6k
    q = xq[:7]
    ref = index.search(q, 5, nprobe=NLIST)
    assert isinstance(ref, SearchResult) and len(ref) == 7
    assert isinstance(ref.ids, np.ndarray) and ref.ids.dtype == np.int64 and ref.ids.shape == (7, 5)
    assert isinstance(ref.scores, np.ndarray) and ref.scores.dtype == np.float32
    ids, scores = ref  # unpacks
    assert ids is ref.ids and scores is ref.scores

    one = index.search(q[3], 5, nprobe=NLIST)
    assert one.ids.shape == (5,) and one.scores.shape == (5,)
    np.testing.assert_array_equal(one.ids, ref.ids[3])

    t = index.search(torch.from_numpy(q), 5, nprobe=NLIST)
    assert isinstance(t.ids, torch.Tensor) and isinstance(t.scores, torch.Tensor)
    assert t.ids.dtype == torch.int64 and t.scores.dtype == torch.float32 and t.ids.device.type == "cpu"
    np.testing.assert_array_equal(t.ids.numpy(), ref.ids)
    np.testing.assert_allclose(t.scores.numpy(), ref.scores, rtol=1e-6)

    t1 = index.search(torch.from_numpy(q[3]).double(), 5, nprobe=NLIST)
    assert isinstance(t1.ids, torch.Tensor) and t1.ids.shape == (5,)
    np.testing.assert_array_equal(t1.ids.numpy(), ref.ids[3])

    lst = index.search(q.tolist(), 5, nprobe=NLIST)
    assert isinstance(lst.ids, np.ndarray)
    np.testing.assert_array_equal(lst.ids, ref.ids)


@pytest.mark.cuda
def test_cuda_queries_give_cuda_results(data6k):
    x, xq = data6k
    index = MemoryIndex(DIM, IndexConfig(backend="cuda"))
    index.add(x[:2000])
    res = index.search(torch.from_numpy(xq[:5]).cuda(), 5)
    assert res.ids.device.type == "cuda" and res.scores.device.type == "cuda"
    cpu = index.search(xq[:5], 5)
    np.testing.assert_array_equal(res.ids.cpu().numpy(), cpu.ids)


def test_k_larger_than_count_is_padded(data6k):
    x, _ = data6k
    index = MemoryIndex(DIM)
    index.add(x[:5])
    res = index.search(x[:2], 8)
    assert (np.sort(res.ids[:, :5], axis=1) == np.arange(5)).all()
    assert (res.ids[:, 5:] == -1).all() and np.isneginf(res.scores[:, 5:]).all()
    assert np.isfinite(res.scores[:, :5]).all()
    index.delete([0, 3])
    res = index.search(x[:2], 8)
    assert (np.sort(res.ids[:, :3], axis=1) == [1, 2, 4]).all() and (res.ids[:, 3:] == -1).all()


def test_k_larger_than_count_trained(data6k):
    x, _ = data6k
    index = MemoryIndex(DIM, TRAINED)
    index.add(x[:2100])
    index.delete(np.arange(0, 2100, 7))
    n = len(index)
    res = index.search(x[1:3], n + 10, nprobe=NLIST)
    live = np.setdiff1d(np.arange(2100), np.arange(0, 2100, 7))
    for row in res.ids:
        np.testing.assert_array_equal(np.sort(row[:n]), live)
        assert (row[n:] == -1).all()
    assert np.isneginf(res.scores[:, n:]).all() and np.isfinite(res.scores[:, :n]).all()


# -- stats --------------------------------------------------------------------------------------
def _check_stats_consistent(index, st):
    b = st["memory"]["logical"]
    assert st["count"] == len(index) == st["rows"] - st["deleted"]
    assert st["dim"] == DIM and st["dim_out"] == index.dim_out
    assert b["vectors_int8"] == st["rows"] * DIM
    comp = index.encoder.components
    assert b["encoder"] == DIM * 4 + comp.numel() * 4 + 2  # scales, projection, fitted flags
    assert (b["tombstones"] > 0) == (st["deleted"] > 0)
    mem = st["memory"]
    assert st["bytes_per_memory"] == pytest.approx((mem["anon_bytes"] + mem["mapped_bytes"]) / st["count"])
    assert mem["per_memory"]["anon"] == pytest.approx(mem["anon_bytes"] / st["count"])
    assert isinstance(st["process"]["rss_anon"], int) and st["process"]["rss_anon"] > mem["anon_bytes"]


def test_stats_exact_phase(exact_index):
    exact_index.delete([1, 2, 3])
    st = exact_index.stats()
    assert st["phase"] == "exact" and st["nlist"] is None
    assert (st["count"], st["rows"], st["deleted"]) == (2997, 3000, 3)
    assert not any(k.startswith("ann_") for k in st["memory"]["logical"])
    assert st["vector_storage"] == "memory" and st["memory"]["mapped_bytes"] == 0
    _check_stats_consistent(exact_index, st)


def test_stats_trained_phase(trained_index):
    trained_index.delete(np.arange(100))
    st = trained_index.stats()
    assert st["ann_dead"] == 100 and st["memory"]["logical"]["ann_ids"] == 8 * 6000  # kept until compact
    _check_stats_consistent(trained_index, st)
    trained_index.compact()
    st = trained_index.stats()
    assert st["phase"] == "ivfpq" and st["nlist"] == NLIST and st["count"] == 5900 and st["ann_dead"] == 0
    _check_stats_consistent(trained_index, st)
    b, m, d = st["memory"]["logical"], st["pq_m"], st["dim_out"]
    assert b["ann_ids"] == 8 * 5900
    # 4-bit codes: pq_m / 2 bytes per memory, lists padded to blocks of 32
    assert 5900 * m // 2 <= b["ann_codes"] <= (5900 + NLIST * 32) * m // 2
    assert b["ann_centroids"] == NLIST * d * 4 + 16 * d * 4  # IVF centroids + 16-entry PQ codebooks
    # int8 row + code + id + small overheads + the empty payload (24 B metadata, 2 B None record)
    assert sum(b.values()) / st["count"] < DIM + m / 2 + 8 + 20 + 26


# -- presets and storage ------------------------------------------------------------------------
@pytest.mark.parametrize("name, storage", [("production", "memory"), ("advanced", "mmap"), ("ultra", "mmap")])
def test_presets_load_and_build_working_indexes(name, storage, tmp_path, clustered, exact_topk, recall_at_k):
    assert name in preset_names()
    cfg = IndexConfig.preset(name)
    assert cfg == IndexConfig.from_toml(PRESET_DIR / f"{name}.toml")
    assert cfg.vector_storage == storage
    # the preset as named, in its exact phase
    x, xq = clustered(3000, 320, n_queries=40, seed=33)
    small = MemoryIndex(320, name)
    small.add(x[:500])
    np.testing.assert_array_equal(small.search(x[:20], 1).ids[:, 0], np.arange(20))
    assert small.stats()["vector_storage"] == storage
    # the same preset trained early, in a directory of ours
    index = MemoryIndex(320, IndexConfig.preset(name, train_threshold=2048, nlist=NLIST, spill_dir=str(tmp_path)))
    index.add(x)
    assert index.is_trained
    if cfg.dim_out:
        assert index.dim_out == min(cfg.dim_out, 320)
    st = index.stats()
    assert st["vector_storage"] == storage
    assert st["memory"]["mapped"].get("vectors_int8", 0) == (st["memory"]["logical"]["vectors_int8"]
                                                             if storage == "mmap" else 0)
    assert len(list(tmp_path.iterdir())) == (1 if storage == "mmap" else 0)
    truth, _ = exact_topk(xq, x, 10)
    assert recall_at_k(index.search(xq, 10, nprobe=NLIST).ids, truth) >= 0.9


def test_preset_overrides_and_names():
    assert set(preset_names()) >= {"production", "advanced", "ultra"}
    cfg = IndexConfig.preset("production", nprobe=7)
    assert cfg.nprobe == 7
    assert cfg.replace(nprobe=9).nprobe == 9
    assert IndexConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("phase", ["exact", "trained"])
def test_mmap_storage_gives_same_results_as_memory(phase, data6k, tmp_path):
    x, xq = data6k
    base = TRAINED if phase == "trained" else IndexConfig()
    n = 4000 if phase == "trained" else 1500
    mem = MemoryIndex(DIM, base)
    mm = MemoryIndex(DIM, base.replace(vector_storage="mmap", spill_dir=str(tmp_path)))
    for index in (mem, mm):
        index.add(x[:1000])
        index.add(x[1000:n])
        index.delete(np.arange(0, n, 13))
    assert mm.stats()["vector_storage"] == "mmap" and len(list(tmp_path.iterdir())) == 1
    a = mem.search(xq, 10, nprobe=NLIST)
    b = mm.search(xq, 10, nprobe=NLIST)
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.scores, a.scores)
    del mm, index
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # the spill file goes with the index


# -- backend selection --------------------------------------------------------------------------
def test_backend_env_cpu(monkeypatch, data6k):
    x, _ = data6k
    monkeypatch.setenv("LUKHAS_GPU_BACKEND", "cpu")
    index = MemoryIndex(DIM, IndexConfig(backend="cuda"))  # the variable overrides the config
    assert index.backend == "cpu" and index.stats()["backend"] == "cpu"
    index.add(x[:100])
    np.testing.assert_array_equal(index.search(x[:10], 1).ids[:, 0], np.arange(10))


def test_backend_env_invalid(monkeypatch):
    monkeypatch.setenv("LUKHAS_GPU_BACKEND", "gpu")
    with pytest.raises(ValueError, match="LUKHAS_GPU_BACKEND='gpu'.*auto, cpu, cuda"):
        MemoryIndex(DIM)


def test_backend_cuda_without_gpu_raises(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LUKHAS_GPU_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        MemoryIndex(DIM)
    monkeypatch.delenv("LUKHAS_GPU_BACKEND")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        MemoryIndex(DIM, IndexConfig(backend="cuda"))
    assert MemoryIndex(DIM).backend == "cpu"  # auto falls back


# -- known defects ------------------------------------------------------------------------------
def test_one_vector_first_batch_keeps_recall(data6k, exact_topk, recall_at_k):
    x, xq = data6k
    index = MemoryIndex(DIM)
    index.add(x[0])
    index.add(x[1:3000])
    truth, _ = exact_topk(xq, x[:3000], 10)
    assert recall_at_k(index.search(xq, 10).ids, truth) >= 0.95


def test_one_dimensional_index():
    index = MemoryIndex(1, IndexConfig(metric="ip", backend="cpu"))  # CUDA pads the dimension
    index.add(np.array([[1.0], [2.0], [-3.0]], np.float32))
    for _ in range(3):
        res = index.search(np.array([[1.0]], np.float32), 3)
        np.testing.assert_array_equal(res.ids, [[1, 0, 2]])
        np.testing.assert_allclose(res.scores, [[2.0, 1.0, -3.0]], rtol=0.02)
