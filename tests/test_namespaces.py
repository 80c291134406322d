"""Namespaces and validity windows (issue 29, items 1 and 2): every route held to an exact
reference, durability (log, checkpoint, readers, verify, damaged files), bad input, and the bytes
of many small namespaces against one large one."""
from __future__ import annotations

import time

import numpy as np
import pytest

from lukhas_gpu import Filter, IndexConfig, MemoryIndex
from lukhas_gpu.store import layout
from lukhas_gpu.util.bounds import MAX_NAMESPACE_BYTES
from lukhas_gpu.util.errors import CorruptStoreError

DIM = 16
T = 1_700_000_000.0


def _config(**kw):
    base = dict(train_threshold=1024, nlist=16, nprobe=16, pq_m=16, rerank=16, filter_exact_max=48, text_index=True,
                probe_size=64, probe_queries=16, auto_tune=False, gpu_resident="off")
    return IndexConfig(**{**base, **kw})


def _fill(ix, n, seed=0):
    """``n`` memories: namespace ``ns{i % 5}`` ("" for i % 5 == 0, "tiny" for 3 rows), windows on a third."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    ns = ["" if i % 5 == 0 else f"ns{i % 5}" for i in range(n)]
    for i in (7, 11, 13):
        ns[i] = "tiny"
    vf = np.where(np.arange(n) % 3 == 0, T + (np.arange(n) % 7) * 10, -np.inf)
    vt = np.where(np.arange(n) % 3 == 0, T + 70 + (np.arange(n) % 5) * 10, np.inf)
    vt[1] = time.time() + 3600  # valid now, ends in an hour
    ix.add(x, contents=[f"common w{i % 4}" for i in range(n)], namespace=ns, valid_from=vf, valid_to=vt,
           sparse=[(np.array([0, 1 + i % 3], np.uint32), np.array([1.0, 0.5], np.float32)) for i in range(n)])
    return x, np.array(ns), vf, vt


def _want(ns, vf, vt, live, namespace, t):
    ok = live & (vf <= t) & (t < vt)
    if namespace is not None:
        ok &= ns == namespace
    return set(np.flatnonzero(ok).tolist())


def _routes(ix, q, k, namespace, as_of):
    kw = dict(namespace=namespace, as_of=as_of)
    return {
        "dense": lambda: ix.search(q, k, nprobe=16, rerank=16, **kw),
        "select": lambda: ix.select(**kw),
        "text": lambda: ix.search_text(["common"], k, **kw),
        "sparse": lambda: ix.search(None, k, sparse=[(np.array([0], np.uint32), np.array([1.0], np.float32))], **kw),
        "hybrid": lambda: ix.search(q, k, nprobe=16, rerank=16, text=["common"], **kw),
        "filter": lambda: ix.search(q, k, nprobe=16, rerank=16, where=Filter(namespace=namespace, as_of=as_of)),
    }


def _got(res) -> set:
    ids = np.asarray(res if isinstance(res, np.ndarray) else res.ids).ravel()
    return set(ids[ids >= 0].tolist())


@pytest.mark.parametrize("n", [300, 1300], ids=["exact", "ivf"])
def test_every_route_keeps_to_its_namespace_and_time(tmp_path, n):
    ix = MemoryIndex.create(tmp_path / "s", DIM, _config())
    x, ns, vf, vt = _fill(ix, n)
    assert ix.is_trained == (n > 1024)
    ix.delete([2, 5, 7])
    live = np.ones(n, bool)
    live[[2, 5, 7]] = False
    q = x[3:4]
    for namespace in (None, "", "ns1", "ns4", "tiny", "nobody"):
        for as_of in (None, T - 1, T + 5, T + 65, T + 85, T + 200):
            want = _want(ns, vf, vt, live, namespace, time.time() if as_of is None else as_of)
            for name, call in _routes(ix, q, n + 1, namespace, as_of).items():
                assert _got(call()) == want, (name, namespace, as_of)
    assert ix.namespaces() == {k: int(((ns == k) & live).sum()) for k in set(ns.tolist()) if ((ns == k) & live).any()}
    ix.close()


def test_sharded_search_keeps_to_its_namespace(tmp_path):
    from lukhas_gpu.distributed import ShardedIndex, rootfiles

    root = tmp_path / "root"
    rootfiles.write_root(root, shards=1, dim=DIM, state="complete")
    ix = MemoryIndex.create(root / "shard-00000", DIM, _config())
    x, ns, vf, vt = _fill(ix, 200)
    ix.close()
    with ShardedIndex.open(root) as sx:
        for namespace, as_of in ((None, None), ("ns2", None), ("ns2", T + 5), ("tiny", T + 60)):
            want = _want(ns, vf, vt, np.ones(200, bool), namespace, time.time() if as_of is None else as_of)
            assert _got(sx.search(x[:1], 201, namespace=namespace, as_of=as_of, nprobe=16)) == want
            assert _got(sx.search_text("common", 201, namespace=namespace, as_of=as_of)) == want
        assert sx.namespaces() == {k: int((ns == k).sum()) for k in set(ns.tolist())}
        g = sx.search(x[:1], 3, namespace="ns2").ids.ravel()
        assert [m.namespace for m in sx.get(g, namespace="ns2")] == ["ns2"] * 3
        with pytest.raises(ValueError, match="not in namespace 'ns3'"):
            sx.get(g, namespace="ns3")
        with pytest.raises(ValueError, match="MAX_NAMESPACE_BYTES"):
            sx.get(g, namespace="x" * (MAX_NAMESPACE_BYTES + 1))


def test_a_search_reads_the_clock_once(tmp_path, monkeypatch):
    """Every route of one hybrid call tests validity at the same "now"."""
    from lukhas_gpu.query import filters

    ix = MemoryIndex(DIM, _config())
    x, *_ = _fill(ix, 50)
    calls = []
    real = time.time
    monkeypatch.setattr(filters.time, "time", lambda: calls.append(1) or real())
    ix.search(x[:1], 5, text=["common"], sparse=[(np.array([0], np.uint32), np.array([1.0], np.float32))])
    assert len(calls) == 1


def test_validity_updates_purge_and_stats(tmp_path):
    ix = MemoryIndex.create(tmp_path / "s", DIM, _config())
    x = np.random.default_rng(1).standard_normal((10, DIM)).astype(np.float32)
    ix.add(x, namespace="a")
    now = time.time()
    assert ix.stats()["expired"] == 0 and ix.stats()["namespaces"] == 1
    ix.update([0, 1], valid_to=now - 1)  # superseded
    ix.update([2], valid_from=now + 1000)  # not yet
    assert set(ix.select().tolist()) == set(range(3, 10))
    assert set(ix.select(as_of=now - 10).tolist()) == set(range(10)) - {2}
    assert ix.stats()["expired"] == 2
    m = ix.get([0])[0]
    assert (m.namespace, m.valid_from, m.valid_to) == ("a", -np.inf, now - 1)
    with pytest.raises(ValueError, match="before valid_from"):
        ix.update([2], valid_to=now)  # ends before it starts: nothing changes
    assert ix.get([2])[0].valid_to == np.inf
    assert ix.purge_expired() == 2 and ix.purge_expired() == 0 and len(ix) == 8
    assert ix.purge_expired(now=now + 10**9) == 0  # the rest has no end
    ix.close(checkpoint=False)
    w = MemoryIndex.open(tmp_path / "s", mode="w")  # the log replayed: updates and the purge
    assert len(w) == 8 and set(w.select(as_of=now - 10).tolist()) == set(range(3, 10))
    assert w.get([2])[0].valid_from == now + 1000
    w.close()


def test_drop_namespace_is_durable_and_readers_follow(tmp_path):
    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM, _config())
    x, ns, vf, vt = _fill(ix, 120)
    ix.checkpoint()
    r = MemoryIndex.open(path)
    assert r.namespaces() == ix.namespaces()
    ix.add(x[:4], namespace=["late", "late", "ns1", ""], valid_to=[T, np.inf, np.inf, np.inf])
    assert ix.drop_namespace("ns3") == int((ns == "ns3").sum())
    assert ix.drop_namespace("ns3") == 0 and ix.drop_namespace("never") == 0
    r.refresh()
    assert r.namespaces() == ix.namespaces() and "ns3" not in r.namespaces() and r.namespaces()["late"] == 2
    assert r.select(namespace="late").tolist() == [121]  # 120 ended at T
    assert r.get([120])[0].namespace == "late"
    with pytest.raises(ValueError, match="not in namespace"):
        r.get([120], namespace="ns1")
    assert [m.id for m in r.get([120, 121], namespace="late")] == [120, 121]
    ix.close()  # checkpoint: the files
    gen = layout.current_generation(path)
    assert (gen / layout.NAMESPACES).exists() and (gen / layout.VALIDITY).exists()
    r.refresh()
    assert r.namespaces() == MemoryIndex.open(path).namespaces()
    assert MemoryIndex.open(path, verify=True).verify()["ok"]


def test_a_store_without_scopes_writes_no_files_and_behaves_as_before(tmp_path):
    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM, _config())
    x = np.random.default_rng(2).standard_normal((30, DIM)).astype(np.float32)
    ix.add(x, namespace="")  # the default, said out loud
    assert ix.select(namespace="").tolist() == list(range(30)) and ix.select(namespace="x").tolist() == []
    assert ix.namespaces() == {"": 30}
    assert "namespaces" not in ix.stats()["memory"]["anon"] and "validity" not in ix.stats()["memory"]["anon"]
    ix.close()
    gen = layout.current_generation(path)
    assert not (gen / layout.NAMESPACES).exists() and not (gen / layout.VALIDITY).exists()
    r = MemoryIndex.open(path)
    assert r.get([0])[0].namespace == "" and r.select().tolist() == list(range(30))


@pytest.mark.parametrize("name", [layout.NAMESPACES, layout.VALIDITY])
def test_damaged_or_misfit_scope_files_are_named(tmp_path, name):
    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM, _config())
    _fill(ix, 40)
    ix.close()
    gen = layout.current_generation(path)
    raw = bytearray((gen / name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (gen / name).write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=name):
        MemoryIndex.open(path, verify=True)


def test_a_column_that_misses_rows_is_named(tmp_path, monkeypatch):
    """A namespace column or validity window one row short, its CRC valid: the load check names
    the file."""
    from lukhas_gpu.records.scopes import Namespaces, Validity

    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM, _config())
    _fill(ix, 40)
    for cls, name, key in ((Namespaces, layout.NAMESPACES, "column"), (Validity, layout.VALIDITY, "valid_to")):
        real = cls.to_arrays

        def short(self, real=real, key=key):
            out = real(self)
            out[key] = out[key][:-1]
            if key == "valid_to":
                out["valid_from"] = out["valid_from"][:-1]
            return out

        monkeypatch.setattr(cls, "to_arrays", short)
        ix.checkpoint()
        monkeypatch.setattr(cls, "to_arrays", real)
        with pytest.raises(CorruptStoreError, match=name):
            MemoryIndex.open(path)
        ix.checkpoint()
    ix.close()


BAD_ADDS = [
    (dict(namespace=3), TypeError, "namespace must be"),
    (dict(namespace=b"a"), TypeError, "namespace must be"),
    (dict(namespace=["a", 1, "b"]), TypeError, r"namespace\[1\] must be a str"),
    (dict(namespace=["a", "b"]), ValueError, "expected 3"),
    (dict(namespace="x" * (MAX_NAMESPACE_BYTES + 1)), ValueError, "MAX_NAMESPACE_BYTES"),
    (dict(namespace="\ud800"), ValueError, "UTF-8"),
    (dict(valid_from=np.nan), ValueError, "NaN"),
    (dict(valid_to=[1.0, np.nan, 2.0]), ValueError, "NaN"),
    (dict(valid_from=np.inf), ValueError, "inf"),
    (dict(valid_to=-np.inf), ValueError, "inf"),
    (dict(valid_from=10, valid_to=5), ValueError, "before valid_from"),
    (dict(valid_to=[1.0, 2.0]), ValueError, "one per memory"),
    (dict(valid_to="soon"), TypeError, "epoch seconds"),
    (dict(valid_from=True), TypeError, "epoch seconds"),
]


@pytest.mark.parametrize("kw,exc,match", BAD_ADDS)
def test_bad_scope_arguments_are_refused_and_change_nothing(tmp_path, kw, exc, match):
    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM, _config())
    ix.add(np.ones((2, DIM), np.float32), namespace="keep")
    wal = (path / layout.WAL).read_bytes()
    with pytest.raises(exc, match=match):
        ix.add(np.random.default_rng(0).standard_normal((3, DIM)).astype(np.float32), **kw)
    assert len(ix) == 2 and ix.parts.rows == 2 and len(ix.parts.namespaces) == 2 and len(ix.parts.validity) == 2
    assert (path / layout.WAL).read_bytes() == wal
    ix.close()


def test_bad_search_scopes(tmp_path):
    ix = MemoryIndex(DIM, _config())
    ix.add(np.ones((2, DIM), np.float32), namespace="a")
    q = np.ones(DIM, np.float32)
    with pytest.raises(TypeError, match="namespace must be a str"):
        ix.search(q, 1, namespace=["a"])
    with pytest.raises(TypeError, match="Filter.namespace must be a str"):
        Filter(namespace=1)
    with pytest.raises(ValueError, match="disagree"):
        ix.search(q, 1, namespace="a", where=Filter(namespace="b"))
    with pytest.raises(ValueError, match="as_of must be finite"):
        ix.search(q, 1, as_of=float("nan"))
    with pytest.raises(ValueError, match="MAX_NAMESPACE_BYTES"):
        ix.select(namespace="y" * 300)
    with pytest.raises(TypeError):
        ix.drop_namespace(None)


def _anon(ix) -> int:
    mem = ix.stats()["memory"]["anon"]
    return sum(v for k, v in mem.items() if k not in ("runtime_libraries", "python_pools", "probe", "drift_monitor"))


def test_a_thousand_small_namespaces_cost_at_most_a_quarter_more(tmp_path):
    """1,000 namespaces of 10 memories against one namespace of 10,000 (the same memories),
    each searched once so that its bitmaps are cached: at most 1.25x the bytes."""
    n = 10_000
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, 64)).astype(np.float32)
    contents = [f"memory {i}" for i in range(n)]
    sizes = {}
    for label, ns in (("one", ["solo"] * n), ("thousand", [f"user-{i // 10:04d}" for i in range(n)])):
        ix = MemoryIndex(64, IndexConfig(train_threshold=10**6))
        for s in range(0, n, 2500):
            ix.add(x[s:s + 2500], contents=contents[s:s + 2500], namespace=ns[s:s + 2500])
        for name in sorted(set(ns))[:100]:
            ix.select(namespace=name)
        sizes[label] = _anon(ix)
    assert sizes["thousand"] <= 1.25 * sizes["one"], sizes


# -- the adapters ---------------------------------------------------------------------------------
def test_langchain_stores_keep_to_their_namespace(tmp_path):
    from conftest import optional_import

    optional_import("langchain_core")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from lukhas_gpu.integrations.langchain import LukhasVectorStore

    emb = DeterministicFakeEmbedding(size=16)
    alice = LukhasVectorStore(emb, path=tmp_path / "s", namespace="alice")
    alice.add_texts([f"a{i}" for i in range(5)], ids=[f"a{i}" for i in range(5)])
    alice.close()
    bob = LukhasVectorStore(emb, path=tmp_path / "s", namespace="bob")
    bob.add_texts([f"b{i}" for i in range(3)], ids=[f"b{i}" for i in range(3)])
    assert {d.id for d in bob.similarity_search("a1", k=10)} == {"b0", "b1", "b2"}
    assert bob.get_by_ids(["a1", "b1"])[0].id == "b1" and len(bob.get_by_ids(["a1"])) == 0
    bob.delete(None)  # all of bob's, none of alice's
    assert bob.index.namespaces() == {"alice": 5}
    bob.close()


def test_langchain_validity_windows_and_as_of(tmp_path):
    from conftest import optional_import

    optional_import("langchain_core")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from lukhas_gpu.integrations.langchain import LukhasVectorStore

    store = LukhasVectorStore(DeterministicFakeEmbedding(size=16), path=tmp_path / "s")
    now = time.time()
    store.add_texts(["old fact"], ids=["old"], valid_from=now - 200, valid_to=now - 100)  # superseded
    store.add_texts(["new fact"], ids=["new"], valid_from=now - 100)
    store.add_texts(["always"], ids=["all"])
    store.add_texts(["dupe", "dupe"], ids=["d", "d"], valid_to=[now - 1, now + 3600])  # the last one kept
    assert {d.id for d in store.similarity_search("fact", k=10)} == {"new", "all", "d"}
    assert {d.id for d in store.similarity_search("fact", k=10, as_of=now - 150)} == {"old", "all", "d"}
    assert {d.id for d, _ in store.similarity_search_with_score("fact", k=10, filter={}, as_of=now - 150)} \
        == {"old", "all", "d"}
    with pytest.raises(ValueError, match="valid_to"):
        store.add_texts(["x"], valid_from=now, valid_to=now - 1)
    store.close()


def test_mem0_sessions_are_namespaces(tmp_path):
    from conftest import optional_import

    optional_import("mem0")
    from lukhas_gpu.integrations.mem0 import LukhasMem0Store

    store = LukhasMem0Store("c", 8, path=str(tmp_path))
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    store.insert(x, [{"data": "a", "user_id": "u1"}, {"data": "b", "user_id": "u2", "agent_id": "g"},
                     {"data": "c", "agent_id": "g"}, {"data": "d"}], ids=["1", "2", "3", "4"])
    ix = store._index
    assert ix.namespaces() == {"user:u1": 1, "user:u2": 1, "agent:g": 1, "": 1}
    assert [o.id for o in store.search("", x[1], 4, filters={"user_id": "u1"})] == ["1"]
    assert {o.id for o in store.search("", x[1], 4, filters={"agent_id": "g"})} == {"2", "3"}
    store.update("3", payload={"data": "c2", "agent_id": "g", "user_id": "u1"})  # moves to u1's namespace
    assert {o.id for o in store.search("", x[2], 4, filters={"user_id": "u1"})} == {"1", "3"}
    assert store.get("3").payload == {"data": "c2", "agent_id": "g", "user_id": "u1"}
    assert [[o.id for o in store.list(filters={"user_id": "u2"})[0]]] == [["2"]]
    store.close()


def test_cli_search_takes_a_namespace_and_a_time(tmp_path, capsys):
    import json

    from lukhas_gpu import cli

    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM, _config())
    x, ns, vf, vt = _fill(ix, 60)
    ix.close()
    np.save(tmp_path / "q.npy", x[:2])
    for args, namespace, t in (([], "ns2", time.time()), (["--as-of", str(T + 75)], "tiny", T + 75)):
        assert cli.main(["search", str(path), "--query-file", str(tmp_path / "q.npy"), "-k", "61", "--json",
                         "--namespace", namespace, *args]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        want = _want(ns, vf, vt, np.ones(60, bool), namespace, t)
        assert all(set(line["ids"]) - {-1} == want for line in lines) and len(lines) == 2


def test_the_count_of_namespaces_is_bounded(monkeypatch):
    from lukhas_gpu.records import scopes

    monkeypatch.setattr(scopes, "MAX_NAMESPACES", 4)
    ix = MemoryIndex(DIM, _config())
    x = np.random.default_rng(4).standard_normal((4, DIM)).astype(np.float32)
    ix.add(x[:2], namespace=["a", "b"])  # "", a, b
    with pytest.raises(ValueError, match="MAX_NAMESPACES"):
        ix.add(x[2:], namespace=["c", "d"])
    assert len(ix) == 2 and ix.parts.namespaces.count == 3
    ix.add(x[2:], namespace=["c", "a"])  # one more name: 4
    assert ix.namespaces() == {"a": 2, "b": 1, "c": 1}


def test_llama_index_stores_keep_to_their_namespace(tmp_path):
    from conftest import optional_import

    optional_import("llama_index.core")
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from lukhas_gpu.integrations.llama_index import LukhasVectorStore

    rng = np.random.default_rng(5)

    def nodes(prefix, n):
        return [TextNode(text=f"{prefix}{i}", id_=f"{prefix}{i}", embedding=rng.standard_normal(8).tolist())
                for i in range(n)]

    a = LukhasVectorStore(8, path=tmp_path / "s", namespace="a")
    a.add(nodes("a", 4))
    a.close()
    b = LukhasVectorStore(8, path=tmp_path / "s", namespace="b")
    b.add(nodes("b", 3))
    q = VectorStoreQuery(query_embedding=rng.standard_normal(8).tolist(), similarity_top_k=10)
    assert sorted(b.query(q).ids) == ["b0", "b1", "b2"]
    assert [n.node_id for n in b.get_nodes()] == ["b0", "b1", "b2"]
    b.clear()  # b's nodes only
    assert b.client.namespaces() == {"a": 4}
    now = time.time()  # validity windows: add(valid_from=, valid_to=), query(as_of=)
    b.add(nodes("old", 2), valid_from=now - 200, valid_to=[now - 100, now - 100])
    b.add(nodes("cur", 2) + nodes("cur", 1), valid_to=[now + 100, now + 100, now + 3600])  # "cur0" repeated
    assert sorted(b.query(q).ids) == ["cur0", "cur1"]
    assert sorted(b.query(q, as_of=now - 150).ids) == ["cur0", "cur1", "old0", "old1"]
    assert sorted(b.query(q, as_of=now + 1000).ids) == ["cur0"]
    b.close()


def test_a_namespace_holding_most_of_the_store_excludes_the_rest():
    """A namespace (or "now") allowing most of the store searches the IVF with the few other rows
    excluded (deleted and expired ones among them), as deletions are; a narrow one names its rows.
    Both give exactly the reference's rows, and the exact top 10 of the namespace's own rows."""
    n = 1300
    ix = MemoryIndex(DIM, _config())
    x = np.random.default_rng(3).standard_normal((n, DIM)).astype(np.float32)
    ns = np.where(np.arange(n) % 10 == 0, "other", "big")
    vf, vt = np.full(n, -np.inf), np.where(np.arange(n) % 17 == 0, T, np.inf)  # every 17th expired
    ix.add(x, namespace=ns.tolist(), valid_to=vt)
    assert ix.is_trained
    ix.delete(np.arange(1, n, 41))
    live = np.ones(n, bool)
    live[1::41] = False
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for name, wide in ((None, True), ("big", True), ("other", False)):
        want = _want(ns, vf, vt, live, name, time.time())
        res = ix.search(x[:3], n + 1, nprobe=16, rerank=n, namespace=name)
        assert all(_got(row) == want for row in res.ids), name
        plan = ix.last_plan
        assert plan.strategy == "ann" and (plan.excluded is not None) == wide, name
        if wide:
            assert set(plan.excluded.array().tolist()) == set(range(n)) - want
        rows = np.array(sorted(want))
        ref = rows[np.argsort(-(xn[:3] @ xn[rows].T), axis=1)[:, :10]]
        got = ix.search(x[:3], 10, nprobe=16, rerank=64, namespace=name).ids
        hits = sum(len(set(g.tolist()) & set(r.tolist())) for g, r in zip(got, ref))
        assert hits >= 0.9 * 30, (name, hits)


def test_cli_lists_drops_namespaces_and_purges(tmp_path, capsys):
    import json

    from lukhas_gpu import cli

    path = tmp_path / "s"
    ix = MemoryIndex.create(path, DIM, _config())
    x, ns, vf, vt = _fill(ix, 60)
    ix.close()
    want = {k: int((ns == k).sum()) for k in set(ns.tolist())}
    assert cli.main(["namespaces", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == want
    assert cli.main(["namespaces", str(path)]) == 0
    assert '"tiny"' in capsys.readouterr().out
    assert cli.main(["get", str(path), "7", "11", "--namespace", "tiny", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli.main(["get", str(path), "7", "--namespace", "ns2"]) == 1
    assert "not in namespace 'ns2'" in capsys.readouterr().err
    for bad, message in (("nobody", "no memory in namespace 'nobody'"), ("x" * (MAX_NAMESPACE_BYTES + 1), "NAME is")):
        assert cli.main(["drop-namespace", str(path), bad]) == 1
        assert message in capsys.readouterr().err
    assert cli.main(["drop-namespace", str(path), "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 3, "count": 57}
    ended = int(((vt <= T + 100) & (ns != "tiny")).sum())
    assert cli.main(["purge-expired", str(path), "--now", str(T + 100), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": ended, "count": 57 - ended}
    with pytest.raises(SystemExit):  # argparse: not a time
        cli.main(["purge-expired", str(path), "--now", "soon"])
    assert "neither epoch seconds" in capsys.readouterr().err
    with MemoryIndex.open(path, mode="r") as ro:  # both were checkpointed
        assert "tiny" not in ro.namespaces() and len(ro) == 57 - ended


def _scoped_records(n):
    """``n`` payload records: a namespace on most (none on every 7th), windows on every 3rd (an
    ISO-8601 start on every 6th), the rest open."""
    recs = []
    for i in range(n):
        r = {"content": f"m{i}"}
        if i % 7:
            r["namespace"] = f"user-{i % 3}"
        if i % 3 == 0:
            r["valid_from"] = "2023-11-14T22:13:20Z" if i % 6 == 0 else T
            r["valid_to"] = T + 100 + i
        recs.append(r)
    return recs


def _check_scoped_store(store, recs):
    with MemoryIndex.open(store, mode="r") as ix:
        got = ix.get(np.arange(len(recs)))
        for m, r in zip(got, recs):
            assert m.namespace == r.get("namespace", ""), (m.id, r)
            assert m.valid_from == (T if "valid_from" in r else -np.inf), (m.id, r)
            assert m.valid_to == r.get("valid_to", np.inf), (m.id, r)
        want = {f"user-{j}": sum(1 for r in recs if r.get("namespace") == f"user-{j}") for j in range(3)}
        assert ix.namespaces() == {**want, "": sum(1 for r in recs if "namespace" not in r)}
        assert len(ix.select(namespace="user-1", as_of=T + 50)) == sum(
            1 for r in recs if r.get("namespace") == "user-1" and r.get("valid_to", np.inf) > T + 50)


@pytest.mark.parametrize("kind", ["jsonl", "npy", "parquet"])
def test_file_ingest_reads_namespaces_and_windows(tmp_path, capsys, kind):
    import json

    from lukhas_gpu import cli

    n = 90
    recs = _scoped_records(n)
    x = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    store = tmp_path / "s"
    if kind == "parquet":
        from conftest import optional_import

        pa, pq = optional_import("pyarrow"), optional_import("pyarrow.parquet")
        table = pa.table({"embedding": [row.tolist() for row in x], "content": [r["content"] for r in recs],
                          "namespace": [r.get("namespace") for r in recs],
                          "valid_from": [T if "valid_from" in r else None for r in recs],
                          "valid_to": [r.get("valid_to") for r in recs]})
        pq.write_table(table, tmp_path / "in.parquet")
        argv = [str(tmp_path / "in.parquet")]
    else:
        lines = [{**r, **({"embedding": x[i].tolist()} if kind == "jsonl" else {})} for i, r in enumerate(recs)]
        (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
        argv = [str(tmp_path / "in.jsonl")]
        if kind == "npy":
            np.save(tmp_path / "e.npy", x)
            argv = [str(tmp_path / "e.npy"), "--payloads", str(tmp_path / "in.jsonl")]
    assert cli.main(["ingest", str(store), *argv, "--batch-size", "32", "--dim", str(DIM), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    read = out["columns_read"] if kind == "parquet" else out["scope_fields_read"]
    assert {"namespace", "valid_from", "valid_to"} <= set(read)
    _check_scoped_store(store, recs)
    if kind == "jsonl":  # the text summary names them too; a file without them says so
        (tmp_path / "plain.jsonl").write_text(json.dumps({"embedding": x[0].tolist()}) + "\n")
        assert cli.main(["ingest", str(tmp_path / "p"), str(tmp_path / "plain.jsonl"), "--dim", str(DIM)]) == 0
        assert "scope fields read: none" in capsys.readouterr().out
        with MemoryIndex.open(tmp_path / "p", mode="r") as ix:
            assert not (tmp_path / "p").joinpath("namespaces.npz").exists() and ix.namespaces() == {"": 1}


@pytest.mark.parametrize("field, value, message", [
    ("namespace", "x" * (MAX_NAMESPACE_BYTES + 1), "MAX_NAMESPACE_BYTES"),
    ("namespace", 3, '"namespace" must be a string'),
    ("valid_to", T - 10, "is before valid_from"),
    ("valid_from", "tomorrow", '"valid_from" \'tomorrow\' is not an ISO-8601'),
    ("valid_to", True, '"valid_to" must be epoch seconds'),
])
def test_file_ingest_refuses_bad_scopes_naming_the_line(tmp_path, capsys, field, value, message):
    import json

    from lukhas_gpu import cli

    x = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32)
    lines = [{"embedding": x[i].tolist(), "namespace": "a", "valid_from": T} for i in range(40)]
    lines[25][field] = value
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert cli.main(["ingest", str(tmp_path / "s"), str(tmp_path / "in.jsonl"), "--batch-size", "20",
                     "--dim", str(DIM)]) == 1
    err = capsys.readouterr().err
    assert "in.jsonl, line 26" in err and message in err, err
    with MemoryIndex.open(tmp_path / "s", mode="r") as ix:  # the earlier batch only
        assert len(ix) == 20 and ix.namespaces() == {"a": 20}
