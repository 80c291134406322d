"""External ids, upsert, free metadata and declared fields (issue 17's core): each fast path
against a plain-Python reference on seeded data, and durability through checkpoint, WAL replay,
readers and SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from lukhas_gpu import Filter, IndexConfig, MemoryIndex
from lukhas_gpu.query import metafilter
from lukhas_gpu.records.docmeta import DocMetadata, validate_metadata
from lukhas_gpu.records.keytable import KeyTable, encode_keys
from lukhas_gpu.store.layout import CorruptStoreError

FIELDS = {"user": "str", "turn": "int", "score": "float", "flag": "bool"}


def _keys(rng, n):
    out = []
    for i in range(n):
        r = rng.integers(6)
        if r == 0:
            out.append(str(uuid.UUID(int=int(rng.integers(2**62)) << 60 | i)))
        elif r == 1:
            out.append(str(uuid.UUID(int=int(rng.integers(2**62)) << 60 | i)).upper())
        elif r == 2:
            out.append(f"doc-{i}")
        elif r == 3:
            out.append(f"long key, é ✓ {i} " * 2)
        elif r == 4:
            out.append(f"Doc-{i}-{'x' * 12}")  # 16+ bytes: the arena
        else:
            out.append(f"{i}")
    return out


def test_keytable_matches_a_dict():
    rng = np.random.default_rng(0)
    keys = _keys(rng, 12000)
    t = KeyTable()
    for i in range(0, len(keys), 701):  # tail, merges, tail again
        t.append(encode_keys(keys[i:i + 701]))
    assert 0 < t.n_sorted <= len(t) == len(keys)
    ref = {k: i for i, k in enumerate(keys)}
    queries = keys[::3] + ["absent", "DOC-1", str(uuid.UUID(int=5)), "x" * 40] + [k.lower() for k in keys[1:60:7]]
    for table in (t, KeyTable.from_arrays(t.to_arrays())):
        qi, ent = table.lookup(encode_keys(queries))
        got = dict(zip(qi.tolist(), ent.tolist()))
        assert got == {j: ref[q] for j, q in enumerate(queries) if q in ref}
    assert t.keys(np.arange(len(keys))) == keys  # exact round trip, case of UUIDs included
    ints = KeyTable()
    vals = np.array([0, -1, 2**63 - 1, -2**63, 42], np.int64)
    ints.append(encode_keys(vals))
    assert ints.keys(np.arange(5)) == vals.tolist()
    arrays = t.to_arrays()
    arrays["order"] = arrays["order"][::-1].copy()
    with pytest.raises(ValueError, match="sort order"):
        KeyTable.from_arrays(arrays)
    for bad, err in ((["a", b"b"], TypeError), ([True], TypeError), (["x" * 2000], ValueError),
                     (["\ud800"], ValueError), ([2**63], ValueError)):
        with pytest.raises(err):
            encode_keys(bad)


def _random_value(rng, depth=0):
    r = int(rng.integers(9 if depth < 3 else 7))
    make = [lambda: None, lambda: True, lambda: False, lambda: int(rng.integers(-2**63, 2**63 - 1)),
            lambda: int(rng.integers(0, 200)), lambda: float(rng.standard_normal()), lambda: f"s{rng.integers(1000)}é",
            lambda: [_random_value(rng, depth + 1) for _ in range(2)],
            lambda: {f"k{j}": _random_value(rng, depth + 1) for j in range(2)}]
    return make[r]()


def _random_dict(rng, i):
    d = {f"free{rng.integers(5)}": _random_value(rng) for _ in range(rng.integers(0, 4))}
    if rng.random() < 0.8:
        d["user"] = f"u{rng.integers(4)}"
    if rng.random() < 0.7:
        d["turn"] = int(rng.integers(-5, 20))
    if rng.random() < 0.5:
        d["score"] = float(rng.integers(0, 10)) / 2
    if rng.random() < 0.5:
        d["flag"] = bool(rng.integers(2))
    if rng.random() < 0.1:
        d["user"] = None
    return d if rng.random() < 0.9 else None


def _same(a, b):  # exact: types too (an int stays an int, 1.0 stays a float)
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_metadata_round_trips_exactly_and_filters_match_the_reference():
    rng = np.random.default_rng(1)
    dicts = [_random_dict(rng, i) for i in range(600)]
    m = DocMetadata(FIELDS)
    m.append(None, 7)  # rows before any metadata
    for i in range(0, 600, 150):
        m.append(validate_metadata(dicts[i:i + 150], 150, FIELDS), 150)
    dicts = [None] * 7 + dicts
    for store in (m, DocMetadata.from_arrays(m.to_arrays(), FIELDS)):
        got = store.get(np.arange(len(dicts)))
        assert all(_same(a, b) for a, b in zip(got, dicts))
    specs = [{"user": "u1"}, {"turn": {"$gte": 3, "$lt": 9}}, {"user": {"$in": ["u0", "u3", "zz"]}},
             {"score": {"$exists": True}}, {"flag": False}, {"user": {"$ne": "u2"}}, {"turn": {"$nin": [1, 2]}},
             {"$or": [{"user": "u0"}, {"score": {"$gt": 2}}]}, {"$not": {"flag": True}},
             {"score": {"$lte": 3}, "turn": {"$gt": 0.5}}, {"user": "nobody"}, {"turn": {"$exists": False}}]
    for spec in specs:
        tree = metafilter.parse(spec)
        mask = metafilter.evaluate(tree, m, len(dicts))
        ref = np.array([metafilter.matches(tree, d) for d in dicts])
        assert (mask == ref).all(), spec
    # keys never declared (random values of every kind, nested ones, int64 extremes): the records
    scalars = [v for d in dicts if d for k, v in d.items() if k.startswith("free")
               and isinstance(v, (str, int, float)) and v is not None]
    picks = [scalars[i] for i in np.random.default_rng(2).choice(len(scalars), 12, replace=False)]
    free = [{"free0": picks[0]}, {"free1": {"$ne": picks[1]}}, {"free2": {"$exists": True}},
            {"free3": {"$in": picks[2:6]}}, {"free4": {"$nin": picks[6:9] + [True]}}, {"free0": {"$gt": 0}},
            {"free1": {"$lte": 100.5}}, {"free2": {"$gte": "s5"}}, {"free3": True}, {"free9": {"$exists": False}},
            {"$or": [{"free0": {"$lt": -2**62}}, {"user": "u1", "free4": {"$exists": True}}]}]
    for spec in free:
        tree = metafilter.parse(spec)
        for store in (m, DocMetadata.from_arrays(m.to_arrays(), FIELDS)):
            mask = metafilter.evaluate(tree, store, len(dicts))
            ref = np.array([metafilter.matches(tree, d) for d in dicts])
            assert (mask == ref).all(), spec
    with pytest.raises(TypeError, match="not supported"):
        metafilter.evaluate(metafilter.parse({"user": {"$gt": "a"}}), m, len(dicts))
    for bad in ({"$xor": []}, {"a": {"$like": 1}}, {"a": {"$in": 3}}, {"a": [1]}, []):
        with pytest.raises((TypeError, ValueError)):
            metafilter.parse(bad)
    for bad, err in (([{"turn": "3"}], TypeError), ([{"a": (1,)}], TypeError), ([{1: 2}], TypeError),
                     ([{"a": 2**64}], ValueError), ([{"a": "x" * 70000}], ValueError), (["x"], TypeError)):
        with pytest.raises(err):
            validate_metadata(bad, 1, FIELDS)


def _index(tmp_path, kind="str", **kw):
    cfg = IndexConfig(external_ids=kind, metadata_fields=FIELDS, **kw)
    return MemoryIndex.create(tmp_path / "s", 16, cfg)


def test_ids_upsert_update_delete_and_filtered_search(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    ids = [str(uuid.UUID(int=int(i) * 7919 + 1)) for i in range(300)]
    metas = [_random_dict(rng, i) for i in range(300)]
    ix = _index(tmp_path)
    ix.add(x, contents=[f"c{i}" for i in range(300)], ids=ids, metadata=metas)
    got = ix.get(ids[::-1][:50])
    assert [g.external_id for g in got] == ids[::-1][:50]
    assert all(_same(g.metadata, m) for g, m in zip(got, metas[::-1][:50]))
    # filtered search = exact reference over the matching rows
    spec = {"$or": [{"user": "u1"}, {"turn": {"$gte": 10}}]}
    tree = metafilter.parse(spec)
    want = [i for i, d in enumerate(metas) if metafilter.matches(tree, d)]
    res = ix.search(x[:5], k=300, where=Filter(meta=spec, min_importance=0.1))
    for row in res.external_ids:
        assert sorted(i for i in row if i is not None) == sorted(ids[i] for i in want)
    assert res.external_ids[0][0] == ids[0] if 0 in want else True
    # upsert: same id, new vector / content / metadata; the count stays
    wal = len(ix.state.wal)
    ix.add(-x[:3], contents=["n0", "n1", "n2"], ids=ids[:3], metadata=[{"v": 2}, None, {"user": "new"}])
    assert len(ix) == 300 and len(ix.state.wal) == wal + 1  # one record
    assert [m.content for m in ix.get(ids[:3])] == ["n0", "n1", "n2"]
    assert ix.search(-x[0], k=1).external_ids == [ids[0]]
    ix.update([ids[10]], embeddings=x[20:21], metadata=[{"turn": 5}], contents=["moved"])
    assert set(ix.search(x[20], k=2).external_ids) == {ids[10], ids[20]}
    sample = ix.parts.probe.memories  # the recall probe's originals follow the new vector
    assert np.allclose(sample.vectors[sample.ids == 10], x[20] / np.linalg.norm(x[20]), atol=1e-3)
    assert ix.metadata([ids[10]]) == [{"turn": 5}]
    assert ix.delete([ids[4], ids[5]]) == 2
    assert ix.contains([ids[4], ids[6], "nope"]).tolist() == [False, True, False]
    # unknown ids raise, bad calls change nothing and log nothing
    wal = len(ix.state.wal)
    for call, err in ((lambda: ix.get(["nope"]), ValueError), (lambda: ix.delete([ids[4]]), ValueError),
                      (lambda: ix.update(["nope"], contents=["x"]), ValueError),
                      (lambda: ix.add(x[:2], ids=["a", "a"]), ValueError),
                      (lambda: ix.add(x[:2], ids=[1, 2]), TypeError),
                      (lambda: ix.add(x[:2]), ValueError),
                      (lambda: ix.add(x[:1], ids=["b"], metadata=[{"turn": 1.5}]), TypeError),
                      (lambda: ix.update([ids[7]], embeddings=x[:2]), ValueError),
                      (lambda: ix.search(x[0], where=Filter(meta={"turn": "1"})), TypeError)):
        with pytest.raises(err):
            call()
    assert len(ix.state.wal) == wal and len(ix) == 298
    kept = ix.get(ids[6:40])
    assert ix.compact() > 0 and ix.get(ids[6:40]) == kept  # old dicts of upserts and deletes dropped
    state = (ix.get(ids[:12][6:]), ix.search(x[:4], k=5).external_ids)
    ix.close(checkpoint=False)  # replay the log
    ix = MemoryIndex.open(tmp_path / "s", "w")
    assert (ix.get(ids[:12][6:]), ix.search(x[:4], k=5).external_ids) == state
    reader = MemoryIndex.open(tmp_path / "s", "r")
    assert reader.get(ids[:3])[2].metadata == {"user": "new"}
    ix.close()  # checkpoint
    ix = MemoryIndex.open(tmp_path / "s", "r", verify=True)
    assert (ix.get(ids[:12][6:]), ix.search(x[:4], k=5).external_ids) == state
    assert ix.verify()["ok"]
    mem = ix.stats()["memory"]
    assert mem["anon"]["external_ids"] >= 17 * 303 and mem["disk"]["external_ids"] > 0
    assert mem["anon"]["metadata_records"] > 0 and mem["anon"]["metadata_fields"] > 0


def test_int_ids_and_plain_indexes(tmp_path):
    ix = _index(tmp_path, kind="int")
    x = np.random.default_rng(3).standard_normal((20, 16)).astype(np.float32)
    ix.add(x, ids=np.arange(1000, 1020) * -3)
    ix.add(x[:1], ids=[2**63 - 1], metadata=[{"turn": -1}])
    assert ix.get([-3000])[0].id == 0 and ix.search(x[5], k=1).external_ids == [-3015]
    with pytest.raises(TypeError):
        ix.add(x[:1], ids=["a"])
    reader = MemoryIndex.open(tmp_path / "s", "r")
    ix.add(-x[:1], ids=[-3000])  # an upsert the reader follows
    assert reader.refresh()["added"] == 1 and reader.search(-x[0], k=1).external_ids == [-3000]
    ix.close(checkpoint=False)
    ix = MemoryIndex.open(tmp_path / "s", "w")  # int ids replayed from the log
    assert ix.get([2**63 - 1])[0].metadata == {"turn": -1} and len(ix) == 21
    ix.close()
    gen = next(p for p in (tmp_path / "s").iterdir() if p.name.startswith("gen-") and (p / "idmap.npz").exists()
               and p.name == (tmp_path / "s" / "CURRENT").read_text().strip())
    data = bytearray((gen / "idmap.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (gen / "idmap.npz").write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="idmap.npz"):
        MemoryIndex.open(tmp_path / "s", "r")
    plain = MemoryIndex(16)
    with pytest.raises(ValueError, match="assigns its own ids"):
        plain.add(x[:1], ids=["a"])
    plain.add(x[:2], metadata=[{"a": 1}, None])
    assert [m.metadata for m in plain.get([0, 1])] == [{"a": 1}, None]
    assert plain.search(x[0], k=1).external_ids == [0]


def test_small_dims_train_and_find_themselves():
    x = np.random.default_rng(4).standard_normal((3000, 6)).astype(np.float32)
    ix = MemoryIndex(6, IndexConfig(train_threshold=2048, nlist=32))
    ix.add(x)
    assert ix.is_trained
    assert (ix.search(x[:200], k=1).ids[:, 0] == np.arange(200)).mean() >= 0.9


_WRITER = textwrap.dedent("""
    import sys, uuid, numpy as np
    from lukhas_gpu import IndexConfig, MemoryIndex
    ix = MemoryIndex.create(sys.argv[1], 16, IndexConfig(external_ids="str", metadata_fields={"turn": "int"}))
    rng = np.random.default_rng(0)
    for i in range(100000):
        j = int(rng.integers(0, 50))  # upserts of earlier ids too
        ix.add(rng.standard_normal((1, 16)).astype(np.float32), contents=[f"v{i}"], ids=[f"id-{j}"],
               metadata=[{"turn": i, "free": [i, str(i)]}])
        print(j, i, flush=True)
""")


def test_sigkill_keeps_every_acknowledged_upsert(tmp_path):
    store = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(store)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    acked = {}
    for line in proc.stdout:
        j, i = map(int, line.split())
        acked[j] = i
        if len(acked) >= 50 and i >= 120:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for line in proc.stdout:  # lines written before the kill: acknowledged too
        j, i = map(int, line.split())
        acked[j] = i
    ix = MemoryIndex.open(store, "w")
    assert len(ix) == 50
    got = ix.get([f"id-{j}" for j in sorted(acked)])
    for g, j in zip(got, sorted(acked)):  # the last acknowledged version, or one acknowledged later
        assert g.metadata["turn"] >= acked[j] and g.content == f"v{g.metadata['turn']}"
        assert g.metadata["free"] == [g.metadata["turn"], str(g.metadata["turn"])]
    ix.close()


def test_importing_the_package_loads_no_adapter_framework():
    code = ("import sys, lukhas_gpu, lukhas_gpu.integrations; lukhas_gpu.MemoryIndex; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'llama_index', 'mem0')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plan_predicts_the_bytes_stats_counts():
    import lukhas_gpu

    n = 20000
    rng = np.random.default_rng(5)
    ids = [str(uuid.UUID(int=int(rng.integers(2**62)) << 64 | i, version=4)) for i in range(n)]
    metas = [{"source": ("chat", "email", "doc")[i % 3], "turn": int(rng.integers(100))} for i in range(n)]
    for fields, meta_bytes in ((None, 11), ({"source": "str", "turn": "int"}, 0)):
        cfg = IndexConfig(external_ids="str", metadata_fields=fields)
        ix = MemoryIndex(8, cfg)
        x = rng.standard_normal((5000, 8)).astype(np.float32)
        for i in range(0, n, 5000):
            ix.add(x, ids=ids[i:i + 5000], metadata=metas[i:i + 5000])
        got = ix.stats()["memory"]["anon"]
        want = lukhas_gpu.plan(n, 8, config=cfg, avg_metadata_bytes=meta_bytes,
                               backend="cpu").to_dict()["memory"]["anon"]
        assert 17 * n <= got["external_ids"] <= want["external_ids"] == 21 * n
        stored = got["metadata_records"] + got.get("metadata_fields", 0)
        predicted = want.get("metadata_records", 0) + want.get("metadata_fields", 0)
        assert abs(stored - predicted) <= 0.15 * predicted, (fields, stored, predicted)
        assert (stored + got["external_ids"]) / n <= 40  # the budget: a UUID and a small dict
