"""Sparse vectors, BM25 and hybrid search (issue 18).

1. **Exact sparse top-k vs scipy brute force** on SPLADE-shaped data generated with numpy
   (30,000-term vocabulary, Zipf(0.9) term frequencies, ~120 distinct terms per document and ~25
   per query, log-normal weights): every query's top-10 compared with scipy's (float64 CSR
   product, ties by id), then QPS of both on the same queries.
2. **BM25 vs bm25s and rank-bm25** on the 117,659 WordNet glosses with the same tokens
   (``lukhas_gpu.sparse.Tokenizer``), lucene variant, k1=1.5, b=0.75: top-10 agreement, build
   time, QPS, bytes per memory.
3. **Quality** on the WordNet dev set (queries: example sentences; relevant: the gloss of the
   synset each example belongs to): nDCG@10 and recall@10 of dense (MiniLM), BM25 and hybrid.

    python -m benchmarks.bench_sparse [--sizes 100000 1000000] [--queries 200]
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import _EXAMPLE, _POS_FILES, WORDNET_DIR, cache_dir

log = logging.getLogger("bench_sparse")
V = 30_000


# -- 1. SPLADE-shaped data -------------------------------------------------------------------------
def splade_csr(rng, n: int, nnz: int, weights: str = "idf"):
    """``(indptr, indices uint32, values float32)``: Zipf(0.9) terms, unique per row, log-normal
    weights; ``weights="idf"`` scales them by ``ln(1 + 1 / (nnz * p_t))`` (``p_t`` the term's
    probability: an IDF-like factor, as SPLADE's learned weights are low on frequent tokens),
    ``"flat"`` does not (every term alike: the worst case for pruning)."""
    p = 1.0 / np.arange(1, V + 1) ** 0.9
    p /= p.sum()
    idf = np.log1p(1.0 / (nnz * p)) if weights == "idf" else np.ones(V)
    cdf = np.cumsum(p)
    indptr = [np.zeros(1, np.int64)]
    indices, values = [], []
    done = 0
    step = 100_000
    for lo in range(0, n, step):  # in chunks: bounded temporaries at 1M
        m = min(step, n - lo)
        lens = rng.poisson(nnz * 1.08, m).clip(1)  # draws; duplicates merge to ~nnz distinct
        terms = np.searchsorted(cdf, rng.random(int(lens.sum())))
        key = np.sort(np.repeat(np.arange(m, dtype=np.int64), lens) * V + terms)
        key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # unique (np.unique is slower)
        rows = key // V
        terms = key % V
        indices.append(terms.astype(np.uint32))
        values.append((rng.lognormal(-0.5, 0.7, len(key)) * idf[terms]).astype(np.float32))
        indptr.append(done + np.cumsum(np.bincount(rows, minlength=m)))
        done += len(key)
    return np.concatenate(indptr), np.concatenate(indices), np.concatenate(values)


def brute_topk(D, Q, k: int):
    """scipy reference: float64 ``D @ Q.T``, top-k per query by score then id, positive only."""
    S = (D @ Q.T).tocsc()
    ids = np.full((Q.shape[0], k), -1, np.int64)
    for j in range(Q.shape[0]):
        a, b = S.indptr[j], S.indptr[j + 1]
        rows, sc = S.indices[a:b], S.data[a:b]
        pos = sc > 0
        rows, sc = rows[pos], sc[pos]
        if len(sc) > k:
            kth = np.partition(sc, len(sc) - k)[len(sc) - k]
            keep = sc >= kth
            rows, sc = rows[keep], sc[keep]
        order = np.lexsort((rows, -sc))[:k]
        ids[j, :len(order)] = rows[order]
    return ids


def bench_splade(n: int, nq: int, brute_budget: float, seed: int = 0, weights: str = "idf") -> dict:
    import scipy.sparse as sp

    from lukhas_gpu.sparse import SparseQuery, SparseVectors
    from lukhas_gpu.sparse.sparse_input import PackedSparse

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    ptr, ind, val = splade_csr(rng, n, 120, weights)
    qptr, qind, qval = splade_csr(rng, nq, 25, weights)
    gen_s = time.perf_counter() - t0
    sv = SparseVectors()
    t0 = time.perf_counter()
    step = 100_000  # added in batches, as an ingest would
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        p = ptr[lo: hi + 1]
        sv.append(np.arange(lo, hi), PackedSparse(p - p[0], ind[p[0]: p[-1]], val[p[0]: p[-1]]))
    append_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sv.inverted.sync(sv.arena)
    index_s = time.perf_counter() - t0
    queries = [SparseQuery(qind[qptr[i]: qptr[i + 1]], qval[qptr[i]: qptr[i + 1]].astype(np.float64))
               for i in range(nq)]
    D = sp.csr_matrix((val.astype(np.float64), ind.astype(np.int32), ptr), shape=(n, V))
    Q = sp.csr_matrix((qval.astype(np.float64), qind.astype(np.int32), qptr), shape=(nq, V))
    chunk = 16
    sv.topk(queries[:2], 10)  # warm-up (and the first search's posting lists are built already)
    t0 = time.perf_counter()
    _, ids = sv.topk(queries, 10)
    ours_all = time.perf_counter() - t0
    postings = dict(sv.inverted.last_postings)
    t0 = time.perf_counter()
    ref = [brute_topk(D, Q[:chunk], 10)]
    first = time.perf_counter() - t0
    n_brute = min(nq, max(chunk, int(brute_budget / 3 / max(first, 1e-9)) * chunk))
    for lo in range(chunk, n_brute, chunk):
        ref.append(brute_topk(D, Q[lo: min(lo + chunk, n_brute)], 10))
    ref = np.concatenate(ref)
    same = int(sum(np.array_equal(a, b) for a, b in zip(ids[:n_brute], ref)))
    # QPS on the same queries, the two alternating (the machine is shared): medians of 3 rounds
    ours_t, brute_t = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        sv.topk(queries[:n_brute], 10)
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for lo in range(0, n_brute, chunk):
            brute_topk(D, Q[lo: min(lo + chunk, n_brute)], 10)
        brute_t.append(time.perf_counter() - t0)
    ours_s, brute_s = float(np.median(ours_t)), float(np.median(brute_t))
    usage = sv.memory_usage()["anon"]
    arena_b = sum(v for k, v in usage.items() if k != "sparse_postings")
    return {"n": n, "weights": weights, "nnz_per_doc": len(ind) / n, "nnz_per_query": len(qind) / nq, "queries": nq,
            "brute_queries": n_brute, "identical": same, "qps": n_brute / ours_s, "scipy_qps": n_brute / brute_s,
            "speedup": brute_s / ours_s, "qps_all_queries": nq / ours_all, "append_s": append_s, "index_s": index_s,
            "gen_s": gen_s, "postings_scanned": postings["scanned"] / max(postings["total"], 1),
            "arena_bytes_per_memory": arena_b / n, "postings_bytes_per_memory": usage["sparse_postings"] / n,
            "dense_float32_bytes_per_memory": V * 4.0,
            "value_dtype": str(sv.arena.value_dtype)}


# -- 2 and 3: WordNet ----------------------------------------------------------------------------------
def relevance(queries: list[str]) -> list[set]:
    """Each example sentence's relevant glosses: those of the synsets it is an example of (the
    glosses' order is that of ``datasets.read_wordnet``: one per line of the data files)."""
    where = collections.defaultdict(set)
    g = 0
    for name in _POS_FILES:
        with open(WORDNET_DIR / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                gloss = line.partition(" | ")[2].strip()
                for m in _EXAMPLE.finditer(gloss):
                    where[m.group(1).strip()].add(g)
                g += 1
    return [where.get(q, set()) for q in queries]


def ndcg_recall(ids: np.ndarray, rel: list[set], k: int = 10) -> tuple[float, float]:
    nd, rc = [], []
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for row, r in zip(ids, rel):
        hits = np.array([int(i) in r for i in row[:k]], dtype=float)
        nd.append(float((hits * disc).sum() / disc[: min(len(r), k)].sum()))
        rc.append(hits.sum() / len(r))
    return float(np.mean(nd)), float(np.mean(rc))


def agreement(ours: np.ndarray, ref_ids: np.ndarray, ref_scores: np.ndarray, full_scores) -> tuple[float, float]:
    """Mean share of the reference's positive top-10 we return (plain), and the same counting as
    agreeing any id whose reference score ties the reference's 10th (float32 ties)."""
    plain, tie = [], []
    for qi, (mine, r_ids, r_sc) in enumerate(zip(ours, ref_ids, ref_scores)):
        pos = r_sc > 0
        want = set(r_ids[pos].tolist())
        if not want:
            continue
        got = [int(i) for i in mine if i >= 0]
        plain.append(len(want & set(got)) / len(want))
        floor = r_sc[pos].min() * (1 - 1e-6)
        s = full_scores(qi)
        tie.append(min(1.0, sum(1 for i in got if s[i] >= floor) / len(want)))
    return float(np.mean(plain)), float(np.mean(tie))


# one linear driver over the WordNet set (index, each query set, each peer): kept whole to read as the run goes
def bench_wordnet(nq_bm25: int, nq_quality: int, nq_rank_bm25: int) -> tuple[list, list, dict]:  # noqa: PLR0915
    import bm25s

    from lukhas_gpu import IndexConfig, MemoryIndex
    from lukhas_gpu.sparse import TextIndex, Tokenizer

    meta = json.loads((cache_dir() / "wordnet_minilm" / "texts.json").read_text())
    glosses, queries = meta["glosses"], meta["queries"]
    n = len(glosses)
    tok = Tokenizer()
    t0 = time.perf_counter()
    tokens = [tok(g) for g in glosses]
    tok_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(tokens, show_progress=False)
    bm25s_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ti = TextIndex()
    ti.set_texts(np.arange(n), glosses)
    ti.inverted.sync(ti.arena)
    ours_build = time.perf_counter() - t0
    qs = queries[:nq_bm25]
    q_tokens = [tok(q) for q in qs]
    keep = [i for i, t in enumerate(q_tokens) if t]
    qs, q_tokens = [qs[i] for i in keep], [q_tokens[i] for i in keep]
    ref.retrieve(q_tokens[:5], k=10, show_progress=False)
    ti.inverted.topk(ti.arena, ti.queries(qs[:5]), 10, scorer=ti.scorer())
    ours_t, ref_t = [], []
    for _ in range(3):  # alternating, medians (the machine is shared)
        t0 = time.perf_counter()
        r_ids, r_sc = ref.retrieve(q_tokens, k=10, show_progress=False, n_threads=1)
        ref_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, ours = ti.inverted.topk(ti.arena, ti.queries(qs), 10, scorer=ti.scorer())
        ours_t.append(time.perf_counter() - t0)
    bm25s_s, ours_s = float(np.median(ref_t)), float(np.median(ours_t))
    plain, tie = agreement(ours, r_ids, r_sc, lambda qi: ref.get_scores(q_tokens[qi]))
    mem = ti.memory_usage()
    text_bytes = sum(mem["anon"].values()) + sum(mem["mapped"].values())
    rows = [{"system": "lukhas_gpu BM25", "build s": ours_build, "QPS": len(qs) / ours_s, "top-10 agreement": plain,
             "agreement (float32 ties)": tie, "bytes/memory": text_bytes / n},
            {"system": "bm25s 0.3 (numpy, 1 thread)", "build s": bm25s_build, "QPS": len(qs) / bm25s_s,
             "top-10 agreement": 1.0, "agreement (float32 ties)": 1.0, "bytes/memory": None}]
    extra = {"tokenize_s": tok_s, "bm25_queries": len(qs), "glosses": n}
    try:
        import rank_bm25
    except ImportError:
        rank_bm25 = None
        log.warning("rank-bm25 is not installed: its row is skipped")
    if rank_bm25 is not None:
        t0 = time.perf_counter()
        okapi = rank_bm25.BM25Okapi(tokens, k1=1.5, b=0.75)
        rb_build = time.perf_counter() - t0
        sub = q_tokens[:nq_rank_bm25]
        t0 = time.perf_counter()
        rb_scores = [okapi.get_scores(q) for q in sub]
        rb_s = time.perf_counter() - t0
        rb_ids = np.stack([np.lexsort((np.arange(n), -s))[:10] for s in rb_scores])
        rb_top = np.stack([s[i] for s, i in zip(rb_scores, rb_ids)])
        ti_r = TextIndex(tokenizer=tok)  # rank-bm25's Okapi is the robertson variant (negative idf floored)
        from lukhas_gpu.sparse import BM25Params
        ti_r.params = BM25Params(variant="robertson")
        ti_r.set_texts(np.arange(n), glosses)
        _, ours_r = ti_r.inverted.topk(ti_r.arena, ti_r.queries(qs[:nq_rank_bm25]), 10, scorer=ti_r.scorer())
        p2, t2 = agreement(ours_r, rb_ids, rb_top, lambda qi: rb_scores[qi])
        rows.append({"system": "rank-bm25 0.2.2 BM25Okapi (vs our robertson)", "build s": rb_build,
                     "QPS": len(sub) / rb_s, "top-10 agreement": p2, "agreement (float32 ties)": t2,
                     "bytes/memory": None})
        extra["rank_bm25_queries"] = len(sub)

    # 3. quality: dense, BM25, hybrid through the index
    xb = np.load(cache_dir() / "wordnet_minilm" / "glosses.npy")
    xq = np.load(cache_dir() / "wordnet_minilm" / "examples.npy")[:nq_quality]
    qtext = queries[:nq_quality]
    rel = relevance(qtext)
    ok = [i for i, r in enumerate(rel) if r]
    xq, qtext, rel = xq[ok], [qtext[i] for i in ok], [rel[i] for i in ok]
    t0 = time.perf_counter()
    index = MemoryIndex(xb.shape[1], IndexConfig(text_index=True))
    for lo in range(0, n, 50_000):
        index.add(xb[lo: lo + 50_000], contents=glosses[lo: lo + 50_000])
    extra["index_build_s"] = time.perf_counter() - t0
    quality = []
    for name, fn in (("dense (MiniLM, IVF-PQ + int8 rerank)", lambda: index.search(xq, 10)),
                     ("BM25", lambda: index.search_text(qtext, 10)),
                     ("hybrid RRF (k=60)", lambda: index.search(xq, 10, text=qtext)),
                     ("hybrid weighted (0.5/0.5, min-max)", lambda: index.search(xq, 10, text=qtext,
                                                                                fusion="weighted"))):
        fn()
        t0 = time.perf_counter()
        res = fn()
        sec = time.perf_counter() - t0
        nd, rc = ndcg_recall(np.asarray(res.ids), rel)
        quality.append({"method": name, "nDCG@10": nd, "recall@10": rc, "QPS": len(rel) / sec})
    extra["quality_queries"] = len(rel)
    mem = index.stats()["memory"]
    extra["index_anon_bytes_per_memory"] = mem["per_memory"]["anon"]
    extra["text_anon_bytes_per_memory"] = sum(v for k, v in mem["anon"].items() if k.startswith("text_")) / n
    return rows, quality, extra


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=200, help="SPLADE queries per size")
    ap.add_argument("--flat-sizes", type=int, nargs="*", default=[100_000],
                    help="sizes also run with flat (not IDF-like) weights: the worst case for pruning")
    ap.add_argument("--brute-budget", type=float, default=120.0,
                    help="seconds of scipy brute force per size (it takes fewer queries beyond)")
    ap.add_argument("--bm25-queries", type=int, default=2000)
    ap.add_argument("--rank-bm25-queries", type=int, default=50)
    ap.add_argument("--quality-queries", type=int, default=2000)
    ap.add_argument("--skip-wordnet", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    common.set_threads(args.threads)
    splade = []
    for n, weights in [(n, "idf") for n in args.sizes] + [(n, "flat") for n in args.flat_sizes]:
        r = bench_splade(n, args.queries, args.brute_budget, weights=weights)
        log.info("%s", r)
        splade.append(r)
        common.settle()
    out = {"machine": common.machine(), "date": common.today(), "splade": splade}
    tables = [common.markdown_table(splade, ["n", "weights", "nnz_per_doc", "nnz_per_query", "queries", "brute_queries",
                                             "identical", "qps", "scipy_qps", "speedup", "postings_scanned",
                                             "append_s", "index_s", "arena_bytes_per_memory",
                                             "postings_bytes_per_memory", "dense_float32_bytes_per_memory"])]
    if not args.skip_wordnet:
        rows, quality, extra = bench_wordnet(args.bm25_queries, args.quality_queries, args.rank_bm25_queries)
        out.update(bm25=rows, quality=quality, wordnet=extra)
        tables += [common.markdown_table(rows), common.markdown_table(quality), json.dumps(extra, default=float)]
    text = "\n\n".join(tables)
    print(text)
    common.write_results("bench_sparse", out, text)
    return out


if __name__ == "__main__":
    main()
