"""The FAISS layer: removal, list sizing helpers."""
import numpy as np
import pytest

from lukhas_gpu.ann import IVFPQIndex, auto_nlist, auto_pq_m, train_sample_size


def test_removed_ids_never_return(clustered):
    xb, xq = clustered(3000, 32, n_queries=20, seed=4)
    ann = IVFPQIndex(32, nlist=16, pq_m=8, seed=0)
    ann.train(xb)
    ann.add(xb, np.arange(3000))
    gone = np.arange(0, 3000, 2)
    assert ann.remove(gone) == len(gone)
    _, ids = ann.search(xq, 50, nprobe=16)
    assert not np.isin(ids[ids >= 0], gone).any()


@pytest.mark.parametrize("n,expected", [(10_000, 256), (117_659, 1024), (1_000_000, 4096), (100, 16)])
def test_auto_nlist(n, expected):
    assert auto_nlist(n) == expected


def test_auto_pq_m_divides():
    assert auto_pq_m(384) == 96 and auto_pq_m(1024) == 128 and auto_pq_m(256, 32) == 32
    for d in (7, 100, 130, 384, 768):
        assert d % auto_pq_m(d) == 0
    assert train_sample_size(1024) == 65536 and train_sample_size(4096) == 131072


def test_two_level_kmeans_gives_k_good_centroids(clustered):
    from lukhas_gpu.ann import two_level_kmeans

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
    import lukhas_gpu.ann as ann_mod

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
