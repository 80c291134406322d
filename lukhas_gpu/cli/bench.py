"""``lukhas-gpu bench``: ingest + retrieval on a built-in synthetic set, against the naive store."""
from __future__ import annotations

import json
import logging
import time

__all__ = ["add_parsers", "cmd_bench"]


def add_parsers(sub) -> None:
    b = sub.add_parser("bench",
                       help="ingest + retrieval benchmark on a built-in synthetic dataset, against the naive store",
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


def _rss_anon() -> int:
    """RssAnon after a collection and a trim: the bench measures what an index holds."""
    import gc

    from lukhas_gpu.util.memtrim import rss_anon, trim

    gc.collect()
    trim()
    return rss_anon() or 0


def _ground_truth(xb, xq, k: int = 10):
    """The exact top-``k`` by inner product, ``(nq, k)`` int64, a block of queries at a time: at
    most ~128 MiB of scores at once (a whole ``(nq, n)`` score matrix and its argsort held 1.2 GB
    at 100k memories and 1,000 queries, the bench's peak)."""
    import numpy as np

    n = len(xb)
    k = min(k, n)
    out = np.empty((len(xq), k), np.int64)
    block = max(1, (16 << 20) // max(n, 1))
    for s in range(0, len(xq), block):
        scores = xq[s: s + block] @ xb.T
        top = np.argpartition(scores, n - k, axis=1)[:, n - k:]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[s: s + block] = np.take_along_axis(top, order, axis=1)
    return out


def _own_bytes(st: dict) -> int:
    """The index's own anonymous bytes by ``stats()`` (its arrays, FAISS lists, caches; not the
    torch/FAISS libraries the process loaded): what the README's RAM per memory counts."""
    from lukhas_gpu.capacity.accounting import RUNTIME_COMPONENT

    memory = st["memory"]
    return memory["anon_bytes"] - memory["anon"].get(RUNTIME_COMPONENT, 0)


def _why_bytes(own: float, grown: float, built: float) -> str:
    """The line that says why the measured bytes/memory differs from the README's headline."""
    head = (f"Why bytes/memory is not the README's RAM per memory: that headline counts the index's own "
            f"bytes (int8 vectors, IVF-PQ codes and ids: stats() without the runtime libraries), here "
            f"{own:,.0f} B/memory. ")
    if grown <= own:
        return head + "The RssAnon growth measured is within it here."
    return head + (f"The RssAnon growth also holds what the process keeps beside the index: {grown - own:,.0f} "
                   f"B/memory here ({built:,.0f} B/memory of growth after ingest and training, the rest during "
                   f"the first tuning run: no live Python or numpy object, the malloc arena of its thread, kept "
                   f"by the allocator; a repeated run on the same thread adds none). "
                   f"The warm-up run paid for loading torch and FAISS before the measurement.")


def _recall(ids, gt, k: int = 10) -> float:
    import numpy as np

    return float(np.mean([len(np.intersect1d(a[:k], b[:k])) for a, b in zip(ids, gt)]) / k)


def _measure(name: str, build, search, xq, gt, n: int, settle=None) -> dict:
    import numpy as np

    before = _rss_anon()
    t0 = time.perf_counter()
    obj = build()
    ingest = time.perf_counter() - t0
    tune_s = None
    built = max(_rss_anon() - before, 0)  # before the tuning run: what ingest and training left
    if settle is not None:  # background work the build started (the first tuning run), not timed as ingest
        t0 = time.perf_counter()
        settle(obj)
        tune_s = time.perf_counter() - t0
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
            "p50 ms": float(np.percentile(lat_ms, 50)), "p99 ms": float(np.percentile(lat_ms, 99)),
            "tune s": tune_s, "built bytes/memory": built / n, "_obj": obj}


def cmd_bench(args) -> int:
    import torch

    from lukhas_gpu import IndexConfig, MemoryIndex
    from lukhas_gpu.tools.baseline import NaiveMemoryStore
    from lukhas_gpu.tools.synthetic import builtin_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = builtin_model()
    t0 = time.perf_counter()
    xb = model.sample(args.n)
    xq = model.queries(args.nq)
    gt = _ground_truth(xb, xq)
    log = logging.getLogger("lukhas_gpu.bench")
    log.info("dataset: %d x %d synthetic (%.1f s)", *xb.shape, time.perf_counter() - t0)
    # a batch job knows its size: the capacity hint sizes the IVF for all of it
    config = IndexConfig.preset(args.preset, capacity=args.n,
                                           **({"threads": args.threads} if args.threads else {}))

    def build_lukhas():
        index = MemoryIndex(xb.shape[1], config)
        for s in range(0, len(xb), 50_000):
            index.add(xb[s: s + 50_000])
        return index

    # warm-up: thread pools and allocator arenas are paid once per process, not per memory
    warm = MemoryIndex(xb.shape[1], config.replace(capacity=None, train_threshold=2048, nlist=16, auto_tune=False))
    warm.add(xb[:4096])
    warm.search(xq[:8], 10)
    del warm
    from lukhas_gpu.index import tuning

    rows = [_measure(f"lukhas_gpu ({args.preset})", build_lukhas, lambda ix, q: ix.search(q, 10).ids, xq, gt, args.n,
                     settle=tuning.wait)]
    index = rows[0].pop("_obj")
    st = index.stats()
    rows[0]["index bytes/memory"] = _own_bytes(st) / args.n
    backend = index.backend
    del index  # the baseline is measured without the index beside it
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
              "backend": backend, "phase": st["phase"], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2, default=float))
    else:
        _print_table(args, result, st)
    return 0


def _print_table(args, result: dict, st: dict) -> None:
    """``lukhas-gpu bench``'s table (without ``--json``)."""
    rows = result["rows"]
    print(f"lukhas-gpu bench: {args.n:,} synthetic memories x {result['dim']} dims, {args.nq:,} queries, "
          f"preset {args.preset!r}, backend {result['backend']}, index {st['phase']}"
          + (f" (IVF{st['nlist']}, PQ{st['pq_m']}x4fs)" if st["nlist"] else ""))
    print("bytes/memory: the process's anonymous RAM (RssAnon) growth per memory over ingest, training and the "
          "first tuning run; ingest/s includes training; tune s: the first tuning run for the preset's "
          "target_recall (after ingest); QPS: one batch of all queries; p50/p99: single queries; recall@10 "
          "against exact float32")
    cols = ["system", "bytes/memory", "memories/GB", "recall@10", "ingest/s", "tune s", "QPS", "p50 ms", "p99 ms"]
    widths = [max(len(c), 12) for c in cols]
    widths[0] = 24
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for r in rows:
        cells = []
        for i, (c, w) in enumerate(zip(cols, widths)):
            v = r[c]
            s = v if isinstance(v, str) else "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}")
            cells.append(s.ljust(w) if i == 0 else s.rjust(w))
        print("  ".join(cells))
    print(_why_bytes(rows[0]["index bytes/memory"], rows[0]["bytes/memory"], rows[0]["built bytes/memory"]))
    if "naive/bytes" in rows[0]:
        print(f"naive store / lukhas_gpu: {rows[0]['naive/bytes']:.1f}x the RAM per memory "
              f"(vectors only: contents and tags come with the memory payload)")

