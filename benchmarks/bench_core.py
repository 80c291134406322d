"""Core vector index: recall, QPS, latency, ingest, build time, RAM and disk per vector, against peers.

Questions answered (issue "Core vector index"):
* recall@1 and recall@10 (against exact float32) of the ``production`` preset on real embeddings,
  and batched QPS at that recall against every peer at its own settings, same run, same threads;
* for lukhas_gpu and every peer (``--peers``), measured the same way: single-query p50 / p99
  latency, ingest rate of the build, build time, anonymous RAM growth per vector and the disk
  bytes per vector of the system saved with its own persistence;
* ingest rate after training and training time of lukhas_gpu;
* the nprobe x rerank grid the defaults were chosen from (``--sweep``).

Every metric is measured at every search setting of a system (each grid point or HNSW ``ef``);
the build, RAM and disk columns belong to the build and repeat on each of its rows.

Usage::

    python -m benchmarks.bench_core --data real              # MiniLM / WordNet, 117k
    python -m benchmarks.bench_core --data synthetic --n 1000000
    python -m benchmarks.bench_core --data real --peers flat,usearch,usearch-f32,hnswlib,naive,mmap \\
        --grid 64:8,128:10,256:16 --plot recall_qps.png --plot-bytes bytes_per_memory.png
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import textwrap
import time

import numpy as np

from benchmarks import common
from benchmarks.datasets import Dataset, exact_knn, synthetic_dataset, wordnet_minilm

log = logging.getLogger("bench_core")

K = 10
WARM_ROWS = 4096  # size of the throw-away build that pays the one-time costs before measuring
METRICS = {  # what each column means, written into the JSON beside the rows
    "recall@1, recall@10": "overlap with the exact float32 inner-product top-k",
    "QPS": "all queries in one batch, median of --repeat runs after a warm-up",
    "p50 ms, p99 ms": "single-query latency over the first 200 queries, at the row's setting",
    "ingest/s, build s": "vectors added per second over the whole build (training included)",
    "ingest/s trained": "lukhas_gpu only: vectors re-added per second after training",
    "bytes/vector": "the system's own account of its RAM, where it gives one",
    "anon B/vector": "RssAnon growth over the build and a first search, after garbage collection",
    "disk B/vector": "size of the files the system's own save method writes",
}


def measure(ds: Dataset, gt: np.ndarray, args, system: str, build, search, save, settings,
            *, warm=None, repeat: int | None = None):
    """Build one system and measure it at each of its search settings; returns ``(index, rows)``.

    Parameters
    ----------
    build : callable ``(x) -> index``
        Builds the system over ``x``, ``(n, d)`` float32.
    search : callable ``(index, setting, queries) -> ids``
        ids ``(nq, >= 10)`` int64 of the top 10 per query.
    save : callable ``(index, directory)``
        Writes the index with the system's own persistence into an empty directory.
    settings : list of ``(setting, label)``
        Search settings; the first is also used for the warm-up.
    warm : callable, optional
        Pays one-time costs (thread pools, allocator arenas, lazily loaded code); the default
        builds and searches a throw-away index over the first rows.
    """
    if warm is None:
        small = build(ds.xb[:WARM_ROWS])
        search(small, settings[0][0], ds.xq[:16])
        del small
    else:
        warm()
    n = len(ds.xb)
    before = common.settle()
    t0 = time.perf_counter()
    index = build(ds.xb)
    build_s = time.perf_counter() - t0
    # a first small search, so that state built lazily for searching (the naive store's matrix)
    # counts as resident, as it does in a process that serves queries
    search(index, settings[0][0], ds.xq[:16])
    grow = common.settle() - before
    disk, save_s = common.saved_bytes(functools.partial(save, index))
    shared = {"build s": build_s, "ingest/s": n / build_s, "anon B/vector": grow / n,
              "disk B/vector": disk / n, "save s": save_s}
    rows = []
    for setting, label in settings:
        fn = functools.partial(search, index, setting)
        sec, ids = common.timed(lambda: fn(ds.xq), repeat=repeat or args.repeat)
        p50, p99 = common.latencies(fn, ds.xq)
        rows.append({"system": system, "params": label, "recall@1": common.recall_at(ids, gt, 1),
                     "recall@10": common.recall_at(ids, gt, K), "QPS": len(ds.xq) / sec,
                     "p50 ms": p50, "p99 ms": p99, **shared})
        log.info("%s", rows[-1])
    return index, rows


def bench_flat(ds: Dataset, gt: np.ndarray, args) -> list[dict]:
    import faiss

    def build(x):
        index = faiss.IndexFlatIP(ds.d)
        index.add(x)
        return index

    _, rows = measure(ds, gt, args, "faiss Flat float32", build, lambda index, _, q: index.search(q, K)[1],
                      lambda index, d: faiss.write_index(index, str(d / "flat.faiss")), [(None, "exact")])
    for r in rows:
        r["bytes/vector"] = 4.0 * ds.d
    return rows


def build_lukhas(config, x: np.ndarray, *, batch: int = 65536):
    import lukhas_gpu

    index = lukhas_gpu.MemoryIndex(x.shape[1], config)
    for start in range(0, len(x), batch):
        index.add(x[start: start + batch])
    if not index.is_trained and len(x) >= config.train_threshold:
        index.train()
    return index


def warm_lukhas(ds: Dataset, config) -> None:
    # a small index that trains: thread pools, allocator arenas and library state are one-time
    # costs, not per vector
    warm = build_lukhas(config.replace(capacity=None, train_threshold=2048, nlist=16), ds.xb[:WARM_ROWS])
    warm.search(ds.xq[:16], K)


def bench_lukhas(ds: Dataset, gt: np.ndarray, args, name: str, config, grid=None) -> list[dict]:
    default = (config.nprobe, config.rerank)
    settings = [(s, f"nprobe={s[0]} rerank={s[1]}" + (" (default)" if s == default else ""))
                for s in grid or [default]]
    index, rows = measure(
        ds, gt, args, f"lukhas_gpu {name}", functools.partial(build_lukhas, config),
        lambda index, s, q: index.search(q, K, nprobe=s[0], rerank=s[1]).ids,
        lambda index, d: index.save(d / "store"), settings, warm=functools.partial(warm_lukhas, ds, config))
    st = index.stats()
    for r, (nprobe, rerank) in zip(rows, (s for s, _ in settings)):
        r.update({"nprobe": nprobe, "rerank": rerank, "bytes/vector": st["bytes_per_memory"],
                  "train s": st["train_seconds"]})
        if not index.is_trained:
            r["params"] = "exact int8"
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
        rows[0]["ingest/s trained"] = float(np.median(rates))
        log.info("ingest after training: %.0f vectors/s", rows[0]["ingest/s trained"])
    return rows


def hnsw_settings(efs) -> list[tuple[int, str]]:
    """The HNSW peers' search settings: ``ef`` values, all built with M=16 and ef_construction=128."""
    return [(ef, f"M=16 ef={ef}") for ef in efs]


def bench_usearch(ds: Dataset, gt: np.ndarray, args, dtype: str, efs) -> list[dict]:
    from usearch.index import Index

    def build(x):
        index = Index(ndim=ds.d, metric="cos", dtype=dtype, connectivity=16, expansion_add=128)
        index.add(np.arange(len(x)), x, threads=args.threads)
        return index

    def search(index, ef, q):
        index.expansion_search = ef
        return index.search(q, K, threads=args.threads).keys

    index, rows = measure(ds, gt, args, f"usearch HNSW {dtype}", build, search,
                          lambda index, d: index.save(str(d / "index.usearch")),
                          hnsw_settings(efs))
    for r in rows:
        r["bytes/vector"] = index.memory_usage / len(ds.xb)
    return rows


def bench_hnswlib(ds: Dataset, gt: np.ndarray, args, efs) -> list[dict]:
    import hnswlib

    def build(x):
        index = hnswlib.Index(space="ip", dim=ds.d)
        index.init_index(max_elements=len(x), M=16, ef_construction=128, random_seed=0)
        index.set_num_threads(args.threads)
        index.add_items(x, np.arange(len(x)))
        return index

    def search(index, ef, q):
        index.set_ef(ef)
        return index.knn_query(q, k=K)[0]

    _, rows = measure(ds, gt, args, "hnswlib HNSW float32", build, search,
                      lambda index, d: index.save_index(str(d / "index.hnsw")),
                      hnsw_settings(efs))
    return rows


def save_naive(store, directory) -> None:
    """The old design's persistence: its JSON Lines, one memory a line with its float embedding."""
    from lukhas_gpu.ingest.migrate import write_naive_jsonl

    records = list(store.memories.values())
    meta = [json.loads(m["metadata"]) for m in records]
    write_naive_jsonl(directory / "memories.jsonl", np.array([m["embedding"] for m in records], dtype=np.float32),
                      [m["content"] for m in records], [m["tags"] for m in records],
                      [m["timestamp"] for m in meta], [m["importance"] for m in meta],
                      ids=[m["id"] for m in records])


def bench_naive(ds: Dataset, gt: np.ndarray, args) -> list[dict]:
    from lukhas_gpu.tools.baseline import NaiveMemoryStore

    def build(x):
        store = NaiveMemoryStore(ds.d)
        store.add(x)
        return store

    _, rows = measure(ds, gt, args, "naive dict store (old design)", build,
                      lambda store, _, q: store.search(q, K)[1], save_naive, [(None, "exact float32")], repeat=1)
    return rows


def plot(rows: list[dict], path) -> None:
    """Recall@10 vs QPS per system (a curve where a system has several settings)."""
    plt = _pyplot()
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
    _save(fig, path)


def plot_bytes(rows: list[dict], path) -> None:
    """Anonymous RAM and disk bytes per vector, side by side per system (log scale)."""
    plt = _pyplot()
    systems = {r["system"]: r for r in rows if "anon B/vector" in r}  # one build per system
    names = list(systems)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(names)), 4.8))
    for offset, key, label in ((-0.2, "anon B/vector", "RssAnon growth"), (0.2, "disk B/vector", "disk (saved)")):
        values = [max(systems[s].get(key, np.nan), 1.0) for s in names]
        bars = ax.bar(x + offset, values, width=0.4, label=label)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, [textwrap.fill(s, 13, break_long_words=False) for s in names], fontsize=7)
    ax.set_ylabel("bytes per vector")
    ax.set_title("anonymous RAM growth of the build and size of the saved index, per vector", fontsize=9)
    ax.set_yscale("log")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


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
    p.add_argument("--ingest", type=int, default=100_000,
                   help="vectors re-added to time ingest after training (0: skip)")
    p.add_argument("--peers", default="flat,usearch",
                   help="comma list of: flat, usearch, usearch-f32, hnswlib, naive, exact, mmap")
    p.add_argument("--plot", default=None, help="write a recall-vs-QPS PNG here")
    p.add_argument("--plot-bytes", default=None, help="write a PNG of RAM and disk bytes per vector per system here")
    p.add_argument("--tag", default=None, help="name of the output files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)

    ds = wordnet_minilm(args.nq) if args.data == "real" else synthetic_dataset(args.n, args.nq)
    t0 = time.perf_counter()
    gt = exact_knn(ds.xb, ds.xq, 100)
    log.info("%s: %d x %d, %d queries (ground truth %.1f s)", ds.name, *ds.xb.shape, len(ds.xq),
             time.perf_counter() - t0)
    peers = set(filter(None, args.peers.split(",")))
    rows: list[dict] = []
    if "flat" in peers:
        rows += bench_flat(ds, gt, args)
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
    cols = ["system", "params", "recall@1", "recall@10", "QPS", "p50 ms", "p99 ms", "ingest/s", "build s",
            "train s", "ingest/s trained", "bytes/vector", "anon B/vector", "disk B/vector"]
    table = common.markdown_table(rows, cols)
    print(table)
    payload = {"dataset": ds.name, "n": len(ds.xb), "nq": len(ds.xq), "d": ds.d, "threads": args.threads,
               "machine": common.machine(), "date": common.today(), "metrics": METRICS, "rows": rows}
    common.write_results(args.tag or f"core_{args.data}", payload, table)
    if args.plot:
        plot([r for r in rows if "QPS" in r], args.plot)
    if args.plot_bytes:
        plot_bytes(rows, args.plot_bytes)
    return payload


if __name__ == "__main__":
    main()
