"""Candidate stages beside the IVF-PQ: an HNSW graph over 4-bit codes and IVF-RaBitQ.

Every recall is measured against an exact float32 reference on queries the tuner never saw
(seeded synthetic MiniLM-like data); deletes, vector updates, checkpoints, reopening, readers and
retraining are run with the stage in place.
"""
from __future__ import annotations

import numpy as np
import pytest

import lukhas_gpu
from lukhas_gpu import IndexConfig
from lukhas_gpu.store import layout
from lukhas_gpu.vectors import graph

N, NQ, D = 6000, 400, 384
TARGET = 0.9


@pytest.fixture(scope="module")
def data(builtin_set):
    return builtin_set(N, NQ, seed=11)


def _config(**kw):
    base = dict(train_threshold=4096, nlist=64, target_recall=TARGET, auto_tune=False, probe_queries=256, seed=5,
                ann_ram_budget=100_000, gpu_resident="off")
    return IndexConfig(**{**base, **kw})


def _recall(ids, gt) -> float:
    ids = np.asarray(ids)
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt)]))


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    xb, _, _ = data
    path = tmp_path_factory.mktemp("graph") / "store"
    index = lukhas_gpu.MemoryIndex.create(path, D, _config())
    index.add(xb)
    assert index.is_trained
    index.checkpoint()
    yield index, path
    index.close()


# -- the node map ------------------------------------------------------------------------------------
class _Dead:
    def __init__(self, rows):
        self.rows = np.asarray(sorted(rows), dtype=np.int64)

    def __len__(self):
        return len(self.rows)

    def array(self):
        return self.rows

    def packed(self):
        bits = np.zeros(int(self.rows.max()) + 1, dtype=bool)
        bits[self.rows] = True
        return np.packbits(bits, bitorder="little")


def test_node_map_is_the_identity_until_a_row_moves():
    nm = graph.NodeMap()
    assert nm.add(np.arange(5)).tolist() == [0, 1, 2, 3, 4] and not nm.mapped and nm.nbytes() == 0
    assert nm.rows(np.array([[3, -1]])).tolist() == [[3, -1]]
    assert nm.excluded(None) is None
    nodes = nm.add(np.array([1, 3]), moved=True)  # rows 1 and 3 re-added: nodes 5 and 6
    assert nodes.tolist() == [5, 6] and nm.mapped
    assert nm.rows(np.array([5, 6, 0, -1])).tolist() == [1, 3, 0, -1]
    bits = np.unpackbits(nm.excluded(_Dead([4])), bitorder="little")[:7]
    assert bits.tolist() == [0, 1, 0, 1, 1, 0, 0]  # superseded 1 and 3, deleted row 4's node
    bits = np.unpackbits(nm.excluded(_Dead([3])), bitorder="little")[:7]
    assert bits.tolist() == [0, 1, 0, 1, 0, 0, 1]  # row 3 deleted after it moved: its new node
    nm.add(np.array([5, 6]))
    assert nm.rows(np.array([7, 8])).tolist() == [5, 6]
    back = graph.NodeMap.from_arrays(nm.to_arrays(7), 7)
    assert back.n == 9 and back.rows(np.arange(9)).tolist() == nm.rows(np.arange(9)).tolist()
    bad = nm.to_arrays(7)
    bad["row_of"] = bad["row_of"] + 100
    with pytest.raises(ValueError, match="node map"):
        graph.NodeMap.from_arrays(bad, 7)
    with pytest.raises(ValueError, match="nodes"):
        graph.NodeMap.from_arrays({"n": np.array([9])}, 7)


def test_stage_bytes_and_the_budget():
    # the graph's links: 2M int32 at level 0 plus the upper levels, a level and an offset per node
    assert graph.stage_bytes("graph", 1000, 384) == round(1000 * (192 + 4 * (32 + 16 / 15) + 12))
    assert graph.stage_bytes("graph", 1000, 384, m=32) > graph.stage_bytes("graph", 1000, 384)
    assert 60 < graph.stage_bytes("rabitq", 10**6, 384) / 10**6 < 75
    with pytest.raises(ValueError, match="unknown candidate stage"):
        graph.stage_bytes("lsh", 10, 8)
    # a second entry a row: a 48 B code and an 8 B id, half a block a list
    assert 56 < graph.stage_bytes("ivf-spill", 10**6, 384) / 10**6 < 60
    # the default budget keeps a 1M store within 250 B: IVF-RaBitQ (the largest that fits) fits
    # beside the IVF, the graph not
    kind, nbytes = graph.planned_stage(10**6, 384, IndexConfig().ann_ram_budget, 67 * 10**6)
    assert kind == "rabitq" and nbytes < 75 * 10**6
    assert graph.planned_stage(10**6, 384, 130, 67 * 10**6) == (None, 0)  # the spilled lists: forced only
    assert graph.planned_stage(10**6, 384, 100, 67 * 10**6) == (None, 0)
    assert graph.planned_stage(10**6, 384, 500, 67 * 10**6)[0] == "graph"
    p = lukhas_gpu.plan(10**6, 384)
    assert "stage_rabitq" in p.memory["anon"] and "candidate_stage" in p.memory["disk"]
    with pytest.raises(ValueError, match="ann_ram_budget"):
        IndexConfig(ann_ram_budget=0)


# -- recall against the exact reference ---------------------------------------------------------------
@pytest.mark.parametrize("structure", graph.STRUCTURES)
def test_stage_holds_the_target_on_held_out_queries(store, data, structure):
    index, _ = store
    _, xq, gt = data
    rep = index.tune(TARGET, queries=xq[: NQ // 2], structure=structure)
    assert rep["kind"] == structure and rep["met"], rep
    assert index.parts.stage.kind == structure and index.parts.stage.ready
    assert all(t["kind"] == structure for t in rep["tried"])
    res = index.search(xq[NQ // 2:], 10)  # config.target_recall: the tuned stage
    assert _recall(res.ids, gt[NQ // 2:]) >= TARGET
    # the stage is what answered: its candidates alone, reranked, give the same ids
    assert index.stats()["memory"]["anon"][f"stage_{structure}"] > 0


def test_the_tuner_chooses_by_cost_within_the_budget(store, data):
    index, _ = store
    _, xq, _ = data
    rep = index.tune(TARGET, queries=xq[: NQ // 2])
    kinds = {t["kind"] for t in rep["tried"]}
    assert {*graph.AUTO_STRUCTURES, "exact", "fixed"} <= kinds and "ivf-spill" not in kinds and rep["met"], rep["tried"]
    # the cheapest row meeting the target is the one chosen, whatever structure it is
    ok = [t for t in rep["tried"] if t["bound"] >= TARGET]
    best = min(ok, key=lambda t: 1 / t["qps"])
    assert (best["kind"], best["rerank"]) == (rep["kind"], rep["rerank"])
    stage = index.parts.stage
    assert (stage.kind if stage is not None else None) == (rep["kind"] if rep["kind"] in graph.STRUCTURES
                                                           else None)
    # a lookup at another target that lands on a stage not held falls back to the IVF's rows
    assert index.search(xq[:5], 10, target_recall=0.99).ids.shape == (5, 10)
    # a budget that only the IVF fits: no stage is built or kept
    old = index.config
    try:
        index.config = old.replace(ann_ram_budget=1)
        rep = index.tune(TARGET, queries=xq[: NQ // 2])
    finally:
        index.config = old
    assert rep["kind"] in ("fixed", "adaptive", "exact") and index.parts.stage is None
    assert not {t["kind"] for t in rep["tried"]} & set(graph.STRUCTURES)  # nothing built or measured
    with pytest.raises(ValueError, match="structure"):
        index.tune(TARGET, structure="lsh")


# -- writes, persistence, readers ---------------------------------------------------------------------
@pytest.mark.parametrize("structure", graph.STRUCTURES)
def test_stage_through_deletes_updates_reopen_and_readers(data, tmp_path, structure):
    xb, xq, _ = data
    n = 4500
    path = tmp_path / "s"
    index = lukhas_gpu.MemoryIndex.create(path, D, _config())
    index.add(xb[:n])
    index.tune(TARGET, queries=xq[:200], structure=structure)
    stage = index.parts.stage
    assert stage.kind == structure and stage.covered() == n
    # adds reach the stage
    index.add(xb[n: n + 300])
    assert stage.covered() == n + 300
    # deletes: never returned by the stage (its nodes stay, excluded)
    gone = np.arange(0, 300, 3)
    index.delete(gone)
    res = index.search(xb[gone], 10)
    assert not np.isin(np.asarray(res.ids), gone).any()
    # updates: a moved row is found at its new vector, not returned for its old one's self-match
    moved = np.arange(1000, 1040)
    new = xb[n + 300: n + 340]
    index.update(moved, embeddings=new)
    assert stage.nodes.mapped
    res = index.search(new, 1)
    assert (np.asarray(res.ids)[:, 0] == moved).mean() >= 0.95
    res = index.search(xb[moved], 1)
    assert not (np.asarray(res.ids)[:, 0] == moved).any()
    index.compact()
    assert index.parts.stage is stage
    before = np.asarray(index.search(xq[200:], 10).ids)  # (a compaction re-orders the IVF's ties)
    index.checkpoint()
    # a reader loads the stage and replays the log into it
    reader = lukhas_gpu.MemoryIndex.open(path, mode="r")
    try:
        assert reader.parts.stage.kind == structure and reader.parts.stage.ready
        np.testing.assert_array_equal(np.asarray(reader.search(xq[200:], 10).ids), before)
        index.add(xb[n + 400: n + 450])
        index.delete([5])
        reader.refresh()
        assert reader.parts.stage.covered() == reader.parts.rows == index.parts.rows
        assert 5 not in np.asarray(reader.search(xb[[5]], 10).ids)
    finally:
        reader.close()
    index.close()
    index = lukhas_gpu.MemoryIndex.open(path, mode="w")  # the log replayed into the checkpoint's stage
    try:
        st = index.parts.stage
        assert st.kind == structure and st.covered() == index.parts.rows and st.nodes.mapped
        assert index.tuning()["kind"] == structure
        assert 5 not in np.asarray(index.search(xb[[5]], 10).ids)
        assert index.verify()["ok"]
        # a retrain (a new projected space) drops the stage; searches go back to the IVF
        rep = index.retrain(tolerance=0.99)
        if rep["accepted"]:
            assert index.parts.stage is None
            assert index.search(xq[:5], 10).ids.shape == (5, 10)
    finally:
        index.close()


def test_a_damaged_stage_file_is_named(data, tmp_path):
    xb, xq, _ = data
    path = tmp_path / "d"
    index = lukhas_gpu.MemoryIndex.create(path, D, _config())
    index.add(xb[:4200])
    index.tune(TARGET, queries=xq[:100], structure="rabitq")
    gen = index.checkpoint()
    index.close()
    f = gen / "stage.npz"
    assert f.exists()
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    with pytest.raises(layout.CorruptStoreError, match="stage"):
        lukhas_gpu.MemoryIndex.open(path, mode="r", verify=True)
    with pytest.raises(ValueError, match="unknown candidate stage"):
        graph.stage_from_arrays({"kind": np.frombuffer(b"lsh", np.uint8), "index": np.zeros(4, np.uint8),
                                 "nodes_n": np.array([0])}, 10)


def test_writes_during_a_build_reach_the_stage(data, tmp_path, monkeypatch):
    """Adds and vector updates between the build's locked steps: every row ends with one current
    node whose vector is the row's stored one (updated rows below the build's front re-added,
    those above it read when the build gets there)."""
    from lukhas_gpu.index import candidates, ivflists

    xb, _, _ = data
    index = lukhas_gpu.MemoryIndex(D, _config())
    index.add(xb[:4200])
    monkeypatch.setattr(graph, "BUILD_BATCH", 700)
    rng = np.random.default_rng(3)
    steps = []

    def between_steps():
        i = len(steps)
        steps.append(i)
        if i in (1, 3):
            index.add(xb[4200 + 50 * i: 4250 + 50 * i])
        if i in (2, 4):
            rows = rng.choice(index.parts.rows, 30, replace=False)
            index.update(rows, embeddings=xb[rng.choice(N, 30, replace=False)])

    stage = candidates.build(index, "graph", between_steps)
    assert len(steps) >= 5 and stage in index.parts.building and not stage.ready
    parts = index.parts
    assert stage.covered() == parts.rows == 4300
    nm = stage.nodes
    current = nm.node_of[:parts.rows] if nm.mapped else np.arange(parts.rows)
    got = stage.index.reconstruct_batch(current)
    want = ivflists.vectors_of(parts, np.arange(parts.rows))
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.95, np.argsort(cos)[:10]
    candidates.keep(index, "graph", {"graph": stage})
    assert index.parts.stage is stage and stage.ready and not index.parts.building
    assert candidates.check(index.parts) is None
