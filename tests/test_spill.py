"""The spilled IVF stage (``ivf-spill``): SOAR's second list beside the store's IVF, the packed
codes, the merged search's distinct hits.

Held against exact references on seeded clustered data: the second list is the brute-force
minimiser of SOAR's loss, the codes are the store's IVF's, the recall at each nprobe is at least
the IVF's with one list a row, and no search returns an id twice.
"""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from lukhas_gpu.vectors import graph
from lukhas_gpu.vectors.ann import IVFPQIndex

D, N, NLIST = 64, 12000, 64


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(7)
    cent = rng.standard_normal((150, D)).astype(np.float32)
    x = cent[rng.integers(0, 150, N)] + 0.6 * rng.standard_normal((N, D)).astype(np.float32)
    q = cent[rng.integers(0, 150, 300)] + 0.6 * rng.standard_normal((300, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gt = np.argsort(-(q @ x.T), axis=1)[:, :10]
    ivf = IVFPQIndex(D, nlist=NLIST, pq_m=16)
    ivf.train(x)
    ivf.add(x, np.arange(N))
    stage = graph.new_stage("ivf-spill", D, x[:4000], N, like=ivf)
    stage.add(x[:5001], np.arange(5001))  # two adds: the second starts in partly filled blocks
    stage.add(x[5001:], np.arange(5001, N))
    return x, q, gt, ivf, stage


def _recall(ids, gt) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / 10 for a, b in zip(ids, gt)]))


def test_soar_lists_is_the_brute_force_minimiser():
    rng = np.random.default_rng(1)
    cents = rng.standard_normal((20, 8)).astype(np.float32)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    scores = x @ cents.T
    lists = np.argsort(-scores, axis=1)[:, :6]
    got = graph.soar_lists(x, cents, np.take_along_axis(scores, lists, 1), lists, lam=1.5)
    for i in range(len(x)):
        r = x[i] - cents[lists[i, 0]]
        loss = [np.sum((x[i] - cents[c]) ** 2) + 1.5 * (r @ (x[i] - cents[c])) ** 2 / (r @ r) for c in lists[i, 1:]]
        assert got[i] == lists[i, 1 + int(np.argmin(loss))]
    assert (got != lists[:, 0]).all()
    one = graph.soar_lists(x, cents, scores[:, :1], lists[:, :1])
    assert (one == -1).all()


def test_distinct_keeps_first_hits_in_order():
    ids = np.array([[5, 3, 5, 3, 9, -1], [1, 1, 1, 1, 1, 1], [-1, -1, 2, 2, 4, 7]])
    np.testing.assert_array_equal(graph.distinct(ids, 3), [[5, 3, 9], [1, -1, -1], [2, 4, 7]])
    np.testing.assert_array_equal(graph.distinct(ids[:, :2], 3), [[5, 3, -1], [1, -1, -1], [-1, -1, -1]])


def test_every_row_in_a_second_list_with_the_ivfs_code(clustered):
    x, _, _, ivf, stage = clustered
    assert stage.ntotal == N and int(stage.index.ntotal) == N and stage.problems(ivf) is None
    assert "bound" in stage.problems(None)
    want = stage._lists(x)
    assert (want != ivf.assign(x)).all()
    pk_s, pk_i = stage.index.get_CodePacker(), ivf.index.get_CodePacker()

    def entries(ix, pk):
        out = {}
        for lst in range(NLIST):
            m = ix.invlists.list_size(lst)
            if not m:
                continue
            ids = faiss.rev_swig_ptr(ix.invlists.get_ids(lst), m)
            blocks = faiss.rev_swig_ptr(ix.invlists.get_codes(lst), -(-m // 32) * pk.block_size)
            blocks = blocks.reshape(-1, pk.block_size)
            for j in range(0, m, 7):  # a sample of every list's entries, partly filled blocks included
                out.setdefault(int(ids[j]), []).append((lst, pk.unpack_1(blocks, j).tobytes()))
        return out

    got, ref = entries(stage.index, pk_s), entries(ivf.index, pk_i)
    checked = 0
    for node, hits in got.items():
        for lst, code in hits:
            assert lst == want[node]
            if node in ref:
                assert code == ref[node][0][1]
                checked += 1
    assert checked > 100


def test_bytes_are_counted_and_predicted(clustered):
    _, _, _, _, stage = clustered
    got = stage.nbytes()
    assert stage.memory_usage() == {"anon": {"stage_ivf-spill": got}}
    assert N * (8 + 8) < got  # a second entry a row: an 8 B code (PQ16x4) and an 8 B id
    assert abs(graph.stage_bytes("ivf-spill", N, D, nlist=NLIST) - got) < 0.05 * got


def test_recall_at_each_nprobe_beats_one_list_a_row(clustered):
    _, q, gt, ivf, stage = clustered
    for nprobe in (1, 2, 4, 8):
        _, one = ivf.search(q, 40, nprobe=nprobe)
        two = stage.search(q, 40, nprobe)
        assert two.shape == (len(q), 40)
        for row in two:  # no id twice
            live = row[row >= 0]
            assert len(np.unique(live)) == len(live)
        assert _recall(two, gt) >= _recall(one, gt) - 0.005, nprobe
    # at nprobe 1 the second lists matter most
    assert _recall(stage.search(q, 40, 1), gt) > _recall(ivf.search(q, 40, nprobe=1)[1], gt)


def test_fewer_distinct_hits_than_k_are_padded(clustered):
    _, q, _, _, stage = clustered
    out = stage.search(q[:3], 2 * N, 1)  # more than one list holds
    assert out.shape == (3, 2 * N) and (out[:, -1] == -1).all()
    for row in out:
        live = row[row >= 0]
        assert len(np.unique(live)) == len(live) > 0


def test_round_trip_and_a_missing_entry_is_named(clustered):
    _, q, _, ivf, stage = clustered
    back = graph.stage_from_arrays(stage.to_arrays(N), N)
    back.bind(ivf)
    assert back.kind == "ivf-spill" and back.ntotal == N
    np.testing.assert_array_equal(back.search(q, 10, 4), stage.search(q, 10, 4))
    a = stage.to_arrays(N)
    a["nodes_n"] = np.array([N + 1])
    with pytest.raises(ValueError, match="entries"):
        graph.stage_from_arrays(a, N + 1)
    # one entry's id overwritten: the check names the node held once
    inv = back.index.invlists
    lst = next(i for i in range(NLIST) if inv.list_size(i))
    ids = faiss.rev_swig_ptr(inv.get_ids(lst), inv.list_size(lst))
    victim = int(ids[0])
    ids[0] = (victim + 1) % N
    assert "times" in back.problems(ivf)
    with pytest.raises(ValueError, match="do not fit"):
        back.bind(IVFPQIndex(D, nlist=NLIST // 2, pq_m=16))


def _lists(stage) -> list:
    inv = stage.index.invlists
    return [faiss.rev_swig_ptr(inv.get_ids(i), inv.list_size(i)).copy() if inv.list_size(i) else []
            for i in range(int(stage.index.nlist))]


def test_writer_replay_reader_and_reopen_hold_the_same_lists(builtin_set, tmp_path):
    """Adds, updates, upserts and deletes after the stage is chosen, replayed by a reader's refresh and
    by a writer's reopen from the log: the same entries in the same lists, one per node, and no
    deleted or moved row returned for its old vector."""
    import lukhas_gpu
    from lukhas_gpu import IndexConfig

    xb, xq, _ = builtin_set(5200, 200, seed=3)
    cfg = IndexConfig(train_threshold=4096, nlist=64, target_recall=0.9, auto_tune=False, probe_queries=128, seed=5,
                      ann_ram_budget=100_000, gpu_resident="off")
    path = tmp_path / "s"
    index = lukhas_gpu.MemoryIndex.create(path, xb.shape[1], cfg)
    index.add(xb[:4500])
    assert index.tune(0.9, queries=xq[:100], structure="ivf-spill")["kind"] == "ivf-spill"
    index.checkpoint()
    reader = lukhas_gpu.MemoryIndex.open(path, mode="r")
    try:
        index.add(xb[4500:4800])
        index.update(np.arange(100, 140), embeddings=xb[4800:4840])
        index.delete(np.arange(0, 60, 2))
        index.update(np.arange(200, 210), embeddings=xb[4840:4850])
        reader.refresh()
        want = _lists(index.parts.stage)
        assert all(np.array_equal(a, b) for a, b in zip(_lists(reader.parts.stage), want))
        ids = np.asarray(reader.search(xb[np.r_[0:60:2, 100:140]], 10, target_recall=0.9).ids)
        assert not np.isin(ids, np.arange(0, 60, 2)).any()
        assert not (ids[30:, 0] == np.arange(100, 140)).any()  # a moved row is not where it was
        for row in ids:
            assert len(np.unique(row[row >= 0])) == len(row[row >= 0])
    finally:
        reader.close()
    index.close()
    index = lukhas_gpu.MemoryIndex.open(path, mode="w")  # the log replayed into the checkpoint's stage
    try:
        assert all(np.array_equal(a, b) for a, b in zip(_lists(index.parts.stage), want))
        assert index.parts.stage.problems(index.parts.ann) is None and index.verify()["ok"]
        index.compact()
        index.checkpoint()
    finally:
        index.close()
    index = lukhas_gpu.MemoryIndex.open(path, mode="r")
    try:
        assert all(np.array_equal(a, b) for a, b in zip(_lists(index.parts.stage), want))
    finally:
        index.close()
