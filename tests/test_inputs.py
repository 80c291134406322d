"""Bad inputs raise the right error, name the problem, and leave the index as it was."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lukhas_gpu import IndexConfig, MemoryIndex

DIM = 32
NLIST = 16


@pytest.fixture(params=["exact", "trained"])
def index(request, clustered):
    x, _ = clustered(2100, DIM, seed=41)
    idx = MemoryIndex(DIM, IndexConfig(train_threshold=2048, nlist=NLIST))
    idx.add(x if request.param == "trained" else x[:500])
    idx.delete([3])
    assert idx.is_trained == (request.param == "trained")
    return idx


@pytest.fixture(scope="module")
def queries(clustered):
    return clustered(10, DIM, seed=42)[0]


def _state(index, queries):
    r = index.search(queries, 10, nprobe=NLIST)
    st = index.stats()
    return len(index), st["rows"], st["deleted"], r.ids.copy(), r.scores.copy()


def _assert_unchanged(index, queries, before):
    after = _state(index, queries)
    assert after[:3] == before[:3]
    np.testing.assert_array_equal(after[3], before[3])
    np.testing.assert_array_equal(after[4], before[4])


def _good(n=4, dim=DIM):
    return np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)


def _with(value, row=2, col=5):
    x = _good()
    x[row, col] = value
    return x


BAD_ARRAYS = [
    pytest.param(lambda: _good(4, DIM - 1), ValueError, "dimension 31, expected 32", id="wrong-dim"),
    pytest.param(lambda: _good(1, DIM + 1)[0], ValueError, "dimension 33, expected 32", id="wrong-dim-1d"),
    pytest.param(lambda: _good(8).reshape(2, 4, DIM), ValueError, r"1-D .*2-D .*shape \(2, 4, 32\)", id="3d"),
    pytest.param(lambda: np.ones((4, DIM), np.int64), TypeError, "floating dtype.*int64", id="int-dtype"),
    pytest.param(lambda: torch.ones(4, DIM, dtype=torch.int32), TypeError, "floating dtype.*int32", id="torch-int"),
    pytest.param(lambda: np.ones((4, DIM), bool), TypeError, "floating dtype", id="bool"),
    pytest.param(lambda: _with(np.nan), ValueError, "NaN or infinity.*row 2", id="nan"),
    pytest.param(lambda: _with(np.inf), ValueError, "NaN or infinity.*row 2", id="inf"),
    pytest.param(lambda: torch.from_numpy(_with(-np.inf, row=0)), ValueError, "NaN or infinity.*row 0", id="torch-inf"),
    pytest.param(lambda: np.empty((0, DIM), np.float32), ValueError, "empty batch", id="empty"),
    pytest.param(lambda: "not an array", TypeError, "numpy array or torch tensor", id="str"),
    pytest.param(lambda: {"a": 1.0}, TypeError, "numpy array or torch tensor", id="dict"),
]


@pytest.mark.parametrize("make, err, match", BAD_ARRAYS)
def test_add_rejects_bad_embeddings(index, queries, make, err, match):
    before = _state(index, queries)
    with pytest.raises(err, match=match) as info:
        index.add(make())
    assert "embeddings" in str(info.value)
    _assert_unchanged(index, queries, before)


@pytest.mark.parametrize("make, err, match", BAD_ARRAYS)
def test_search_rejects_bad_queries(index, queries, make, err, match):
    before = _state(index, queries)
    with pytest.raises(err, match=match) as info:
        index.search(make(), 5)
    assert "queries" in str(info.value)
    _assert_unchanged(index, queries, before)


def test_bad_first_batch_leaves_a_fresh_index_unfitted():
    index = MemoryIndex(DIM)
    with pytest.raises(ValueError, match="NaN"):
        index.add(_with(np.nan))
    assert len(index) == 0 and not index.encoder.quantizer_fitted
    ids = index.add(_good())
    np.testing.assert_array_equal(ids, np.arange(4))


@pytest.mark.parametrize("k, err, match", [
    (0, ValueError, "k must be > 0, got 0"),
    (-1, ValueError, "k must be > 0, got -1"),
    (2.5, TypeError, "k must be an int, got float"),
    ("3", TypeError, "k must be an int, got str"),
    (True, TypeError, "k must be an int, got bool"),
    (None, TypeError, "k must be an int"),
])
def test_search_rejects_bad_k(index, queries, k, err, match):
    before = _state(index, queries)
    with pytest.raises(err, match=match):
        index.search(queries, k)
    _assert_unchanged(index, queries, before)


def test_numpy_integer_k_is_accepted(index, queries):
    a = index.search(queries, np.int64(4), nprobe=NLIST)
    b = index.search(queries, 4, nprobe=NLIST)
    np.testing.assert_array_equal(a.ids, b.ids)


@pytest.mark.parametrize("kw, match", [
    ({"nprobe": 0}, "nprobe must be a positive int"),
    ({"nprobe": -3}, "nprobe must be a positive int"),
    ({"rerank": 0}, "rerank must be a positive int"),
    ({"rerank": 1.5}, "rerank must be a positive int"),
])
def test_search_rejects_bad_overrides(index, queries, kw, match):
    before = _state(index, queries)
    with pytest.raises(ValueError, match=match):
        index.search(queries, 5, **kw)
    _assert_unchanged(index, queries, before)


@pytest.mark.parametrize("ids, err, match", [
    ([10**6], ValueError, r"unknown id\(s\): \[1000000\]"),
    ([-5], ValueError, r"unknown id\(s\): \[-5\]"),
    ([0, 1, 10**6], ValueError, "unknown id"),
    ([3], ValueError, r"already deleted: \[3\]"),
    (np.array([1.0, 2.0]), TypeError, "ids must be integers.*float64"),
    (["a"], TypeError, "ids must be integers"),
])
def test_delete_rejects_bad_ids(index, queries, ids, err, match):
    before = _state(index, queries)
    with pytest.raises(err, match=match):
        index.delete(ids)
    _assert_unchanged(index, queries, before)
    assert index.contains([0, 1, 2]).all()


def test_delete_of_nothing_is_a_no_op(index, queries):
    before = _state(index, queries)
    assert index.delete([]) == 0
    assert index.delete(np.empty(0, np.int64)) == 0
    _assert_unchanged(index, queries, before)


def test_train_needs_1024_vectors(clustered):
    x, _ = clustered(1000, DIM, seed=43)
    index = MemoryIndex(DIM)
    index.add(x)
    with pytest.raises(ValueError, match="at least 1024 vectors.*holds 1000"):
        index.train()
    assert not index.is_trained and len(index) == 1000


# -- construction and configuration -------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"metric": "x"}, r"metric must be one of \('cosine', 'ip'\), got 'x'"),
    ({"nprobe": 0}, "nprobe must be a positive int, got 0"),
    ({"rerank": -1}, "rerank must be a positive int"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"nlist": 0}, "nlist must be a positive int or None"),
    ({"dim_out": 2.5}, "dim_out must be a positive int or None"),
    ({"train_threshold": 100}, "train_threshold must be >= 1024"),
    ({"train_threshold": True}, "train_threshold must be a positive int"),
    ({"quantile": 0.3}, r"quantile must be in \(0.5, 1\]"),
    ({"quantile": 1.5}, r"quantile must be in \(0.5, 1\]"),
    ({"coarse": "ivf"}, "coarse must be one of"),
    ({"vector_storage": "disk"}, "vector_storage must be one of"),
    ({"backend": "tpu"}, "backend must be one of"),
])
def test_invalid_config_values(kw, match):
    with pytest.raises(ValueError, match=match):
        IndexConfig(**kw)


def test_config_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        IndexConfig("cosine")  # type: ignore[misc]
    cfg = IndexConfig()
    with pytest.raises(Exception):
        cfg.nprobe = 3  # type: ignore[misc]


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; available: .*production"):
        IndexConfig.preset("nope")
    with pytest.raises(ValueError, match="unknown preset"):
        MemoryIndex(DIM, "nope")


def test_unknown_fields_are_rejected(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['bogus'\].*valid fields"):
        IndexConfig.from_dict({"nprobe": 8, "bogus": 1})
    toml = tmp_path / "mine.toml"
    toml.write_text('metric = "cosine"\nnprob = 8\n')
    with pytest.raises(ValueError, match=r"\['nprob'\]"):
        IndexConfig.from_toml(toml)
    with pytest.raises(ValueError, match=r"\['extra'\]"):
        IndexConfig.preset("production", extra=1)
    # a preset directory chosen by the environment, with a bad file in it
    monkeypatch.setenv("LUKHAS_GPU_CONFIGS", str(tmp_path))
    with pytest.raises(ValueError, match=r"\['nprob'\]"):
        IndexConfig.preset("mine")


@pytest.mark.parametrize("dim, err", [(0, ValueError), (-4, ValueError), (2.0, ValueError), (True, ValueError)])
def test_invalid_dim(dim, err):
    with pytest.raises(err, match="dim must be a positive int"):
        MemoryIndex(dim)


def test_invalid_config_type():
    with pytest.raises(TypeError, match="config must be an IndexConfig or a preset name, got dict"):
        MemoryIndex(DIM, {"metric": "ip"})
