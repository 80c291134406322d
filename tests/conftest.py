"""Shared fixtures: seeded clustered data, an exact float32 top-k reference, recall@k, the cuda rule.

Helpers are exposed as fixtures that return plain functions (``clustered``, ``exact_topk``,
``recall_at_k``), so test modules need no imports from this file.
"""
from __future__ import annotations

import importlib
import os

import faiss
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests are seeded too: the same examples on every run, nothing written to disk.
settings.register_profile("lukhas", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lukhas")

# torch and faiss each bring an OpenMP runtime; on a small shared machine their spinning worker
# threads starve each other (one IVF training measured 0.1 s alone, >10 s contended). One thread
# each keeps the suite fast and its results reproducible.
torch.set_num_threads(1)
faiss.omp_set_num_threads(1)

CUDA_AVAILABLE = torch.cuda.is_available()

#: Values of the ``CI`` environment variable that make a missing optional dependency an error.
CI_VALUES = ("1", "true", "yes")


def optional_import(name: str):
    """``pytest.importorskip(name)`` for the suite's optional dependencies (the extras), except
    where ``CI`` is true: there every extra is installed, so a missing one FAILS the tests that
    need it (at collection, for a module-level import) instead of skipping them silently.

    Test modules import it (``from conftest import optional_import``), at module level or in a test.
    """
    if os.environ.get("CI", "").strip().lower() not in CI_VALUES:
        return pytest.importorskip(name)
    try:
        return importlib.import_module(name)
    except ImportError as e:
        pytest.fail(f"CI: optional dependency {name!r} is missing ({e}); CI installs every extra "
                    f"(pip install -e '.[cpu,dev]')", pytrace=False)


def pytest_collection_modifyitems(config, items):
    if CUDA_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """The suite must not depend on the caller's backend / preset overrides."""
    monkeypatch.delenv("LUKHAS_GPU_BACKEND", raising=False)
    monkeypatch.delenv("LUKHAS_GPU_CONFIGS", raising=False)


# -- data ---------------------------------------------------------------------------------------
def make_clustered(n: int, dim: int, *, n_queries: int = 0, n_clusters: int = 24, intrinsic: int = 8,
                   spread: float = 0.7, noise: float = 0.05, seed: int = 0):
    """Unit-norm vectors from a mixture of Gaussians, like embeddings: ``(xb, xq)`` float32.

    Each cluster is a random unit centre plus a Gaussian on its own ``intrinsic``-dimensional
    subspace (``spread`` is its total standard deviation) plus a little isotropic ``noise``; every
    row is then L2-normalised. Queries come from the same mixture (other draws), so nearest
    neighbours are meaningful rather than the near-ties of isotropic noise.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    r = min(intrinsic, dim)
    bases = np.linalg.qr(rng.standard_normal((n_clusters, dim, r)))[0]  # (c, dim, r) orthonormal columns

    def draw(m: int) -> np.ndarray:
        label = rng.integers(0, n_clusters, m)
        z = rng.standard_normal((m, r)) * (spread / np.sqrt(r))
        x = centres[label] + np.einsum("mdr,mr->md", bases[label], z)
        x += noise / np.sqrt(dim) * rng.standard_normal((m, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    xb = draw(n)
    xq = draw(n_queries) if n_queries else np.empty((0, dim), dtype=np.float32)
    return xb, xq


@pytest.fixture(scope="session")
def clustered():
    """Factory: ``clustered(n, dim, n_queries=..., seed=...) -> (xb, xq)``."""
    return make_clustered


def make_builtin(n: int, n_queries: int, seed: int):
    """``n`` memories and ``n_queries`` queries of the package's built-in model (seeds ``seed`` and
    ``seed + 1``) with the queries' exact float top-10: ``(xb, xq, gt)``."""
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model()
    xb, xq = model.sample(n, seed=seed), model.queries(n_queries, seed=seed + 1)
    return xb, xq, np.argsort(-(xq @ xb.T), axis=1)[:, :10]


@pytest.fixture(scope="session")
def builtin_set():
    """Factory: ``builtin_set(n, n_queries, seed) -> (xb, xq, gt)``."""
    return make_builtin


# -- references ---------------------------------------------------------------------------------
def topk_from_scores(scores, k: int, mask=None):
    """Top-k of a score matrix ``(nq, n)``: ``(ids (nq, k) int64, scores (nq, k) float32)``.

    ``mask`` (nq, n) or (n,) bool marks the columns that may be returned (default all). Missing
    results are padded with id -1 and score -inf, like the library.
    """
    s = np.asarray(scores, dtype=np.float32)
    if mask is not None:
        s = np.where(np.broadcast_to(mask, s.shape), s, -np.inf).astype(np.float32)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    ids = order.astype(np.int64)
    top = np.take_along_axis(s, order, axis=1).astype(np.float32)
    ids[~np.isfinite(top)] = -1
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids, top


def exact_topk_ref(queries, base, k: int, *, mask=None):
    """Exact inner-product top-k in float32 numpy (``queries @ base.T``); see :func:`topk_from_scores`."""
    q = np.asarray(queries, dtype=np.float32)
    b = np.asarray(base, dtype=np.float32)
    return topk_from_scores(q @ b.T, k, mask)


@pytest.fixture(scope="session")
def exact_topk():
    """``exact_topk(queries, base, k, mask=None) -> (ids, scores)``, float32 inner products."""
    return exact_topk_ref


@pytest.fixture(scope="session")
def topk_scores():
    """``topk_scores(score_matrix, k, mask=None) -> (ids, scores)``."""
    return topk_from_scores


def recall(found, truth) -> float:
    """Mean over queries of ``|found ∩ truth| / |truth|`` (ids -1 ignored in both)."""
    found = np.asarray(found)
    truth = np.asarray(truth)
    assert found.shape[0] == truth.shape[0]
    total = 0.0
    for f, t in zip(found, truth):
        t = set(int(i) for i in t if i >= 0)
        f = set(int(i) for i in f if i >= 0)
        total += len(f & t) / max(len(t), 1)
    return total / max(len(truth), 1)


@pytest.fixture(scope="session")
def recall_at_k():
    """``recall_at_k(found_ids, true_ids)`` in [0, 1]."""
    return recall


def row_gaps(scores) -> np.ndarray:
    """Per row, the smallest gap between consecutive finite scores (``inf`` if none)."""
    s = np.asarray(scores, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        d = s[:, :-1] - s[:, 1:]
    d = np.where(np.isfinite(d), d, np.inf)
    return d.min(axis=1) if d.shape[1] else np.full(len(s), np.inf)


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def check_valid_topk(ids, scores, full, k: int, mask=None, *, rtol=1e-5, atol=1e-5):
    """Tie-robust top-k check against a reference score matrix ``full`` (nq, n).

    The scores equal the reference top-k scores; every returned id really has the score reported
    for it and is allowed by ``mask``; valid ids are unique; padding is id -1 with score -inf.
    """
    ids, scores = _np(ids), _np(scores)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids.shape == scores.shape == (full.shape[0], k)
    _, ref_scores = topk_from_scores(full, k, mask)
    np.testing.assert_allclose(scores, ref_scores, rtol=rtol, atol=atol)
    valid = ids >= 0
    np.testing.assert_array_equal(valid, np.isfinite(scores))
    rows, cols = np.nonzero(valid)
    np.testing.assert_allclose(scores[rows, cols], full[rows, ids[rows, cols]], rtol=rtol, atol=atol)
    allowed = None if mask is None else np.broadcast_to(mask, full.shape)
    for r in range(ids.shape[0]):
        v = ids[r][valid[r]]
        assert len(np.unique(v)) == len(v)
        if allowed is not None:
            assert allowed[r, v].all()


def check_exact_topk(ids, scores, full, k: int, mask=None, *, min_gap=1e-5, rtol=1e-5, atol=1e-5):
    """Exactly the reference top-k: :func:`check_valid_topk`, plus identical ids on every query
    whose reference top-(k+1) has no gap below ``min_gap`` (float rounding could swap a near-tie).
    At least 80% of the queries must be tie-free, so the id check always has teeth."""
    check_valid_topk(ids, scores, full, k, mask, rtol=rtol, atol=atol)
    ref_ids, ref_scores = topk_from_scores(full, k + 1, mask)
    clear = row_gaps(ref_scores) > min_gap
    assert clear.mean() >= 0.8, "reference too tie-prone for an exact id check"
    np.testing.assert_array_equal(_np(ids)[clear], ref_ids[clear, :k])


@pytest.fixture(scope="session")
def assert_valid_topk():
    """``assert_valid_topk(ids, scores, full, k, mask=None)``: see :func:`check_valid_topk`."""
    return check_valid_topk


@pytest.fixture(scope="session")
def assert_exact_topk():
    """``assert_exact_topk(ids, scores, full, k, mask=None)``: see :func:`check_exact_topk`."""
    return check_exact_topk
