"""Cost growth with size: ingest rate, training time, RAM per memory, recall and QPS at 100k, 1M,
10M synthetic vectors, streamed (the input never sits in memory whole).

    python -m benchmarks.bench_scale --sizes 100000,1000000,10000000
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from benchmarks import common

log = logging.getLogger("bench_scale")
BATCH = 100_000


def exact_streaming(model, n: int, xq: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact float32 top-k over the stream, keeping only a running top-k."""
    best_s = np.full((len(xq), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(xq), k), -1, dtype=np.int64)
    for start, xb in zip(range(0, n, BATCH), model.iter_batches(n, BATCH)):
        s = xq @ xb.T
        top = np.argpartition(-s, k, axis=1)[:, :k]
        cs = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
        ci = np.concatenate([best_i, top + start], axis=1)
        o = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
    return best_i


def run(n: int, nq: int, threads: int, preset: str) -> dict:
    import lukhas_gpu
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model()
    xq = model.queries(nq)
    cfg = lukhas_gpu.IndexConfig.preset(preset, capacity=n, threads=threads)
    warm = lukhas_gpu.MemoryIndex(384, cfg.replace(capacity=None, train_threshold=2048, nlist=16))
    warm.add(model.sample(4096, seed=99))
    warm.search(xq[:8], 10)
    del warm
    gen_s = 0.0
    before = common.settle()
    t0 = time.perf_counter()
    index = lukhas_gpu.MemoryIndex(384, cfg)
    trained_at = None
    post = [0, 0.0]
    it = model.iter_batches(n, BATCH)
    for start in range(0, n, BATCH):
        g0 = time.perf_counter()
        xb = next(it)
        g1 = time.perf_counter()
        gen_s += g1 - g0
        was = index.is_trained
        index.add(xb)
        if was:
            post[0] += len(xb)
            post[1] += time.perf_counter() - g1
        elif index.is_trained:
            trained_at = start + len(xb)
    build_s = time.perf_counter() - t0 - gen_s
    del xb, it  # the last input batch is not the index's memory
    grow = common.settle() - before
    st = index.stats()
    sec, res = common.timed(lambda: index.search(xq, 10), repeat=3)
    p50, p99 = common.latencies(lambda q: index.search(q, 10), xq)
    gt = exact_streaming(model, n, xq)
    row = {"n": n, "nlist": st["nlist"], "coarse": st["coarse"], "train s": st["train_seconds"],
           "trained at": trained_at, "build s (ex. generation)": build_s, "ingest/s overall": n / build_s,
           "ingest/s after training": post[0] / post[1] if post[1] else float("nan"),
           "RssAnon B/memory": grow / n, "logical B/memory": sum(st["memory"]["logical"].values()) / n,
           "recall@10": common.recall_at(res.ids, gt, 10), "QPS": nq / sec, "p50 ms": p50, "p99 ms": p99}
    log.info("%s", row)
    return row


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].plot(ns, [r["RssAnon B/memory"] for r in rows], marker="o", label="RssAnon")
    axes[0].plot(ns, [r["logical B/memory"] for r in rows], marker="s", label="logical")
    axes[0].set_ylabel("bytes per memory")
    axes[0].legend()
    axes[1].plot(ns, [r["ingest/s after training"] for r in rows], marker="o", label="after training")
    axes[1].plot(ns, [r["ingest/s overall"] for r in rows], marker="s", label="overall (incl. training)")
    axes[1].set_ylabel("memories / s")
    axes[1].legend()
    axes[2].plot(ns, [r["QPS"] for r in rows], marker="o")
    axes[2].set_ylabel("QPS (batch, default nprobe 128)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("memories")
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", default="production")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--tag", default="scale")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)
    rows = [run(int(n), args.nq, args.threads, args.preset) for n in args.sizes.split(",")]
    table = common.markdown_table(rows)
    print(table)
    common.write_results(args.tag, {"machine": common.machine(), "date": common.today(), "rows": rows}, table)
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
