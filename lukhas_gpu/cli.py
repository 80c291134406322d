"""The ``lukhas-gpu`` command. ``main(argv=None)`` -> parser -> subcommand; tested in-process."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lukhas-gpu", description="A compact vector memory index.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="ingest + retrieval benchmark on a built-in synthetic dataset, against the naive store",
                       description="Runs a synthetic set (fitted to MiniLM embeddings of WordNet) through ingest and "
                                   "search with a preset and the naive store of the old design; prints bytes per "
                                   "memory, recall@10, ingest rate, QPS and latency.")
    b.add_argument("--n", type=int, default=100_000, help="memories (default 100000)")
    b.add_argument("--nq", type=int, default=1000, help="queries (default 1000)")
    b.add_argument("--preset", default="production", help="config preset (default production)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    b.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("verify", help="check a store's files (sizes, CRC-32) and its internal consistency")
    v.add_argument("path", help="store directory")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("rollback", help="publish the previous generation of a (closed) store again")
    r.add_argument("path", help="store directory")
    r.set_defaults(func=cmd_rollback)

    st = sub.add_parser("stats", help="count, bytes per memory per component, backend, config of a store")
    st.add_argument("path", help="store directory")
    st.add_argument("--json", action="store_true", help="print the stats as JSON")
    st.set_defaults(func=cmd_stats)
    return p


def cmd_verify(args) -> int:
    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.storage import StoreError

    try:
        index = MemoryIndex.open(args.path, mode="r", verify=True)
        report = index.verify()
    except StoreError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        else:
            print(f"lukhas-gpu verify: FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else
          f"{args.path}: ok (generation {report['generation']}, {report['count']:,} memories, {report['files']} files checked)")
    return 0


def cmd_rollback(args) -> int:
    from lukhas_gpu import MemoryIndex

    gen = MemoryIndex.rollback(args.path)
    print(f"{args.path}: now at {gen.name}")
    return 0


def cmd_stats(args) -> int:
    from lukhas_gpu import MemoryIndex

    st = MemoryIndex.open(args.path, mode="r").stats()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"{args.path}: {st['count']:,} memories ({st['rows']:,} rows, {st['deleted']:,} deleted), "
          f"dim {st['dim']} -> {st['dim_out']}, phase {st['phase']}, backend {st['backend']}")
    print(f"  {st['bytes_per_memory']:.1f} B per memory: {st['anon_bytes_per_memory']:.1f} B anonymous RAM, "
          f"the rest memory-mapped")
    for name, nbytes in sorted(st["bytes"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {nbytes / max(st['count'], 1):10.1f} B/memory")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    return int(args.func(args) or 0)


# -- bench ---------------------------------------------------------------------------------------
def _rss_anon() -> int:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _recall(ids: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(np.intersect1d(a[:k], b[:k])) for a, b in zip(ids, gt)]) / k)


def _measure(name: str, build, search, xq: np.ndarray, gt: np.ndarray, n: int) -> dict:
    before = _rss_anon()
    t0 = time.perf_counter()
    obj = build()
    ingest = time.perf_counter() - t0
    grow = max(_rss_anon() - before, 0)
    search(obj, xq[:8])
    t0 = time.perf_counter()
    ids = search(obj, xq)
    batch = time.perf_counter() - t0
    lat = []
    for i in range(min(200, len(xq))):
        t1 = time.perf_counter()
        search(obj, xq[i: i + 1])
        lat.append(time.perf_counter() - t1)
    lat_ms = np.array(lat) * 1e3
    return {"system": name, "bytes/memory": grow / n, "memories/GB": 1e9 * n / grow if grow else float("inf"),
            "recall@10": _recall(np.asarray(ids), gt), "ingest/s": n / ingest, "QPS": len(xq) / batch,
            "p50 ms": float(np.percentile(lat_ms, 50)), "p99 ms": float(np.percentile(lat_ms, 99)), "_obj": obj}


def cmd_bench(args) -> int:
    import torch

    import lukhas_gpu
    from lukhas_gpu.baseline import NaiveMemoryStore
    from lukhas_gpu.synthetic import builtin_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = builtin_model()
    t0 = time.perf_counter()
    xb = model.sample(args.n)
    xq = model.queries(args.nq)
    gt = np.argsort(-(xq @ xb.T), axis=1)[:, :10] if args.n * args.nq <= 5e8 else None
    if gt is None:
        import faiss

        flat = faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb)
        gt = flat.search(xq, 10)[1]
    log = logging.getLogger("lukhas_gpu.bench")
    log.info("dataset: %d x %d synthetic (%.1f s)", *xb.shape, time.perf_counter() - t0)
    # a batch job knows its size: the capacity hint sizes the IVF for all of it
    config = lukhas_gpu.IndexConfig.preset(args.preset, capacity=args.n,
                                           **({"threads": args.threads} if args.threads else {}))

    def build_lukhas():
        index = lukhas_gpu.MemoryIndex(xb.shape[1], config)
        for s in range(0, len(xb), 50_000):
            index.add(xb[s: s + 50_000])
        return index

    # warm-up: thread pools and allocator arenas are paid once per process, not per memory
    warm = lukhas_gpu.MemoryIndex(xb.shape[1], config.replace(capacity=None, train_threshold=2048, nlist=16))
    warm.add(xb[:4096])
    warm.search(xq[:8], 10)
    del warm
    rows = [_measure(f"lukhas_gpu ({args.preset})", build_lukhas, lambda ix, q: ix.search(q, 10).ids, xq, gt, args.n)]
    index = rows[0].pop("_obj")
    st = index.stats()
    if not args.no_naive:
        def build_naive():
            store = NaiveMemoryStore(xb.shape[1])
            store.add(xb)
            return store

        naive = _measure("naive dict store", build_naive, lambda s, q: s.search(q, 10)[1], xq, gt, args.n)
        naive.pop("_obj")
        rows.append(naive)
        for key in ("bytes/memory",):
            rows[0][f"naive/{key.split('/')[0]}"] = naive[key] / max(rows[0][key], 1e-9)
    result = {"n": args.n, "nq": args.nq, "dim": int(xb.shape[1]), "preset": args.preset,
              "backend": index.backend, "phase": st["phase"], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return 0
    print(f"lukhas-gpu bench: {args.n:,} synthetic memories x {xb.shape[1]} dims, {args.nq:,} queries, "
          f"preset {args.preset!r}, backend {index.backend}, index {st['phase']}"
          + (f" (IVF{st['nlist']}, PQ{st['pq_m']}x4fs)" if st["nlist"] else ""))
    print("bytes/memory: anonymous RAM growth per memory; ingest/s includes training; QPS: one batch of all "
          "queries; p50/p99: single queries; recall@10 against exact float32")
    cols = ["system", "bytes/memory", "memories/GB", "recall@10", "ingest/s", "QPS", "p50 ms", "p99 ms"]
    widths = [max(len(c), 12) for c in cols]
    widths[0] = 24
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for r in rows:
        cells = []
        for i, (c, w) in enumerate(zip(cols, widths)):
            v = r[c]
            s = v if isinstance(v, str) else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}")
            cells.append(s.ljust(w) if i == 0 else s.rjust(w))
        print("  ".join(cells))
    if "naive/bytes" in rows[0]:
        print(f"naive store / lukhas_gpu: {rows[0]['naive/bytes']:.1f}x the RAM per memory "
              f"(vectors only: contents and tags come with the memory payload)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
