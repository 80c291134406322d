"""The model test's long profile: random op sequences against a store and a plain-Python model of
it (``tests/model_store.py``), seed after seed, for ``--minutes``.

Prints one line per sequence (seed, kind, ops, crashes, seconds) and a summary (sequences,
operations, crashes, violations). On a violation it prints the seed and the message, shrinks the
sequence to a minimal op list (delta debugging, ``--shrink-minutes``), writes it as JSON and exits
1; replay it with ``--replay FILE``.

    python -m benchmarks.soak_model --minutes 30
    python -m benchmarks.soak_model --minutes 10 --strict          # the known defects not tolerated
    python -m benchmarks.soak_model --replay model-failure.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# tests/ is not a package (its helpers import each other by name): the model is imported once it is on the path
ms = importlib.import_module("model_store")


def _quiet() -> None:
    import logging

    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    logging.getLogger("lukhas_gpu").setLevel(logging.ERROR)


def replay(path: str) -> int:
    doc = json.loads(pathlib.Path(path).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            counts = ms.run_ops(doc["kind"], doc["ops"], tmp, doc.get("seed", 0), frozenset(doc["known"]))
        except ms.Violation as e:
            print(f"violation: {e}")
            return 1
    print(f"no violation: {counts}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0, help="first seed (then +1 per sequence)")
    ap.add_argument("--ops", type=int, default=60, help="ops per sequence (after the first bulk add)")
    ap.add_argument("--kinds", nargs="+", default=list(ms.KINDS), choices=ms.KINDS)
    ap.add_argument("--without", nargs="*", default=[], choices=ms.ALL_OPS, help="op kinds left out")
    ap.add_argument("--strict", action="store_true", help="tolerate none of the known defects")
    ap.add_argument("--tolerate", type=int, nargs="*", default=None,
                    help=f"defect numbers to steer around (default {sorted(ms.KNOWN_DEFECTS)})")
    ap.add_argument("--shrink-minutes", type=float, default=10.0)
    ap.add_argument("--out", default="model-failure.json")
    ap.add_argument("--replay", metavar="FILE")
    args = ap.parse_args(argv)
    _quiet()
    if args.replay:
        return replay(args.replay)
    known = frozenset() if args.strict else frozenset(ms.KNOWN_DEFECTS if args.tolerate is None else args.tolerate)
    ops_allowed = tuple(o for o in ms.ALL_OPS if o not in args.without)
    end = time.time() + 60 * args.minutes
    totals = {"sequences": 0, "operations": 0, "crashes": 0, "violations": 0}
    seed = args.seed
    while time.time() < end:
        kind = args.kinds[seed % len(args.kinds)]
        ops = ms.gen_ops(seed, args.ops, ops_allowed)
        t = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                counts = ms.run_ops(kind, ops, tmp, seed, known)
            except ms.Violation as e:
                totals["violations"] += 1
                print(f"VIOLATION seed {seed} kind {kind}: {e}", flush=True)
                return _shrink_and_exit(kind, ops, seed, known, args, totals)
        crashes = counts.get("crash", 0)
        totals["sequences"] += 1
        totals["operations"] += len(ops)
        totals["crashes"] += crashes
        print(f"seed {seed} kind {kind}: {len(ops)} ops, {crashes} crashes, {time.time() - t:.1f} s "
              f"{json.dumps(counts)}", flush=True)
        seed += 1
    print(json.dumps(totals))
    return 0


def _shrink_and_exit(kind, ops, seed, known, args, totals) -> int:
    print(f"shrinking {len(ops)} ops (at most {args.shrink_minutes} min)...", flush=True)
    small = ms.shrink(kind, ops, known, budget_s=60 * args.shrink_minutes)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ms.run_ops(kind, small, tmp, seed, known)
            message = "(the shrunk list no longer fails: a flaky violation?)"
        except ms.Violation as e:
            message = str(e)
    doc = {"seed": seed, "kind": kind, "known": sorted(known), "violation": message, "ops": small}
    pathlib.Path(args.out).write_text(json.dumps(doc, indent=1))
    print(f"minimal op list ({len(small)} ops), seed {seed}, kind {kind}: {json.dumps(small)}")
    print(f"violation: {message}")
    print(f"written to {args.out}; replay: python -m benchmarks.soak_model --replay {args.out}")
    print(json.dumps(totals))
    return 1


if __name__ == "__main__":
    sys.exit(main())
