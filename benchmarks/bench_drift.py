"""Does per-tag drift flag a tag whose new memories come from another corpus, and only that one?

Per seed: a store receives background memories and three tags' first memories from corpus A;
then more memories of each tag: ``stay`` from A again, ``move`` from corpus B, ``mixed`` half from
A and half from B. ``drift(by_tag=True)`` must flag ``move`` and not ``stay``, over every seed;
``mixed`` shows how the shift grows with the share of new memories. Also the cost of one
``drift(by_tag=True)`` call per tag with a reference.

Data: ``--data real``: A = MiniLM over the WordNet glosses (:func:`benchmarks.datasets.wordnet_minilm`),
B = MiniLM over Debian package descriptions (:func:`~benchmarks.datasets.debian_minilm`), both
cached (built once, minutes, with the ``bench`` extra); ``--data synthetic``: A = the built-in
synthetic model, B = the same model's vectors under a fixed random rotation (a new region).

Usage::

    python -m benchmarks.bench_drift [--data real|synthetic] [--seeds 5] [--size S|M|L] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine, markdown_table, set_threads, today, write_results

#: (background rows, a tag's first memories, its later memories) per size.
SIZES = {"S": (2_000, 600, 300), "M": (20_000, 2_000, 1_000), "L": (100_000, 5_000, 2_500)}
EXPECTED = {"stay": False, "move": True, "mixed": None}


def corpora(data: str, need: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B): float32 rows of the two corpora, at least ``need`` of A."""
    if data == "real":
        from benchmarks.datasets import debian_minilm, wordnet_minilm

        return wordnet_minilm().xb, debian_minilm().xb
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model()
    a = model.sample(need, seed=1)
    rot = np.linalg.qr(np.random.default_rng(7).standard_normal((model.dim, model.dim)))[0].astype(np.float32)
    return a, model.sample(need // 2, seed=4) @ rot


def run_seed(a: np.ndarray, b: np.ndarray, seed: int, size: str) -> list[dict]:
    import lukhas_gpu

    bg, first, later = SIZES[size]
    rng = np.random.default_rng(seed)
    pa, pb = rng.permutation(len(a)), rng.permutation(len(b))
    need_a, need_b = bg + 3 * first + later + later // 2, 2 * later - later // 2
    if need_a > len(a) or need_b > len(b):
        raise SystemExit(f"size {size} needs {need_a} rows of A and {need_b} of B; the corpora have {len(a)}, "
                         f"{len(b)}")
    pieces = np.split(pa[:need_a], np.cumsum([bg, first, first, first, later]))
    background, f_stay, f_move, f_mixed, l_stay, l_mixed_a = (a[i] for i in pieces)
    l_move, l_mixed_b = b[pb[:later]], b[pb[later:need_b]]
    ix = lukhas_gpu.MemoryIndex(a.shape[1])
    ix.add(background)
    for x, tag in ((f_stay, "stay"), (f_move, "move"), (f_mixed, "mixed")):
        ix.add(x, tags=[[tag]] * len(x))
    mixed = np.concatenate([l_mixed_a, l_mixed_b])[rng.permutation(later)]
    for x, tag in ((l_stay, "stay"), (l_move, "move"), (mixed, "mixed")):
        ix.add(x, tags=[[tag]] * len(x))
    t0 = time.perf_counter()
    rep = ix.drift(by_tag=True)
    seconds = time.perf_counter() - t0
    rows = []
    for tag, want in EXPECTED.items():
        r = rep["tags"][tag]
        rows.append({"seed": seed, "tag": tag, "shift": r["shift"], "cosine_distance": r["cosine_distance"],
                     "spread_ratio": r["spread_ratio"], "drifted": r["drifted"],
                     "ok": None if want is None else r["drifted"] == want, "count": r["count"],
                     "seconds_per_tag": seconds / len(rep["tags"])})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("real", "synthetic"), default="real")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--size", choices=tuple(SIZES), default="M")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    set_threads(args.threads)
    bg, first, later = SIZES[args.size]
    a, b = corpora(args.data, bg + 3 * first + 2 * later)
    rows = [r for s in range(args.seeds) for r in run_seed(a, b, s, args.size)]
    for r in rows:
        print(r, flush=True)
    summary = []
    for tag, want in EXPECTED.items():
        mine = [r for r in rows if r["tag"] == tag]
        summary.append({"tag": tag, "expected": {None: "either", True: "drifted", False: "not"}[want],
                        "flagged": f"{sum(r['drifted'] for r in mine)}/{len(mine)}",
                        "shift_min": min(r["shift"] for r in mine), "shift_max": max(r["shift"] for r in mine),
                        "cosine_distance_mean": float(np.mean([r["cosine_distance"] for r in mine])),
                        "spread_ratio_mean": float(np.mean([r["spread_ratio"] for r in mine]))})
    table = markdown_table(summary)
    print(table)
    name = f"drift_tags_{args.data}_{args.size}"
    write_results(name, {"machine": machine(), "date": today(), "args": vars(args), "rows": rows,
                         "summary": summary}, f"# per-tag drift, {args.data} {args.size}\n\n{table}")
    bad = [r for r in rows if r["ok"] is False]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
