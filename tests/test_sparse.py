"""Sparse vectors, BM25 and hybrid search: the pruned top-k against scipy brute force, BM25
against bm25s on the same tokens, fusion against its definition, and the store (checkpoint, WAL
replay, readers, SIGKILL, verify)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lukhas_gpu import Filter, IndexConfig, MemoryIndex
from lukhas_gpu.query.hybrid import Fusion, fuse
from lukhas_gpu.sparse import InvertedIndex, SparseArena, SparseQuery, pack_sparse

from conftest import optional_import

sp = optional_import("scipy.sparse")

V = 30_000
D = 16


def splade(rng, n, nnz, dtype=np.float32):
    """SPLADE-shaped rows: Zipf-distributed terms, positive log-normal weights."""
    p = 1.0 / np.arange(1, V + 1) ** 0.9
    p /= p.sum()
    lens = rng.poisson(nnz, n).clip(1)
    terms = rng.choice(V, size=int(lens.sum()), p=p)
    rows = np.repeat(np.arange(n), lens)
    vals = rng.lognormal(-0.5, 0.7, len(terms))
    m = sp.csr_matrix((vals, (rows, terms)), shape=(n, V))
    m.sum_duplicates()
    m.data = m.data.astype(dtype).astype(np.float32)  # scipy has no float16: the values rounded to it
    return m


def pairs(m, dtype):
    """The rows of ``m`` as (indices, values) pairs of ``dtype`` (how float16 vectors are given)."""
    return [(m.indices[a:b], m.data[a:b].astype(dtype)) for a, b in zip(m.indptr[:-1], m.indptr[1:])]


def brute(docs, queries, k, live=None):
    """scipy float64 reference: top-k by score, ties by the smaller id, positive scores only."""
    s = (queries.astype(np.float64) @ docs.astype(np.float64).T).toarray()
    if live is not None:
        s[:, ~live] = 0
    ids = np.full((s.shape[0], k), -1)
    sc = np.full((s.shape[0], k), -np.inf)
    for i, r in enumerate(s):
        pos = np.flatnonzero(r > 0)
        order = pos[np.lexsort((pos, -r[pos]))][:k]
        ids[i, :len(order)], sc[i, :len(order)] = order, r[order]
    return sc, ids


def vectors(rng, n):
    return rng.standard_normal((n, D)).astype(np.float32)


# -- the pruned exact top-k ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_pruned_topk_equals_brute_force(dtype):
    rng = np.random.default_rng(7)
    docs = splade(rng, 12_000, 120, dtype)
    queries = splade(rng, 40, 25, dtype)
    arena, inv = SparseArena(), InvertedIndex()
    for lo in range(0, docs.shape[0], 2500):  # several segments, merged as they grow
        hi = min(lo + 2500, docs.shape[0])
        arena.append(np.arange(lo, hi), pack_sparse(pairs(docs[lo:hi], dtype), hi - lo))
        inv.sync(arena)
    assert len(inv.segments) >= 2
    dead = rng.choice(docs.shape[0], 700, replace=False)
    arena.delete_docs(dead)
    live = np.ones(docs.shape[0], bool)
    live[dead] = False
    assert arena.values.dtype == dtype
    qp = pack_sparse(pairs(queries, dtype), queries.shape[0])
    qs = [SparseQuery(qp.row(i)[0], qp.row(i)[1].astype(np.float64)) for i in range(qp.n)]
    stored = sp.csr_matrix((arena.values.view().astype(np.float32), arena.indices.view(), arena.indptr.view()),
                           shape=(docs.shape[0], V))
    for k in (1, 10, 100):
        got_s, got_i = inv.topk(arena, qs, k)
        ref_s, ref_i = brute(stored, queries.astype(np.float64), k, live)
        np.testing.assert_array_equal(got_i, ref_i)
        np.testing.assert_allclose(got_s, ref_s, rtol=1e-6)
        if k == 10:  # MaxScore skipped part of the posting lists (the long, low-bound ones)
            assert inv.last_postings["scanned"] < 0.8 * inv.last_postings["total"]


def test_ties_break_by_id_and_only_matching_memories_return():
    rows = [(np.array([1, 5]), np.array([1.0, 2.0]))] * 3 + [(np.array([7]), np.array([1.0]))]
    idx = MemoryIndex(D)
    idx.add(vectors(np.random.default_rng(0), 4), sparse=rows)
    res = idx.search(None, 5, sparse=(np.array([5]), np.array([1.0])))
    np.testing.assert_array_equal(res.ids, [0, 1, 2, -1, -1])
    assert res.scores[0] == res.scores[2] == 2.0 and np.isinf(res.scores[3])


def test_sparse_search_through_the_api_with_filters_and_deletes():
    rng = np.random.default_rng(3)
    n = 6000
    docs = splade(rng, n, 60)
    tags = [["even"] if i % 2 == 0 else ["odd", "rare"] if i % 97 == 0 else ["odd"] for i in range(n)]
    idx = MemoryIndex(D)
    idx.add(vectors(rng, n // 2), tags=tags[: n // 2], sparse=docs[: n // 2])
    idx.add(vectors(rng, n // 2), tags=tags[n // 2:], sparse=list(zip(docs[n // 2:].tolil().rows,
                                                                       docs[n // 2:].tolil().data)))
    idx.delete(np.arange(0, n, 7))
    live = np.ones(n, bool)
    live[np.arange(0, n, 7)] = False
    q = splade(rng, 12, 25)
    for where, mask in ((None, live), (Filter(tags_any=["even"]), live & (np.arange(n) % 2 == 0)),
                        (Filter(tags_any=["rare"]), live & np.array(["rare" in t for t in tags]))):
        res = idx.search(None, 10, sparse=q, where=where)
        _, ref = brute(docs, q, 10, mask)
        np.testing.assert_array_equal(res.ids, ref)
    assert idx.sparse_vectors([1])[0][0].tolist() == docs[1].indices.tolist()


@pytest.mark.parametrize("bad, problem", [
    ([(np.array([1, 2]), np.array([1.0, -1.0]))], ">= 0"),
    ([(np.array([1, 2]), np.array([1.0, np.nan]))], "finite"),
    ([(np.array([3, 3]), np.array([1.0, 1.0]))], "unique"),
    ([(np.array([1.5]), np.array([1.0]))], "integers"),
    ([(np.array([2**33]), np.array([1.0]))], "outside"),
    ([(np.array([1]), np.array([1]))], "float"),
    ([], "rows"),
    ("text", "scipy.sparse"),
])
def test_bad_sparse_input_is_refused_and_changes_nothing(tmp_path, bad, problem):
    idx = MemoryIndex.create(tmp_path / "s", D)
    idx.add(vectors(np.random.default_rng(0), 1), sparse=[(np.array([1]), np.array([1.0]))])
    wal = (tmp_path / "s" / "wal.log").stat().st_size
    with pytest.raises((TypeError, ValueError), match=problem):
        idx.add(vectors(np.random.default_rng(1), 1), sparse=bad)
    assert len(idx) == 1 and (tmp_path / "s" / "wal.log").stat().st_size == wal
    with pytest.raises(ValueError, match="no text index"):
        idx.search_text("hello")
    idx.close()


# -- BM25 against bm25s --------------------------------------------------------------------------
WORDS = [f"w{i}" for i in range(400)]


def corpus(rng, n):
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 30), p=p)) for _ in range(n)]


def bm25s_ref(texts, queries, k, method="lucene"):
    bm25s = optional_import("bm25s")
    from lukhas_gpu.sparse import Tokenizer

    tok = Tokenizer()
    r = bm25s.BM25(method=method, k1=1.5, b=0.75)
    r.index([tok(t) for t in texts], show_progress=False)
    return np.stack([r.get_scores(tok(q)) for q in queries])


@pytest.mark.parametrize("variant", ["lucene", "robertson", "atire"])
def test_bm25_matches_bm25s_with_live_statistics(variant):
    rng = np.random.default_rng(11)
    n = 3000
    texts = corpus(rng, n)
    queries = [" ".join(rng.choice(WORDS[:200], size=rng.integers(1, 6))) + " w3 W3" for _ in range(30)]
    idx = MemoryIndex(D, IndexConfig(text_index=True, bm25_variant=variant))
    idx.add(vectors(rng, n), contents=texts)
    # deletes and an update change N, df and the average length: no rebuild
    dead = np.arange(0, n, 5)
    idx.delete(dead)
    new_texts = corpus(rng, 10)
    idx.update(np.arange(1, 51, 5), contents=new_texts)
    live_texts = list(texts)
    for i, t in zip(range(1, 51, 5), new_texts):
        live_texts[i] = t
    keep = np.setdiff1d(np.arange(n), dead)
    ref = bm25s_ref([live_texts[i] for i in keep], queries, 10, variant)
    res = idx.search_text(queries, k=10)
    for qi in range(len(queries)):
        got = res.ids[qi][res.ids[qi] >= 0]
        r = ref[qi]
        pos = np.flatnonzero(r > 0)
        want = keep[pos[np.lexsort((pos, -r[pos]))][:10]]
        # bm25s scores in float32: compare the scores, then the ids wherever no float32 near-tie decides
        np.testing.assert_allclose(res.scores[qi][: len(want)], np.sort(r[pos])[::-1][: len(want)], rtol=2e-5)
        assert len(got) == len(want)
        full = np.full(n, 0.0)
        full[keep] = r
        np.testing.assert_allclose(full[got], res.scores[qi][: len(got)], rtol=2e-5)


def test_text_search_filters_and_single_query():
    rng = np.random.default_rng(5)
    texts = corpus(rng, 500)
    tags = [["a"] if i < 250 else ["b"] for i in range(500)]
    idx = MemoryIndex(D, IndexConfig(text_index=True, text_stopwords="en"))
    idx.add(vectors(rng, 500), contents=texts, tags=tags)
    res = idx.search_text("the w1 w2", k=5, where=Filter(tags_any=["b"]))
    assert res.ids.ndim == 1 and (res.ids[res.ids >= 0] >= 250).all()
    assert idx.parts.text.tokenizer("The w1 and a") == ["w1"]


# -- hybrid --------------------------------------------------------------------------------------
def test_fusion_matches_its_definition():
    a = (np.array([[3, 1, 2, -1]]), np.array([[0.9, 0.8, 0.1, -np.inf]]))
    b = (np.array([[2, 5, 3, 9]]), np.array([[7.0, 5.0, 1.0, 1.0]]))
    s, i = fuse([a, b], 3, Fusion("rrf", rrf_k=60))
    rrf = {3: 1 / 61 + 1 / 63, 1: 1 / 62, 2: 1 / 63 + 1 / 61, 5: 1 / 62, 9: 1 / 64}
    want = sorted(rrf, key=lambda d: (-rrf[d], d))[:3]
    assert i[0].tolist() == want and np.allclose(s[0], [rrf[d] for d in want])
    s, i = fuse([a, b], 2, Fusion("weighted", weights=(0.25, 0.75)))
    w = {3: 0.25 * 1 + 0.75 * 0, 1: 0.25 * 0.875, 2: 0.25 * 0 + 0.75 * 1, 5: 0.75 * 4 / 6, 9: 0.0}
    assert i[0].tolist() == sorted(w, key=lambda d: (-w[d], d))[:2]
    with pytest.raises(ValueError):
        Fusion("sum")


def test_hybrid_search_fuses_dense_sparse_and_text_with_filters_and_rank():
    import torch

    from lukhas_gpu import Rank

    rng = np.random.default_rng(9)
    n = 2000
    x = vectors(rng, n)
    texts = corpus(rng, n)
    docs = splade(rng, n, 40)
    tags = [["x"] if i % 3 else ["y"] for i in range(n)]
    idx = MemoryIndex(D, IndexConfig(text_index=True))
    idx.add(x, contents=texts, tags=tags, sparse=docs)
    q, qs, qt = x[:4] + 0.1, docs[10:14], texts[20:24]
    where = Filter(tags_any=["x"])
    for fusion in ("rrf", "weighted"):
        res = idx.search(q, 10, text=qt, sparse=qs, fusion=fusion, where=where)
        kc = Fusion(fusion).per_list(10, 10**5)
        lists = [tuple(idx.search(q, kc, where=where)), tuple(idx.search(None, kc, sparse=qs, where=where)),
                 tuple(idx.search_text(qt, kc, where=where))]
        s, i = fuse(lists, 10, Fusion(fusion))
        np.testing.assert_array_equal(res.ids, i)
        assert np.all(np.array([tags[j] == ["x"] for j in res.ids.ravel() if j >= 0]))
    res_t = idx.search(torch.from_numpy(q), 5, text=qt, rank=Rank(similarity=0.5, importance=0.5))
    assert isinstance(res_t.ids, torch.Tensor) and res_t.ids.shape == (4, 5)
    one = idx.search(q[0], 5, text=qt[0])
    assert one.ids.shape == (5,)
    with pytest.raises(ValueError, match="one of each"):
        idx.search(q[:2], 5, text=qt)


# -- the store -----------------------------------------------------------------------------------
def test_store_checkpoint_wal_replay_reader_and_verify(tmp_path):
    rng = np.random.default_rng(2)
    n = 1500
    x, texts, docs = vectors(rng, n), corpus(rng, n), pairs(splade(rng, n, 30, np.float16), np.float16)
    cfg = IndexConfig(text_index=True)
    idx = MemoryIndex.create(tmp_path / "s", D, cfg)
    idx.add(x[:1000], contents=texts[:1000], sparse=docs[:1000])
    idx.checkpoint()
    idx.add(x[1000:], contents=texts[1000:], sparse=docs[1000:])  # only in the log
    idx.delete([3, 1200])
    idx.update([5], contents=["w1 w1 w1 brandnew"])
    q = docs[:5]
    want_s = idx.search(None, 10, sparse=q)
    want_t = idx.search_text(["w1 w7", "brandnew"], 10)
    reader = MemoryIndex.open(tmp_path / "s", "r")
    idx.close(checkpoint=False)
    for mode in ("r", "w"):
        again = MemoryIndex.open(tmp_path / "s", mode)
        np.testing.assert_array_equal(again.search(None, 10, sparse=q).ids, want_s.ids)
        np.testing.assert_array_equal(again.search_text(["w1 w7", "brandnew"], 10).ids, want_t.ids)
        assert again.search_text("brandnew", 3).ids[0] == 5
        assert again.verify()["ok"]
        assert again.sparse_vectors([7])[0][1].dtype == np.float16
        if mode == "w":
            again.add(x[:1], contents=["zzznew"], sparse=docs[:1])
            again.close()  # checkpoints
    reader.refresh()
    assert len(reader) == n - 2 + 1
    assert reader.search_text("zzznew", 1).ids[0] == n
    mem = reader.stats()["memory"]
    assert mem["mapped"].get("sparse_indices", 0) + mem["anon"].get("sparse_indices", 0) > 0
    assert mem["anon"]["text_postings"] > 0 and mem["disk"]["sparse_values"] > 0
    final = MemoryIndex.open(tmp_path / "s", "r")
    np.testing.assert_array_equal(final.search(None, 10, sparse=q).ids, reader.search(None, 10, sparse=q).ids)


@pytest.mark.parametrize("name", ["sparse.values", "sparse.indices", "sparse.npz", "text.indices", "text.values",
                                  "text.npz", "manifest.json"])
def test_a_damaged_sparse_or_text_file_is_named_by_open_and_rollback(tmp_path, name):
    from lukhas_gpu.store.layout import CorruptStoreError

    idx = MemoryIndex.create(tmp_path / "s", D, IndexConfig(text_index=True))
    idx.add(vectors(np.random.default_rng(0), 10), contents=corpus(np.random.default_rng(0), 10),
            sparse=splade(np.random.default_rng(0), 10, 5))
    gen = idx.checkpoint()
    idx.add(vectors(np.random.default_rng(1), 1), contents=["x"])
    idx.close()  # a newer generation: gen is the previous one
    data = bytearray((gen / name).read_bytes())
    data[len(data) // 2] ^= 0x5A
    (gen / name).write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=name.replace(".", "[.]")):
        MemoryIndex.rollback(tmp_path / "s")
    (tmp_path / "s" / "CURRENT").write_text(gen.name)  # published: open refuses it too
    with pytest.raises(CorruptStoreError, match=name.replace(".", "[.]")):
        MemoryIndex.open(tmp_path / "s", "r")


CHILD = textwrap.dedent("""
    import sys, numpy as np
    from lukhas_gpu import MemoryIndex, IndexConfig
    idx = MemoryIndex.create(sys.argv[1], 16, IndexConfig(text_index=True))
    for i in range(100000):
        rng = np.random.default_rng(i)
        idx.add(rng.standard_normal((1, 16)).astype(np.float32), contents=[f"token{i} common"],
                sparse=[(np.array([i % 1000, 1000 + i]), np.array([1.0, 2.0], np.float32))])
        print(i, flush=True)
""")


def test_sigkill_keeps_every_acknowledged_sparse_and_text_memory(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "s")], stdout=subprocess.PIPE, env=env,
                            text=True)
    acked = -1
    for line in proc.stdout:
        acked = int(line)
        if acked >= 40:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    idx = MemoryIndex.open(tmp_path / "s", "w")
    assert len(idx) >= acked + 1
    for i in range(acked + 1):
        assert idx.search(None, 1, sparse=(np.array([1000 + i]), np.array([1.0]))).ids[0] == i
        assert idx.search_text(f"token{i}", 1).ids[0] == i
    assert idx.verify()["ok"]
    idx.close()


# -- the CLI: Parquet ingest of a sparse column, search --text ------------------------------------
def test_cli_ingests_sparse_parquet_and_searches_text(tmp_path, capsys):
    import json

    pa = optional_import("pyarrow")
    pq = optional_import("pyarrow.parquet")
    from lukhas_gpu import cli

    rng = np.random.default_rng(4)
    n = 300
    x = vectors(rng, n)
    texts = corpus(rng, n)
    texts[17] = "a unique zebra here"
    ind = [np.unique(rng.integers(0, 1000, 8)).tolist() for _ in range(n)]
    val = [rng.random(len(i)).astype(np.float32).tolist() for i in ind]
    table = pa.table({"embedding": pa.array(x.tolist(), pa.list_(pa.float32())), "content": texts,
                      "sparse_indices": pa.array(ind, pa.list_(pa.int64())),
                      "sparse_values": pa.array(val, pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "in.parquet")
    store = tmp_path / "s"
    assert cli.main(["ingest", str(store), str(tmp_path / "in.parquet"), "--preset", "production", "--text-index",
                     "--json"]) == 0
    capsys.readouterr()
    assert cli.main(["search", str(store), "--text", "zebra", "--text", "w1", "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["ids"][0] == 17 and len(lines) == 2
    np.save(tmp_path / "q.npy", x[:2])
    assert cli.main(["search", str(store), "--query-file", str(tmp_path / "q.npy"), "--text", "zebra", "--text", "w2",
                     "--fusion", "weighted", "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert 17 in lines[0]["ids"] and 0 in lines[0]["ids"]
    idx = MemoryIndex.open(store, "r")
    got = idx.sparse_vectors([5])[0]
    assert got[0].tolist() == ind[5] and np.allclose(got[1], val[5])
    bad = table.set_column(3, "sparse_values", pa.array([[-1.0] * len(i) if j == 9 else v for j, (i, v) in
                                                          enumerate(zip(ind, val))], pa.list_(pa.float32())))
    pq.write_table(bad, tmp_path / "bad.parquet")
    assert cli.main(["ingest", str(tmp_path / "s2"), str(tmp_path / "bad.parquet"), "--preset", "production"]) != 0
    assert "row 9" in capsys.readouterr().err


def test_plan_predicts_the_sparse_bytes_of_stats():
    import lukhas_gpu

    rng = np.random.default_rng(8)
    n = 4000
    docs = splade(rng, n, 50)
    idx = MemoryIndex(D)
    idx.add(vectors(rng, n), sparse=docs)
    idx.search(None, 5, sparse=docs[:2])  # builds the posting lists
    got = idx.stats()["memory"]["anon"]
    vocab = len(np.unique(docs.indices))
    want = lukhas_gpu.plan(n, D, sparse_nnz=docs.nnz / n, sparse_vocabulary=vocab).memory["anon"]
    for name in ("sparse_indices", "sparse_values", "sparse_postings", "sparse_indptr", "sparse_doc_slot"):
        assert abs(got[name] - want[name]) <= 0.05 * want[name] + 16 * 1024, (name, got[name], want[name])


def test_a_text_batch_that_ends_in_memories_without_terms(tmp_path):
    """Found by the model test: the BM25 lengths of a batch whose last memories have no term
    (None, bytes, a one-letter word) raised IndexError after the log append, and the replay too."""
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    path = tmp_path / "s"
    index = MemoryIndex.create(path, 16, IndexConfig(text_index=True))
    index.add(x[:2], contents=["hello world", None])
    index.add(x[2:], contents=["hello hello there", b"bytes"])
    index.close(checkpoint=False)
    index = MemoryIndex.open(path, mode="w")  # the log replays
    assert len(index) == 4
    assert index.search_text("hello", 5).ids.tolist() == [2, 0, -1, -1, -1]
    index.close()


def test_cjk_text_is_split_per_character_and_latin_terms_are_unchanged(tmp_path):
    """BM25 finds "東京" inside a CJK run (each Han / kana / hangul character is a term), also after
    a WAL replay and a checkpoint; texts without CJK characters keep the old terms (the bare
    ``\\b\\w\\w+\\b`` regular expression, checked on seeded random text)."""
    import re

    from lukhas_gpu.sparse import Tokenizer
    from lukhas_gpu.sparse.tokenize import TOKEN_PATTERN

    tok = Tokenizer()
    assert tok("東京都に住んでいます") == list("東京都に住んでいます")
    assert tok("Tokyo東京タワー, 서울에! a。b x") == ["tokyo", "東", "京", "タ", "ワ", "ー", "서", "울", "에"]
    rng = np.random.default_rng(3)
    alphabet = list("abcXYZ019_ éß-.,'\n") + ["ü", "Ω", "ж"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet, int(rng.integers(0, 40))))
        assert tok(text) == re.findall(TOKEN_PATTERN, text.lower())
    x = np.random.default_rng(0).standard_normal((4, D)).astype(np.float32)
    index = MemoryIndex.create(tmp_path / "s", D, IndexConfig(text_index=True))
    index.add(x, contents=["東京都に住んでいます", "大阪に住んでいます", "I live in Tokyo", "서울에 살아요"])
    assert index.search_text("東京", 4).ids.tolist()[0] == 0
    assert index.search_text("서울", 4).ids.tolist()[0] == 3
    index.close(checkpoint=False)
    for _ in range(2):  # the log replays, then the checkpoint loads
        index = MemoryIndex.open(tmp_path / "s", mode="w")
        assert index.search_text("東京", 4).ids.tolist()[0] == 0
        assert index.search_text("tokyo", 4).ids.tolist() == [2, -1, -1, -1]
        index.close()
