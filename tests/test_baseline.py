"""The naive store of the old design: it is the recall reference of ``lukhas-gpu bench``."""
import json

import numpy as np

from lukhas_gpu.tools.baseline import NaiveMemoryStore


def test_naive_search_is_exact_cosine():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((500, 16)).astype(np.float32)
    xq = rng.standard_normal((20, 16)).astype(np.float32)
    store = NaiveMemoryStore(16)
    ids = store.add(xb, contents=[f"m{i}" for i in range(500)], tags=[["a"] if i % 2 else ["b"] for i in range(500)])
    scores, got = store.search(xq, 5)
    xn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    qn = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    ref = np.argsort(-(qn @ xn.T), axis=1)[:, :5]
    np.testing.assert_array_equal(got, np.asarray(ids)[ref])
    np.testing.assert_allclose(scores, np.take_along_axis(qn @ xn.T, ref, 1), rtol=1e-5)


def test_naive_delete_and_get():
    store = NaiveMemoryStore(4)
    store.add(np.eye(4, dtype=np.float32), contents=list("wxyz"), tags=[["t"]] * 4)
    store.delete([1])
    assert len(store) == 3 and store.tag_index["t"] == {0, 2, 3}
    _, ids = store.search(np.array([0, 1, 0, 0], dtype=np.float32), 3)
    assert 1 not in ids
    assert store.get([2])[0]["content"] == "y"
    assert json.loads(store.get([0])[0]["metadata"])["tags"] == ["t"]
