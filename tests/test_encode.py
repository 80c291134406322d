"""Encoder: int8 quantizer (fit, round trip, clipping), PCA projection, chunking, persistence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lukhas_gpu import Encoder

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _normalise(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _scaled_rows(x, seed=0):
    """Rows with norms in [0.5, 3]: cosine must normalise them."""
    norms = np.random.default_rng(seed).uniform(0.5, 3.0, (len(x), 1)).astype(np.float32)
    return x * norms


def _low_rank(n, dim, rank=12, noise=0.01, seed=3):
    """Vectors close to a ``rank``-dimensional subspace: a projection to >= rank dims keeps them."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T  # (rank, dim) orthonormal rows
    z = rng.standard_normal((n, rank)) * np.linspace(2.0, 0.5, rank)
    return (z @ basis + noise * rng.standard_normal((n, dim))).astype(np.float32)


# -- quantizer fit ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_scale_is_quantile_of_normalised_sample(device, clustered):
    x, _ = clustered(2000, 32, seed=1)
    x = _scaled_rows(x)
    enc = Encoder(32, quantile=0.99).to(device).fit(x)
    a = np.abs(_normalise(x))
    kth = 1980  # ceil(0.99 * 2000)
    expected = np.sort(a, axis=0)[kth - 1] / 127.0
    np.testing.assert_allclose(_np(enc.scale), expected, rtol=1e-5)
    assert enc.quantizer_fitted and enc.scale.device.type == device


def test_small_first_sample_widens_scale_bounded_by_unit_norm(clustered):
    x, _ = clustered(100, 16, seed=2)
    enc = Encoder(16, quantile=1.0).fit(x)
    widened = np.abs(_normalise(x)).max(axis=0) * (1.0 + 1.0 / np.sqrt(100))
    np.testing.assert_allclose(_np(enc.scale), np.minimum(widened, 1.0) / 127.0, rtol=1e-5)
    # a single unit vector: 2x widening would exceed 1 on its large component -> clamped
    one = np.zeros((1, 16), np.float32)
    one[0, 3] = 1.0
    enc1 = Encoder(16).fit(one)
    assert _np(enc1.scale)[3] == pytest.approx(1.0 / 127.0, rel=1e-6)


# -- round trip / clipping ----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_round_trip_error_at_most_half_a_step(device, clustered):
    x, xq = clustered(2000, 48, n_queries=300, seed=4)
    enc = Encoder(48, quantile=1.0).to(device).fit(_scaled_rows(x))
    scale = _np(enc.scale)
    for data in (x, xq):
        codes = enc.quantize(_scaled_rows(data, seed=9))
        assert codes.dtype == torch.int8 and codes.shape == data.shape
        assert codes.device.type == device
        xn = _normalise(data)
        inside = np.abs(xn) <= 127 * scale
        err = np.abs(_np(enc.dequantize(codes)) - xn)
        assert inside.mean() > 0.99
        assert np.all(err[inside] <= (0.5 * scale * (1 + 1e-5) + 1e-7)[np.nonzero(inside)[1]])
    # the fitting sample itself is fully in range, and its extreme reaches code 127
    codes = _np(enc.quantize(x))
    assert np.all(np.abs(codes).max(axis=0) == 127)


@pytest.mark.parametrize("device", DEVICES)
def test_values_beyond_the_quantile_are_clipped(device, clustered):
    x, xq = clustered(2000, 32, n_queries=2000, seed=5)
    enc = Encoder(32, quantile=0.99).to(device).fit(x)
    scale = _np(enc.scale)
    xn = _normalise(xq)
    codes = _np(enc.quantize(xq))
    deq = _np(enc.dequantize(codes))
    beyond = np.abs(xn) > 127 * scale * (1 + 1e-6)
    assert 0.002 < beyond.mean() < 0.05  # about 1% of the values lie past the 0.99 quantile
    rows, cols = np.nonzero(beyond)
    np.testing.assert_array_equal(codes[rows, cols], 127 * np.sign(xn[rows, cols]).astype(np.int8))
    np.testing.assert_allclose(deq[rows, cols], 127 * np.sign(xn[rows, cols]) * scale[cols], rtol=1e-6)
    inside = ~beyond
    err = np.abs(deq - xn)
    assert np.all(err[inside] <= (0.5 * scale * (1 + 1e-5) + 1e-7)[np.nonzero(inside)[1]])
    # a one-hot vector saturates exactly its own dimension
    onehot = np.zeros((2, 32), np.float32)
    onehot[0, 7], onehot[1, 7] = 1.0, -1.0
    c = _np(enc.quantize(onehot))
    assert c[0, 7] == 127 and c[1, 7] == -127
    assert np.count_nonzero(c) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_query_weights_fold_the_scales(device, clustered):
    x, xq = clustered(1500, 40, n_queries=20, seed=6)
    enc = Encoder(40).to(device).fit(x)
    codes = enc.quantize(x)
    qw = enc.query_weights(torch.from_numpy(_scaled_rows(xq)))
    lhs = _np(qw @ codes.to(torch.float32).T)
    rhs = _normalise(xq) @ _np(enc.dequantize(codes)).T
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-6)


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), d=st.integers(1, 24),
       metric=st.sampled_from(["cosine", "ip"]), quantile=st.floats(0.6, 1.0))
def test_quantize_property(seed, n, d, metric, quantile):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, size=(n, d)) * rng.uniform(0.1, 5.0)).astype(np.float32)
    enc = Encoder(d, metric=metric, quantile=quantile).fit(x)
    probe = (rng.standard_t(3, size=(50, d)) * 2).astype(np.float32)
    xn = _normalise(probe) if metric == "cosine" else probe
    scale = _np(enc.scale)
    assert np.all(scale > 0)
    codes = _np(enc.quantize(probe))
    assert codes.dtype == np.int8 and codes.min() >= -127
    err = np.abs(_np(enc.dequantize(codes)) - xn)
    tol = 0.5 * scale + 1e-6 * (np.abs(xn) + 127 * scale)
    inside = np.abs(xn) <= 127 * scale
    assert np.all(err[inside] <= tol[inside])
    beyond = np.abs(xn) > 127.5 * scale
    np.testing.assert_array_equal(codes[beyond], (127 * np.sign(xn[beyond])).astype(np.int8))


# -- projection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_projection_preserves_inner_products_and_is_unit_norm(device):
    x = _low_rank(3000, 64)
    enc = Encoder(64, dim_out=16).to(device).fit(x)
    assert enc.projects and enc.projection_fitted
    c = _np(enc.components)
    assert c.shape == (16, 64)
    np.testing.assert_allclose(c @ c.T, np.eye(16), atol=1e-5)

    probe = x[:300]
    p = _np(enc.project(probe))
    assert p.shape == (300, 16)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    xn = _normalise(probe)
    assert np.abs(p @ p.T - xn @ xn.T).max() < 0.02

    # reference: uncentred PCA (top eigenvectors of the second moment), up to the eigenvectors' signs
    xa = _normalise(x).astype(np.float64)
    evals, evecs = np.linalg.eigh(xa.T @ xa / len(xa))
    top = evecs[:, np.argsort(evals)[::-1][:16]]
    ref = _normalise(xn @ top)
    np.testing.assert_allclose(p @ p.T, ref @ ref.T, atol=1e-4)


def test_projection_ip_keeps_norms_and_inner_products():
    x = _low_rank(3000, 64, seed=4)
    enc = Encoder(64, dim_out=16, metric="ip").fit(x)
    probe = x[:200]
    p = _np(enc.project(probe))
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), np.linalg.norm(probe, axis=1), rtol=0.01)
    g, gp = probe @ probe.T, p @ p.T
    assert np.abs(gp - g).max() < 0.01 * np.abs(g).max()


def test_no_projection_when_dim_out_equals_dim(clustered):
    x, _ = clustered(500, 24, seed=7)
    enc = Encoder(24, dim_out=24)
    assert not enc.projects and enc.projection_fitted  # nothing to fit
    p = _np(enc.project(_scaled_rows(x)))
    np.testing.assert_allclose(p, _normalise(x), atol=1e-6)


# -- chunking and input kinds -------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_chunking_gives_identical_results(device, clustered):
    x, _ = clustered(1203, 48, seed=8)
    x = _scaled_rows(x)
    big = Encoder(48, dim_out=16, quantile=0.999).to(device).fit(x)
    small = Encoder(48, dim_out=16, quantile=0.999, batch_size=7).to(device).fit(x)
    assert torch.equal(big.scale, small.scale)
    np.testing.assert_allclose(_np(small.components), _np(big.components), atol=1e-6)
    small.load_arrays(big.to_arrays())  # same fitted state: now compare the transforms alone
    assert torch.equal(small.quantize(x), big.quantize(x))
    assert torch.equal(small.normalize(x), big.normalize(x))
    np.testing.assert_allclose(_np(small.project(x)), _np(big.project(x)), atol=1e-6)
    codes, proj = small(x)
    assert torch.equal(codes, big.quantize(x))
    np.testing.assert_allclose(_np(proj), _np(big.project(x)), atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_numpy_and_torch_inputs_give_same_codes(device, clustered):
    x, _ = clustered(1500, 32, seed=9)
    enc = Encoder(32, dim_out=8).to(device).fit(x)
    ref_codes = enc.quantize(x)
    ref_proj = _np(enc.project(x))
    for inp in (x.astype(np.float64), torch.from_numpy(x), torch.from_numpy(x).double(),
                torch.from_numpy(x).to(device), np.asfortranarray(x)):
        assert torch.equal(enc.quantize(inp), ref_codes)
        np.testing.assert_allclose(_np(enc.project(inp)), ref_proj, atol=1e-6)
    # a 1-D vector is a batch of one
    assert torch.equal(enc.quantize(x[5]), ref_codes[5:6])


# -- persistence --------------------------------------------------------------------------------
def test_to_arrays_load_arrays_round_trip(clustered):
    x, xq = clustered(1500, 48, n_queries=50, seed=10)
    enc = Encoder(48, dim_out=12).fit(x)
    arrays = enc.to_arrays()
    assert set(arrays) == {"scale", "components", "fitted", "proj_scale", "shape"}
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    np.testing.assert_array_equal(arrays["shape"], [48, 12])
    clone = Encoder(48, dim_out=12).load_arrays(arrays)
    assert clone.quantizer_fitted and clone.projection_fitted
    assert torch.equal(clone.quantize(xq), enc.quantize(xq))
    assert torch.equal(clone.project(xq), enc.project(xq))
    assert torch.equal(clone.encode_resident(xq), enc.encode_resident(xq))
    # arrays from before the resident codes (no proj_scale) load, unfitted for them
    old = Encoder(48, dim_out=12).load_arrays({k: v for k, v in arrays.items() if k != "proj_scale"})
    assert old.projection_fitted and not old.resident_fitted
    with pytest.raises(RuntimeError, match="int8 scales are not fitted"):
        old.encode_resident(xq)
    # the torch state dict round-trips too
    other = Encoder(48, dim_out=12)
    other.load_state_dict(enc.state_dict())
    assert torch.equal(other.quantize(xq), enc.quantize(xq))
    with pytest.raises(ValueError, match="dims"):
        Encoder(48, dim_out=8).load_arrays(arrays)


def test_errors_when_not_fitted(clustered):
    x, _ = clustered(100, 32, seed=11)
    enc = Encoder(32, dim_out=8)
    with pytest.raises(RuntimeError, match="quantizer is not fitted"):
        enc.quantize(x)
    with pytest.raises(RuntimeError, match="quantizer is not fitted"):
        enc(x)
    with pytest.raises(RuntimeError, match="projection is not fitted"):
        enc.project(x)
    enc.fit(x, projection=False)
    assert enc.quantizer_fitted and not enc.projection_fitted
    with pytest.raises(RuntimeError, match="projection is not fitted"):
        enc.project(x)
    with pytest.raises(ValueError, match="at least 8 sample rows"):
        enc.fit_projection(x[:5])
    assert not enc.projection_fitted


@pytest.mark.parametrize("dim_out", [0, 33])
def test_dim_out_out_of_range(dim_out):
    with pytest.raises(ValueError, match="dim_out"):
        Encoder(32, dim_out=dim_out)
