"""Dedup on write and links between memories (index/dedup.py, index/memops.py, records/links.py,
records/contenthash.py): each held to a plain-Python reference on seeded data, through the log,
a checkpoint, a reader and verify."""
from __future__ import annotations

import numpy as np
import pytest

from lukhas_gpu import Filter, IndexConfig, MemoryIndex
from lukhas_gpu.records import links as links_mod
from lukhas_gpu.store import layout

DIM = 16


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


# -- exact dedup ------------------------------------------------------------------------------------
def test_exact_dedup_merges_into_the_smallest_live_row_and_inside_the_batch():
    ix = MemoryIndex(DIM, IndexConfig(dedup="exact"))
    ids = ix.add(_x(6), contents=["a", "b", "a", None, None, b"a"], tags=[["t1"], [], ["t2"], [], [], []],
                 timestamps=[10, 20, 30, 40, 50, 60], importance=[0.1, 0.2, 0.9, 0.5, 0.5, 0.5])
    assert ids.tolist() == [0, 1, 0, 2, 3, 4]  # None never a duplicate; b"a" is not "a"
    assert ix.last_add.merged == 1 and ix.last_add.into.tolist() == [-1, -1, 0, -1, -1, -1]
    assert ix.last_add.positions.tolist() == [2]
    m = ix.get([0])[0]
    assert (m.content, m.tags, m.timestamp, round(m.importance, 3)) == ("a", ["t1", "t2"], 30.0, 0.9)
    ids = ix.add(_x(3, 1), contents=["b", "new", "a"], tags=[["t3"], [], ["t1"]], timestamps=[5, 6, 7])
    assert ids.tolist() == [1, 5, 0] and len(ix) == 6
    assert ix.get([1])[0].timestamp == 20.0 and ix.get([1])[0].tags == ["t3"]  # the newest kept
    ix.delete([0])
    assert ix.add(_x(1, 2), contents=["a"]).tolist() == [6]  # the deleted one is no target
    ix.update([1], contents=["z"])  # its hash follows the update
    assert ix.add(_x(1, 3), contents=["z"]).tolist() == [1]
    assert ix.add(_x(1, 4), contents=["b"]).tolist() == [7]


def test_dedup_off_changes_nothing_and_ids_skip_dedup():
    ix = MemoryIndex(DIM)
    assert ix.config.dedup == "off"
    assert ix.add(_x(4), contents=["a"] * 4).tolist() == [0, 1, 2, 3] and ix.last_add.merged == 0
    assert ix.add(_x(2), contents=["a", "a"], dedup="exact").tolist() == [0, 0]
    with pytest.raises(ValueError, match="dedup must be one of"):
        ix.add(_x(1), dedup="fuzzy")
    ex = MemoryIndex(DIM, IndexConfig(dedup="exact", external_ids="str"))
    ex.add(_x(2), contents=["a", "a"], ids=["p", "q"])  # an add naming ids is an upsert: no dedup
    assert len(ex) == 2 and ex.last_add.merged == 0
    assert IndexConfig.preset("production").dedup == "exact"
    with pytest.raises(ValueError, match="dedup_threshold"):
        IndexConfig(dedup_threshold=1.5)


def test_replace_takes_the_duplicates_content():
    ix = MemoryIndex(DIM, IndexConfig(dedup="near", dedup_merge="replace"))
    x = _x(2)
    ix.add(x, contents=["old", "keep"])
    assert ix.add(x * 1.0001, contents=["new", None]).tolist() == [0, 1]
    assert ix.contents([0, 1]) == ["new", "keep"]


# -- near dedup -------------------------------------------------------------------------------------
def _near_reference(ix, x, thr):
    """Store match: the nearest live row by exact cosine on the dequantized int8 rows."""
    rows = ix.select()
    v = ix.vectors_at(rows) if len(rows) else np.zeros((0, DIM), np.float32)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = xn @ v.T
    best = cos.argmax(1) if len(rows) else np.zeros(len(x), int)
    return np.where(cos.max(1) >= thr, rows[best], -1) if len(rows) else np.full(len(x), -1)


@pytest.mark.parametrize("trained", [False, True])
def test_near_dedup_matches_the_exact_reference(trained):
    n = 1200 if trained else 300
    ix = MemoryIndex(DIM, IndexConfig(dedup="near", train_threshold=1024, nlist=16, nprobe=16))
    base = _x(n)
    ix.add(base, dedup="off")
    assert ix.is_trained == trained
    rng = np.random.default_rng(5)
    src = rng.choice(n, 40, replace=False)
    near = base[src] + 0.01 * rng.standard_normal((40, DIM)).astype(np.float32)
    batch = np.concatenate([near, _x(20, 9)])
    batch = np.concatenate([batch, batch[-3:] * 1.001])  # in-batch copies of three new ones
    want = _near_reference(ix, batch, 0.97)
    ids = ix.add(batch)
    assert (want[:40] >= 0).all() and np.array_equal(ids[:40], want[:40])
    assert np.array_equal(ids[-3:], ids[-6:-3]) and (ids[40:60] >= n).all()
    assert ix.last_add.merged == 43 and len(ix) == n + 20


def test_near_in_batch_chains_collapse_to_the_first():
    ix = MemoryIndex(DIM, IndexConfig(dedup="near"))
    v = _x(1)[0]
    w = v + 0.12 * _x(1, 1)[0]  # a chain a ~ b ~ c where a and c may be farther apart
    batch = np.stack([v, (v + w) / 2, w])
    ids = ix.add(batch)
    assert ids[0] == 0 and ix.last_add.into[0] == -1
    assert all(i in (0, 1) for i in ids)


# -- durability of the decision ---------------------------------------------------------------------
def test_the_logged_decision_replays_without_deciding_again(tmp_path, monkeypatch):
    from lukhas_gpu.index import dedup

    ix = MemoryIndex.create(tmp_path / "s", DIM, IndexConfig(dedup="near"))
    base = _x(50)
    ix.add(base, contents=[f"c{i}" for i in range(50)])
    ids = ix.add(base[:5] * 1.0001, contents=["n"] * 5, tags=[["dup"]] * 5, timestamps=[2e9] * 5)
    assert ids.tolist() == [0, 1, 2, 3, 4]
    ix.close(checkpoint=False)

    def boom(*a, **k):
        raise AssertionError("replay decided again")

    monkeypatch.setattr(dedup, "resolve", boom)
    for mode in ("w", "r"):
        re = MemoryIndex.open(tmp_path / "s", mode=mode)
        assert len(re) == 50 and re.get([3])[0].tags == ["dup"] and re.get([3])[0].timestamp == 2e9
        assert re.verify()["ok"]
        re.close(checkpoint=False)


def test_content_hashes_survive_a_checkpoint(tmp_path):
    ix = MemoryIndex.create(tmp_path / "s", DIM, IndexConfig(dedup="exact"))
    ix.add(_x(3), contents=["a", "b", None])
    ix.close()
    ix = MemoryIndex.open(tmp_path / "s", mode="w")
    assert ix.add(_x(2, 1), contents=["b", "c"]).tolist() == [1, 3]
    ix.close()


# -- links ------------------------------------------------------------------------------------------
def _linked(n=10):
    ix = MemoryIndex(DIM)
    ix.add(_x(n))
    return ix


def test_links_lineage_and_their_errors():
    ix = _linked()
    assert ix.link([0, 0, 1], [1, 2, 3], kind="cause") == 3
    ix.link(0, 1, kind="ref", weight=0.5)
    ix.link(0, 1, kind="ref", weight=0.25)  # re-weighted, not doubled
    ls = ix.links([0, 1, 9])
    assert ls.indptr.tolist() == [0, 3, 4, 4] and ls.ids.tolist() == [1, 1, 2, 3]
    assert ls.kinds.tolist() == ["cause", "ref", "cause", "cause"] and ls.weights[1] == np.float32(0.25)
    assert ix.links([1], direction="in").ids.tolist() == [0, 0]
    assert ix.links([0], kind="ref").ids.tolist() == [1] and len(ix.links([0], kind="never").ids) == 0
    lin = ix.lineage(0, depth=2)
    assert lin.ids.tolist() == [1, 2, 3] and lin.depth.tolist() == [1, 1, 2] and lin.parent.tolist() == [0, 0, 1]
    assert ix.lineage(0, depth=1).ids.tolist() == [1, 2]
    assert ix.lineage(3, direction="in").ids.tolist() == [1, 0]
    for bad, exc in (((0, 99), ValueError), ((0, [1, 2], "k", [1.0]), ValueError), ((0, 1, ""), ValueError),
                     ((0, 1, 5), TypeError), ((0, 1, "k", float("nan")), ValueError),
                     (([0, 1], [1, 2, 3]), ValueError), ((0, 1, "x" * 65), ValueError)):
        with pytest.raises(exc):
            ix.link(*bad)
    with pytest.raises(ValueError, match="depth"):
        ix.lineage(0, depth=0)
    with pytest.raises(ValueError, match="direction"):
        ix.links([0], direction="up")
    assert ix.unlink(0, 1) == 2 and ix.unlink(0, 1) == 0 and ix.unlink(0, 2, kind="ref") == 0
    assert ix.links([0]).ids.tolist() == [2]


def test_deleted_memories_links_vanish_both_ways_and_compact_drops_them():
    ix = _linked()
    ix.link([0, 1, 2], [1, 2, 0])
    ix.delete([1])
    assert ix.links([0]).ids.tolist() == [] and ix.links([2]).ids.tolist() == [0]
    assert ix.links([2], direction="in").ids.tolist() == []
    with pytest.raises(ValueError):
        ix.link(1, 2)
    ix.compact()
    assert len(ix.parts.links) == 1 and ix.links([2]).ids.tolist() == [0]


def test_random_link_ops_match_a_dict_through_merges(monkeypatch):
    monkeypatch.setattr(links_mod, "MERGE_MIN", 16)  # the log merged often
    rng = np.random.default_rng(3)
    n = 40
    ix = _linked(n)
    ref: dict = {}
    dead: set = set()
    for step in range(300):
        live = [i for i in range(n) if i not in dead]
        r = rng.random()
        s, d = rng.choice(live, 2)
        kind = str(rng.choice(["a", "b", "c"]))
        if r < 0.6:
            w = float(rng.integers(1, 9))
            ix.link(int(s), int(d), kind=kind, weight=w)
            ref[(int(s), int(d), kind)] = w
        elif r < 0.85:
            k = None if rng.random() < 0.5 else kind
            gone = [key for key in ref if key[:2] == (s, d) and (k is None or key[2] == k)]
            assert ix.unlink(int(s), int(d), kind=k) == len(gone)
            for key in gone:
                del ref[key]
        elif r < 0.9 and len(live) > 10:
            ix.delete([int(s)])
            dead.add(int(s))
            ref = {key: w for key, w in ref.items() if key[0] != s and key[1] != s}
        elif r < 0.93:
            ix.compact()
        q = [i for i in range(n) if i not in dead]
        ls = ix.links(q)
        got = {(q[i], int(t), str(k), float(w)) for i in range(len(q)) for t, k, w in zip(*ls.of(i))}
        assert got == {(a, b, k, w) for (a, b, k), w in ref.items()}, step


def test_follow_links_adds_linked_memories_marked(tmp_path):
    ix = _linked(30)
    x = ix.vectors_at([5])
    ix.link(5, [7, 8], kind="ref", weight=[1.0, 0.5])
    ix.link(7, 9)
    ix.update([8], tags=[["hidden"]])
    r = ix.search(x, k=1, follow_links=1)
    assert r.ids.tolist() == [[5, 7, 8]] and r.linked_from.tolist() == [[-1, 5, 5]]
    assert r.scores[0, 2] == pytest.approx(r.scores[0, 0] * 0.5)
    r = ix.search(x[0], k=1, follow_links=2, where=Filter(tags_none=["hidden"]))
    assert r.ids.tolist() == [5, 7, 9] and r.linked_from.tolist() == [-1, 5, 7]
    assert ix.search(x, k=1).linked_from is None
    assert len(r.contents()) == 3
    plain = ix.search(x, k=1)  # follow(): the same on a search's arrays (the server's batches)
    got = ix.follow(plain.ids, plain.scores, 2, where=Filter(tags_none=["hidden"]))
    assert [a.tolist() for a in got] == [[[5, 7, 9]], r.scores[None].tolist(), [[-1, 5, 7]]]
    with pytest.raises(ValueError, match="shape"):
        ix.follow(plain.ids, plain.scores[:, :0], 1)


def test_links_are_logged_checkpointed_read_and_verified(tmp_path):
    ix = MemoryIndex.create(tmp_path / "s", DIM)
    ix.add(_x(10))
    ix.link([0, 1], [2, 3], kind="k")
    ix.close(checkpoint=False)
    rd = MemoryIndex.open(tmp_path / "s")
    ix = MemoryIndex.open(tmp_path / "s", mode="w")
    assert ix.links([0, 1]).ids.tolist() == [2, 3]
    ix.checkpoint()
    ix.unlink(0, 2)
    ix.link(4, 5, kind="other")
    rd.refresh()
    assert rd.links([0, 1, 4]).ids.tolist() == [3, 5] and rd.verify()["ok"]
    with pytest.raises(layout.StoreError):
        rd.link(0, 1)
    ix.close()
    gen = layout.current_generation(tmp_path / "s")
    a = dict(np.load(gen / layout.LINKS))
    a["dst"] = a["dst"].copy()
    a["dst"][0] = 99  # a row outside the store, CRC made to fit: refused by name at open
    np.savez(gen / layout.LINKS, **a)
    import json
    m = json.loads((gen / layout.MANIFEST).read_text())
    m["files"][layout.LINKS]["crc32"] = layout.crc32_file(gen / layout.LINKS)
    m["files"][layout.LINKS]["size"] = (gen / layout.LINKS).stat().st_size
    m.pop(layout.MANIFEST_CRC, None)
    m[layout.MANIFEST_CRC] = layout.manifest_crc(m)
    (gen / layout.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(layout.CorruptStoreError, match="links"):
        MemoryIndex.open(tmp_path / "s")


def test_the_cli_prints_links_and_lineage(tmp_path, capsys):
    import json

    from lukhas_gpu.cli import main

    ix = MemoryIndex.create(tmp_path / "s", DIM)
    ix.add(_x(5))
    ix.link([0, 1], [1, 2], kind="cause", weight=[1.0, 0.5])
    ix.close()
    assert main(["links", str(tmp_path / "s"), "0", "2", "--json"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert lines[0]["links"] == [{"id": 1, "kind": "cause", "weight": 1.0}] and lines[1]["links"] == []
    assert main(["links", str(tmp_path / "s"), "2", "--in"]) == 0
    assert "<- 1 (cause, 0.5)" in capsys.readouterr().out
    assert main(["links", str(tmp_path / "s"), "0", "--depth", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["1 depth=1 via=0", "2 depth=2 via=1"]
    assert main(["links", str(tmp_path / "s"), "9"]) == 1  # an unknown id: one line on stderr


def test_follow_links_on_a_text_search():
    ix = MemoryIndex(DIM, IndexConfig(text_index=True))
    ix.add(_x(4), contents=["alpha", "beta", "gamma", "delta"])
    ix.link(2, 3)
    r = ix.search(None, k=1, text="gamma", follow_links=1)
    assert r.ids.tolist() == [2, 3] and r.linked_from.tolist() == [-1, 2]
    with pytest.raises(ValueError, match="follow_links"):
        ix.search(_x(1), k=1, follow_links=99)


def test_the_hash_lookup_matches_a_scan_through_rebuilds(monkeypatch):
    from lukhas_gpu.records import contenthash

    monkeypatch.setattr(contenthash, "TAIL_MIN", 8)  # the main arrays rebuilt often
    rng = np.random.default_rng(4)
    col = contenthash.ContentHashes()
    dead: set = set()
    for step in range(60):
        col.append(rng.integers(0, 12, int(rng.integers(1, 20))).astype(np.uint64))  # 0 = no content
        n = len(col)
        if rng.random() < 0.5:
            rows = rng.choice(n, 3, replace=False)
            col.replace(rows, rng.integers(0, 12, 3).astype(np.uint64))
        if rng.random() < 0.3:
            dead.add(int(rng.integers(0, n)))
        q = np.arange(0, 14, dtype=np.uint64)
        got = col.lookup(q, lambda r: np.isin(r, list(dead)))
        h = col.col.view()
        want = [min((r for r in range(n) if h[r] == v and r not in dead), default=-1) if v else -1 for v in q]
        assert got.tolist() == want, step
        # every row dead to the caller (a namespace holding none of them): nothing found, no error
        assert col.lookup(q, lambda r: np.ones(len(r), bool)).tolist() == [-1] * len(q), step


@pytest.mark.parametrize("damage", ["truncate", "missing"])
def test_a_damaged_links_file_is_named(tmp_path, damage):
    ix = MemoryIndex.create(tmp_path / "s", DIM)
    ix.add(_x(4))
    ix.link(0, [1, 2])
    ix.close()
    p = layout.current_generation(tmp_path / "s") / layout.LINKS
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        p.unlink()
    with pytest.raises(layout.CorruptStoreError, match="links.npz"):
        MemoryIndex.open(tmp_path / "s", mode="w")
