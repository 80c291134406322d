"""Links over a sharded root (``distributed/shardlinks.py``): the same memories and links in one
index and in a root of three shards give the same links, lineages and followed results (global
ids); a link across shards is refused naming both; links are durable (the shards' logs and
checkpoints); the CLI ``links`` reads a root."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lukhas_gpu import Filter, MemoryIndex
from lukhas_gpu.distributed import ShardedIndex, rootfiles

from sharded_helpers import build_root, config, make_data, single_index, to_global, to_single

N, SHARDS = 600, 3


@pytest.fixture(scope="module")
def data():
    return make_data(N, nq=16, seed=3)


def _links(b, seed: int):
    """Seeded links, each inside one shard's block: chains (for several hops) and random pairs."""
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for s in range(SHARDS):
        lo, hi = int(b[s]), int(b[s + 1])
        src += rng.integers(lo, hi, 120).tolist()
        dst += rng.integers(lo, hi, 120).tolist()
        chain = rng.choice(np.arange(lo, hi), 6, replace=False).tolist()
        src += chain[:-1]
        dst += chain[1:]
    kinds = [("cause", "same", "next")[i % 3] for i in range(len(src))]
    w = rng.uniform(0.2, 1.0, len(src)).astype(np.float32)
    return np.array(src), np.array(dst), kinds, w


@pytest.fixture(scope="module")
def both(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("links") / "root"
    b = build_root(root, data, SHARDS, config())
    one = single_index(data, config())
    src, dst, kinds, w = _links(b, 11)
    one.link(src, dst, kind=kinds, weight=w)
    sx = ShardedIndex.open(root, mode="w")
    half = len(src) // 2  # two batches, each over every shard
    assert sx.link(to_global(src[:half], b), to_global(dst[:half], b), kind=kinds[:half], weight=w[:half]) == half
    sx.link(to_global(src[half:], b), to_global(dst[half:], b), kind=kinds[half:], weight=w[half:])
    gone = (src[:40:4], dst[:40:4])
    assert one.unlink(*gone) == sx.unlink(to_global(gone[0], b), to_global(gone[1], b)) > 0
    yield root, b, one, sx
    sx.close()


def _as_sets(ls, n, ids_map=lambda a: a):
    return [{(int(i), str(k), round(float(w), 6)) for i, k, w in zip(ids_map(ls.of(j)[0]), *ls.of(j)[1:])}
            for j in range(n)]


def test_links_and_lineage_are_one_indexs(both):
    root, b, one, sx = both
    ids = np.arange(0, N, 7)
    for direction in ("out", "in"):
        for kind in (None, "cause"):
            want = _as_sets(one.links(ids, kind=kind, direction=direction), len(ids))
            got = _as_sets(sx.links(to_global(ids, b), kind=kind, direction=direction), len(ids),
                           lambda a: to_single(a, b))
            assert got == want
    for start in ids[:20].tolist():
        a, g = one.lineage(start, depth=4), sx.lineage(int(to_global([start], b)[0]), depth=4)
        assert to_single(g.ids, b).tolist() == a.ids.tolist() and g.depth.tolist() == a.depth.tolist()
        assert to_single(g.parent, b).tolist() == a.parent.tolist()


@pytest.mark.parametrize("where", [None, Filter(tags_any=["a"])])
@pytest.mark.parametrize("hops", [1, 3])
def test_followed_results_are_one_indexs(both, data, where, hops):
    root, b, one, sx = both
    res = one.search(data.q, 5, where=where)
    ids, sc = np.asarray(res.ids), np.asarray(res.scores)
    want = one.follow(ids, sc, hops, where=where)
    got = sx.follow(to_global(ids, b), sc, hops, where=where)
    assert (to_single(got[0], b) == want[0]).all() and np.allclose(got[1], want[1])
    assert (to_single(got[2], b) == want[2]).all() and (want[2] >= 0).any()
    # search(follow_links=): the merged top-k (each shard's int8 scales are its own, so the top-k
    # may differ from one index's in near ties), then what one index's follow gives on it
    sres = sx.search(data.q, 5, where=where, follow_links=hops)
    top, top_sc = to_single(np.asarray(sres.ids)[:, :5], b), np.asarray(sres.scores)[:, :5]
    want = one.follow(top, top_sc, hops, where=where)
    assert (to_single(np.asarray(sres.ids), b) == want[0][:, :sres.ids.shape[1]]).all()
    assert want[0].shape == sres.ids.shape and (to_single(sres.linked_from, b) == want[2]).all()
    assert np.allclose(np.asarray(sres.scores), want[1]) and (sres.linked_from >= 0).any()


def test_a_link_across_shards_is_refused_naming_both(both):
    root, b, one, sx = both
    before = sx.links(to_global([0, int(b[1])], b))
    with pytest.raises(ValueError, match="shard-00000.*shard-00001"):
        sx.link(to_global([0, 1], b), to_global([2, int(b[1]) + 3], b))  # the first pair alone would do
    with pytest.raises(ValueError, match="shard-00000.*shard-00002"):
        sx.unlink(to_global([0], b), to_global([int(b[2])], b))
    with pytest.raises(KeyError, match="no shard"):
        sx.link([0], [(9 << rootfiles.SHARD_SHIFT)])
    with pytest.raises(ValueError, match="kind has"):
        sx.link(to_global([0, 1], b), to_global([2, 3], b), kind=["a"])
    two = to_global([1, int(b[1]) + 1], b)  # one link per shard: a bad value in either refuses both
    with pytest.raises(ValueError, match="weight"):
        sx.link(two, two, weight=[1.0, float("nan")])
    with pytest.raises((ValueError, TypeError), match="kind"):
        sx.link(two, two, kind=["ok", "x" * 10_000])
    after = sx.links(to_global([0, int(b[1])], b))
    assert np.array_equal(after.ids, before.ids) and np.array_equal(after.indptr, before.indptr)
    with pytest.raises(ValueError, match="follow_links"):
        sx.search(np.ones(sx.dim, np.float32), 3, follow_links=-1)


def test_links_are_durable_in_the_shards_and_the_cli_reads_a_root(both, tmp_path, capsys, data):
    from lukhas_gpu.cli import main

    root, b, one, sx = both
    g0 = int(to_global([int(b[1]) + 2], b)[0])
    want = _as_sets(sx.links([g0]), 1)
    r = ShardedIndex.open(root)  # readers replay the shards' logs: no checkpoint yet
    assert _as_sets(r.links([g0]), 1) == want
    r.close()
    with MemoryIndex.open(rootfiles.shard_dir(root, 1)) as shard:
        assert shard.links([2]).ids.tolist() == [int(i) & rootfiles.ROW_MASK for i in sx.links([g0]).ids]
    assert main(["links", str(root), str(g0), "--json"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["id"] == g0 and {(d["id"], d["kind"]) for d in line["links"]} == {(i, k) for i, k, _ in want[0]}
    assert main(["links", str(root), str(g0), "--depth", "2"]) == 0
    assert capsys.readouterr().out.count("depth=") == len(sx.lineage(g0, depth=2).ids)
