"""ShardedIndex in local mode (no Ray): seeded synthetic data split over 2-3 shard stores,
against an independent merge of every shard's exhaustive answers (exact), against one index
over the same data (filters, Rank, recall vs float32 brute force), and BM25 / sparse / fused
hybrid searches equal to the single index's; records by global id; bad input, a missing, extra
or damaged shard; a reader's refresh; the CLI over a sharded root."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lukhas_gpu import Filter, MemoryIndex, Rank
from lukhas_gpu.distributed import ShardedIndex, rootfiles
from lukhas_gpu.distributed.merge import fixed_rank, merge_topk
from lukhas_gpu.store.layout import CorruptStoreError, StoreError

from sharded_helpers import DAY, build_root, config, make_data, single_index, to_global, to_single

N, SHARDS, K = 3000, 3, 10


@pytest.fixture(scope="module")
def data():
    return make_data(N, nq=24, seed=0)


@pytest.fixture(scope="module")
def built(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("sharded") / "root"
    b = build_root(root, data, SHARDS, config())
    return root, b


@pytest.fixture(scope="module")
def sh(built):
    with ShardedIndex.open(built[0]) as index:
        yield index


@pytest.fixture(scope="module")
def single(data):
    return single_index(data, config())


def reference(root, shards: int, q, k: int, **kw):
    """Every shard's exhaustive answer (k = its size), with global ids, sorted by score then id:
    the exact top-k of the union, built without the merge under test."""
    ids, scores = [], []
    for s in range(shards):
        with MemoryIndex.open(rootfiles.shard_dir(root, s)) as ix:
            res = ix.search(q, len(ix), **kw)
            ids.append(rootfiles.global_ids(s, res.ids))
            scores.append(res.scores)
    ids, scores = np.concatenate(ids, 1), np.concatenate(scores, 1)
    out_i, out_s = np.full((len(q), k), -1), np.full((len(q), k), -np.inf, np.float32)
    for r in range(len(q)):
        ok = ids[r] >= 0
        order = sorted(zip(-scores[r][ok], ids[r][ok]))[:k]
        out_i[r, :len(order)] = [i for _, i in order]
        out_s[r, :len(order)] = [-s for s, _ in order]
    return out_i, out_s


def overlap(a, b) -> float:
    return np.mean([len(set(x[x >= 0]) & set(y[y >= 0])) / max(1, (y >= 0).sum()) for x, y in zip(a, b)])


# -- the merge -----------------------------------------------------------------------------------
def test_merge_is_the_top_k_of_the_union_with_ties_by_id_and_padding_last():
    a = (np.array([[5, 1, -1]]), np.array([[0.9, 0.5, -np.inf]], np.float32))
    b = (np.array([[(1 << 32) | 0, 3]]), np.array([[0.5, 0.95]], np.float32))
    ids, scores = merge_topk([a, b], 4)
    assert ids.tolist() == [[3, 5, 1, 1 << 32]] and scores[0].tolist() == pytest.approx([0.95, 0.9, 0.5, 0.5])
    ids, scores = merge_topk([a], 5)  # fewer candidates than k: padded
    assert ids.tolist() == [[5, 1, -1, -1, -1]] and np.isneginf(scores[0, 2:]).all()
    with pytest.raises(ValueError, match="expected"):
        merge_topk([a, (np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32))], 3)


def test_fixed_rank_sets_one_now_and_keeps_the_weights():
    r = Rank(0.5, 0.3, 0.2, half_life=3600)
    f = fixed_rank(r)
    assert f.now is not None and (f.similarity, f.recency, f.importance, f.half_life) == (0.5, 0.3, 0.2, 3600)
    assert fixed_rank(Rank(1.0, 0.5, now=123.0)).now == 123.0
    assert fixed_rank(Rank(1.0, 0.0, 0.5)) == Rank(1.0, 0.0, 0.5) and fixed_rank(None) is None


# -- dense search, untrained (exact int8 scans) ------------------------------------------------------
def test_search_is_the_exact_merge_of_the_shards(sh, built, data):
    root, _ = built
    res = sh.search(data.q, K)
    ref_i, ref_s = reference(root, SHARDS, data.q, K)
    np.testing.assert_array_equal(res.scores, ref_s)
    np.testing.assert_array_equal(res.ids, ref_i)
    assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    assert len({int(i) >> 32 for i in res.ids.ravel()}) == SHARDS  # every shard contributes


def test_search_agrees_with_one_index_over_the_same_data(sh, single, built, data, exact_topk, recall_at_k):
    _, b = built
    res, one = sh.search(data.q, K), single.search(data.q, K)
    # each store fits its own int8 scales: scores agree to the int8 error, ids nearly all
    np.testing.assert_allclose(res.scores, one.scores, atol=5e-3)
    assert overlap(to_single(res.ids, b), one.ids) >= 0.95
    truth, _ = exact_topk(data.q, data.x, K)
    assert abs(recall_at_k(to_single(res.ids, b), truth) - recall_at_k(one.ids, truth)) <= 0.02


@pytest.mark.parametrize("where", [
    Filter(tags_all=["c"]),
    Filter(tags_any=["b"], min_importance=0.5),
    Filter(tags_none=["b"], since=1.0),  # since/until filled in from the data below
    Filter(meta={"user": {"$in": ["u1", "u3"]}}),
], ids=["tags_all", "tags_any+importance", "time", "meta"])
def test_filters_are_pushed_down(sh, single, built, data, where):
    root, b = built
    if where.since is not None:
        where = Filter(tags_none=["b"], since=data.now - 10 * DAY, until=data.now - 2 * DAY)
    res = sh.search(data.q, K, where=where)
    ref_i, ref_s = reference(root, SHARDS, data.q, K, where=where)
    np.testing.assert_array_equal(res.ids, ref_i)
    got = to_single(res.ids[res.ids >= 0], b)
    assert len(got) == res.ids.size
    for i in got.tolist():
        assert where.matches(data.tags[i], data.timestamps[i], data.importance[i])
        if where.meta is not None:
            assert data.metadata[i]["user"] in ("u1", "u3")
    one = single.search(data.q, K, where=where)
    assert overlap(to_single(res.ids, b), one.ids) >= 0.95


def test_rank_is_pushed_down_with_one_now(sh, single, built, data):
    root, b = built
    rank = Rank(0.6, 0.3, 0.1, half_life=5 * DAY, now=data.now)
    res = sh.search(data.q, K, rank=rank)
    ref_i, ref_s = reference(root, SHARDS, data.q, K, rank=rank)
    np.testing.assert_array_equal(res.ids, ref_i)
    np.testing.assert_allclose(res.scores, ref_s, atol=1e-6)  # k and the scan path change the rounding
    one = single.search(data.q, K, rank=rank)
    np.testing.assert_allclose(res.scores, one.scores, atol=5e-3)
    assert overlap(to_single(res.ids, b), one.ids) >= 0.95
    # without ``now`` the driver fixes one: the same answer as an explicit clock reading
    free = sh.search(data.q, K, rank=Rank(0.6, 0.3, 0.1, half_life=5 * DAY))
    assert overlap(free.ids, res.ids) >= 0.99


def test_result_kinds_and_hydration_follow_memory_index(sh, built, data):
    import torch

    _, b = built
    one = sh.search(data.q[0], 5)
    assert one.ids.shape == (5,)
    t = sh.search(torch.from_numpy(data.q[:3]), 5)
    assert isinstance(t.ids, torch.Tensor) and t.ids.shape == (3, 5)
    np.testing.assert_array_equal(t.ids.numpy()[0], one.ids)
    res = sh.search(data.q[:2], 4)
    assert res.contents() == [[data.contents[i] for i in to_single(r, b)] for r in res.ids]
    mems = res.memories()
    assert [m.id for m in mems[0]] == res.ids[0].tolist() and mems[0][0].tags == data.tags[to_single(res.ids[0], b)[0]]
    assert res.external_ids == res.ids.tolist()
    ids, scores = sh.search_arrays(data.q[:2], 4)
    np.testing.assert_array_equal(ids, res.ids)


# -- records -------------------------------------------------------------------------------------
def test_get_contents_contains_by_global_id(sh, built, data):
    _, b = built
    picks = np.array([0, 1, N // 2, N - 1, 17])
    gids = to_global(picks, b)
    assert sh.contents(gids) == [data.contents[i] for i in picks]
    mems = sh.get(gids)
    assert [m.id for m in mems] == gids.tolist()
    assert [m.content for m in mems] == [data.contents[i] for i in picks]
    assert [m.importance for m in mems] == pytest.approx(data.importance[picks], abs=1e-2)
    assert [m.metadata for m in mems] == [data.metadata[i] for i in picks]
    beyond = (1 << 32) | (N // SHARDS + 50)  # a row shard 1 never assigned
    assert sh.contains(np.concatenate([gids, [beyond]])).tolist() == [True] * len(picks) + [False]
    assert len(sh) == N and sh.contents([]) == []


def test_bad_ids_and_queries_are_refused(sh, data):
    with pytest.raises(KeyError, match=f"id {7 << 32}"):
        sh.get([7 << 32])
    with pytest.raises(KeyError):
        sh.contains([-1])
    with pytest.raises(ValueError, match="unknown or deleted"):
        sh.contents([(1 << 32) | 10**6])
    with pytest.raises(ValueError, match="dimension"):
        sh.search(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        sh.search(np.full(data.q.shape[1], np.nan, np.float32))
    with pytest.raises(ValueError, match="all-zero"):
        sh.search(np.zeros(data.q.shape[1], np.float32))
    with pytest.raises(ValueError, match="k must be > 0"):
        sh.search(data.q, 0)
    with pytest.raises(ValueError, match="exceeds the limit"):
        sh.search(data.q, 10**6)
    with pytest.raises(TypeError, match="Filter"):
        sh.search(data.q, where={"tags_any": "a"})
    with pytest.raises(TypeError, match="Rank"):
        sh.search(data.q, rank=0.5)
    with pytest.raises(ValueError, match="nprobe"):
        sh.search(data.q, nprobe=0)
    with pytest.raises(TypeError):
        sh.search(data.q.astype(np.int32))


# -- BM25, sparse and hybrid -----------------------------------------------------------------------
TEXTS = ["w3 w17 w250", "w1 w2", "w399 w5 w5", "w42"]


def test_bm25_scores_with_the_root_statistics_like_one_index(sh, single, built):
    _, b = built
    res, one = sh.search_text(TEXTS, K), single.search_text(TEXTS, K)
    np.testing.assert_allclose(res.scores, one.scores, rtol=1e-6)
    np.testing.assert_array_equal(res.ids, to_global(one.ids, b))
    where = Filter(tags_any=["a"])
    np.testing.assert_array_equal(sh.search_text(TEXTS[0], K, where=where).ids,
                                  to_global(single.search_text(TEXTS[0], K, where=where).ids, b))
    with pytest.raises(TypeError, match="BM25Stats"):
        single.search_text(TEXTS, K, stats={"n": 3})


def test_sparse_alone_equals_one_index(sh, single, built, data):
    _, b = built
    qs = data.sparse[5:9]
    res, one = sh.search(None, K, sparse=qs), single.search(None, K, sparse=qs)
    np.testing.assert_array_equal(res.ids, to_global(one.ids, b))
    np.testing.assert_allclose(res.scores, one.scores, rtol=1e-6)
    assert sh.search(None, 3, sparse=qs[0]).ids.shape == (3,)


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_hybrid_lists_merge_globally_then_fuse(sh, single, built, data, fusion):
    _, b = built
    qs, where = data.sparse[:4], Filter(tags_any=["a"])
    res = sh.search(None, K, sparse=qs, text=TEXTS, fusion=fusion, where=where)
    one = single.search(None, K, sparse=qs, text=TEXTS, fusion=fusion, where=where)
    np.testing.assert_array_equal(res.ids, to_global(one.ids, b))
    np.testing.assert_allclose(res.scores, one.scores, rtol=1e-6)
    dense = sh.search(data.q[:4], K, text=TEXTS, sparse=qs, fusion=fusion)
    one_d = single.search(data.q[:4], K, text=TEXTS, sparse=qs, fusion=fusion)
    assert overlap(to_single(dense.ids, b), one_d.ids) >= 0.8  # the dense list differs by int8 error only
    with pytest.raises(ValueError, match="one of each"):
        sh.search(data.q[:2], K, text=TEXTS)
    with pytest.raises(ValueError, match="needs dense queries"):
        sh.search(None, K, text=TEXTS, rank=Rank(0.5, 0.5))


# -- the root and its shards ------------------------------------------------------------------------
def test_stats_verify_and_quality_aggregate_the_shards(sh, data):
    st = sh.stats()
    assert st["count"] == N and len(st["per_shard"]) == SHARDS and st["shards"] == {"opened": 3, "root": 3}
    assert st["memory"]["anon_bytes"] == sum(s["memory"]["anon_bytes"] for s in st["per_shard"])
    assert st["phase"] == "exact" and st["dim"] == data.x.shape[1]
    rep = sh.verify()
    assert rep["ok"] and rep["count"] == N and [r["shard"] for r in rep["shards"]] == [0, 1, 2]


def _copy(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built[0], root)
    return root


def test_a_missing_extra_or_damaged_shard_is_named(built, tmp_path):
    root = _copy(built, tmp_path)
    shutil.move(root / "shard-00001", tmp_path / "aside")
    with pytest.raises(CorruptStoreError, match="shard-00001: missing"):
        ShardedIndex.open(root)
    shutil.move(tmp_path / "aside", root / "shard-00001")
    (root / "shard-00003").mkdir()
    with pytest.raises(CorruptStoreError, match="shard-00003: not a shard of this root"):
        ShardedIndex.open(root)
    (root / "shard-00003").rmdir()
    with pytest.raises(FileNotFoundError, match="not a sharded root"):
        ShardedIndex.open(tmp_path)
    text = (root / rootfiles.ROOT_FILE).read_text()
    (root / rootfiles.ROOT_FILE).write_text(text.replace('"dim": 384', '"dim": 385'))
    with pytest.raises(CorruptStoreError, match="CRC"):
        ShardedIndex.open(root)
    rootfiles.write_root(root, shards=3, dim=385, state="complete")
    with pytest.raises(CorruptStoreError, match="dim 384, the root's is 385"):
        ShardedIndex.open(root)
    rootfiles.write_root(root, shards=3, dim=384, state="complete")
    gen = sorted((root / "shard-00002").glob("gen-*"))[-1]
    victim = max((p for p in gen.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.seek(victim.stat().st_size // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(CorruptStoreError, match=f"shard-00002/{gen.name}/{victim.name}"):
        ShardedIndex.open(root, verify=True)


def test_errors_cross_process_boundaries_whole():
    import pickle

    from lukhas_gpu.serve.batcher import QueueFull

    e = pickle.loads(pickle.dumps(CorruptStoreError("root/shard-00001/x", "damaged")))
    assert (type(e), e.path, e.problem, str(e)) == (CorruptStoreError, "root/shard-00001/x", "damaged",
                                                    "root/shard-00001/x: damaged")
    q = pickle.loads(pickle.dumps(QueueFull(12, 3)))
    assert (q.depth, q.retry_after) == (12, 3)


def test_a_subset_of_shards_and_the_closed_index(built, data):
    root, _ = built
    with ShardedIndex.open(root, shards=[2]) as part:
        res = part.search(data.q, K)
        assert ((res.ids >> 32) == 2).all() and len(part) == N - N * 2 // 3
        with pytest.raises(KeyError, match="did not open"):
            part.get([5])
    with pytest.raises(StoreError, match="closed"):
        part.search(data.q)
    with pytest.raises(ValueError, match="not in this root"):
        ShardedIndex.open(root, shards=[3])
    with pytest.raises(ValueError, match="distinct"):
        ShardedIndex.open(root, shards=[0, 0])


def test_refresh_sees_a_writers_new_rows(tmp_path, caplog):
    d = make_data(400, nq=4, seed=3)
    root = tmp_path / "root"
    build_root(root, d, 2, config())
    rootfiles.write_root(root, shards=2, dim=d.x.shape[1], state="ingesting")  # a writer is still at work
    extra = make_data(30, nq=1, seed=4)
    with ShardedIndex.open(root) as sh:
        assert "an ingest has not finished" in caplog.text and sh.state == "ingesting"
        assert len(sh) == 400
        with MemoryIndex.open(rootfiles.shard_dir(root, 1), mode="w") as writer:
            rows = writer.add(**extra.rows(0, 30))  # logged, not checkpointed
            reports = sh.refresh()
            assert [r["shard"] for r in reports] == [0, 1] and reports[1]["added"] == 30 and reports[0]["added"] == 0
            assert len(sh) == 430
            res = sh.search(extra.x[:3], 1)
            np.testing.assert_array_equal(res.ids[:, 0], rootfiles.global_ids(1, rows[:3]))


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_search_stats_verify_over_a_sharded_root(sh, built, data, tmp_path, capsys):
    from lukhas_gpu.cli.main import main

    root, _ = built
    qf = tmp_path / "q.npy"
    np.save(qf, data.q[:3])
    assert main(["search", str(root), "--query-file", str(qf), "-k", "5", "--json", "--tags-any", "a",
                 "--contents"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = sh.search(data.q[:3], 5, where=Filter(tags_any=["a"]))
    assert [line["ids"] for line in lines] == want.ids.tolist()
    assert lines[0]["contents"] == want.contents()[0]
    assert main(["search", str(root), "--text", "w3 w17", "-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == sh.search_text("w3 w17", 3).ids.tolist()
    gids = want.ids[0, :2].tolist()  # get takes the global ids search printed
    assert main(["get", str(root), *map(str, gids), "--json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["id"] for g in got] == gids and [g["content"] for g in got] == want.contents()[0][:2]
    assert main(["delete", str(root), str(gids[0])]) == 1
    assert "is a sharded root" in capsys.readouterr().err
    assert main(["stats", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == N
    assert main(["verify", str(root)]) == 0
    assert "3 shards" in capsys.readouterr().out


def test_cli_names_a_missing_shard(built, tmp_path, capsys):
    from lukhas_gpu.cli.main import main

    root = _copy(built, tmp_path)
    shutil.rmtree(root / "shard-00000")
    assert main(["search", str(root), "--text", "w1"]) == 1
    assert "shard-00000: missing" in capsys.readouterr().err
    assert main(["verify", str(root)]) == 1
    assert "shard-00000" in capsys.readouterr().err


# -- trained shards ------------------------------------------------------------------------------
def test_trained_shards_recall_within_002_of_one_index(tmp_path, exact_topk, recall_at_k):
    d = make_data(6000, nq=64, seed=7)
    root = tmp_path / "root"
    cfg = config(target_recall=None, nprobe=8)
    b = build_root(root, d, 2, cfg, train=True)
    one = single_index(d, cfg, train=True)
    truth, _ = exact_topk(d.q, d.x, K)
    with ShardedIndex.open(root) as sh:
        assert sh.stats()["phase"] == "ivfpq"
        res = sh.search(d.q, K)
        r_sh, r_one = recall_at_k(to_single(res.ids, b), truth), recall_at_k(one.search(d.q, K).ids, truth)
        assert r_sh >= r_one - 0.02, (r_sh, r_one)
        deeper = recall_at_k(to_single(sh.search(d.q, K, nprobe=64).ids, b), truth)  # nprobe reaches the shards
        assert deeper > r_sh
        q = sh.quality(d.q, K)
        per = q["per_shard"]
        assert q["recall"] == pytest.approx(sum(w * p["recall"] for w, p in zip(q["weights"], per)))
        assert q["weights"] == pytest.approx([0.5, 0.5]) and q["ci"][0] <= q["recall"] <= q["ci"][1]
        assert abs(q["recall"] - r_sh) <= 0.1


def test_the_room_and_the_sharded_index_import_no_ray():
    import subprocess
    import sys

    code = ("import sys, lukhas_gpu.distributed as d; d.ShardedIndex; d.serve_deployment; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_external_ids_stay_the_shards_keys(tmp_path):
    d = make_data(200, nq=3, seed=5)
    root = tmp_path / "root"
    rootfiles.write_root(root, shards=2, dim=d.x.shape[1], state="complete")
    for s, (a, b) in enumerate([(0, 120), (120, 200)]):
        with MemoryIndex.create(rootfiles.shard_dir(root, s), d.x.shape[1], config(external_ids="str")) as ix:
            ix.add(d.x[a:b], contents=d.contents[a:b], ids=[f"doc-{i}" for i in range(a, b)])
    with ShardedIndex.open(root) as sh:
        res = sh.search(d.x[[3, 150]], 2)
        assert [r[0] for r in res.external_ids] == ["doc-3", "doc-150"]
        assert res.ids[1, 0] == (1 << 32) | 30
        m = sh.get([res.ids[1, 0]])[0]
        assert (m.id, m.external_id, m.content) == ((1 << 32) | 30, "doc-150", d.contents[150])
