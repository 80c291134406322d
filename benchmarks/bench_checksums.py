"""What the read-side checksums cost: a reader's ``get()`` with and without the content records'
CRC-32 check, its search QPS with and without the int8 block check (steady state, and the first
searches that check blocks), and the checkpoint's extra pass (block CRCs of the int8 rows).

Each pair is measured in the same process, interleaved, medians of ``--repeats``; the checks are
switched off by dropping the arrays they read (the "off" columns are the code before them).

    python -m benchmarks.bench_checksums --size S
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import numpy as np

SIZES = {"S": (60_000, 128), "M": (200_000, 384), "L": (1_000_000, 384)}


def _build(path, n: int, dim: int, seed: int = 0):
    from lukhas_gpu import IndexConfig, MemoryIndex

    rng = np.random.default_rng(seed)
    ix = MemoryIndex.create(path, dim, IndexConfig(train_threshold=min(n // 2, 50_000)))  # trained: IVF searches
    for a in range(0, n, 10_000):
        b = min(n, a + 10_000)
        ix.add(rng.standard_normal((b - a, dim)).astype(np.float32),
               contents=[f"memory number {i}: " + "lorem ipsum dolor sit amet " * 3 for i in range(a, b)])
    t = time.perf_counter()
    ix.checkpoint()
    checkpoint_s = time.perf_counter() - t
    t = time.perf_counter()
    ix.parts.vectors.block_crcs()
    block_crc_s = time.perf_counter() - t
    ix.close()
    return checkpoint_s, block_crc_s


def _median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> dict:
    from lukhas_gpu import MemoryIndex

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="S")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    n, dim = SIZES[args.size]
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "s"
        checkpoint_s, block_crc_s = _build(path, n, dim)
        q = rng.standard_normal((args.queries, dim)).astype(np.float32)
        ids = [rng.integers(0, n, 10) for _ in range(1000)]

        on, off = MemoryIndex.open(path), MemoryIndex.open(path)
        assert [m.content for m in on.get(ids[0])] == [m.content for m in off.get(ids[0])]
        off.parts.contents._crcs = None  # the check off: the arena as before the CRCs
        off.parts.vectors._crc = None
        t = time.perf_counter()
        off.search(q[:1], k=10)  # a reader's first search, unchecked (the encoder built, pages read)
        first_off_s = time.perf_counter() - t
        t = time.perf_counter()
        on.search(q[:1], k=10)  # the first search: the blocks of its candidates are checked
        first_s = time.perf_counter() - t
        res = {"size": args.size, "rows": n, "dim": dim, "checkpoint_s": round(checkpoint_s, 3),
               "block_crcs_s": round(block_crc_s, 4), "first_search_ms": round(first_s * 1e3, 2),
               "first_search_unchecked_ms": round(first_off_s * 1e3, 2),
               "trained": on.parts.ann is not None}
        fresh = MemoryIndex.open(path).parts.vectors
        cand = rng.integers(0, n, (len(q), 100))  # a batch's candidates: 100 per query
        t = time.perf_counter()
        fresh.checked(cand[:1])  # one query's candidates, their blocks checked the first time
        res["check_first_query_blocks_ms"] = round((time.perf_counter() - t) * 1e3, 2)
        t = time.perf_counter()
        fresh.checked(cand[1:])
        res["check_batch_blocks_ms"] = round((time.perf_counter() - t) * 1e3, 2)
        t = time.perf_counter()
        for _ in range(20):
            fresh.checked(cand)  # steady state: blocks checked, the call finds nothing to do
        res["checked_call_us"] = round((time.perf_counter() - t) / 20 * 1e6, 1)
        t = time.perf_counter()
        _ = on.parts.vectors.array  # every block
        res["check_every_block_ms"] = round((time.perf_counter() - t) * 1e3, 2)
        on2 = MemoryIndex.open(path)  # steady state with the checks armed but the blocks checked
        on2.search(q, k=10)
        get_on = lambda: [on2.get(i) for i in ids]  # noqa: E731
        get_off = lambda: [off.get(i) for i in ids]  # noqa: E731
        arena_on = lambda: [on2.parts.contents.get(i) for i in ids]  # noqa: E731  the arena alone
        arena_off = lambda: [off.parts.contents.get(i) for i in ids]  # noqa: E731
        s_on = lambda: on2.search(q, k=10)  # noqa: E731
        s_off = lambda: off.search(q, k=10)  # noqa: E731
        g1, g0, a1, a0, q1, q0 = [], [], [], [], [], []
        for r in range(args.repeats):  # interleaved, in alternating order: the machine's load falls on both
            pairs = [(g1, get_on, g0, get_off), (a1, arena_on, a0, arena_off)]
            for first, f1, second, f0 in pairs:
                for out, f in ((first, f1), (second, f0))[::1 if r % 2 else -1]:
                    out.append(_median_time(f, 1) / len(ids))
            for out, f in ((q1, s_on), (q0, s_off))[::1 if r % 2 else -1]:
                out.append(args.queries / _median_time(f, 1))
        res.update(get10_us_checked=round(statistics.median(g1) * 1e6, 1),
                   get10_us_unchecked=round(statistics.median(g0) * 1e6, 1),
                   arena_get10_us_checked=round(statistics.median(a1) * 1e6, 1),
                   arena_get10_us_unchecked=round(statistics.median(a0) * 1e6, 1),
                   search_qps_checked=round(statistics.median(q1)), search_qps_unchecked=round(statistics.median(q0)))
        res["get_overhead"] = round(res["get10_us_checked"] / res["get10_us_unchecked"] - 1, 3)
        res["search_overhead"] = round(res["search_qps_unchecked"] / res["search_qps_checked"] - 1, 3)
    print(json.dumps(res, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
