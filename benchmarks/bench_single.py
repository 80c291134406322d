"""One query at a time, as an inference server's workers send them: our search against hnswlib.

Protocol, per set (``n`` rows of the built-in synthetic model; the WordNet set with its held-out
example sentences when its embeddings are cached): the queries split in halves. The index
(``production`` preset, no parameter) serves the first half as traffic and ``tune()`` runs (auto
tuning then off, so no background retune runs beside the timings); hnswlib (M=16,
ef_construction=128) gets the smallest ``ef`` whose recall@10 on the second half equals or beats
ours. Every figure is measured on the second half, one query per call:

* ``threads=1``: one worker sends queries one after the other: p50 / p99 latency and QPS;
* ``threads=2``: two workers, each sending single queries: QPS of the two together.

Ours is measured twice: the lean route (``lukhas_gpu.index.single``) and the general route
it replaces (``single.ENABLED = False``), the same answers. Runs alternate (ours, ours general,
hnswlib, ours, ...) ``--rounds`` times; each figure is the median over the rounds. The load
average before and after is recorded with the numbers (a loaded machine stretches the p99 of both).

``--batches``: the small batches a server's batcher merges (2-32 requests), on one thread as a
server process a core runs them: QPS of the lean route and of the general route, alternating,
and their ratio per round (median and range).

Usage::

    python -m benchmarks.bench_single --n 100000
    python -m benchmarks.bench_single --n 20000 --nq 400 --rounds 2 --sets synthetic   # proves it runs
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import exact_knn, synthetic_dataset, wordnet_cached, wordnet_minilm

K = 10


def recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / K for a, b in zip(ids, gt)]))


def one_worker(fn, q: np.ndarray) -> tuple[list[float], float]:
    """Latencies (s) of single-query calls over ``q`` and the wall time."""
    ts = []
    t0 = time.perf_counter()
    for i in range(len(q)):
        t = time.perf_counter()
        fn(q[i])
        ts.append(time.perf_counter() - t)
    return ts, time.perf_counter() - t0


def two_workers(fn, q: np.ndarray) -> float:
    """QPS of two threads, each sending its half of ``q`` one query at a time."""
    halves = (q[0::2], q[1::2])
    start = threading.Barrier(3)

    def work(part):
        start.wait()
        for i in range(len(part)):
            fn(part[i])

    threads = [threading.Thread(target=work, args=(h,)) for h in halves]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return len(q) / (time.perf_counter() - t0)


def measure(fn, q: np.ndarray) -> dict:
    for i in range(min(50, len(q))):  # warm
        fn(q[i])
    ts, wall = one_worker(fn, q)
    return {"p50 ms": float(np.percentile(ts, 50) * 1e3), "p99 ms": float(np.percentile(ts, 99) * 1e3),
            "QPS 1 thread": len(q) / wall, "QPS 2 threads": two_workers(fn, q)}


def build_ours(xb: np.ndarray, traffic: np.ndarray):
    import lukhas_gpu
    from lukhas_gpu.index import tuning

    index = lukhas_gpu.MemoryIndex(xb.shape[1], lukhas_gpu.IndexConfig.preset("production"))
    for s in range(0, len(xb), 65536):
        index.add(xb[s: s + 65536])
    tuning.wait(index)
    for s in range(0, len(traffic), 256):
        index.search(traffic[s: s + 256], K)
    tuning.wait(index)
    rep = index.tune()
    index.config = index.config.replace(auto_tune=False)
    tuning.wait(index)
    return index, rep


def build_hnswlib(xb: np.ndarray):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=xb.shape[1])
    index.init_index(max_elements=len(xb), M=16, ef_construction=128, random_seed=0)
    index.add_items(xb, np.arange(len(xb)))
    index.set_num_threads(1)  # one query per call: the caller's threads are the parallelism
    return index


def run_set(ds, args) -> dict:
    """One set: ours (the lean route and the general route, :mod:`lukhas_gpu.index.single`)
    and hnswlib at equal or better recall, alternating, one query per call."""
    from lukhas_gpu.index import single

    half = len(ds.xq) // 2
    a, b = np.ascontiguousarray(ds.xq[:half]), np.ascontiguousarray(ds.xq[half:])
    gt_b = exact_knn(ds.xb, ds.xq, K)[half:]
    ours, rep = build_ours(ds.xb, a)
    ours_recall = recall(np.asarray(ours.search(b, K).ids), gt_b)
    lean = np.array([ours.search(v, K).ids for v in b])
    assert abs(recall(lean, gt_b) - ours_recall) < 0.002, "the lean route's answers differ from the batch's"
    hn = build_hnswlib(ds.xb)
    ef = None
    for e in (int(x) for x in args.efs.split(",")):
        hn.set_ef(e)
        hn_recall = recall(hn.knn_query(b, k=K)[0].astype(np.int64), gt_b)
        ef = e
        if hn_recall >= ours_recall:
            break

    def search_ours(v):
        return ours.search(v, K)

    def search_hn(v):
        return hn.knn_query(v, k=K)

    # (function, the lean route on): the general route is ours with the route off for the
    # whole measurement (both threads of the two-worker figure)
    fns = {"lukhas_gpu": (search_ours, True), "lukhas_gpu (general route)": (search_ours, False),
           "hnswlib": (search_hn, True)}
    runs: dict[str, list[dict]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, (fn, route) in fns.items():
            single.ENABLED = route
            try:
                runs[name].append(measure(fn, b))
            finally:
                single.ENABLED = True
    batches = small_batches(search_ours, b, args) if args.batches else []
    ours_setting = f"{rep['kind']} nprobe {rep.get('nprobe')} rerank {rep['rerank']}"
    setting = {"lukhas_gpu": ours_setting, "lukhas_gpu (general route)": ours_setting, "hnswlib": f"M=16 ef={ef}"}
    rows = []
    for name, rs in runs.items():
        row = {"data": ds.name, "system": name, "setting": setting[name],
               "recall@10": hn_recall if name == "hnswlib" else ours_recall}
        for key in rs[0]:
            row[key] = statistics.median(r[key] for r in rs)
        rows.append(row)
    by = {r["system"]: r for r in rows}
    ratio = {f"{mine} / hnswlib, {key}": by[mine][key] / by["hnswlib"][key]
             for mine in ("lukhas_gpu", "lukhas_gpu (general route)") for key in ("QPS 1 thread", "QPS 2 threads")}
    ours.close()
    for r in batches:
        r["data"] = ds.name
    return {"rows": rows, "ratio": ratio, "tuning": {k: v for k, v in rep.items() if k != "tried"},
            "batches": batches}


def small_batches(fn, q: np.ndarray, args) -> list[dict]:
    """QPS of batches of each size in ``--batches`` over ``q``, one thread, the lean route and the
    general route alternating ``--rounds`` times: medians and the ratio per round."""
    import faiss

    from lukhas_gpu.index import single

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    out = []
    try:
        for bs in (int(x) for x in args.batches.split(",")):
            parts = [q[i: i + bs] for i in range(0, len(q) - bs + 1, bs)]
            qps = {True: [], False: []}
            for _ in range(args.rounds):
                for route in (True, False):
                    single.ENABLED = route
                    try:
                        t0 = time.perf_counter()
                        for part in parts:
                            fn(part)
                        qps[route].append(len(parts) * bs / (time.perf_counter() - t0))
                    finally:
                        single.ENABLED = True
            ratios = [a / b for a, b in zip(qps[True], qps[False])]
            out.append({"batch": bs, "QPS lean": statistics.median(qps[True]),
                        "QPS general": statistics.median(qps[False]), "lean / general": statistics.median(ratios),
                        "range": f"{min(ratios):.2f}-{max(ratios):.2f}"})
    finally:
        faiss.omp_set_num_threads(before)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--nq", type=int, default=2000, help="queries, split in halves (traffic / measured)")
    p.add_argument("--rounds", type=int, default=5, help="alternating runs; medians reported")
    p.add_argument("--efs", default="10,12,16,20,24,32,40,48,64,96,128,192,256")
    p.add_argument("--sets", default="synthetic,wordnet",
                   help="synthetic (--n rows) and/or wordnet (its held-out example sentences; skipped "
                        "unless its embeddings are cached)")
    p.add_argument("--batches", default="2,4,8,16,32",
                   help="batch sizes measured on one thread, the lean route against the general one ('' skips)")
    p.add_argument("--tag", default=None)
    args = p.parse_args(argv)
    common.set_threads(2)
    load_before = os.getloadavg()
    sets = []
    for name in args.sets.split(","):
        if name == "synthetic":
            sets.append(lambda: synthetic_dataset(args.n, args.nq))
        elif name == "wordnet" and wordnet_cached():
            sets.append(lambda: wordnet_minilm(args.nq))
        elif name != "wordnet":
            raise SystemExit(f"unknown set {name!r}: synthetic, wordnet")
    results = [run_set(make(), args) for make in sets]
    load_after = os.getloadavg()
    rows = [r for res in results for r in res["rows"]]
    payload = {"n": args.n, "machine": common.machine(), "date": common.today(), "load_before": load_before,
               "load_after": load_after, "rounds": args.rounds, "rows": rows,
               "ratio": {res["rows"][0]["data"]: res["ratio"] for res in results},
               "tuning": {res["rows"][0]["data"]: res["tuning"] for res in results}}
    table = common.markdown_table(rows, ["data", "system", "setting", "recall@10", "p50 ms", "p99 ms",
                                         "QPS 1 thread", "QPS 2 threads"])
    for res in results:
        r = res["ratio"]
        table += (f"\n\n{res['rows'][0]['data']}: ours / hnswlib {r['lukhas_gpu / hnswlib, QPS 1 thread']:.2f}x "
                  f"(1 thread), {r['lukhas_gpu / hnswlib, QPS 2 threads']:.2f}x (2 threads); general route "
                  f"{r['lukhas_gpu (general route) / hnswlib, QPS 1 thread']:.2f}x (1 thread)")
    batch_rows = [r for res in results for r in res["batches"]]
    if batch_rows:
        payload["batches"] = batch_rows
        table += "\n\nSmall batches, one thread:\n\n" + common.markdown_table(
            batch_rows, ["data", "batch", "QPS lean", "QPS general", "lean / general", "range"])
    table += f"\n\nload average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    common.write_results(args.tag or "single_query", payload, table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
