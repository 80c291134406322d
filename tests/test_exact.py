"""exact.scan (float and int8 kernels, subsets, tombstones, padding, chunking) and exact.rerank."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lukhas_gpu import Encoder
from lukhas_gpu.vectors import exact

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

N, D, NQ = 5000, 48, 40


@pytest.fixture(scope="module")
def data(clustered):
    """int8 codes of clustered vectors and scale-folded queries, as the index builds them."""
    x, xq = clustered(N, D, n_queries=NQ, seed=21)
    enc = Encoder(D).fit(x)
    codes = enc.quantize(x).numpy()
    qw = enc.query_weights(torch.from_numpy(xq))
    full = qw.numpy() @ codes.astype(np.float32).T  # (NQ, N) float32 reference scores
    return codes, qw, full


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


# -- float kernel: exact ------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("codes_kind", ["numpy", "torch", "memmap"])
def test_float_kernel_matches_reference_exactly(data, device, codes_kind, tmp_path, assert_exact_topk):
    codes, qw, full = data
    if codes_kind == "torch":
        store = torch.from_numpy(codes)
    elif codes_kind == "memmap":
        store = np.memmap(tmp_path / "codes.i8", dtype=np.int8, mode="w+", shape=codes.shape)
        store[:] = codes
    else:
        store = codes
    s, i = exact.scan(qw.to(device), store, 10, kernel=exact.float_kernel)
    assert s.device.type == device and i.device.type == device
    assert_exact_topk(i, s, full, 10, atol=1e-6)


# -- int8 kernel: approximate -------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_int8_kernel_recall_and_error_bound(data, device, recall_at_k, topk_scores):
    codes, qw, full = data
    s, i = exact.scan(qw.to(device), codes, 10, kernel=exact.int8_kernel)
    s, i = _np(s), _np(i)
    ref_ids, _ = topk_scores(full, 10)
    assert recall_at_k(i, ref_ids) >= 0.95
    # each reported score differs from the true one by at most the query rounding:
    # |err| <= (amax / 127) / 2 * sum_j |code_j|
    step = np.abs(qw.numpy()).max(axis=1, keepdims=True) / 127.0
    l1 = np.abs(codes.astype(np.float32)).sum(axis=1)
    bound = 0.5 * step * l1[i] + 1e-5
    assert np.all(np.abs(s - np.take_along_axis(full, i, 1)) <= bound)
    assert np.all(np.diff(s, axis=1) <= 0)


def test_int8_kernel_direct_call_close_to_float_kernel(data):
    codes, qw, _ = data
    block = torch.from_numpy(codes[:999])
    a = exact.int8_kernel(qw, block).numpy()
    b = exact.float_kernel(qw, block).numpy()
    assert a.shape == b.shape == (NQ, 999) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 0.01 * np.abs(b).max()


# -- subsets, tombstones, padding, chunking ------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_rows_subset_scan(data, device, assert_exact_topk):
    codes, qw, full = data
    rows = np.random.default_rng(1).choice(N, 1700, replace=False)  # unsorted on purpose
    s, i = exact.scan(qw.to(device), codes, 10, rows=rows, budget=1, kernel=exact.float_kernel)  # 2 chunks
    mask = np.zeros(N, bool)
    mask[rows] = True
    assert_exact_topk(i, s, full, 10, mask, atol=1e-6)
    assert np.isin(_np(i), rows).all()
    s8, i8 = exact.scan(qw.to(device), codes, 10, rows=rows, kernel=exact.int8_kernel)
    assert np.isin(_np(i8), rows).all()


@pytest.mark.parametrize("with_rows", [False, True])
@pytest.mark.parametrize("budget", [exact.DEFAULT_BUDGET, 1])
def test_exclude_tombstones(data, with_rows, budget, topk_scores, assert_exact_topk):
    codes, qw, full = data
    rng = np.random.default_rng(2)
    top1 = topk_scores(full, 1)[0][:, 0]
    # the best row of every query, plus rows straddling the 1024-row chunk boundaries
    exclude = np.unique(np.concatenate([top1, rng.choice(N, 400, replace=False), [1023, 1024, 2047, 2048]]))
    rows = rng.permutation(N)[:3000] if with_rows else None
    mask = np.ones(N, bool)
    mask[exclude] = False
    if with_rows:
        sub = np.zeros(N, bool)
        sub[rows] = True
        mask &= sub
    s, i = exact.scan(qw, codes, 10, rows=rows, exclude=exclude, budget=budget, kernel=exact.float_kernel)
    assert_exact_topk(i, s, full, 10, mask)
    assert not np.isin(_np(i), exclude).any()


def test_k_larger_than_rows_pads(data, topk_scores):
    codes, qw, full = data
    s, i = exact.scan(qw, codes[:5], 8, kernel=exact.float_kernel)
    ref_ids, ref_scores = topk_scores(full[:, :5], 8)
    np.testing.assert_array_equal(_np(i), ref_ids)
    assert (_np(i)[:, 5:] == -1).all() and np.isneginf(_np(s)[:, 5:]).all()
    np.testing.assert_allclose(_np(s)[:, :5], ref_scores[:, :5], rtol=1e-5, atol=1e-6)

    # tombstones leave fewer live rows than k
    s, i = exact.scan(qw, codes[:5], 8, exclude=np.array([0, 2]))
    i = _np(i)
    assert (np.sort(i[:, :3], axis=1) == [1, 3, 4]).all()
    assert (i[:, 3:] == -1).all() and np.isneginf(_np(s)[:, 3:]).all()

    # subset of two rows
    s, i = exact.scan(qw, codes, 4, rows=np.array([3, 1]))
    assert (np.sort(_np(i)[:, :2], axis=1) == [1, 3]).all() and (_np(i)[:, 2:] == -1).all()

    # nothing to scan at all
    s, i = exact.scan(qw, codes, 3, rows=np.empty(0, np.int64))
    assert (_np(i) == -1).all() and np.isneginf(_np(s)).all() and _np(s).shape == (NQ, 3)


@pytest.mark.parametrize("kernel", [exact.float_kernel, exact.int8_kernel])
def test_small_budget_chunks_match_one_chunk(data, kernel, assert_valid_topk):
    codes, qw, full = data
    s1, i1 = exact.scan(qw, codes, 10, kernel=kernel)
    s2, i2 = exact.scan(qw, codes, 10, kernel=kernel, budget=1)  # 1024-row chunks: 5 of them
    np.testing.assert_array_equal(_np(i2), _np(i1))
    np.testing.assert_allclose(_np(s2), _np(s1), rtol=1e-6)
    # k above the chunk size: the running top-k must merge across chunks
    s3, i3 = exact.scan(qw[:3], codes, 1500, budget=1, kernel=exact.float_kernel)
    assert_valid_topk(i3, s3, full[:3], 1500)


# -- rerank -------------------------------------------------------------------------------------
def _rerank_mask(full, cand):
    mask = np.zeros_like(full, dtype=bool)
    for r, c in enumerate(cand):
        mask[r, c[c >= 0]] = True
    return mask


def _candidates(rng, nq, kc, n=N):
    cand = np.stack([rng.choice(n, kc, replace=False) for _ in range(nq)]).astype(np.int64)
    cand[rng.random(cand.shape) < 0.25] = -1
    cand[0] = -1  # a query without any candidate
    return cand


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [10, 50])
def test_rerank_against_brute_force(data, device, k, assert_exact_topk):
    codes, qw, full = data
    cand = _candidates(np.random.default_rng(3), NQ, 40)
    s, i = exact.rerank(qw.to(device), codes, cand, k)
    assert s.shape == i.shape == (NQ, k) and s.device.type == device
    assert_exact_topk(i, s, full, k, _rerank_mask(full, cand), atol=1e-6)
    assert (_np(i)[0] == -1).all() and np.isneginf(_np(s)[0]).all()
    for r in range(NQ):
        v = _np(i)[r][_np(i)[r] >= 0]
        assert np.isin(v, cand[r]).all()


@pytest.mark.parametrize("codes_kind", ["torch", "memmap"])
def test_rerank_codes_kinds_agree(data, codes_kind, tmp_path):
    codes, qw, _ = data
    if codes_kind == "torch":
        store = torch.from_numpy(codes.copy())
    else:
        store = np.memmap(tmp_path / "codes.i8", dtype=np.int8, mode="w+", shape=codes.shape)
        store[:] = codes
    cand = _candidates(np.random.default_rng(4), NQ, 30)
    s0, i0 = exact.rerank(qw, codes, cand, 10)
    s1, i1 = exact.rerank(qw, store, cand, 10)
    assert torch.equal(i0, i1) and torch.equal(s0, s1)


def test_rerank_many_queries(data, assert_exact_topk):
    """Enough queries x candidates that a rerank cannot take them all in one block."""
    codes, qw, _ = data
    g = torch.Generator().manual_seed(5)
    many = qw.repeat(40, 1) * (1 + 0.05 * torch.randn(40 * NQ, D, generator=g))
    full = many.numpy() @ codes.astype(np.float32).T
    cand = _candidates(np.random.default_rng(6), len(many), 64)
    s, i = exact.rerank(many, codes, cand, 10)
    assert_exact_topk(i, s, full, 10, _rerank_mask(full, cand), atol=1e-6)


@pytest.mark.parametrize("nq", [exact.RERANK_SPLIT_QUERIES - 1, exact.RERANK_SPLIT_QUERIES, 333])
def test_a_rerank_shared_among_threads_gives_one_threads_numbers(nq, tmp_path, monkeypatch):
    """From ``RERANK_SPLIT_QUERIES`` queries the groups are shared among the caller's FAISS
    threads: every score equals the one-thread route's and an exact float64 product of the
    rows, missing candidates stay -inf, whatever the split (a memory-mapped table too)."""
    from lukhas_gpu.util.device import faiss_module

    rng = np.random.default_rng(nq)
    rows = rng.integers(-127, 128, size=(3000, 40), dtype=np.int8)
    np.save(tmp_path / "rows.npy", rows)
    q = rng.standard_normal((nq, 40)).astype(np.float32)
    cand = rng.integers(0, 3000, size=(nq, 23)).astype(np.int64)
    cand[rng.random(cand.shape) < 0.1] = -1
    faiss = faiss_module()
    before = faiss.omp_get_max_threads()
    for table in (rows, np.load(tmp_path / "rows.npy", mmap_mode="r")):
        try:
            faiss.omp_set_num_threads(1)
            one = exact.candidate_scores(q, table, cand)
            faiss.omp_set_num_threads(3)
            shared = exact.candidate_scores(q, table, cand)
        finally:
            faiss.omp_set_num_threads(before)
        assert np.array_equal(one, shared)
        ref = np.einsum("qcd,qd->qc", rows[np.maximum(cand, 0)].astype(np.float64), q.astype(np.float64))
        live = cand >= 0
        assert np.all(np.isneginf(shared[~live]))
        assert np.allclose(shared[live], ref[live], rtol=1e-5, atol=1e-3)


def test_a_shared_rerank_when_no_helper_can_start_is_done_by_the_caller(monkeypatch):
    """At interpreter exit (a background retune's last step) the pool takes no work: the calling
    thread scores every group itself, the same numbers."""
    import concurrent.futures

    from lukhas_gpu.util.device import faiss_module

    rng = np.random.default_rng(3)
    rows = rng.integers(-127, 128, size=(500, 24), dtype=np.int8)
    q = rng.standard_normal((300, 24)).astype(np.float32)
    cand = rng.integers(-1, 500, size=(300, 9)).astype(np.int64)
    closed = concurrent.futures.ThreadPoolExecutor(1)
    closed.shutdown()
    faiss = faiss_module()
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(1)
        one = exact.candidate_scores(q, rows, cand)
        faiss.omp_set_num_threads(2)
        monkeypatch.setattr(exact, "_rerank_pool", lambda n: closed)
        assert np.array_equal(exact.candidate_scores(q, rows, cand), one)
    finally:
        faiss.omp_set_num_threads(before)


def test_merge_topk_equals_topk_of_concatenation():
    g = torch.Generator().manual_seed(4)
    s = torch.rand(6, 300, generator=g)
    ids = torch.arange(300).expand(6, 300) + 1000
    best_s = best_i = None
    for a in range(0, 300, 70):
        t = torch.topk(s[:, a:a + 70], min(9, s[:, a:a + 70].shape[1]), dim=1)
        best_s, best_i = exact.merge_topk(best_s, best_i, t.values, ids[:, a:a + 70].gather(1, t.indices), 9)
    ref = torch.topk(s, 9, dim=1)
    order = torch.argsort(best_s, dim=1, descending=True)
    assert torch.equal(best_s.gather(1, order), ref.values)
    assert torch.equal(best_i.gather(1, order), ref.indices + 1000)


# -- property: scan == brute force for any sizes ------------------------------------------------
def _random_scan_case(seed, n, d, nq, use_rows, n_dead):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, (n, d), dtype=np.int8)
    qw = torch.from_numpy(rng.standard_normal((nq, d)).astype(np.float32))
    full = qw.numpy() @ codes.astype(np.float32).T
    rows = rng.permutation(n)[: rng.integers(0, n + 1)] if use_rows else None
    exclude = np.unique(rng.integers(0, n, n_dead)) if n_dead else None
    mask = np.ones((nq, n), bool)
    if rows is not None:
        m = np.zeros(n, bool)
        m[rows] = True
        mask &= m
    if exclude is not None:
        mask[:, exclude] = False
    return codes, qw, full, rows, exclude, mask


CASES = dict(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 2600), d=st.integers(1, 20),
             nq=st.integers(1, 4), k=st.integers(1, 30), budget=st.sampled_from([1, 5000, exact.DEFAULT_BUDGET]),
             use_rows=st.booleans(), n_dead=st.integers(0, 50))


@settings(max_examples=40)
@given(**CASES)
def test_scan_property_float(assert_valid_topk, seed, n, d, nq, k, budget, use_rows, n_dead):
    codes, qw, full, rows, exclude, mask = _random_scan_case(seed, n, d, nq, use_rows, n_dead)
    s, i = exact.scan(qw, codes, k, rows=rows, exclude=exclude, budget=budget, kernel=exact.float_kernel)
    # float32 sums of d products of up to ~127 * |q|: rounding scales with the terms, not the score
    atol = 1e-5 * float(np.abs(full).max()) + 1e-6
    assert_valid_topk(i, s, full, k, mask, atol=atol)


@settings(max_examples=40)
@given(**{**CASES, "d": st.integers(2, 20)})  # d == 1: see test_int8_kernel_dimension_one
def test_scan_property_int8(seed, n, d, nq, k, budget, use_rows, n_dead):
    """int8 kernel: right ids/padding structure, every score within the query-rounding bound of the
    true score, and nothing returned that is worse than the true k-th best by more than twice it."""
    codes, qw, full, rows, exclude, mask = _random_scan_case(seed, n, d, nq, use_rows, n_dead)
    s, i = exact.scan(qw, codes, k, rows=rows, exclude=exclude, budget=budget, kernel=exact.int8_kernel)
    s, i = _np(s), _np(i)
    assert s.shape == i.shape == (nq, k)
    n_live = mask.sum(axis=1)
    step = np.abs(qw.numpy()).max(axis=1) / 127.0
    tol = 0.5 * step * np.abs(codes.astype(np.float32)).sum(axis=1).max() + 1e-4 * (1 + np.abs(full).max())
    for r in range(nq):
        m = min(k, n_live[r])
        assert (i[r, :m] >= 0).all() and (i[r, m:] == -1).all()
        assert np.isfinite(s[r, :m]).all() and np.isneginf(s[r, m:]).all()
        v = i[r, :m]
        assert len(np.unique(v)) == m and mask[r, v].all()
        assert np.all(np.diff(s[r, :m]) <= 0)
        assert np.all(np.abs(s[r, :m] - full[r, v]) <= tol[r])
        if m:
            kth = np.sort(full[r][mask[r]])[::-1][m - 1]
            assert full[r, v].min() >= kth - 2 * tol[r]


def test_int8_kernel_dimension_one():
    codes = np.array([[-33], [2], [127], [-127], [50]], dtype=np.int8)
    qw = torch.tensor([[0.5], [-1.0], [0.01]])
    full = qw.numpy() @ codes.astype(np.float32).T
    for _ in range(5):  # the wrong values vary from call to call
        s = exact.int8_kernel(qw, torch.from_numpy(codes)).numpy()
        np.testing.assert_allclose(s, full, rtol=0.01, atol=0.01)


@pytest.mark.parametrize("cuda_shapes", [True, False])
@pytest.mark.parametrize("nq", [1, 5, 16, 17, 33])
@pytest.mark.parametrize("d", [1, 3, 8, 13, 384])
@pytest.mark.parametrize("n", [1, 7, 9, 100])
def test_int8_queries_padding_any_device_rule(cuda_shapes, nq, d, n):
    """The CUDA branch of the int8 query path (queries padded to more than 16 rows, the inner
    dimension and the row count to multiples of 8, then sliced back) runs on the CPU here: its
    padding and slicing do not depend on the device. The accumulators equal an exact int64
    product of the same quantized queries, shaped (nq, n)."""
    rng = np.random.default_rng(nq * 1000 + d * 10 + n)
    qw = torch.from_numpy(rng.standard_normal((nq, d)).astype(np.float32))
    codes = rng.integers(-127, 128, size=(n, d), dtype=np.int8)
    q = exact._Int8Queries(qw, cuda_shapes=cuda_shapes)
    assert q.cuda is cuda_shapes
    if cuda_shapes:
        assert q.q8.shape[0] >= 17 and q.q8.shape[1] % 8 == 0
    acc = q.raw(torch.from_numpy(codes))
    assert acc.dtype == torch.int32 and tuple(acc.shape) == (nq, n)
    q8 = q.q8[:nq, :d].numpy().astype(np.int64)
    np.testing.assert_array_equal(acc.numpy(), q8 @ codes.astype(np.int64).T)
    assert not q.q8[nq:].any() and not q.q8[:, d:].any()  # the padding is zeros
    s = exact.int8_kernel(q, torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(s, (q8 @ codes.astype(np.int64).T) * q.scale.numpy(), rtol=1e-6)
