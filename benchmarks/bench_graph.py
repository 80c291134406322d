"""Faster than the best graph at equal recall? The tuner's choice against HNSW and IVF-RaBitQ peers.

One run per set: ``lukhas_gpu`` built with the ``production`` preset and no parameter, serves the
first half of the queries as traffic, then ``tune()`` (target 0.95) chooses among IVF-PQ
fast-scan, its lists with every row spilled to a second (SOAR) list, the HNSW graph, IVF-RaBitQ
and the exact scan within ``config.ann_ram_budget``;
every figure is measured on the second half, which the tuner never saw, against exact float32
inner products. ``--structures`` adds one point per structure forced with ``tune(structure=)``
(the budget aside), so each candidate stage is on the plot too.

Peers on the same data and threads: hnswlib (M=16, ef swept), usearch HNSW f32 and i8 (M=16,
ef swept), FAISS ``IndexHNSWFlat`` (M=16, efSearch swept) and FAISS ``IndexIVFRaBitQ`` (nprobe
swept). For each point: batched QPS (one batch), single-query QPS (one query per call, one
thread, as a server worker), recall@10; per system: anonymous RAM per memory (RssAnon grown by
the build, after a trim), disk per memory (what its own save writes), build seconds.

Sets (``--set``, or ``--data``): ``wordnet`` (WordNet 117k, its example sentences as queries),
``debian`` (50k held-out real memories), ``synthetic1m`` / ``synthetic`` (``--n`` rows, default
1M, of the built-in generator fitted to MiniLM, queried with real out-of-distribution queries:
WordNet example sentences embedded with MiniLM, or ``--queries synthetic`` where they are not
there). The synthetic rows are generated once into the cache (``datasets.synthetic_rows``: 1.5 GB
at 1M, 15 GB at 10M) and memory-mapped; every system is fed them in blocks of 65,536, so the
input is page cache, never the anonymous RAM measured; the exact ground truth is cached beside
(``gt_*.npy``).

Build parameters, chosen to keep each peer's build bounded on 2 cores: M=16 for every graph,
``--ef-construction`` 128 (hnswlib ``ef_construction``, usearch ``expansion_add``, FAISS
``efConstruction``; 64 halves the graph builds at 10M), FAISS IVF-RaBitQ with the package's
``graph.rabitq_nlist(n)`` lists (about ``4 * sqrt(n)``) trained on ``64 * nlist`` rows.
``--peers`` picks the peers (a slow one left out: ``--peers hnswlib,faiss-rabitq``). Each
system's wall time is logged and kept (``wall s``).

lukhas_gpu is a durable store (``MemoryIndex.create``): ``B/mem anon`` is its RssAnon growth after
the checkpoint, when its int8 rows are the published file mapped (``B/mem anon (build)``: before
it); the libraries (torch, FAISS) are imported and used by a small warm-up index first, so no
system's figure holds them.

Usage::

    python -m benchmarks.bench_graph --set wordnet
    python -m benchmarks.bench_graph --set debian
    python -m benchmarks.bench_graph --set synthetic1m
    python -m benchmarks.bench_graph --set synthetic1m --n 10000000 --ef-construction 64
    python -m benchmarks.bench_graph --set synthetic1m --n 20000 --nq 400 --train-at 8192  # smoke

Writes ``benchmarks/out/bench_graph_<set>.{json,md}`` and a recall-vs-QPS plot
(``.png`` with matplotlib, else the points as ``.csv``) with bytes per memory in the legend.
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import (
    Dataset,
    debian_minilm,
    exact_knn,
    synthetic_dataset,
    synthetic_rows,
    wordnet_minilm,
    wordnet_queries,
)
from lukhas_gpu.util.timing import fastest

log = logging.getLogger("bench_graph")
K = 10
TARGET = 0.95


def recall(ids, gt) -> float:
    return common.recall_at(np.asarray(ids).astype(np.int64), gt, K)


def batched_qps(fn, q: np.ndarray, repeat: int) -> float:
    fn(q[:32])
    return len(q) / fastest(lambda: fn(q), repeat)


def timed_batch(fn, q: np.ndarray) -> float:
    """Queries per second of one call on all of ``q`` (no warm-up)."""
    return len(q) / fastest(lambda: fn(q), 1)


#: Batches a paired round times back to back per system (the round's figure is their median).
BATCHES_A_ROUND = 3


def single_qps(fn, q: np.ndarray, n: int) -> float:
    """Queries per second one at a time (one call per query)."""
    q = q[:n]
    fn(q[:1])
    t = time.perf_counter()
    for i in range(len(q)):
        fn(q[i: i + 1])
    return len(q) / (time.perf_counter() - t)


def point(system: str, setting: str, fn, b, gt_b, args, **extra) -> dict:
    return {"system": system, "setting": setting, "recall@10": recall(fn(b), gt_b),
            "QPS batched": batched_qps(fn, b, args.repeat), "QPS single": single_qps(fn, b, args.single), **extra}


class Footprint:
    """RssAnon grown by a build (after a trim on both sides), per memory; ``again()`` reads it later."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.before = common.settle()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.build_s = time.perf_counter() - self.t0
        self.anon = self.again()

    def again(self) -> float:
        return (common.settle() - self.before) / max(self.n, 1)


BLOCK = 65536


def feed(add, xb) -> None:
    """``add`` each block of ``xb`` (a memory map's block read into a temporary copy)."""
    for s in range(0, len(xb), BLOCK):
        add(np.ascontiguousarray(xb[s: s + BLOCK], dtype=np.float32), s)


def warm_libraries(d: int) -> None:
    """torch and FAISS imported and used (encode, train, search, tune) by a small index, dropped:
    the process's libraries are then no part of any system's growth."""
    import lukhas_gpu

    x = np.random.default_rng(7).standard_normal((4096, d)).astype(np.float32)
    cfg = lukhas_gpu.IndexConfig.preset("production", auto_tune=False, train_threshold=2048, nlist=16)
    warm = lukhas_gpu.MemoryIndex(d, cfg)
    warm.add(x)
    warm.search(x[:64], K)
    try:
        warm.tune(TARGET)
    except ValueError as e:  # too few queries recorded: the libraries are warm all the same
        log.info("warm-up tune: %s", e)
    del warm


# -- lukhas_gpu -----------------------------------------------------------------------------------------
def bench_lukhas(xb, a, b, gt_b, args, work) -> tuple[list[dict], object]:
    """The tuned point (a durable store in ``work``) and the index, left open for the paired
    rounds and the forced structures (:func:`forced_structures` closes it)."""
    import lukhas_gpu

    n = len(xb)
    over = {"train_threshold": args.train_at} if args.train_at else {}
    cfg = lukhas_gpu.IndexConfig.preset("production", auto_tune=False, wal_sync="none", **over)
    warm_libraries(xb.shape[1])
    with Footprint(n) as fp:
        index = lukhas_gpu.MemoryIndex.create(work / "store", xb.shape[1], cfg)
        feed(lambda x, s: index.add(x), xb)
        for s in range(0, len(a), 256):  # traffic: the first half of the queries
            index.search(a[s: s + 256], K)
        rep = index.tune(TARGET)
    gen = index.checkpoint()  # a durable writer's rows: the published file, mapped
    anon = fp.again()
    disk = common.dir_bytes(gen) / n
    mem = index.stats()["memory"]
    log.info("tuned: %s", {k: v for k, v in rep.items() if k != "tried"})
    rows = [point("lukhas_gpu (tuned, no parameter)", _setting(rep), lambda q: index.search(q, K).ids,
                  b, gt_b, args, **{"B/mem anon": anon, "B/mem anon (build)": fp.anon,
                                    "B/mem anon (stats)": mem["per_memory"]["anon"] - _runtime(mem) / n,
                                    "B/mem disk": disk, "build s": fp.build_s, "estimate": rep["recall"]})]
    return rows, index


def forced_structures(index, b, gt_b, args) -> list[dict]:
    """One point per structure of ``args.structures`` forced on ``index`` (the budget aside); closes it."""
    rows = []
    for structure in args.structures:
        index.config = index.config.replace(ann_ram_budget=1 << 20)  # forced: the budget aside
        t0 = time.perf_counter()
        try:
            r = index.tune(TARGET, structure=structure)
        except ValueError as e:  # an untrained index has no IVF to build on
            log.warning("structure %s not measured: %s", structure, e)
            continue
        anon = index.stats()["memory"]["per_memory"]["anon"]
        rows.append(point(f"lukhas_gpu {structure} (forced)", _setting(r), lambda q: index.search(q, K).ids,
                          b, gt_b, args, **{"B/mem anon (stats)": anon, "build s": time.perf_counter() - t0,
                                            "estimate": r["recall"]}))
    index.close()
    return rows


def paired(ours, ours_row: dict, hn_rows: list[dict], hn_search, b, args) -> dict | None:
    """Ours against hnswlib at its smallest ``ef`` of equal or better recall, measured in
    alternating rounds (ours first in even rounds, hnswlib first in odd ones: batched, then one
    query at a time): the ratios per round and their medians. A VM's speed drifts by up to 1.6x
    over minutes, so figures taken minutes apart (the sweep's) do not make a ratio. A round's
    batched figure is the median of ``BATCHES_A_ROUND`` batches in a row (one batch of 1,000
    queries lasts ~50 ms: a scheduler's hiccup moved a one-batch figure by 30%); the first of
    them, after the other system's turn, is kept too ("first batch")."""
    match = next((r for r in hn_rows if r["recall@10"] >= ours_row["recall@10"]), None)
    if match is None or args.paired < 1:
        return None
    ef = int(match["setting"].split("=")[1])
    systems = {"ours": lambda q: ours.search(q, K).ids, "hnswlib": lambda q: hn_search(q, ef)}
    rounds = []
    for r in range(args.paired):
        got = {}
        for name in (list(systems) if r % 2 == 0 else list(systems)[::-1]):
            first, *more = [timed_batch(systems[name], b) for _ in range(BATCHES_A_ROUND)]
            got[name] = (float(np.median([first, *more])), single_qps(systems[name], b, args.single), first)
        rounds.append({"ours batched": got["ours"][0], "hnswlib batched": got["hnswlib"][0],
                       "ours single": got["ours"][1], "hnswlib single": got["hnswlib"][1],
                       "ours first batch": got["ours"][2], "hnswlib first batch": got["hnswlib"][2]})
        log.info("paired round %d: %s", r, rounds[-1])
    bat = [x["ours batched"] / x["hnswlib batched"] for x in rounds]
    first = [x["ours first batch"] / x["hnswlib first batch"] for x in rounds]
    sgl = [x["ours single"] / x["hnswlib single"] for x in rounds]
    return {"hnswlib ef": ef, "hnswlib recall@10": match["recall@10"], "ours recall@10": ours_row["recall@10"],
            "ours setting": ours_row["setting"], "rounds": rounds,
            "batched ratio (median)": float(np.median(bat)), "batched ratio range": f"{min(bat):.2f}-{max(bat):.2f}",
            "first batch ratio (median)": float(np.median(first)),
            "single ratio (median)": float(np.median(sgl)), "single ratio range": f"{min(sgl):.2f}-{max(sgl):.2f}",
            **{f"{k} (median)": float(np.median([x[k] for x in rounds])) for k in rounds[0]}}


def _runtime(mem: dict) -> int:
    """The libraries' runtime ``stats()`` counts (none after the warm-up; left out either way)."""
    return mem["anon"].get("runtime_libraries", 0)


def _setting(rep: dict) -> str:
    return f"{rep['kind']} {rep.get('nprobe') or ''} rerank {rep['rerank']}".replace("  ", " ")


# -- peers ----------------------------------------------------------------------------------------------
def _sweep(system, search, params, b, gt_b, args, fp, disk, label) -> list[dict]:
    rows = []
    for p in params:
        r = point(system, f"{label}={p}", lambda q, p=p: search(q, p), b, gt_b, args,
                  **{"B/mem anon": fp.anon, "B/mem disk": disk, "build s": fp.build_s})
        rows.append(r)
        if r["recall@10"] >= 0.995:
            break
    return rows


def bench_hnswlib(xb, b, gt_b, args) -> tuple[list[dict], object]:
    import hnswlib

    n, d = xb.shape
    with Footprint(n) as fp:
        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, M=16, ef_construction=args.ef_construction, random_seed=0)
        index.set_num_threads(args.threads)
        feed(lambda x, s: index.add_items(x, np.arange(s, s + len(x))), xb)
    with common.work_dir(None, "bench_graph_") as w:
        index.save_index(str(w / "h.bin"))
        disk = common.dir_bytes(w) / n

    def search(q, ef):
        index.set_ef(max(ef, K))
        index.set_num_threads(args.threads if len(q) > 1 else 1)
        return index.knn_query(q, k=K)[0]
    return _sweep("hnswlib M=16 f32", search, args.efs, b, gt_b, args, fp, disk, "ef"), search


def bench_usearch(xb, b, gt_b, args, dtype: str) -> list[dict]:
    from usearch.index import Index

    n, d = xb.shape
    with Footprint(n) as fp:
        index = Index(ndim=d, metric="ip", dtype=dtype, connectivity=16, expansion_add=args.ef_construction)
        feed(lambda x, s: index.add(np.arange(s, s + len(x)), x, threads=args.threads), xb)
    with common.work_dir(None, "bench_graph_") as w:
        index.save(str(w / "u.usearch"))
        disk = common.dir_bytes(w) / n

    def search(q, ef):
        index.expansion_search = ef
        return np.asarray(index.search(q, K, threads=args.threads if len(q) > 1 else 1).keys).reshape(len(q), -1)
    return _sweep(f"usearch M=16 {dtype}", search, args.efs, b, gt_b, args, fp, disk, "ef")


def bench_faiss(xb, b, gt_b, args, kind: str) -> list[dict]:
    import faiss

    from lukhas_gpu.vectors.graph import rabitq_nlist

    n, d = xb.shape
    with Footprint(n) as fp:
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, 16, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = args.ef_construction
        else:
            nlist = rabitq_nlist(n)
            index = faiss.index_factory(d, f"IVF{nlist},RaBitQ", faiss.METRIC_INNER_PRODUCT)
            pick = np.sort(np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False))
            index.train(np.ascontiguousarray(xb[pick], dtype=np.float32))
            del pick
        feed(lambda x, s: index.add(x), xb)
    disk = len(faiss.serialize_index(index)) / n

    def search(q, p):
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(p, K))
        else:
            params = faiss.IVFRaBitQSearchParameters()
            params.nprobe = p
        faiss.omp_set_num_threads(args.threads if len(q) > 1 else 1)
        return index.search(q, K, params=params)[1]
    params = args.efs if kind == "hnsw" else [p for p in (4, 8, 16, 32, 64, 128, 256) if p <= index.nlist]
    name = "FAISS HNSWFlat M=16" if kind == "hnsw" else "FAISS IVF-RaBitQ"
    return _sweep(name, search, params, b, gt_b, args, fp, disk, "ef" if kind == "hnsw" else "nprobe")


# -- output ---------------------------------------------------------------------------------------------
def plot(rows: list[dict], stem) -> str:
    """recall-vs-QPS (batched) per system, bytes per memory in the legend: a PNG, else a CSV."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = f"{stem}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            w.writeheader()
            w.writerows(rows)
        return path
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, col, title in zip(axes, ("QPS batched", "QPS single"), ("one batch", "one query per call, one thread")):
        for s in dict.fromkeys(r["system"] for r in rows):
            pts = sorted((r["recall@10"], r[col]) for r in rows if r["system"] == s and r.get(col))
            mem = next(r.get("B/mem anon") or r.get("B/mem anon (stats)") for r in rows if r["system"] == s)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "s", markersize=5,
                    label=f"{s} ({mem:.0f} B/mem anon)" if mem is not None else s)
        ax.axvline(TARGET, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("recall@10 (held-out queries)")
        ax.set_ylabel(f"QPS ({title})")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{stem}.png", dpi=110)
    return f"{stem}.png"


def load(args):
    if args.data == "wordnet":
        return wordnet_minilm(args.nq)
    if args.data == "debian":
        return debian_minilm(50_000, args.nq)
    if args.queries == "real":  # out-of-distribution real queries; the rows memory-mapped from the cache
        return Dataset(f"synthetic-{args.n}-wordnet-queries", synthetic_rows(args.n), wordnet_queries(args.nq))
    return synthetic_dataset(args.n, args.nq)


def _timed(system: str, run):
    """``run()``'s result (its rows, or a tuple of its rows and more), each row given the
    system's wall time (build, sweep and timing)."""
    t0 = time.perf_counter()
    out = run()
    wall = time.perf_counter() - t0
    log.info("%s: %.0f s", system, wall)
    for r in out[0] if isinstance(out, tuple) else out:
        r["wall s"] = wall
    return out


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", "--data", dest="data", choices=["wordnet", "debian", "synthetic1m", "synthetic"],
                   default="wordnet", help="the set (synthetic1m: the generator's rows, --n of them)")
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic size (default 1M; 10000000 for 10M)")
    p.add_argument("--queries", choices=["real", "synthetic"], default="real", help="queries of the synthetic set")
    p.add_argument("--nq", type=int, default=4000, help="queries, split in halves")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--single", type=int, default=500, help="queries timed one at a time")
    p.add_argument("--paired", type=int, default=5,
                   help="alternating rounds of ours and hnswlib at equal recall (the ratios' medians; 0: none)")
    p.add_argument("--peers", default="hnswlib,usearch-f32,usearch-i8,faiss-hnsw,faiss-rabitq",
                   help="comma-separated peers (any of the default's; empty: lukhas_gpu alone)")
    p.add_argument("--structures", default="ivf,ivf-spill,graph,rabitq", help="structures forced after the tuned point")
    p.add_argument("--train-at", type=int, default=None, help="train_threshold (small smoke runs)")
    p.add_argument("--efs", default="16,24,32,48,64,96,128,192,256,384,512")
    p.add_argument("--ef-construction", type=int, default=128, help="the graphs' construction beam (M=16)")
    args = p.parse_args(argv)
    args.efs = [int(e) for e in args.efs.split(",")]
    args.structures = [s for s in args.structures.split(",") if s]
    common.set_threads(args.threads)
    ds = load(args)
    half = len(ds.xq) // 2
    a, b = np.ascontiguousarray(ds.xq[:half]), np.ascontiguousarray(ds.xq[half:])
    gt_b = exact_knn(ds.xb, ds.xq, K)[half:]
    log.info("%s: %d x %d, %d tuning queries, %d held out", ds.name, len(ds.xb), ds.d, len(a), len(b))
    peers = [s for s in args.peers.split(",") if s]
    pair = None
    with common.work_dir(None, "bench_graph_") as work:
        rows, ours = _timed("lukhas_gpu", lambda: bench_lukhas(ds.xb, a, b, gt_b, args, work))
        if "hnswlib" in peers:  # built beside our open index: the paired rounds, then dropped
            hn_rows, hn_search = _timed("hnswlib", lambda: bench_hnswlib(ds.xb, b, gt_b, args))
            pair = paired(ours, rows[0], hn_rows, hn_search, b, args)
            del hn_search
            rows += hn_rows
        rows += forced_structures(ours, b, gt_b, args)
    for peer in peers:
        if peer == "hnswlib":
            continue
        elif peer.startswith("usearch"):
            rows += _timed(peer, lambda: bench_usearch(ds.xb, b, gt_b, args, peer.split("-")[1]))
        elif peer.startswith("faiss"):
            rows += _timed(peer, lambda: bench_faiss(ds.xb, b, gt_b, args, peer.split("-")[1]))
    cols = ["system", "setting", "recall@10", "QPS batched", "QPS single", "B/mem anon", "B/mem anon (build)",
            "B/mem anon (stats)", "B/mem disk", "build s", "wall s"]
    table = common.markdown_table(rows, cols)
    name = f"bench_graph_{ds.name}"
    if pair is not None:
        table += "\n\n" + common.markdown_table([{k: v for k, v in pair.items() if k != "rounds"}])
    payload = {"machine": common.machine(), "date": common.today(), "set": ds.name, "n": len(ds.xb),
               "threads": args.threads, "rows": rows, "paired": pair, "load_average": os.getloadavg()}
    out = common.write_results(name, payload, table)
    payload["plot"] = plot(rows, str(out.with_suffix("")))
    print(table)
    print(f"written: {out}, {payload['plot']}")
    return payload


if __name__ == "__main__":
    main()
