"""Add throughput with dedup off / exact / near, and bytes per link.

The stream: ``n`` memories of the built-in synthetic model (MiniLM-like, 384 dims) with a
content each, added in batches of ``--batch``; a fraction ``--dups`` of them are planted
duplicates of an earlier memory: half exact (the same content, another vector), half near (the
earlier vector scaled and perturbed, cosine > 0.999, another content). The same stream is added
to a fresh index per mode (``IndexConfig(dedup=mode)``, in memory, default training threshold).

Correctness first (on the first ``--check`` memories): ``exact`` merges exactly the planted exact
duplicates, ``near`` at least the planted near ones, ``off`` none. Then per mode: memories per
second (median of ``--repeat`` builds, the first batch's warm-up excluded), memories stored,
merged, and the ratio to ``off`` measured in the same run.

Bytes per link: ``--links`` random links among the memories, each kind of three, stored by
:class:`lukhas_gpu.records.links.Links` (RAM: main arrays and the reverse index; disk: its npz).

    python -m benchmarks.bench_dedup --sizes 100000,1000000
    python -m benchmarks.bench_dedup --sizes 20000 --repeat 1      # a quick run
"""
from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np

from benchmarks.common import machine, markdown_table, today, write_results

MODES = ("off", "exact", "near")


def stream(n: int, dups: float, seed: int = 0):
    """``(x, contents, kind)``: kind 0 original, 1 exact duplicate, 2 near duplicate."""
    from lukhas_gpu.tools.synthetic import builtin_model

    rng = np.random.default_rng(seed)
    x = builtin_model().sample(n, seed=seed).astype(np.float32)
    contents = [f"memory {i} " + "x" * int(rng.integers(20, 120)) for i in range(n)]
    kind = np.zeros(n, np.int8)
    planted = np.flatnonzero(rng.random(n) < dups)
    planted = planted[planted > 0]
    for i in planted.tolist():
        j = int(rng.integers(0, i))
        while kind[j]:  # duplicate an original, so the expected count is exact
            j = int(rng.integers(0, i))
        if rng.random() < 0.5:
            contents[i], kind[i] = contents[j], 1
        else:
            noise = rng.standard_normal(x.shape[1]).astype(np.float32) * 0.002 * np.linalg.norm(x[j])
            x[i], kind[i] = x[j] * np.float32(rng.uniform(0.5, 2)) + noise, 2
    return x, contents, kind


def build(x, contents, mode: str, batch: int):
    from lukhas_gpu import IndexConfig, MemoryIndex

    ix = MemoryIndex(x.shape[1], IndexConfig(dedup=mode, auto_tune=False, gpu_resident="off"))
    merged, t_first, t0 = 0, None, time.perf_counter()
    for i in range(0, len(x), batch):
        ix.add(x[i:i + batch], contents=contents[i:i + batch])
        merged += ix.last_add.merged
        if t_first is None:
            t_first = time.perf_counter()
    secs = time.perf_counter() - t_first if len(x) > batch else time.perf_counter() - t0
    timed = len(x) - min(batch, len(x)) if len(x) > batch else len(x)
    return ix, merged, timed / secs


def check(x, contents, kind, batch: int) -> dict:
    out = {}
    for mode in MODES:
        ix, merged, _ = build(x, contents, mode, batch)
        want = {"off": 0, "exact": int((kind == 1).sum()), "near": int((kind == 2).sum())}[mode]
        ok = merged == want if mode != "near" else merged >= want
        assert ok, f"dedup={mode}: merged {merged}, planted {want}"
        assert len(ix) == len(x) - merged
        out[mode] = {"merged": merged, "planted": want}
    return out


def link_bytes(n_rows: int, n_links: int, seed: int = 0) -> dict:
    from lukhas_gpu.records.links import Links

    rng = np.random.default_rng(seed)
    lk = Links()
    codes = lk.intern(["cause", "ref", "same-topic"])
    for a in range(0, n_links, 100_000):
        m = min(100_000, n_links - a)
        lk.link(rng.integers(0, n_rows, m).astype(np.uint32), rng.integers(0, n_rows, m).astype(np.uint32),
                codes[rng.integers(0, 3, m)], rng.random(m).astype(np.float32))
    lk.merge()
    buf = io.BytesIO()
    np.savez(buf, **lk.to_arrays())
    stored = len(lk.main)
    return {"links": stored, "ram_bytes_per_link": lk.nbytes() / stored, "disk_bytes_per_link": len(buf.getvalue())
            / stored}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--dups", type=float, default=0.2, help="fraction of planted duplicates")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--check", type=int, default=20_000, help="memories of the correctness check")
    ap.add_argument("--links", type=int, default=1_000_000)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    x, contents, kind = stream(min(args.check, max(sizes)), args.dups, seed=1)
    checked = check(x, contents, kind, args.batch)
    rows = []
    for n in sizes:
        x, contents, kind = stream(n, args.dups)
        rate = {}
        for mode in MODES:
            runs = [build(x, contents, mode, args.batch) for _ in range(args.repeat)]
            rate[mode] = statistics.median(r[2] for r in runs)
            rows.append({"n": n, "dedup": mode, "memories_per_s": rate[mode], "vs_off": rate[mode] / rate["off"],
                         "stored": len(runs[0][0]), "merged": runs[0][1]})
            print(rows[-1], flush=True)
    links = link_bytes(max(sizes), args.links)
    table = markdown_table(rows) + "\n\n" + markdown_table([links])
    payload = {"machine": machine(), "date": today(), "args": vars(args), "check": checked, "rows": rows,
               "links": links}
    print(table)
    if not args.no_save:
        write_results("bench_dedup", payload, table)
    return payload


if __name__ == "__main__":
    main()
