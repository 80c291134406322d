"""One query at a time: the single-query path (numpy query encoding, one FAISS thread, cached
search parameters and deletion selector, 1-D top-k) held to the batch path and an exact reference."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import lukhas_gpu
from lukhas_gpu import IndexConfig
from lukhas_gpu.tools.synthetic import builtin_model
from lukhas_gpu.util.device import faiss_module
from lukhas_gpu.vectors import exact
from lukhas_gpu.vectors.encoder import SMALL_QUERIES, Encoder

N, NQ, D = 8_000, 64, 384


@pytest.fixture(scope="module")
def data():
    model = builtin_model()
    return model.sample(N, seed=5), model.queries(NQ, seed=6)


@pytest.fixture(scope="module")
def index(data):
    xb, _ = data
    idx = lukhas_gpu.MemoryIndex(D, IndexConfig(train_threshold=4096, nlist=64, nprobe=8, rerank=4,
                                                auto_tune=False, seed=3))
    idx.add(xb)
    return idx


@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("dim_out", [None, 48])
def test_numpy_query_forms_equal_the_torch_rule(metric, dim_out):
    rng = np.random.default_rng(11)
    dim = 96
    enc = Encoder(dim, dim_out=dim_out or dim, metric=metric)
    sample = torch.from_numpy(rng.standard_normal((500, dim)).astype(np.float32))
    enc.fit(sample)
    for nq in (1, 3, SMALL_QUERIES):
        q = rng.standard_normal((nq, dim)).astype(np.float32) * rng.choice([1e-20, 1.0, 1e20])
        qw, qp = enc.query_forms(torch.from_numpy(q))
        assert isinstance(qp, np.ndarray) and qw.dtype == torch.float32
        np.testing.assert_allclose(qw.numpy(), enc.query_weights(torch.from_numpy(q)).numpy(), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(qp, enc.project(torch.from_numpy(q)).numpy(), rtol=1e-5, atol=2e-6)
        np.testing.assert_allclose(enc.normalized_queries(torch.from_numpy(q)),
                                   enc.normalize(torch.from_numpy(q)).numpy(), rtol=2e-6, atol=1e-7)
        qw2, none = enc.query_forms(torch.from_numpy(q), project=False)
        assert none is None and torch.equal(qw, qw2)
    bf = torch.from_numpy(rng.standard_normal((2, dim)).astype(np.float32)).to(torch.bfloat16)
    np.testing.assert_array_equal(enc.query_forms(bf)[0].numpy(), enc.query_weights(bf).numpy())  # torch's
    big = rng.standard_normal((SMALL_QUERIES + 1, dim)).astype(np.float32)  # the torch path itself
    qw, qp = enc.query_forms(torch.from_numpy(big))
    assert torch.equal(qw, enc.query_weights(torch.from_numpy(big)))


def test_top_candidates_of_one_query_equal_the_batch_rule():
    rng = np.random.default_rng(2)
    for kc in (5, 10, 37):
        scores = rng.standard_normal((1, kc)).astype(np.float32)
        scores[0, :3] = -np.inf
        cand = rng.permutation(1000)[:kc][None, :].astype(np.int64)
        one = exact.top_candidates(scores, cand, 10)
        two = exact.top_candidates(np.repeat(scores, 2, 0), np.repeat(cand, 2, 0), 10)
        np.testing.assert_array_equal(one[0][0], two[0][0])
        np.testing.assert_array_equal(one[1][0], two[1][0])


def test_single_queries_equal_the_batch_and_the_exact_reference(index, data):
    _, xq = data
    batch = index.search(xq, 10)
    for i in range(0, NQ, 7):
        one = index.search(xq[i], 10)  # 1-D: one query
        assert set(one.ids.tolist()) == set(batch.ids[i].tolist())
        np.testing.assert_allclose(np.sort(one.scores), np.sort(batch.scores[i]), rtol=1e-5, atol=1e-6)
    # every list probed and a deep rerank: the exact top-k of the stored (dequantized) rows
    rows = index.dequantized(np.arange(N)).numpy()
    for i in range(0, NQ, 9):
        qn = xq[i] / np.linalg.norm(xq[i])
        ref = np.argsort(-(rows @ qn), kind="stable")[:10]
        one = index.search(xq[i], 10, nprobe=64, rerank=400)
        assert len(set(one.ids.tolist()) & set(ref.tolist())) >= 9
        np.testing.assert_allclose(one.scores, np.minimum(np.sort(rows @ qn)[::-1][:10], 1.0), rtol=1e-4, atol=1e-4)


def test_one_faiss_thread_for_a_single_query_then_restored(index, data):
    faiss = faiss_module()
    _, xq = data
    before = faiss.omp_get_max_threads()
    index.search(xq[0], 10)
    assert faiss.omp_get_max_threads() == before
    seen = [[], []]  # one list per thread: appends of two threads interleave

    def worker(out):
        for i in range(20):
            out.append(index.search(xq[i], 10).ids.tolist())

    threads = [threading.Thread(target=worker, args=(out,)) for out in seen]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen[0]) == len(seen[1]) == 20 and seen[0] == seen[1]
    assert faiss.omp_get_max_threads() == before


def test_deleted_rows_never_returned_with_the_cached_selector(data):
    xb, xq = data
    idx = lukhas_gpu.MemoryIndex(D, IndexConfig(train_threshold=4096, nlist=64, nprobe=16, rerank=4,
                                                auto_tune=False, seed=3))
    idx.add(xb)
    first = idx.search(xq[0], 10).ids
    for step, victims in enumerate((first[:3], first[3:5], np.array([N - 1]), first[5:])):
        idx.delete(victims)  # within the packed array's length (bits set in place), then past it
        gone = set(idx.parts.tombstones.array().tolist())
        for i in range(8):
            ids = idx.search(xq[i], 10).ids
            assert not gone & set(ids.tolist()), (step, i)
            batch = idx.search(xq[i: i + 2], 10).ids[0]
            assert set(ids.tolist()) == set(batch.tolist())
