"""The device-resident mode (``gpu_resident``): exact scans of the mirrored codes, on CPU and CUDA.

On the CPU backend ``gpu_resident="on"`` runs the very code a GPU runs (a torch tensor on the
backend's device), so every piece is checked here against exact float32 references and against
the host path; the ``cuda`` tests repeat the comparison CPU vs CUDA where a GPU is present.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lukhas_gpu import Filter, IndexConfig, MemoryIndex, Rank, plan
from lukhas_gpu.vectors.encoder import Encoder
from lukhas_gpu.vectors.mirror import DeviceMirror

DIM = 48
ON = IndexConfig(backend="cpu", gpu_resident="on", train_threshold=2048, nlist=32, nprobe=2, seed=5)
OFF = ON.replace(gpu_resident="off")


@pytest.fixture(scope="module")
def data(request):
    from conftest import make_clustered
    return make_clustered(5000, DIM, n_queries=64, seed=21)


def _int8_reference(index: MemoryIndex, xq: np.ndarray) -> np.ndarray:
    """Scores of every query against every stored row as the int8 vectors hold them."""
    enc = index.encoder
    qn = enc.normalize(xq).cpu().numpy()
    return qn @ enc.dequantize(index.parts.vectors.array).cpu().numpy().T


def test_resident_vectors_grow_and_delete():
    r = DeviceMirror(8, "cpu")
    a = torch.arange(-40, 40, dtype=torch.int8).reshape(10, 8)
    r.append(a)
    r.append(a[:3])
    assert len(r) == 13 and torch.equal(r.rows[10:], a[:3]) and r.dead is None
    r.reserve(20_000)
    assert r.capacity == 20_000 and torch.equal(r.rows[:10], a)
    r.delete(np.array([2, 11]))
    assert r.dead.nonzero().ravel().tolist() == [2, 11]
    assert r.nbytes() == 20_000 * 9
    with pytest.raises(ValueError, match=r"\(m, 8\) int8"):
        r.append(a.to(torch.int16))


def test_exact_phase_matches_the_host_path(data, assert_exact_topk):
    xb, xq = data
    on, off = MemoryIndex(DIM, ON.replace(train_threshold=8192)), MemoryIndex(DIM, OFF.replace(train_threshold=8192))
    for index in (on, off):
        index.add(xb[:1500])
    a, b = on.search(xq, 10), off.search(xq, 10)
    assert on.stats()["gpu_resident"] and not off.stats()["gpu_resident"]
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    assert_exact_topk(a.ids, a.scores, _int8_reference(on, xq), 10)


def test_trained_store_is_searched_exactly(data, assert_exact_topk, exact_topk, recall_at_k):
    xb, xq = data
    on, off = MemoryIndex(DIM, ON), MemoryIndex(DIM, OFF)
    for index in (on, off):
        index.add(xb)
    assert on.is_trained
    res = on.search(xq, 10)
    assert_exact_topk(res.ids, res.scores, _int8_reference(on, xq), 10)
    truth, _ = exact_topk(xq, xb, 10)
    r_on, r_off = recall_at_k(res.ids, truth), recall_at_k(off.search(xq, 10).ids, truth)
    assert r_on >= 0.97 and r_on > r_off  # the int8 top-k; nprobe 2 of 32 lists misses some
    mem = on.stats()["memory"]
    assert mem["anon"]["resident_vectors"] == on.parts.mirror.capacity * (DIM + 1)


def test_deletes_and_filters(data, assert_exact_topk):
    xb, xq = data
    index = MemoryIndex(DIM, ON)
    tags = [["even"] if i % 2 == 0 else ["odd"] for i in range(len(xb))]
    tags = [t + (["rare"] if i % 100 == 0 else []) for i, t in enumerate(tags)]
    ids = index.add(xb, tags=tags)
    dead_before = ids[::7]
    index.delete(dead_before)  # before the mirror exists
    index.search(xq[:2], 5)
    dead_after = ids[3::11]
    dead_after = dead_after[~np.isin(dead_after, dead_before)]
    index.delete(dead_after)  # with the mirror
    full = _int8_reference(index, xq)
    live = np.ones(len(xb), dtype=bool)
    live[dead_before] = live[dead_after] = False
    res = index.search(xq, 10)
    assert_exact_topk(res.ids, res.scores, full, 10, mask=live)
    for tag, cond in (("even", np.arange(len(xb)) % 2 == 0), ("rare", np.arange(len(xb)) % 100 == 0)):
        res = index.search(xq, 10, where=Filter(tags_all=tag))
        assert index.last_plan.strategy == "resident"
        assert_exact_topk(res.ids, res.scores, full, 10, mask=live & cond)


def test_rank_fusion_matches_the_host_path(data, assert_valid_topk):
    xb, xq = data
    rng = np.random.default_rng(3)
    ts = 1.7e9 - rng.uniform(0, 30 * 86400, len(xb))
    imp = rng.uniform(0, 1, len(xb))
    rank = Rank(similarity=1.0, recency=0.3, importance=0.2, half_life=86400 * 5, now=1.7e9)
    on, off = MemoryIndex(DIM, ON.replace(train_threshold=8192)), MemoryIndex(DIM, OFF.replace(train_threshold=8192))
    for index in (on, off):
        index.add(xb, timestamps=ts, importance=imp)
    a, b = on.search(xq, 10, rank=rank), off.search(xq, 10, rank=rank)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-5)
    # against the fused score of every row (importance as stored: 8-bit)
    prior = rank.prior(ts, on.parts.meta.importance(), 1.7e9)
    full = _int8_reference(on, xq) + prior[None, :]
    assert_valid_topk(a.ids, a.scores, full, 10, rtol=1e-4, atol=1e-4)


def test_projection_scans_projected_codes_and_reranks_full_rows(data, exact_topk, recall_at_k, assert_valid_topk):
    xb, xq = data
    cfg = ON.replace(dim_out=24)
    index = MemoryIndex(DIM, cfg)
    index.add(xb[:1000])
    assert index.search(xq[:2], 3).ids.shape == (2, 3)
    assert index.parts.mirror is None  # no projection before training: the host scan serves
    index.add(xb[1000:])
    res = index.search(xq, 10)
    assert index.parts.mirror is not None and index.parts.mirror.rows.shape == (len(xb), 24)
    # the resident rows are what encode_resident gives for the originals (up to the int8
    # rounding of the stored rows they were rebuilt from)
    direct = index.encoder.encode_resident(xb[:500]).to(torch.int32)
    assert (direct - index.parts.mirror.rows[:500].to(torch.int32)).abs().max() <= 2
    # scores are the full-dimension int8 scores; recall against float32 stays high
    assert_valid_topk(res.ids, res.scores, _int8_reference(index, xq), 10, rtol=1e-4, atol=1e-4)
    truth, _ = exact_topk(xq, xb, 10)
    assert recall_at_k(res.ids, truth) >= 0.95
    # rows added after the mirror exists take the same codes as a rebuild gives them
    more = index.add(xq[:20] + 0.01)
    rebuilt = index.encoder.resident_from(torch.from_numpy(index.parts.vectors.array[more]))
    assert (rebuilt.to(torch.int32) - index.parts.mirror.rows[more].to(torch.int32)).abs().max() <= 1


def test_calibration_and_retrain_rebuild_the_mirror(data, assert_exact_topk):
    xb, xq = data
    index = MemoryIndex(DIM, ON)
    index.add(xb[:10])  # the scales refit on each add until 1024 rows arrived
    index.search(xq[:1], 3)
    assert index.parts.mirror is not None
    index.add(xb[10:600])
    assert index.parts.mirror is None  # the stored rows were requantized
    res = index.search(xq, 5)
    assert_exact_topk(res.ids, res.scores, _int8_reference(index, xq), 5)
    index.add(xb[600:])
    index.search(xq[:1], 1)
    report = index.retrain()
    res = index.search(xq, 10)
    assert_exact_topk(res.ids, res.scores, _int8_reference(index, xq), 10)
    assert report["accepted"] in (True, False) and index.parts.mirror is not None


def test_reopened_store_builds_the_mirror(tmp_path, data, assert_exact_topk):
    xb, xq = data
    with MemoryIndex.create(tmp_path / "s", DIM, ON) as index:
        index.add(xb, contents=[f"m{i}" for i in range(len(xb))])
        index.delete([5, 6])
        index.checkpoint()
    index = MemoryIndex.open(tmp_path / "s")
    assert index.parts.mirror is None
    res = index.search(xq, 10)
    assert index.stats()["gpu_resident"]
    live = np.ones(len(xb), dtype=bool)
    live[[5, 6]] = False
    assert_exact_topk(res.ids, res.scores, _int8_reference(index, xq), 10, mask=live)
    assert res.contents()[0][0].startswith("m")


def test_out_of_device_memory_falls_back(data, monkeypatch, caplog, exact_topk, recall_at_k):
    xb, xq = data
    index = MemoryIndex(DIM, ON)
    index.add(xb)

    def full(self, codes):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(DeviceMirror, "append", full)
    with caplog.at_level(logging.WARNING, logger="lukhas_gpu.index"):
        res = index.search(xq, 10)
    assert "no room" in caplog.text and index.parts.mirror is None and not index.parts.mirror_wanted
    # the IVF answers: approximate, but each score is the row's int8 score
    full = _int8_reference(index, xq)
    np.testing.assert_allclose(res.scores, np.take_along_axis(full, res.ids, 1), rtol=1e-5, atol=1e-5)
    assert recall_at_k(res.ids, exact_topk(xq, xb, 10)[0]) >= 0.9


def test_plan_counts_the_mirror():
    cfg = IndexConfig(gpu_resident="on", capacity=None)
    p = plan(1_000_000, 384, config=cfg, backend="cpu")
    assert p.memory["anon"]["resident_vectors"] == 1_000_000 * 385
    p = plan(1_000_000, 1024, config=IndexConfig(), backend="cuda", faiss_gpu=False)
    assert p.memory["gpu"]["resident_vectors"] == 1_000_000 * 513
    assert "resident_vectors" not in plan(1_000_000, 384, config=IndexConfig(), backend="cpu").memory["anon"]
    assert "resident_vectors" not in plan(10_000, 1024, config=cfg, backend="cpu").memory["anon"]  # no projection yet


def test_config_rejects_unknown_mode():
    with pytest.raises(ValueError, match="gpu_resident"):
        IndexConfig(gpu_resident="yes")


def test_encode_resident_is_one_pass_of_project_then_quantize(data):
    xb, _ = data
    enc = Encoder(DIM, dim_out=16).fit(xb)
    codes, proj = enc(xb[:300])
    direct = enc.encode_resident(xb[:300])
    assert direct.dtype == torch.int8 and direct.shape == (300, 16)
    assert torch.equal(direct, enc.resident_from(codes, proj))
    same = Encoder(DIM).fit(xb)  # no projection: the resident codes are the stored codes
    assert torch.equal(same.encode_resident(xb[:50]), same.quantize(xb[:50]))


# -- CUDA: the same searches on the GPU give the CPU's results -----------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dim_out", [None, 24])
def test_cuda_resident_matches_cpu(data, dim_out):
    xb, xq = data
    rng = np.random.default_rng(4)
    tags = [["a"] if i % 10 == 0 else [] for i in range(len(xb))]
    ts = 1.7e9 - rng.uniform(0, 86400 * 10, len(xb))
    out = {}
    for backend in ("cpu", "cuda"):
        index = MemoryIndex(DIM, ON.replace(backend=backend, dim_out=dim_out))
        index.add(xb, tags=tags, timestamps=ts)
        index.delete(np.arange(0, len(xb), 13))
        out[backend] = [index.search(xq, 10), index.search(xq, 10, where=Filter(tags_all="a")),
                        index.search(xq, 10, rank=Rank(recency=0.2, now=1.7e9))]
        if backend == "cuda":
            assert index.stats()["memory"]["gpu"]["resident_vectors"] > 0
    for a, b in zip(out["cpu"], out["cuda"]):
        same = (a.ids == b.ids).mean()
        assert same >= 0.99  # int8 query rounding on two backends can swap a near-tie
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_cuda_queries_stay_on_the_device(data):
    xb, xq = data
    index = MemoryIndex(DIM, IndexConfig(backend="cuda", train_threshold=2048, nlist=32))
    index.add(torch.from_numpy(xb).cuda())
    assert index.stats()["gpu_resident"] is False  # built at the first search
    res = index.search(torch.from_numpy(xq).cuda(), 10)
    assert res.ids.is_cuda and res.scores.is_cuda and index.parts.mirror.rows.is_cuda
    res_np = index.search(xq, 10)
    assert isinstance(res_np.ids, np.ndarray)
    np.testing.assert_array_equal(res.ids.cpu().numpy(), res_np.ids)
