"""The synthetic generator: deterministic slices, save/load round trip, the shipped model."""
import numpy as np
import pytest

from lukhas_gpu.tools.synthetic import BLOCK, SyntheticModel, builtin_model


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 24)).astype(np.float32)
    x[:1500] += 3.0  # two groups, so clusters mean something
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return SyntheticModel.fit(x, n_clusters=8, seed=0, source="test")


def test_rows_are_unit_norm_and_deterministic(model):
    a = model.sample(1000, seed=3)
    b = model.sample(1000, seed=3)
    assert a.shape == (1000, 24) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, model.sample(1000, seed=4))


def test_any_slice_matches_the_stream(model):
    start, n = BLOCK - 100, 300  # crosses a block boundary
    whole = model.sample(start + n, seed=1)
    np.testing.assert_array_equal(model.sample(n, seed=1, start=start), whole[start:])


def test_queries_differ_from_database_rows(model):
    xb = model.sample(2000)
    xq = model.queries(50)
    assert (xq @ xb.T).max() < 0.9999


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    back = SyntheticModel.load(path)
    assert back.source == "test" and back.query_spread == model.query_spread
    np.testing.assert_allclose(back.weights, model.weights)
    # centres go through int8, the basis through float16
    np.testing.assert_allclose(back.centers, model.centers, atol=np.abs(model.centers).max() / 127)
    np.testing.assert_allclose(back.basis, model.basis, atol=2e-3)


def test_fit_reproduces_cluster_weights():
    rng = np.random.default_rng(1)
    centres = np.eye(16, dtype=np.float32)[:4] * 5
    labels = rng.choice(4, size=4000, p=[0.4, 0.3, 0.2, 0.1])
    x = centres[labels] + rng.standard_normal((4000, 16)).astype(np.float32) * 0.3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = SyntheticModel.fit(x, n_clusters=4, seed=0)
    assert sorted(np.round(m.weights, 1)) == [0.1, 0.2, 0.3, 0.4]


def test_builtin_model_is_minilm_shaped():
    m = builtin_model()
    assert m.dim == 384
    x = m.sample(256)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
    assert "MiniLM" in m.source
