"""``lukhas-gpu trial`` (a candidate config tried beside the live index, promoted or rolled back)
and ``lukhas-gpu drift`` (whole-store and per-tag drift)."""
from __future__ import annotations

import json

__all__ = ["add_parsers", "cmd_trial", "cmd_drift"]

#: ``--flag``: the trial's config field.
_CHANGES = {"nlist": int, "pq_m": int, "dim_out": int, "coarse": str, "nprobe": int, "rerank": int, "structure": str}


def add_parsers(sub) -> None:
    t = sub.add_parser("trial", help="build a candidate with other ANN parameters beside the live index; promote it "
                                     "only if recall and QPS hold",
                       description="Opens STORE for writing and runs MemoryIndex.trial: the candidate is compared with "
                                   "the live index on the recorded queries (or --queries); promoted (and "
                                   "checkpointed) or discarded.")
    t.add_argument("store", help="store directory")
    for name, kind in _CHANGES.items():
        t.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=f"the candidate's {name}" + (
            " (alone: graph, rabitq, ivf-spill, ivf or exact; the tuner's choice at the recall target forced to it)"
            if name == "structure" else ""))
    t.add_argument("--queries", metavar="NPY", help="probe queries (.npy, float32 (n, dim)); default: recorded ones")
    t.add_argument("--recall-tolerance", type=float, default=0.01, help="recall the candidate may lose (default 0.01)")
    t.add_argument("--qps-tolerance", type=float, default=0.2, help="share of QPS it may lose (default 0.2)")
    t.add_argument("--json", action="store_true", help="print the report as JSON")
    t.set_defaults(func=cmd_trial, catch_errors=True)
    d = sub.add_parser("drift", help="whole-store and per-tag drift of a store (read-only)")
    d.add_argument("store", help="store directory")
    d.add_argument("--by-tag", action="store_true", help="per-tag figures too")
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.set_defaults(func=cmd_drift, catch_errors=True)


def cmd_trial(args) -> int:
    import numpy as np

    from lukhas_gpu import MemoryIndex

    changes = {k: getattr(args, k) for k in _CHANGES if getattr(args, k) is not None}
    queries = np.load(args.queries, allow_pickle=False) if args.queries else None
    index = MemoryIndex.open(args.store, mode="w")
    try:
        rep = index.trial(queries=queries, recall_tolerance=args.recall_tolerance,
                          qps_tolerance=args.qps_tolerance, **changes)
    finally:
        index.close()
    if args.json:
        print(json.dumps(rep, default=str))
    else:
        live, cand = rep["live"], rep["candidate"]
        print(f"{args.store}: trial {changes}: {rep['decision']} ({rep['reason']})")
        for name, side in (("live", live), ("candidate", cand)):
            print(f"  {name:9s} recall {side['recall']:.4f} [{side['ci'][0]:.4f}, {side['ci'][1]:.4f}]  "
                  f"QPS {side['qps']:,.0f}  {side['bytes']:,} B  {side['params']}")
    return 0


def cmd_drift(args) -> int:
    from lukhas_gpu import MemoryIndex

    index = MemoryIndex.open(args.store)
    try:
        rep = index.drift(by_tag=args.by_tag)
    finally:
        index.close()
    if args.json:
        print(json.dumps(rep, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))
        return 0
    print(f"{args.store}: drift score {rep['score']}, retrain recommended: {rep['retrain_recommended']}")
    for tag, r in sorted((rep.get("tags") or {}).items(), key=lambda kv: -kv[1]["shift"]):
        print(f"  {tag!r}: shift {r['shift']:.3f} spreads, spread x{r['spread_ratio']:.2f}, {r['count']} memories"
              f"{'  DRIFTED' if r['drifted'] else ''}")
    return 0
