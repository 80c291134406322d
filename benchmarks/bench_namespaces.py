"""Namespaces: what they cost in bytes and what a search inside one costs (issue 29).

1. **Bytes**: the same ``--n`` memories (synthetic MiniLM-like vectors, a short content each)
   spread over 1, 1,000 and 100,000 namespaces (capped at ``n``), each store's anonymous bytes
   (``stats()["memory"]``, the libraries' one-time runtime excluded), the namespaces component
   alone (name table, column, cached bitmaps after 100 namespaces were searched) and the bytes of
   a checkpoint on disk; the ratio against one namespace.
2. **Latency**: one trained store of ``--n`` memories: a big namespace holding all but
   ``--small`` namespaces of 10 memories. Single-query p50 / p99 (ms) of ``k=10`` searches with
   no namespace (the baseline, same run), in the big namespace (IVF with an id selector) and in a
   10-memory namespace (an exact scan of its rows), with the route taken (``last_plan``).
   Correctness before timing: a 10-memory namespace returns exactly its 10 memories; recall@10 of
   each namespace search against the exact float top-10 over the namespace's own memories.

    python -m benchmarks.bench_namespaces --n 100000          # the small size
    python -m benchmarks.bench_namespaces --n 1000000         # the issue's 1M store
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from benchmarks.common import dir_bytes, latencies, machine, markdown_table, settle, today, write_results

SIZES = {"S": 100_000, "M": 1_000_000}
COUNTS = (1, 1_000, 100_000)


def _data(n: int, nq: int, seed: int = 0):
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model()
    return model.sample(n, seed=seed).astype(np.float32), model.queries(nq, seed=seed).astype(np.float32)


def _anon(ix) -> int:
    mem = ix.stats()["memory"]["anon"]
    return int(sum(v for k, v in mem.items() if k not in ("runtime_libraries", "python_pools")))


def _build(x, names, *, train: bool, batch: int = 50_000):
    from lukhas_gpu import IndexConfig, MemoryIndex

    n = len(x)
    ix = MemoryIndex(x.shape[1], IndexConfig() if train else IndexConfig(train_threshold=n + 1))
    for s in range(0, n, batch):
        ix.add(x[s:s + batch], contents=[f"memory {i}" for i in range(s, min(n, s + batch))],
               namespace=names[s:s + batch])
    return ix


def bytes_rows(x) -> list[dict]:
    n = len(x)
    rows, base = [], None
    for count in COUNTS:
        count = min(count, n)
        names = [f"user-{i % count:06d}" for i in range(n)]
        ix = _build(x, names, train=False)
        for name in sorted(set(names))[:100]:
            ix.select(namespace=name)
        anon = _anon(ix)
        with tempfile.TemporaryDirectory(prefix="bench_ns_") as d:
            ix.save(d + "/s")
            disk = dir_bytes(d)
        base = base or anon
        rows.append({"namespaces": count, "memories": n, "anon_bytes": anon,
                     "namespace_bytes": ix.stats()["memory"]["anon"].get("namespaces", 0),
                     "disk_bytes": disk, "ratio_vs_one": anon / base})
        del ix
        settle()
    return rows


def _exact(x, rows, q, k):
    xn = x[rows] / np.linalg.norm(x[rows], axis=1, keepdims=True)
    s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ xn.T
    return rows[np.argsort(-s, axis=1)[:, :k]]


def latency_rows(x, xq, n_small: int, k: int = 10) -> list[dict]:
    from benchmarks.common import recall_at

    n = len(x)
    names = np.array(["big"] * n, dtype=object)
    small = [f"small-{j:04d}" for j in range(n_small)]
    rng = np.random.default_rng(1)
    picked = rng.choice(n, 10 * n_small, replace=False)
    for j, name in enumerate(small):
        names[picked[10 * j: 10 * j + 10]] = name
    t0 = time.perf_counter()
    ix = _build(x, names.tolist(), train=True)
    build_s = time.perf_counter() - t0
    out = []
    for label, ns in (("no namespace", None), (f"big ({int((names == 'big').sum()):,})", "big"),
                      ("10 memories", small[0])):
        rows = np.flatnonzero(names == ns) if ns is not None else np.arange(n)
        got = ix.search(xq, k, namespace=ns).ids
        if ns == small[0]:
            assert all(set(r.tolist()) == set(rows.tolist()) for r in got), "a 10-memory namespace lost memories"
        recall = recall_at(got, _exact(x, rows, xq, k), k)
        plan = (ix.last_plan.strategy if ns is not None and ix.last_plan is not None
                else "ivf (no filter)" if ix.is_trained else "exact (untrained)")
        p50, p99 = latencies(lambda q, ns=ns: ix.search(q, k, namespace=ns), xq)
        out.append({"search": label, "route": plan, "recall@10": recall, "p50_ms": p50, "p99_ms": p99})
    base = out[0]["p50_ms"]
    for r in out:
        r["p50_vs_none"] = r["p50_ms"] / base
    out[0]["build_s"] = build_s
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="S")
    ap.add_argument("--n", type=int, help="memories (overrides --size)")
    ap.add_argument("--small", type=int, default=100, help="10-memory namespaces in the latency store")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    n = args.n or SIZES[args.size]
    x, xq = _data(n, args.queries)
    brows = bytes_rows(x)
    lrows = latency_rows(x, xq, min(args.small, n // 20))
    table = (f"Namespaces over {n:,} memories (dim {x.shape[1]}), {machine()}, {today()}\n\n"
             + markdown_table(brows) + "\n\n" + markdown_table(lrows))
    print(table)
    payload = {"n": n, "dim": int(x.shape[1]), "machine": machine(), "date": today(), "bytes": brows,
               "latency": lrows}
    if not args.no_save:
        write_results(f"namespaces_{n}", payload, table)
    return payload


if __name__ == "__main__":
    main()
