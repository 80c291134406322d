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
