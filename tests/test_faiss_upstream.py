"""FAISS's own behaviour that lukhas_gpu works around, pinned so that an upgrade is judged.

``IndexIVFPQFastScan.remove_ids`` (``BlockInvertedLists::remove_ids``) moves the last entries
of a list into the holes and shrinks it, but leaves their 4-bit codes in the tail of the last
block; the next ``add_with_ids`` ORs its codes into those nibbles, so entries added after a
removal carry wrong codes. ``vectors/ann.py`` therefore never removes from the lists.
"""
import faiss
import numpy as np
import pytest

N, D, NLIST, M = 20_000, 64, 128, 32
K = 100  # candidates, as a rerank would take
DELETED, NEW = 300, 500


def _self_recall(remove: bool, clustered) -> float:
    """Share of entries added last that a search with every list probed finds by their own vector."""
    xb, xnew = clustered(N, D, n_queries=NEW, seed=21)
    ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(D), D, NLIST, M, 4, faiss.METRIC_INNER_PRODUCT)
    ivf.train(xb)
    ivf.add_with_ids(xb, np.arange(N, dtype=np.int64))
    if remove:
        gone = np.random.default_rng(0).choice(N, DELETED, replace=False).astype(np.int64)
        assert ivf.remove_ids(faiss.IDSelectorBatch(len(gone), faiss.swig_ptr(gone))) == DELETED
    new = np.arange(N, N + NEW, dtype=np.int64)
    ivf.add_with_ids(xnew, new)
    _, ids = ivf.search(xnew, K, params=faiss.SearchParametersIVF(nprobe=NLIST))
    return float((ids == new[:, None]).any(axis=1).mean())


def test_fast_scan_remove_ids_corrupts_the_codes_added_after_it(clustered):
    intact = _self_recall(False, clustered)
    after = _self_recall(True, clustered)
    assert intact >= 0.95, f"the reference itself is weak ({intact:.3f}): the data or FAISS changed"
    assert after < intact - 0.1, (
        f"if this fails, FAISS fixed remove_ids on fast-scan lists (self-recall of entries added after "
        f"a removal {after:.3f}, without one {intact:.3f}; FAISS {faiss.__version__}): re-judge "
        "vectors/ann.py, which keeps deleted entries in the lists and rebuilds lists instead")


def test_a_list_emptied_to_size_zero_takes_exact_codes_again(clustered):
    """What ``IVFPQIndex.rebuild_lists`` relies on: ``resize(list, 0)`` then ``add_with_ids``
    writes into zeroed blocks."""
    xb, xnew = clustered(N, D, n_queries=NEW, seed=21)
    ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(D), D, NLIST, M, 4, faiss.METRIC_INNER_PRODUCT)
    ivf.train(xb)
    ivf.add_with_ids(xb, np.arange(N, dtype=np.int64))
    gone = np.random.default_rng(0).choice(N, DELETED, replace=False).astype(np.int64)
    ivf.remove_ids(faiss.IDSelectorBatch(len(gone), faiss.swig_ptr(gone)))  # dirty tails everywhere
    inv = ivf.invlists
    for lst in range(NLIST):
        inv.resize(lst, 0)
    ivf.ntotal = 0
    keep = np.setdiff1d(np.arange(N), gone)
    ivf.add_with_ids(xb[keep], keep)
    new = np.arange(N, N + NEW, dtype=np.int64)
    ivf.add_with_ids(xnew, new)
    _, ids = ivf.search(xnew, K, params=faiss.SearchParametersIVF(nprobe=NLIST))
    assert (ids == new[:, None]).any(axis=1).mean() == pytest.approx(_self_recall(False, clustered), abs=0.01)
