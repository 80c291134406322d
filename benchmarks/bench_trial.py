"""Trials with automatic rollback on recorded traffic: one candidate that holds recall and QPS
(promoted), one that does not (rolled back), both sides reported, and the measured recall of each
against exact float32 search to check the probe's verdict.

The store gets the corpus and its queries are searched once (the probe records them); then
``trial(nlist=live/2)`` (fewer, larger lists probed at the same share: about the same recall) and
``trial(nprobe=live/8)`` (an eighth of the probes: faster, and recall lost past the tolerance).

Data: ``--data real`` (MiniLM over WordNet, :func:`benchmarks.datasets.wordnet_minilm`, cached) or
``--data synthetic`` (the built-in model, ``--n`` rows).

Usage::

    python -m benchmarks.bench_trial [--data real|synthetic] [--n 100000] [--threads 2]
"""
from __future__ import annotations

import argparse

from benchmarks.common import machine, markdown_table, recall_at, set_threads, today, write_results


def main(argv=None) -> int:
    import lukhas_gpu
    from benchmarks.datasets import synthetic_dataset, wordnet_minilm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("real", "synthetic"), default="real")
    p.add_argument("--n", type=int, default=100_000, help="rows of the synthetic set")
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recall-tolerance", type=float, default=0.01)
    p.add_argument("--qps-tolerance", type=float, default=0.2)
    args = p.parse_args(argv)
    set_threads(args.threads)
    ds = wordnet_minilm(args.nq) if args.data == "real" else synthetic_dataset(args.n, args.nq)
    gt = ds.ground_truth(10)
    index = lukhas_gpu.MemoryIndex(ds.d, lukhas_gpu.IndexConfig(train_threshold=min(32768, len(ds.xb) // 2)))
    index.add(ds.xb)
    index.search(ds.xq, 10)  # the recorded traffic

    def measured() -> float:
        return recall_at(index.search(ds.xq, 10).ids, gt, 10)

    rows, reports = [], []
    live = index.stats()
    for changes in ({"nlist": max(live["nlist"] // 2, 16)}, {"nprobe": max(index.config.nprobe // 8, 1)}):
        before = measured()
        rep = index.trial(recall_tolerance=args.recall_tolerance, qps_tolerance=args.qps_tolerance, **changes)
        after = measured()
        reports.append(rep)
        for side in ("live", "candidate"):
            s = rep[side]
            rows.append({"trial": str(changes), "side": side, "recall": s["recall"], "ci_low": s["ci"][0],
                         "ci_high": s["ci"][1], "qps": s["qps"], "bytes": s["bytes"], "nlist": s["params"]["nlist"],
                         "nprobe": s["params"]["nprobe"], "decision": rep["decision"],
                         "measured_before": before, "measured_after": after})
        print(rep["decision"], rep["reason"], flush=True)
    table = markdown_table(rows)
    print(table)
    write_results(f"trial_{args.data}", {"machine": machine(), "date": today(), "args": vars(args), "rows": rows,
                                         "reports": reports}, f"# trials, {args.data}\n\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
