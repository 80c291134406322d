"""Recall you can trust: the tuner's targets on held-out queries, adaptive vs fixed probing, peers.

Protocol (every recall figure): the queries are split in two halves. The index is built with the
``production`` preset and no parameter, serves the first half as traffic (its probe keeps a
sample), then ``tune()`` runs; every figure is measured on the second half, which the tuner never
saw, against exact float32 inner products.

Rows:
* ``lukhas_gpu`` at ``target_recall`` 0.90 / 0.95 / 0.99 (``search(..., target_recall=t)``; 0.95 is
  the preset's own target, so it is also what a search with no argument runs): achieved recall,
  the tuner's estimate, batched QPS, single-query p50/p99, mean lists probed per query;
* for each target, the cheapest fixed-probing and the cheapest adaptive-probing setting that the
  tuner's table says reaches it, both measured (adaptive vs fixed at equal recall), with recall
  and probes per decile of the adaptive probe count;
* peers on the same data, same threads: usearch HNSW float32 and int8 and hnswlib (``ef`` swept),
  FAISS ``IVF{nlist},PQ{m}x4fs,Refine(SQ8)`` with FAISS's own AutoTune (``ParameterSpace``
  explored on the first half of the queries, the cheapest operating point reaching each target
  measured on the second half).

Usage::

    python -m benchmarks.bench_tune --data real            # MiniLM / WordNet 117k
    python -m benchmarks.bench_tune --data debian          # held-out real set (never tuned on)
    python -m benchmarks.bench_tune --data synthetic --n 1000000 --peers usearch-f32
    python -m benchmarks.bench_tune --data synthetic --n 10000000 --stream --peers ""

``--stream`` (synthetic only) generates the rows batch by batch from the model's seeded stream and
computes the ground truth by a streamed exact scan, so 10M rows never sit in RAM as float32
(15 GB); the peers need the whole matrix and are skipped.
"""
from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import Dataset, debian_minilm, exact_knn, synthetic_dataset, wordnet_minilm
from lukhas_gpu.util.timing import fastest

STREAM_BATCH = 100_000


class Streamed:
    """A synthetic set too large to hold: its rows come from the model's seeded stream."""

    def __init__(self, n: int, nq: int, seed: int = 0):
        from lukhas_gpu.tools.synthetic import builtin_model

        self.model, self.n, self.seed = builtin_model(), n, seed
        self.name, self.xb = f"synthetic-{n}", None
        self.xq = self.model.queries(nq, seed=seed)
        self.d = self.xq.shape[1]

    def batches(self, size: int = STREAM_BATCH):
        for start in range(0, self.n, size):
            yield self.model.sample(min(size, self.n - start), seed=self.seed, start=start)

    def ground_truth(self, k: int) -> np.ndarray:
        from benchmarks.bench_scale import exact_streaming
        from benchmarks.datasets import cache_dir

        path = cache_dir() / f"gt_stream_{self.n}_{len(self.xq)}_s{self.seed}_k{k}.npy"
        if not path.exists():  # 20 minutes at 10M x 2,000 queries on 2 shared cores
            np.save(path, exact_streaming(self.model, self.n, self.xq, k))
        return np.load(path)


def batches(ds, size: int = 65536):
    if isinstance(ds, Streamed):
        yield from ds.batches()
    else:
        for s in range(0, len(ds.xb), size):
            yield ds.xb[s: s + size]

log = logging.getLogger("bench_tune")
K = 10
TARGETS = (0.90, 0.95, 0.99)


def per_query_recall(ids: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.array([len(set(a[a >= 0]) & set(b)) / K for a, b in zip(np.asarray(ids), gt)])


def qps(fn, q: np.ndarray, repeat: int) -> float:
    fn(q[:64])  # warm
    return len(q) / fastest(lambda: fn(q), repeat)


def latencies(fn, q: np.ndarray, n: int = 200) -> tuple[float, float]:
    ts = []
    for i in range(min(n, len(q))):
        t = time.perf_counter()
        fn(q[i: i + 1])
        ts.append(time.perf_counter() - t)
    return float(np.percentile(ts, 50) * 1e3), float(np.percentile(ts, 99) * 1e3)


# -- lukhas_gpu ------------------------------------------------------------------------------------
def build_lukhas(ds: Dataset, a: np.ndarray, args):
    import lukhas_gpu
    from lukhas_gpu.index import tuning

    n = ds.n if isinstance(ds, Streamed) else len(ds.xb)
    over = {"capacity": n} if args.capacity else {}
    if args.quiet_build:  # a batch job: no background tuning while it ingests, one tune() at the end
        over["auto_tune"] = False
    cfg = lukhas_gpu.IndexConfig.preset("production", **over)
    t0 = time.perf_counter()
    index = lukhas_gpu.MemoryIndex(ds.d, cfg)
    for x in batches(ds):
        index.add(x)
    build_s = time.perf_counter() - t0
    tuning.wait(index)  # the background runs that training and growth started
    for s in range(0, len(a), 256):  # traffic: the first half of the queries
        index.search(a[s: s + 256], K)
    tuning.wait(index)
    t0 = time.perf_counter()
    rep = index.tune()
    log.info("tune(): %s in %.1f s", {k: v for k, v in rep.items() if k != "tried"}, time.perf_counter() - t0)
    # measure the steady state: the held-out searches below would otherwise double the queries
    # seen and start a background retune beside the timings
    index.config = index.config.replace(auto_tune=False)
    tuning.wait(index)
    return index, rep, build_s


def probes_of(index, q: np.ndarray, chosen: dict) -> np.ndarray:
    """Lists each query of ``q`` probes under ``chosen`` (search_params' dict)."""
    import torch

    from lukhas_gpu.query import probing

    if chosen["exact"]:
        return np.zeros(len(q))
    p = chosen["probing"]
    if p is None:
        return np.full(len(q), min(chosen["nprobe"], index.parts.ann.nlist), dtype=np.float64)
    qp = index.encoder.project(torch.from_numpy(q)).numpy()
    scores, _ = index.parts.ann.coarse_search(qp, max(p.nprobe, probing.COARSE_MIN))
    return probing.probe_counts(scores, p).astype(np.float64)


def bench_lukhas(index, rep, build_s, b, gt_b, args) -> tuple[list[dict], list[dict]]:
    from lukhas_gpu.index import tuning

    rows, deciles = [], []
    tuned = index.parts.tuned
    for t in TARGETS:
        chosen = tuning.search_params(index, None, None, t)
        res = index.search(b, K, target_recall=t)
        r = per_query_recall(res.ids, gt_b)
        kind, p, rr = tuned.lookup(t) if t != tuned.target else (tuned.kind, tuned.probing, tuned.rerank)
        i = tuning._row_of(tuned.table, kind, p, rr)
        p50, p99 = latencies(lambda q: index.search(q, K, target_recall=t), b)
        rows.append({"system": "lukhas_gpu production (tuned)", "target": t, "setting": _setting(chosen),
                     "recall@10": float(r.mean()), "estimate": float(tuned.table["recall"][i]),
                     "QPS": qps(lambda q: index.search(q, K, target_recall=t), b, args.repeat),
                     "p50 ms": p50, "p99 ms": p99, "probes/query": float(probes_of(index, b, chosen).mean())})
        # adaptive vs fixed at this target: the cheapest row of each kind that the table says meets it
        fixed_rq = None
        for kind_id, label in ((0, "fixed"), (1, "adaptive")):
            tab = tuned.table
            ok = (tab["kind"] == kind_id) & (tab["bound"] >= t)
            if not ok.any():
                continue
            j = int(np.flatnonzero(ok)[np.argmin(tab["cost"][ok])])
            kd, pj, rj = tuned._row(j)
            ch = {"nprobe": pj.nprobe, "rerank": rj, "probing": pj if pj.adaptive else None, "exact": False}
            res_ids = _search_with(index, b, ch)
            pr = probes_of(index, b, ch)
            rq = per_query_recall(res_ids, gt_b)
            rows.append({"system": f"lukhas_gpu {label} probing", "target": t, "setting": _setting(ch),
                         "recall@10": float(rq.mean()), "estimate": float(tab["recall"][j]),
                         "QPS": qps(lambda q: _search_with(index, q, ch), b, args.repeat),
                         "probes/query": float(pr.mean())})
            if label == "fixed":
                fixed_rq = rq
            if label == "adaptive" and t == 0.95:  # deciles of the adaptive probe count (query hardness)
                order = np.argsort(pr, kind="stable")
                for d, part in enumerate(np.array_split(order, 10)):
                    deciles.append({"decile": d + 1, "adaptive probes": float(pr[part].mean()),
                                    "adaptive recall@10": float(rq[part].mean()),
                                    "fixed recall@10": float(fixed_rq[part].mean()) if fixed_rq is not None else None})
    rows[0]["build s"] = build_s
    return rows, deciles


def _search_with(index, q, ch):
    """A search with explicit parameters, adaptive probing included (the executor's own path)."""
    import torch

    from lukhas_gpu.query import executor

    cfg = index.config
    s = executor.Search(k=K, nprobe=ch["nprobe"], rerank=ch["rerank"], exact_max=cfg.filter_exact_max,
                        probing=ch["probing"], exact=ch["exact"])
    with index.lock:
        return executor.similar(index.parts, torch.from_numpy(np.ascontiguousarray(q)), s, None)[1].numpy()


def _setting(ch: dict) -> str:
    if ch["exact"]:
        return "exact int8 scan"
    p = ch["probing"]
    if p is not None:
        return f"adaptive scale {p.scale:g} ({p.nprobe_min}..{p.nprobe}), rerank {ch['rerank']}"
    return f"nprobe {ch['nprobe']}, rerank {ch['rerank']}"


# -- peers -------------------------------------------------------------------------------------------
def bench_hnsw(ds: Dataset, b, gt_b, args, kind: str) -> list[dict]:
    t0 = time.perf_counter()
    if kind.startswith("usearch"):
        from usearch.index import Index

        dtype = "f32" if kind == "usearch-f32" else "i8"
        index = Index(ndim=ds.d, metric="cos", dtype=dtype, connectivity=16, expansion_add=128)
        index.add(np.arange(len(ds.xb)), ds.xb, threads=args.threads)

        def search(q, ef):
            index.expansion_search = ef
            return index.search(q, K, threads=args.threads).keys
        name = f"usearch HNSW {dtype}"
    else:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=ds.d)
        index.init_index(max_elements=len(ds.xb), M=16, ef_construction=128, random_seed=0)
        index.set_num_threads(args.threads)
        index.add_items(ds.xb, np.arange(len(ds.xb)))

        def search(q, ef):
            index.set_ef(ef)
            return index.knn_query(q, k=K)[0]
        name = "hnswlib HNSW f32"
    build_s = time.perf_counter() - t0
    rows = []
    for ef in args.efs:
        r = per_query_recall(np.asarray(search(b, ef)).astype(np.int64), gt_b)
        rows.append({"system": name, "setting": f"M=16 ef={ef}", "recall@10": float(r.mean()),
                     "QPS": qps(lambda q: search(q, ef), b, args.repeat), "build s": build_s})
        if r.mean() >= 0.995:
            break
    return rows


def bench_faiss_autotune(ds: Dataset, a, b, gt_a, gt_b, nlist: int, args) -> list[dict]:
    import faiss

    m = ds.d // 4
    t0 = time.perf_counter()
    index = faiss.index_factory(ds.d, f"IVF{nlist},PQ{m}x4fs,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT)
    index.train(ds.xb[np.random.default_rng(0).choice(len(ds.xb), min(len(ds.xb), 64 * nlist), replace=False)])
    index.add(ds.xb)
    build_s = time.perf_counter() - t0
    ps = faiss.ParameterSpace()
    ps.initialize(index)
    crit = faiss.IntersectionCriterion(len(a), K)  # recall@10 as the overlap of top-10 sets
    crit.set_groundtruth(None, np.ascontiguousarray(gt_a, dtype=np.int64))
    ps.n_experiments = 80
    ops = ps.explore(index, np.ascontiguousarray(a), crit)
    points = []
    for i in range(ops.optimal_pts.size()):
        op = ops.optimal_pts.at(i)
        points.append((op.perf, op.t, op.key))
    rows = []
    for t in TARGETS:
        ok = [p for p in points if p[0] >= t]
        if not ok:
            continue
        perf, _, key = min(ok, key=lambda p: p[1])
        ps.set_index_parameters(index, key)
        r = per_query_recall(index.search(b, K)[1], gt_b)
        rows.append({"system": "FAISS IVF-PQ + AutoTune", "target": t, "setting": key, "recall@10": float(r.mean()),
                     "estimate": float(perf), "QPS": qps(lambda q: index.search(q, K), b, args.repeat),
                     "build s": build_s})
    return rows


# -- main --------------------------------------------------------------------------------------------
def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    systems = sorted({r["system"] for r in rows})
    for s in systems:
        pts = sorted((r["recall@10"], r["QPS"]) for r in rows if r["system"] == s)
        style = "o-" if "HNSW" in s or "FAISS" in s else "s"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=s, markersize=5)
    for r in rows:
        if r["system"] == "lukhas_gpu production (tuned)":
            ax.annotate(f"target {r['target']:.2f}", (r["recall@10"], r["QPS"]), textcoords="offset points",
                        xytext=(4, 6), fontsize=8)
            ax.axvline(r["target"], color="grey", lw=0.5, ls=":")
    ax.set_xlabel("recall@10 (held-out queries)")
    ax.set_ylabel("QPS (one batch, 2 threads)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["real", "debian", "synthetic"], default="real")
    p.add_argument("--n", type=int, default=100_000, help="synthetic size")
    p.add_argument("--nq", type=int, default=4000, help="queries, split in halves")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--capacity", action="store_true", help="pass capacity=N (a batch job that knows its size)")
    p.add_argument("--peers", default="usearch-f32,usearch-i8,hnswlib,faiss")
    p.add_argument("--efs", default="16,24,32,48,64,96,128,192,256,384,512")
    p.add_argument("--plot", default=None)
    p.add_argument("--tag", default=None)
    p.add_argument("--stream", action="store_true", help="synthetic rows generated batch by batch (no peers)")
    p.add_argument("--quiet-build", action="store_true",
                   help="auto_tune off while building (no background tuning runs during the ingest)")
    args = p.parse_args(argv)
    args.efs = [int(e) for e in args.efs.split(",")]
    common.set_threads(args.threads)
    if args.data == "real":
        ds = wordnet_minilm(args.nq)
    elif args.data == "debian":
        ds = debian_minilm(50_000, args.nq)
    elif args.stream:
        ds = Streamed(args.n, args.nq)
        args.peers = ""
    else:
        ds = synthetic_dataset(args.n, args.nq)
    half = len(ds.xq) // 2
    a, b = np.ascontiguousarray(ds.xq[:half]), np.ascontiguousarray(ds.xq[half:])
    gt = ds.ground_truth(K) if args.stream else exact_knn(ds.xb, ds.xq, K)
    gt_a, gt_b = gt[:half], gt[half:]
    n = ds.n if args.stream else len(ds.xb)
    log.info("%s: %d x %d, %d tuning queries, %d held out", ds.name, n, ds.d, len(a), len(b))
    index, rep, build_s = build_lukhas(ds, a, args)
    rows, deciles = bench_lukhas(index, rep, build_s, b, gt_b, args)
    nlist = index.parts.ann.nlist if index.parts.ann is not None else 1024
    tune_seconds = rep["seconds"]
    del index
    peers = [s for s in args.peers.split(",") if s]
    for peer in peers:
        if peer == "faiss":
            rows += bench_faiss_autotune(ds, a, b, gt_a, gt_b, nlist, args)
        else:
            rows += bench_hnsw(ds, b, gt_b, args, peer)
    # at equal recall: the tuned default (target 0.95) against each HNSW's cheapest ef reaching it
    ours = next(r for r in rows if r["system"] == "lukhas_gpu production (tuned)" and r["target"] == 0.95)
    ratios = {}
    for name in sorted({r["system"] for r in rows if "HNSW" in r["system"]}):
        ok = [r for r in rows if r["system"] == name and r["recall@10"] >= ours["recall@10"]]
        if ok:
            best = max(ok, key=lambda r: r["QPS"])
            ratios[name] = {"setting": best["setting"], "recall@10": best["recall@10"], "QPS": best["QPS"],
                            "ratio": ours["QPS"] / best["QPS"]}
    payload = {"data": ds.name, "n": n, "machine": common.machine(), "date": common.today(),
               "tuning": {k: v for k, v in rep.items() if k != "tried"}, "tune_seconds": tune_seconds,
               "rows": rows, "deciles": deciles, "equal_recall_ratios": ratios}
    cols = ["system", "target", "setting", "recall@10", "estimate", "QPS", "p50 ms", "p99 ms", "probes/query",
            "build s"]
    table = common.markdown_table(rows, cols) + "\n\n" + common.markdown_table(deciles) + "\n\n" + \
        json.dumps(ratios, indent=1)
    common.write_results(args.tag or f"tune_{ds.name}", payload, table)
    if args.plot:
        plot(rows, args.plot)
    print(table)
    return payload


if __name__ == "__main__":
    main()
