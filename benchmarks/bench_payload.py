"""Memories, not just vectors: content compression, get latency, payload RAM, filtered and
memory-aware search.

Real set: MiniLM/WordNet (117,659 glosses as contents), with synthetic tags whose inclusion
probability follows a power law over 1,000 tags (tag of rank r on a memory with probability
0.5 * r**-0.9: rank 1 = 50%, rank 6 = 10%, rank 77 = 1%, rank 1000 = 0.1%), timestamps spread over
one year and importance uniform in [0, 1].

    python -m benchmarks.bench_payload
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import wordnet_minilm

log = logging.getLogger("bench_payload")

TARGET_RANKS = {0.5: 1, 0.1: 6, 0.01: 77, 0.001: 1000}
YEAR = 365 * 86400.0
NOW = 1_790_000_000.0  # a fixed "now" so runs are comparable


def make_payload(n: int, seed: int = 0, vocab: int = 1000):
    rng = np.random.default_rng(seed)
    p = 0.5 * np.arange(1, vocab + 1, dtype=np.float64) ** -0.9
    names = [f"tag{r:04d}" for r in range(1, vocab + 1)]
    rows_per_tag = [np.flatnonzero(rng.random(n) < p[r]) for r in range(vocab)]
    lists: list[list[str]] = [[] for _ in range(n)]
    for r, rows in enumerate(rows_per_tag):
        for i in rows:
            lists[i].append(names[r])
    ts = NOW - rng.random(n) * YEAR
    imp = rng.random(n)
    return lists, ts, imp, names, rows_per_tag


# one linear driver (build, then each measurement in turn, then the report): kept whole to read as the run goes
def main(argv=None) -> dict:  # noqa: PLR0915
    import lukhas_gpu
    from lukhas_gpu import Filter, Rank

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--preset", default="production")
    ap.add_argument("--tag", default="payload_real")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)
    ds = wordnet_minilm(args.nq)
    n = len(ds.xb)
    texts = ds.texts
    tags, ts, imp, names, rows_per_tag = make_payload(n)
    tag_uses = sum(len(t) for t in tags)
    raw = sum(len(t.encode()) for t in texts)
    cfg = lukhas_gpu.IndexConfig.preset(args.preset, threads=args.threads, capacity=n, vector_storage="mmap")

    def build(with_payload: bool):
        warm = lukhas_gpu.MemoryIndex(ds.d, cfg.replace(capacity=None, train_threshold=2048, nlist=16))
        warm.add(ds.xb[:4096], contents=texts[:4096] if with_payload else None)
        del warm
        before = common.settle()
        t0 = time.perf_counter()
        index = lukhas_gpu.MemoryIndex(ds.d, cfg)
        for s in range(0, n, 20_000):
            sl = slice(s, min(n, s + 20_000))
            if with_payload:
                index.add(ds.xb[sl], contents=texts[sl], tags=tags[sl], timestamps=ts[sl], importance=imp[sl])
            else:
                index.add(ds.xb[sl])
        sec = time.perf_counter() - t0
        return index, common.settle() - before, sec

    _, grow_vec, _ = build(False)
    index, grow_all, build_s = build(True)
    st = index.stats()
    # growth with payload minus growth without, over n: includes the fixed costs (zstd contexts,
    # dictionaries, allocator slack), so it is an upper bound on what each memory adds
    payload_ram = (grow_all - grow_vec) / n
    budget = 24 + 0.75 * raw / n + 8 * tag_uses / n
    logical = sum(v for k, v in st["memory"]["logical"].items() if k.startswith(("content", "metadata", "tags"))) / n
    out = {"n": n, "raw content B/memory": raw / n, "tag uses/memory": tag_uses / n,
           "content stored/raw": st["content"]["stored_bytes"] / st["content"]["raw_bytes"],
           "payload logical B/memory": logical,
           "payload RssAnon B/memory": payload_ram,
           "payload budget B/memory": budget,
           "ingest/s (with payload)": n / build_s, "bytes": st["memory"]["logical"]}
    # lossless
    got = index.parts.contents.get(np.arange(n))
    out["lossless"] = bool(got == list(texts))
    rng = np.random.default_rng(1)
    times = []
    for _ in range(30):
        ids = rng.choice(n, 1000, replace=False)
        t0 = time.perf_counter()
        index.get(ids)
        times.append(time.perf_counter() - t0)
    out["get 1000 ms (median)"] = 1e3 * float(np.median(times))
    log.info("%s", {k: v for k, v in out.items() if k != "bytes"})

    # filtered search per selectivity
    rows = []
    xq = ds.xq
    for target, r in TARGET_RANKS.items():
        tag = names[r - 1]
        allowed = rows_per_tag[r - 1]
        flt = Filter(tags_all=[tag])
        sub = ds.xb[allowed]
        gt_local = np.argsort(-(xq @ sub.T), axis=1)[:, :10] if len(allowed) * len(xq) < 4e8 else None
        if gt_local is None:
            import faiss
            fi = faiss.IndexFlatIP(ds.d)
            fi.add(sub)
            gt_local = fi.search(xq, 10)[1]
        gt = allowed[gt_local]
        sec, res = common.timed(lambda: index.search(xq, 10, where=flt), repeat=3)
        ids = res.ids
        ok = np.isin(ids[ids >= 0], allowed).all()
        p50, p99 = common.latencies(lambda q: index.search(q, 10, where=flt), xq)
        row = {"selectivity": len(allowed) / n, "target": target, "plan": index.last_plan.strategy,
               "recall@10": common.recall_at(ids, gt, 10), "all satisfy filter": bool(ok),
               "QPS": len(xq) / sec, "p50 ms": p50, "p99 ms": p99}
        rows.append(row)
        log.info("%s", row)
    # memory-aware ranking
    rank = Rank(similarity=1.0, recency=0.3, importance=0.2, half_life=30 * 86400.0, now=NOW)
    prior = rank.prior(ts, imp.astype(np.float32), NOW)
    import faiss
    fl = faiss.IndexFlatIP(ds.d)
    fl.add(ds.xb)
    # exact fused top-10: fused = sim + prior; scan all in chunks
    best = np.zeros((len(xq), 10), dtype=np.int64)
    for a in range(0, len(xq), 250):
        s = xq[a:a + 250] @ ds.xb.T + prior
        best[a:a + 250] = np.argsort(-s, axis=1)[:, :10]
    sec, res = common.timed(lambda: index.search(xq, 10, rank=rank), repeat=3)
    p50, p99 = common.latencies(lambda q: index.search(q, 10, rank=rank), xq)
    rank_row = {"rank": "sim 1.0, recency 0.3 (half-life 30 d), importance 0.2",
                "recall@10 vs exact fused": common.recall_at(res.ids, best, 10), "QPS": len(xq) / sec,
                "p50 ms": p50, "p99 ms": p99}
    log.info("%s", rank_row)
    table = common.markdown_table(rows, ["selectivity", "plan", "recall@10", "all satisfy filter", "QPS", "p50 ms",
                                         "p99 ms"])
    summary = common.markdown_table([{k: v for k, v in out.items() if k != "bytes"}])
    text = summary + "\n\n" + table + "\n\n" + common.markdown_table([rank_row])
    print(text)
    payload = {"machine": common.machine(), "date": common.today(), "summary": out, "filtered": rows, "rank": rank_row}
    common.write_results(args.tag, payload, text)
    return payload


if __name__ == "__main__":
    main()
