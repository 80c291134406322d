"""What agent stores need: filters on metadata keys never declared, and MMR (``diversity``).

1. Filters: one store of ``--n`` synthetic memories (the built-in MiniLM-like model) whose
   metadata holds the same values twice: under declared fields (``author`` str, ``year`` int:
   packed columns) and under keys never declared (``author_u``, ``year_u``: the stored records,
   scanned by ``records/metascan``). Each filter is checked to allow the same rows both ways,
   then timed: ms per filter evaluation (``allowed_rows``, the one rule of every route; for
   the records cold, the scan cache emptied before each call, and warm) and search QPS with it
   (batched queries, and one query per call where the filter's cost counts once per query;
   records cold and warm).
2. MMR: a set with planted near-copies (every ``--copy-every``-th memory has 2 copies, noise
   0.02), queries near the copied memories; near-copies in the top 10 (results beyond the first
   of their group) and the mean score of the top 10, for several diversities, plus the latency.

    python -m benchmarks.bench_agent --n 100000
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks import common

FILTERS = {
    "eq (2%)": ({"author": "a7"}, {"author_u": "a7"}),
    "range (20%)": ({"year": {"$gte": 2020}}, {"year_u": {"$gte": 2020}}),
    "in (6%)": ({"author": {"$in": ["a1", "a2", "a3"]}}, {"author_u": {"$in": ["a1", "a2", "a3"]}}),
    "or (~22%)": ({"$or": [{"author": "a9"}, {"year": {"$lt": 2005}}]},
                  {"$or": [{"author_u": "a9"}, {"year_u": {"$lt": 2005}}]}),
}


def _metadata(n: int) -> list:
    rng = np.random.default_rng(3)
    authors = rng.integers(0, 50, n)
    years = 2000 + rng.integers(0, 25, n)
    return [{"source": "chat", "turn": int(i % 40), "author": f"a{a}", "year": int(y),
             "author_u": f"a{a}", "year_u": int(y)} for i, (a, y) in enumerate(zip(authors.tolist(), years.tolist()))]


def bench_filters(n: int, nq: int, singles: int) -> list[dict]:
    from lukhas_gpu import Filter, IndexConfig, MemoryIndex
    from lukhas_gpu.query import filters
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model()
    ix = MemoryIndex(model.dim, IndexConfig(metadata_fields={"author": "str", "year": "int"}, auto_tune=False))
    meta = _metadata(n)
    for s in range(0, n, 20_000):
        ix.add(model.sample(min(20_000, n - s), start=s), metadata=meta[s:s + 20_000])
    del meta
    q = model.queries(nq)
    rows = []
    for name, (declared, undeclared) in FILTERS.items():
        fd, fu = Filter(meta=declared), Filter(meta=undeclared)
        allowed = ix.select(fd)
        assert np.array_equal(allowed, ix.select(fu)), name  # correctness first: the same rows
        row = {"filter": name, "allowed": int(len(allowed))}
        scans = ix.parts.docmeta.scans
        for how, f, cold in (("declared", fd, False), ("records", fu, True), ("records_cached", fu, False)):
            def ev(f=f, cold=cold):
                if cold:
                    scans.entries.clear()
                return filters.allowed_rows(ix.parts, f)

            def search(x, f=f, cold=cold):
                if cold:
                    scans.entries.clear()
                return ix.search(x, 10, where=f)

            t_eval, _ = common.timed(ev, repeat=5)
            t_batch, _ = common.timed(lambda: search(q), repeat=3)
            assert ix.last_plan.metadata == ("columns" if how == "declared" else "records")
            t0 = time.perf_counter()
            for i in range(singles):
                search(q[i])
            t_single = (time.perf_counter() - t0) / singles
            row[how] = {"eval_ms": t_eval * 1e3, "qps_batch": nq / t_batch, "qps_single": 1.0 / t_single,
                        "plan": ix.last_plan.strategy}
        row["cache_bytes"] = scans.nbytes()
        rows.append(row)
    plain, _ = common.timed(lambda: ix.search(q, 10), repeat=3)
    rows.append({"filter": "none", "allowed": len(ix), "none": {"qps_batch": nq / plain}})
    return rows


def bench_mmr(n: int, nq: int, copy_every: int, diversities, data: str = "synthetic") -> list[dict]:
    """Near-copies (noise 0.02) of every ``copy_every``-th memory; ``data="real"``: WordNet glosses
    as memories and held-out WordNet example sentences as queries; else the generator, with queries
    near copied memories."""
    from lukhas_gpu import IndexConfig, MemoryIndex
    from lukhas_gpu.tools.synthetic import builtin_model

    rng = np.random.default_rng(9)
    if data == "real":
        from benchmarks.datasets import wordnet_minilm

        ds = wordnet_minilm(n_queries=nq)
        base = ds.xb[np.sort(rng.choice(len(ds.xb), n, replace=False))]
    else:
        base = builtin_model().sample(n)
    dim = base.shape[1]
    src = np.arange(0, n, copy_every)
    copies = np.repeat(base[src], 2, axis=0)
    copies += 0.02 * rng.standard_normal(copies.shape).astype(np.float32) / np.sqrt(dim)
    x = np.concatenate([base, copies])
    group = np.concatenate([np.arange(n), np.repeat(src, 2)])  # a copy's group is its original's row
    ix = MemoryIndex(dim, IndexConfig(auto_tune=False))
    ix.add(x)
    if data == "real":
        q = ds.xq[:nq]
    else:
        pick = rng.choice(src, nq, replace=False)
        q = base[pick] + 0.5 * rng.standard_normal((nq, dim)).astype(np.float32) / np.sqrt(dim)
    out = []
    for d in diversities:
        t, res = common.timed(lambda d=d: ix.search(q, 10, diversity=d), repeat=3)
        ids = np.asarray(res.ids)
        dup = [10 - len(set(group[r[r >= 0]].tolist())) for r in ids]
        out.append({"diversity": d, "near_copies_in_top10": float(np.mean(dup)),
                    "mean_score_top10": float(np.mean(res.scores)), "ms_per_query": t / nq * 1e3})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="memories of the filter store (default 100k)")
    ap.add_argument("--nq", type=int, default=200)
    ap.add_argument("--singles", type=int, default=50, help="one-query calls timed per filter")
    ap.add_argument("--mmr-n", type=int, default=20_000, help="base memories of the MMR set")
    ap.add_argument("--copy-every", type=int, default=5)
    ap.add_argument("--mmr-data", choices=("synthetic", "real"), default="synthetic",
                    help="real: WordNet glosses and held-out example sentences (benchmarks/datasets.py)")
    ap.add_argument("--mmr-only", action="store_true", help="skip the filter figures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    common.set_threads(args.threads)
    res = {"filters": [] if args.mmr_only else bench_filters(args.n, args.nq, args.singles),
           "mmr": bench_mmr(args.mmr_n, args.nq, args.copy_every, (0.0, 0.1, 0.3, 0.5), args.mmr_data)}
    print(f"## filters at {args.n:,} memories ({args.threads} threads, nq={args.nq})\n")
    print("| filter | allowed | eval ms: declared / records cold / records cached | "
          "QPS batched: decl / cold / cached | QPS 1 query per call: decl / cold / cached |")
    print("|---|---|---|---|---|")
    for r in res["filters"]:
        if "declared" in r:
            d, u, c = r["declared"], r["records"], r["records_cached"]
            print(f"| {r['filter']} | {r['allowed']:,} | "
                  f"{d['eval_ms']:.2f} / {u['eval_ms']:.2f} / {c['eval_ms']:.2f} | "
                  f"{d['qps_batch']:.0f} / {u['qps_batch']:.0f} / {c['qps_batch']:.0f} | "
                  f"{d['qps_single']:.0f} / {u['qps_single']:.0f} / {c['qps_single']:.0f} |")
        else:
            print(f"| none | {r['allowed']:,} | | {r['none']['qps_batch']:.0f} | |")
    print(f"\n## MMR ({args.mmr_n:,} memories + copies of every {args.copy_every}th, nq={args.nq})\n")
    print("| diversity | near-copies in top 10 | mean score top 10 | ms / query (batched) |")
    print("|---|---|---|---|")
    for r in res["mmr"]:
        print(f"| {r['diversity']} | {r['near_copies_in_top10']:.2f} | {r['mean_score_top10']:.4f} | "
              f"{r['ms_per_query']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
