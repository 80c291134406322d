"""The FAISS layer: deleted rows excluded, list rebuilds, list sizing helpers."""
import numpy as np
import pytest

from lukhas_gpu.records.tombstones import Tombstones
from lukhas_gpu.vectors.ann import IVFPQIndex, auto_nlist, auto_pq_m, train_sample_size


def _dead(rows) -> Tombstones:
    t = Tombstones()
    t.add(np.asarray(rows, dtype=np.int64))
    return t


def test_excluded_ids_never_return(clustered):
    xb, xq = clustered(3000, 32, n_queries=20, seed=4)
    ann = IVFPQIndex(32, nlist=16, pq_m=8, seed=0)
    ann.train(xb)
    ann.add(xb, np.arange(3000))
    gone = np.arange(0, 3000, 2)
    _, ids = ann.search(xq, 50, nprobe=16, exclude=_dead(gone))
    assert not np.isin(ids[ids >= 0], gone).any() and (ids >= 0).all()
    scores, lists = ann.coarse_search(xq, 16)
    _, ids = ann.search_lists(xq, 50, lists, scores, exclude=_dead(gone))
    assert not np.isin(ids[ids >= 0], gone).any() and (ids >= 0).all()
    assert ann.ntotal == 3000  # nothing left the lists


def test_the_packed_tombstones_match_the_bitmap():
    rng = np.random.default_rng(0)
    t = Tombstones()
    for _ in range(5):  # grown in place by later deletes
        t.add(rng.choice(100_000, 300, replace=False))
        packed = t.packed()
        bits = np.unpackbits(packed, bitorder="little").astype(bool)
        assert np.array_equal(np.flatnonzero(bits), t.array())
    assert Tombstones().packed().size == 0


def test_rebuilt_lists_hold_the_kept_entries_re_encoded(clustered):
    xb, _ = clustered(4000, 32, n_queries=20, seed=5)
    ann = IVFPQIndex(32, nlist=16, pq_m=16, seed=0)
    ann.train(xb)
    ann.add(xb, np.arange(4000))
    gone = np.arange(0, 4000, 3)
    lists = ann.lists_holding(lambda ids: np.isin(ids, gone))
    assert len(lists) == 16
    assert ann.locate(np.array([5, 7]), ann.assign(xb[[5, 7]])).tolist() == sorted(set(ann.assign(xb[[5, 7]])))
    dropped = ann.rebuild_lists(lists[:8], lambda ids: ~np.isin(ids, gone), lambda ids: xb[ids])
    held = np.concatenate([ann.list_ids(i) for i in range(16)])
    assert ann.ntotal == len(held) == 4000 - dropped and len(np.unique(held)) == len(held)
    keep = np.setdiff1d(np.arange(4000), gone)
    _, ids = ann.search(xb[keep[:500]], 20, nprobe=16)
    assert (ids == keep[:500, None]).any(axis=1).mean() >= 0.99


@pytest.mark.parametrize("n,expected", [(10_000, 256), (50_000, 256), (117_659, 512), (1_000_000, 2048),
                                        (10_000_000, 4096), (100, 16)])
def test_auto_nlist(n, expected):
    assert auto_nlist(n) == expected


def test_auto_pq_m_divides():
    assert auto_pq_m(384) == 96 and auto_pq_m(1024) == 128 and auto_pq_m(256, 32) == 32
    for d in (7, 100, 130, 384, 768):
        assert d % auto_pq_m(d) == 0
    assert train_sample_size(1024) == 65536 and train_sample_size(4096) == 163840
    for nlist in (256, 1024, 4096, 16384):  # k-means gets at least 40 rows per list
        assert train_sample_size(nlist) >= 40 * nlist


def test_two_level_kmeans_gives_k_good_centroids(clustered):
    from lukhas_gpu.vectors.ann import two_level_kmeans

    xb, _ = clustered(4000, 16, seed=5)
    c = two_level_kmeans(xb, 100, seed=0, niter=5)
    assert c.shape == (100, 16) and c.dtype == np.float32
    # every point is close to some centroid: mean best cosine well above that of random centroids
    best = (xb @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T).max(axis=1).mean()
    rnd = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    base = (xb @ (rnd / np.linalg.norm(rnd, axis=1, keepdims=True)).T).max(axis=1).mean()
    assert best > base + 0.2
    assert len(np.unique(np.round(c, 5), axis=0)) == 100


def test_two_level_training_path_matches_one_level(clustered, exact_topk, monkeypatch):
    import lukhas_gpu.vectors.ann as ann_mod

    xb, xq = clustered(6000, 32, n_queries=100, seed=6)
    gt, _ = exact_topk(xq, xb, 10)
    recalls = {}
    for two_level in (False, True):
        monkeypatch.setattr(ann_mod, "TWO_LEVEL_FROM", 16 if two_level else 1 << 30)
        ann = IVFPQIndex(32, nlist=64, pq_m=16, seed=0)
        ann.train(xb)
        assert ann.quantizer.ntotal == 64 and ann.is_trained
        ann.add(xb, np.arange(6000))
        _, ids = ann.search(xq, 10, nprobe=8)
        recalls[two_level] = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, gt)])
    assert recalls[True] > 0.5
    assert recalls[True] >= recalls[False] - 0.05


# -- the faiss-gpu copy: built and exercised on the CPU with a stand-in for faiss's GPU clone ---
def test_gpu_pq_m_fits_faiss_gpu_limits():
    from lukhas_gpu.vectors.ann import gpu_pq_m

    assert gpu_pq_m(512, 64) == 64 and gpu_pq_m(384, 48) == 48 and gpu_pq_m(48, 6) == 4
    assert gpu_pq_m(7, 1) is None and gpu_pq_m(1024, 64) == 64  # 1024 / 64 = 16 dims each


def test_gpu_twin_matches_the_fast_scan_index(clustered, exact_topk, recall_at_k):
    xb, xq = clustered(6000, 64, n_queries=100, seed=8)
    ann = IVFPQIndex(64, nlist=32, pq_m=16, coarse="hnsw", seed=0)
    ann.train(xb)
    ann.add(xb, np.arange(len(xb)))
    twin = ann.gpu_twin(xb)
    assert twin.pq.M == 8 and twin.pq.nbits == 8 and twin.nlist == 32 and twin.ntotal == 0
    # the same coarse centroids, in a flat quantizer
    np.testing.assert_allclose(twin.quantizer.reconstruct_n(0, 32), ann.quantizer.reconstruct_n(0, 32))
    twin.add_with_ids(xb, np.arange(len(xb), dtype=np.int64))
    twin.nprobe = 8
    truth, _ = exact_topk(xq, xb, 10)
    r_twin = recall_at_k(twin.search(xq, 10)[1], truth)
    r_fs = recall_at_k(ann.search(xq, 10, nprobe=8)[1], truth)
    assert r_twin >= r_fs - 0.05 and r_twin > 0.5


@pytest.fixture
def fake_faiss_gpu(monkeypatch):
    """faiss-cpu with a 'GPU' whose clone is the CPU twin itself; records the cloner options."""
    import faiss

    import lukhas_gpu.vectors.ann as ann_mod

    seen = {}

    class Options:
        indicesOptions = None
        useFloat16 = False

    def clone(res, device, index, co):
        seen.update(device=device, indices=co.indicesOptions, float16=co.useFloat16, type=type(index).__name__)
        return index

    monkeypatch.setattr(ann_mod, "faiss_gpus", lambda: 1)
    for name, value in (("StandardGpuResources", object), ("GpuClonerOptions", Options),
                        ("index_cpu_to_gpu", clone), ("INDICES_32_BIT", 32), ("INDICES_CPU", 0)):
        monkeypatch.setattr(faiss, name, value, raising=False)
    return seen


def test_to_gpu_searches_the_copy_and_filters_deleted_ids(clustered, fake_faiss_gpu):
    import faiss

    xb, xq = clustered(4000, 32, n_queries=30, seed=6)
    ann = IVFPQIndex(32, nlist=16, pq_m=8, seed=0)
    ann.train(xb)
    assert ann.to_gpu(xb)
    assert fake_faiss_gpu == {"device": 0, "indices": 32, "float16": True, "type": "IndexIVFPQ"}
    ann.add(xb, np.arange(len(xb)))
    assert ann.gpu_index.ntotal == ann.ntotal == len(xb)
    with pytest.raises(RuntimeError, match="before vectors are added"):
        ann.to_gpu(xb)
    _, before = ann.search(xq, 10, nprobe=16)
    _, direct = ann.gpu_index.search(xq, 10)
    np.testing.assert_array_equal(before, direct)  # no selector: the GPU copy answers
    gone = np.unique(before[:, :3])  # delete some of every query's best
    ann.note_deleted(len(gone))
    assert ann.gpu_index is not None  # 3% of the rows: still filtered on the 'GPU'
    _, after = ann.search(xq, 10, nprobe=16, exclude=_dead(gone))
    assert not np.isin(after, gone).any() and (after >= 0).all()  # over-fetched back to k
    # a selector needs the CPU index
    keep = np.arange(0, len(xb), 2, dtype=np.int64)
    sel = faiss.IDSelectorBatch(len(keep), faiss.swig_ptr(keep))
    _, sub = ann.search(xq, 10, nprobe=16, selector=sel)
    assert (sub[sub >= 0] % 2 == 0).all()
    dead = _dead(np.union1d(np.arange(0, 1000), gone))
    _, ids = ann.search(xq, 10, nprobe=16, exclude=dead)  # past 10%: the CPU lists answer
    assert not np.isin(ids, np.arange(1000)).any()
    ann.note_deleted(len(dead))  # and a delete past it drops the copy
    assert ann.gpu_index is None


def test_memory_index_trains_a_gpu_copy_when_the_resident_scan_is_off(clustered, fake_faiss_gpu, monkeypatch):
    from lukhas_gpu import IndexConfig, MemoryIndex

    monkeypatch.setattr(MemoryIndex, "faiss_gpu_wanted", property(lambda self: True))
    xb, xq = clustered(5000, 32, n_queries=20, seed=9)
    index = MemoryIndex(32, IndexConfig(backend="cpu", gpu_resident="off", train_threshold=2048, nlist=16))
    index.add(xb)
    assert index.parts.ann.gpu_index is not None and index.parts.ann.gpu_index.ntotal == len(xb)
    index.delete(np.arange(10))
    ids = index.search(xq, 10).ids
    assert not np.isin(ids, np.arange(10)).any()
    assert index.parts.ann.gpu_index is not None
    index.update([20], embeddings=xb[21])  # the copy cannot replace an entry: dropped
    assert index.parts.ann.gpu_index is None and index.search(xb[21], 2, nprobe=16).ids.tolist() in ([20, 21], [21, 20])


def _faiss_has_gpus() -> bool:
    from lukhas_gpu.util.device import faiss_gpus

    return faiss_gpus() > 0


@pytest.mark.skipif(not _faiss_has_gpus(), reason="needs faiss-gpu and a GPU (faiss.get_num_gpus() == 0)")
def test_real_faiss_gpu_copy_agrees_with_its_cpu_twin(clustered):
    xb, xq = clustered(6000, 64, n_queries=50, seed=12)
    ann = IVFPQIndex(64, nlist=32, pq_m=16, seed=0)
    ann.train(xb)
    twin = ann.gpu_twin(xb)
    assert ann.to_gpu(xb)
    ann.add(xb, np.arange(len(xb)))
    twin.add_with_ids(xb, np.arange(len(xb), dtype=np.int64))
    twin.nprobe = 8
    _, gpu_ids = ann.search(xq, 10, nprobe=8)
    _, cpu_ids = twin.search(xq, 10)
    same = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(gpu_ids, cpu_ids)])
    assert same >= 0.95  # float16 lookup tables on the GPU may swap near-ties


def test_the_fast_scan_search_we_pick_holds_its_recall_through_a_reload(clustered, tmp_path):
    """``FASTSCAN_IMPLEM`` (not saved by FAISS) is set on an IVF built and on one read back, and
    its candidates -- with deleted rows excluded -- hold the recall of FAISS's default choice
    against an exact top-k, one query at a time and in a batch."""
    import faiss

    from lukhas_gpu.vectors.faisscalls import FASTSCAN_IMPLEM

    xb, xq = clustered(6000, 32, n_queries=200, seed=11)
    ann = IVFPQIndex(32, nlist=32, pq_m=8, seed=0)
    ann.train(xb)
    ann.add(xb, np.arange(len(xb)))
    path = str(tmp_path / "ivf.faiss")
    faiss.write_index(ann.index, path)
    back = IVFPQIndex.from_faiss(faiss.read_index(path), nlist=32, pq_m=8, coarse="flat")
    assert ann.index.implem == back.index.implem == FASTSCAN_IMPLEM
    gone = np.arange(0, len(xb), 5)
    live = np.setdiff1d(np.arange(len(xb)), gone)
    exact = live[np.argsort(-(xq @ xb[live].T), axis=1)[:, :10]]

    def recall(ids):  # candidates (80 a query) re-scored exactly, as the store's rerank does
        top = [c[np.argsort(-(xb[c[c >= 0]] @ q))[:10]] for c, q in zip(ids, xq)]
        return np.mean([len(set(t.tolist()) & set(e.tolist())) / 10 for t, e in zip(top, exact)])

    ours = back.search(xq, 80, nprobe=8, exclude=_dead(gone))[1]
    one = np.vstack([back.search(xq[i:i + 1], 80, nprobe=8, exclude=_dead(gone))[1] for i in range(len(xq))])
    assert np.array_equal(ours, one)  # a query's candidates do not depend on its batch
    assert not np.isin(ours[ours >= 0], gone).any()
    back.index.implem = 0  # FAISS's own choice
    theirs = back.search(xq, 80, nprobe=8, exclude=_dead(gone))[1]
    assert recall(ours) >= recall(theirs) - 0.01 and recall(ours) > 0.9
