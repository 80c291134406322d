"""Core vector index: recall, QPS, ingest, training time and RAM per vector, against peers.

Questions answered (issue "Core vector index"):
* recall@10 of the ``production`` preset on real embeddings, and batched QPS at that recall
  against usearch's int8 HNSW at its own best recall, same run, same threads;
* ingest rate after training, training time, anonymous RAM growth per vector;
* the nprobe x rerank grid the defaults were chosen from (``--sweep``).

Usage::

    python -m benchmarks.bench_core --data real              # MiniLM / WordNet, 117k
    python -m benchmarks.bench_core --data synthetic --n 1000000
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import Dataset, exact_knn, synthetic_dataset, wordnet_minilm

log = logging.getLogger("bench_core")


def bench_flat(ds: Dataset, gt: np.ndarray, args) -> dict:
    import faiss

    index = faiss.IndexFlatIP(ds.d)
    index.add(ds.xb)
    sec, (_, ids) = common.timed(lambda: index.search(ds.xq, 10), repeat=args.repeat)
    return {"system": "faiss Flat float32", "params": "-", "recall@10": common.recall_at(ids, gt, 10),
            "QPS": len(ds.xq) / sec, "bytes/vector": 4.0 * ds.d}


def build_lukhas(ds: Dataset, config, *, batch: int = 65536):
    import lukhas_gpu

    # warm-up: thread pools, allocator arenas and library state are one-time costs, not per vector
    warm = lukhas_gpu.MemoryIndex(ds.d, config.replace(capacity=None, train_threshold=2048, nlist=16))
    warm.add(ds.xb[:4096])
    warm.search(ds.xq[:16], 10)
    del warm
    before = common.settle()
    t0 = time.perf_counter()
    index = lukhas_gpu.MemoryIndex(ds.d, config)
    for start in range(0, len(ds.xb), batch):
        index.add(ds.xb[start: start + batch])
    if not index.is_trained and len(ds.xb) >= config.train_threshold:
        index.train()
    build = time.perf_counter() - t0
    grow = common.settle() - before
    return index, build, grow


def bench_lukhas(ds: Dataset, gt: np.ndarray, args, name: str, config, grid=None) -> list[dict]:
    index, build, grow = build_lukhas(ds, config)
    st = index.stats()
    rows = []
    for nprobe, rerank in grid or [(config.nprobe, config.rerank)]:
        sec, res = common.timed(lambda: index.search(ds.xq, 10, nprobe=nprobe, rerank=rerank), repeat=args.repeat)
        rows.append({"system": f"lukhas_gpu {name}", "params": f"nprobe={nprobe} rerank={rerank}" if index.is_trained else "exact int8",
                     "recall@10": common.recall_at(res.ids, gt, 10), "QPS": len(ds.xq) / sec,
                     "nprobe": nprobe, "rerank": rerank,
                     "bytes/vector": st["bytes_per_memory"], "anon B/vector": grow / len(ds.xb),
                     "build s": build, "train s": st["train_seconds"]})
        log.info("%s", rows[-1])
    p50, p99 = common.latencies(lambda q: index.search(q, 10), ds.xq)
    rows[0].update({"p50 ms": p50, "p99 ms": p99})
    if index.is_trained and args.ingest:
        # ingest after training: the same vectors again, in batches of 10k (cost per vector is
        # the coarse assignment, PQ encoding and int8 quantization, whatever the values)
        n = min(len(ds.xb), args.ingest)
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            for start in range(0, n, 10_000):
                index.add(ds.xb[start: min(n, start + 10_000)])
            rates.append(n / (time.perf_counter() - t0))
        rows[0]["ingest/s"] = float(np.median(rates))
        log.info("ingest after training: %.0f vectors/s", rows[0]["ingest/s"])
    return rows


def bench_usearch(ds: Dataset, gt: np.ndarray, args, dtype: str, efs) -> list[dict]:
    from usearch.index import Index

    before = common.settle()
    t0 = time.perf_counter()
    index = Index(ndim=ds.d, metric="cos", dtype=dtype, connectivity=16, expansion_add=128)
    index.add(np.arange(len(ds.xb)), ds.xb, threads=args.threads)
    build = time.perf_counter() - t0
    grow = common.settle() - before
    rows = []
    for ef in efs:
        index.expansion_search = ef

        def run():
            return index.search(ds.xq, 10, threads=args.threads)

        sec, res = common.timed(run, repeat=args.repeat)
        rows.append({"system": f"usearch HNSW {dtype}", "params": f"M=16 ef={ef}",
                     "recall@10": common.recall_at(res.keys, gt, 10), "QPS": len(ds.xq) / sec,
                     "bytes/vector": index.memory_usage / len(ds.xb), "anon B/vector": grow / len(ds.xb),
                     "build s": build})
        log.info("%s", rows[-1])
    return rows


def bench_hnswlib(ds: Dataset, gt: np.ndarray, args, efs) -> list[dict]:
    import hnswlib

    before = common.settle()
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=ds.d)
    index.init_index(max_elements=len(ds.xb), M=16, ef_construction=128, random_seed=0)
    index.set_num_threads(args.threads)
    index.add_items(ds.xb, np.arange(len(ds.xb)))
    build = time.perf_counter() - t0
    grow = common.settle() - before
    rows = []
    for ef in efs:
        index.set_ef(ef)
        sec, (ids, _) = common.timed(lambda: index.knn_query(ds.xq, k=10), repeat=args.repeat)
        rows.append({"system": "hnswlib HNSW float32", "params": f"M=16 ef={ef}",
                     "recall@10": common.recall_at(ids, gt, 10), "QPS": len(ds.xq) / sec,
                     "anon B/vector": grow / len(ds.xb), "build s": build})
        log.info("%s", rows[-1])
    return rows


def bench_naive(ds: Dataset, gt: np.ndarray, args) -> list[dict]:
    from lukhas_gpu.baseline import NaiveMemoryStore

    before = common.settle()
    t0 = time.perf_counter()
    store = NaiveMemoryStore(ds.d)
    store.add(ds.xb)
    build = time.perf_counter() - t0
    grow = common.settle() - before
    sec, (_, ids) = common.timed(lambda: store.search(ds.xq, 10), repeat=1)
    return [{"system": "naive dict store (old design)", "params": "exact float32", "recall@10": common.recall_at(ids, gt, 10),
             "QPS": len(ds.xq) / sec, "anon B/vector": grow / len(ds.xb), "build s": build,
             "ingest/s": len(ds.xb) / build}]


def plot(rows: list[dict], path) -> None:
    """Recall@10 vs QPS per system (a curve where a system has several settings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    systems: dict[str, list] = {}
    for r in rows:
        systems.setdefault(r["system"], []).append((r["recall@10"], r["QPS"]))
    for name, pts in systems.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second (batch, 2 threads)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    import lukhas_gpu

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["real", "synthetic"], default="real")
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic database size")
    p.add_argument("--nq", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--preset", default="production")
    p.add_argument("--sweep", action="store_true", help="nprobe x rerank grid")
    p.add_argument("--grid", default=None, help="explicit nprobe:rerank pairs, e.g. 128:10,256:20")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field of the preset (repeatable), e.g. --set pq_m=64")
    p.add_argument("--ingest", type=int, default=100_000, help="vectors re-added to time ingest after training (0: skip)")
    p.add_argument("--peers", default="flat,usearch",
                   help="comma list of: flat, usearch, usearch-f32, hnswlib, naive, exact, mmap")
    p.add_argument("--plot", default=None, help="write a recall-vs-QPS PNG here")
    p.add_argument("--tag", default=None, help="name of the output files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)

    ds = wordnet_minilm(args.nq) if args.data == "real" else synthetic_dataset(args.n, args.nq)
    t0 = time.perf_counter()
    gt = exact_knn(ds.xb, ds.xq, 100)
    log.info("%s: %d x %d, %d queries (ground truth %.1f s)", ds.name, *ds.xb.shape, len(ds.xq), time.perf_counter() - t0)
    peers = set(filter(None, args.peers.split(",")))
    rows: list[dict] = []
    if "flat" in peers:
        rows.append(bench_flat(ds, gt, args))
    # a batch job knows its size: the capacity hint sizes the IVF as if everything came at once
    overrides = {}
    for item in args.set:
        field, _, value = item.partition("=")
        overrides[field] = value if not value.lstrip("-").isdigit() else int(value)
    config = lukhas_gpu.IndexConfig.preset(args.preset, threads=args.threads, capacity=len(ds.xb), **overrides)
    grid = None
    if args.sweep:
        grid = [(nprobe, rr) for nprobe in (32, 64, 96, 128, 192) for rr in (4, 8, 16)]
    elif args.grid:
        grid = [tuple(int(v) for v in pair.split(":")) for pair in args.grid.split(",")]
    name = args.preset + "".join(f" {item}" for item in args.set)
    rows += bench_lukhas(ds, gt, args, name, config, grid)
    if "mmap" in peers:  # RAM of the ANN codes alone: int8 rerank vectors in page cache
        rows += bench_lukhas(ds, gt, argparse.Namespace(**{**vars(args), "ingest": 0}), f"{args.preset}+mmap",
                             config.replace(vector_storage="mmap"))
    if "exact" in peers:
        rows += bench_lukhas(ds, gt, argparse.Namespace(**{**vars(args), "ingest": 0}), "exact phase",
                             config.replace(train_threshold=len(ds.xb) + 1))
    if "usearch" in peers:
        rows += bench_usearch(ds, gt, args, "i8", (64, 128, 256, 512))
    if "usearch-f32" in peers:
        rows += bench_usearch(ds, gt, args, "f32", (64, 128, 256))
    if "hnswlib" in peers:
        rows += bench_hnswlib(ds, gt, args, (32, 64, 128, 256))
    if "naive" in peers:
        rows += bench_naive(ds, gt, args)
    cols = ["system", "params", "recall@10", "QPS", "p50 ms", "p99 ms", "ingest/s", "build s", "train s",
            "bytes/vector", "anon B/vector"]
    table = common.markdown_table(rows, cols)
    print(table)
    payload = {"dataset": ds.name, "n": len(ds.xb), "nq": len(ds.xq), "d": ds.d, "threads": args.threads,
               "machine": common.machine(), "date": common.today(), "rows": rows}
    common.write_results(args.tag or f"core_{args.data}", payload, table)
    if args.plot:
        plot([r for r in rows if "QPS" in r], args.plot)
    return payload


if __name__ == "__main__":
    main()
