"""Deletes then adds: are the new memories found, and is recall that of a store built fresh?

FAISS's removal from fast-scan lists corrupted the codes added after it (87.1% of 1,000 memories
added after 800 deletes found by their own vector in a 40k ``production`` store, 100% without);
the index now keeps deleted rows' entries in the lists and excludes them at search time. This
benchmark checks that at scale, with the built-in synthetic generator (MiniLM-like, 384-d):

1. build a store of ``--n`` memories (``--preset``, capacity ``n``: the IVF sized for the set);
2. delete ``--delete`` of them at random, then add ``--add`` x n new ones (timed);
3. **found**: the share of the new memories whose own vector returns them in the top-k, at the
   preset's ``nprobe``/``rerank`` and with every list probed;
4. **recall@k** of ``--queries`` queries near the new memories (a new memory plus noise) against
   the exact float32 top-k of the live set, for the churned store and for a store built fresh from
   the same live set in the same order, at the same fixed parameters (tuning off);
5. the same after ``compact()`` (which re-encodes the lists holding dead entries), timed.

Correctness is checked before anything is timed (no deleted id returned). Results: JSON and a
Markdown table in ``benchmarks/out/bench_deletes.*``.

    python -m benchmarks.bench_deletes                 # 1M, production (hours on 2 cores)
    python -m benchmarks.bench_deletes --n 50000       # minutes
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import exact_knn

log = logging.getLogger("bench_deletes")


def build(dim: int, config, x: np.ndarray, batch: int):
    """A store over ``x`` added in batches; ``(index, seconds)``."""
    from lukhas_gpu import MemoryIndex

    index = MemoryIndex(dim, config)
    t0 = time.perf_counter()
    for a in range(0, len(x), batch):
        index.add(x[a: a + batch])
    return index, time.perf_counter() - t0


def near(x: np.ndarray, nq: int, noise: float, seed: int) -> np.ndarray:
    """``nq`` queries near rows of ``x``: a row plus isotropic noise of norm ``noise``, unit-norm."""
    rng = np.random.default_rng(seed)
    base = x[rng.choice(len(x), nq, replace=len(x) < nq)]
    z = rng.standard_normal(base.shape).astype(np.float32)
    q = base + noise * z / np.linalg.norm(z, axis=1, keepdims=True)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def found(index, x: np.ndarray, rows: np.ndarray, k: int, nprobe: int, rerank: int) -> float:
    """Share of ``rows`` returned in the top-k of a search with their own vectors ``x``."""
    hits = 0
    for a in range(0, len(x), 4096):
        ids = np.asarray(index.search(x[a: a + 4096], k, nprobe=nprobe, rerank=rerank).ids)
        hits += int((ids == rows[a: a + 4096, None]).any(axis=1).sum())
    return hits / max(len(x), 1)


def measure(label: str, index, source: np.ndarray, new_x, new_rows, queries, gt, args) -> list[dict]:
    """One row per search setting: found % of the new memories and recall@k of the queries
    (ids mapped back to positions in the live set through ``source``: row -> live position)."""
    nlist = index.parts.ann.nlist
    # every list probed costs a scan of every code per query: its found % is taken on a seeded
    # sample of the new memories (``--found-sample``) and it is not timed
    pick = np.sort(np.random.default_rng(args.seed + 3).choice(len(new_x), min(args.found_sample, len(new_x)),
                                                               replace=False))
    out = []
    for setting, (nprobe, rerank) in (("preset", (index.config.nprobe, index.config.rerank)),
                                      ("all lists", (nlist, index.config.rerank))):
        every = setting == "all lists"
        ids = np.asarray(index.search(queries, args.k, nprobe=nprobe, rerank=rerank).ids)
        mapped = np.where(ids >= 0, source[np.maximum(ids, 0)], -1)
        qps = None
        if not every:
            qps_s, _ = common.timed(lambda p=nprobe, r=rerank: index.search(queries, args.k, nprobe=p, rerank=r),
                                    repeat=3)
            qps = len(queries) / qps_s
        x, rows = (new_x[pick], new_rows[pick]) if every else (new_x, new_rows)
        out.append({"store": label, "setting": setting, "nprobe": nprobe, "rerank": rerank,
                    "found of": len(x), "found %": 100 * found(index, x, rows, args.k, nprobe, rerank),
                    f"recall@{args.k}": common.recall_at(mapped, gt, args.k),
                    "QPS": qps, "ann_dead": index.stats().get("ann_dead")})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--preset", default="production")
    ap.add_argument("--delete", type=float, default=0.10, help="share of the n memories deleted")
    ap.add_argument("--add", type=float, default=0.10, help="new memories added, as a share of n")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--noise", type=float, default=0.5, help="norm of the noise of a query near a new memory")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--found-sample", type=int, default=5000,
                    help="new memories searched with every list probed (all of them at the preset's nprobe)")
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)
    from lukhas_gpu import IndexConfig
    from lukhas_gpu.tools.synthetic import builtin_model

    n, n_del, n_add = args.n, int(args.delete * args.n), int(args.add * args.n)
    model = builtin_model()
    xb = model.sample(n, seed=args.seed)
    new_x = model.sample(n_add, seed=args.seed, start=n)  # the same stream, rows never stored
    dim = xb.shape[1]
    # tuning off: both stores are searched at the same fixed parameters
    config = IndexConfig.preset(args.preset, threads=args.threads, capacity=n, auto_tune=False,
                                wal_sync="none")
    log.info("building %d x %d (%s)", n, dim, args.preset)
    churned, build_s = build(dim, config, xb, args.batch)
    gone = np.sort(np.random.default_rng(args.seed + 1).choice(n, n_del, replace=False))
    t0 = time.perf_counter()
    churned.delete(gone)
    delete_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    new_rows = np.concatenate([churned.add(new_x[a: a + args.batch]) for a in range(0, n_add, args.batch)])
    add_s = time.perf_counter() - t0
    # the live set, in row order: the survivors of xb, then the new memories
    keep = np.setdiff1d(np.arange(n), gone)
    live_x = np.concatenate([xb[keep], new_x])
    source = np.full(churned.parts.rows, -1, dtype=np.int64)  # churned row -> live position
    source[keep] = np.arange(len(keep))
    source[new_rows] = len(keep) + np.arange(n_add)
    queries = near(new_x, args.queries, args.noise, args.seed + 2)
    gt = exact_knn(live_x, queries, args.k)
    ids = np.asarray(churned.search(xb[gone[:2000]], 50, nprobe=churned.parts.ann.nlist).ids)
    assert not np.isin(ids, gone).any(), "a deleted memory was returned"

    rows = measure("churned", churned, source, new_x, new_rows, queries, gt, args)
    t0 = time.perf_counter()
    freed = churned.compact()
    compact_s = time.perf_counter() - t0
    rows += measure("churned, compacted", churned, source, new_x, new_rows, queries, gt, args)
    del churned
    fresh, fresh_s = build(dim, config, live_x, args.batch)
    fresh_rows = np.arange(len(keep), len(live_x))
    rows += measure("fresh", fresh, np.arange(len(live_x)), new_x, fresh_rows, queries, gt, args)
    payload = {"n": n, "deleted": n_del, "added": n_add, "dim": dim, "preset": args.preset,
               "config": config.to_dict(), "queries": args.queries, "noise": args.noise, "k": args.k,
               "seconds": {"build": build_s, "delete": delete_s, "add": add_s, "compact": compact_s,
                           "fresh_build": fresh_s},
               "compact_freed_bytes": freed, "rows": rows, "machine": common.machine(), "date": common.today()}
    table = common.markdown_table(rows)
    print(table)
    print({k: round(v, 2) for k, v in payload["seconds"].items()})
    if not args.no_save:
        common.write_results("bench_deletes", payload, table)
    return payload


if __name__ == "__main__":
    main()
