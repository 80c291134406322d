"""The durable store at scale: checkpoint time, disk bytes, open time and anonymous RAM after
open, and search results unchanged by a save/open round trip.

1M synthetic vectors (the built-in model fitted to MiniLM/WordNet) with ~100-byte texts, tags,
timestamps and importance. ``open`` and the RAM reading run in a fresh process, after the
libraries are imported and their thread pools started, so the figure is what opening costs.

    python -m benchmarks.bench_store --n 1000000
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

WORDS = ("memory agent user said asked about project meeting later remember note idea plan code "
         "review model data result error fix test run deploy team week today tomorrow because "
         "with from into over under after before while server query index vector store").split()

CHILD = r"""
import json, sys, time, numpy as np
sys.path.insert(0, sys.argv[3])
from benchmarks import common
import lukhas_gpu
common.set_threads(2)
warm = lukhas_gpu.MemoryIndex(8)
warm.add(np.random.default_rng(0).standard_normal((64, 8)).astype("float32"))
warm.search(np.ones(8, dtype="float32"), 5)
before = common.settle()
t0 = time.perf_counter()
ix = lukhas_gpu.MemoryIndex.open(sys.argv[1], mode="r")
t_open = time.perf_counter() - t0
anon = common.settle() - before
xq = np.load(sys.argv[2])
t1 = time.perf_counter()
res = ix.search(xq, 10)
t_search = time.perf_counter() - t1
np.save(sys.argv[2] + ".ids.npy", res.ids)
print(json.dumps({"open_s": t_open, "anon_bytes": anon, "count": len(ix), "first_search_s": t_search,
                  "anon_after_search": common.settle() - before}))
"""


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    lens = rng.integers(12, 20, n)
    picks = rng.integers(0, len(words), lens.sum())
    out, pos = [], 0
    for i, L in enumerate(lens):
        out.append(f"#{i} " + " ".join(words[picks[pos:pos + L]]))
        pos += L
    return out


def main(argv=None) -> dict:
    import lukhas_gpu
    from lukhas_gpu.tools.synthetic import builtin_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to build the store (default: a temporary directory)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)
    model = builtin_model()
    n = args.n
    xq = model.queries(args.nq)
    rng = np.random.default_rng(1)
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    root = pathlib.Path(tmp.name) / "store"
    cfg = lukhas_gpu.IndexConfig.preset("production", capacity=n, threads=args.threads, wal_sync="group")
    t0 = time.perf_counter()
    index = lukhas_gpu.MemoryIndex.create(root, 384, cfg)
    raw = 0
    for start, xb in zip(range(0, n, 50_000), model.iter_batches(n, 50_000)):
        m = len(xb)
        tx = texts(m, seed=start)
        raw += sum(len(t) for t in tx)
        index.add(xb, contents=tx, tags=[[f"tag{int(v)}"] for v in rng.zipf(1.5, m) % 1000],
                  timestamps=1.75e9 - rng.random(m) * 3e7, importance=rng.random(m))
    ingest_s = time.perf_counter() - t0
    before = index.search(xq, 10)
    t1 = time.perf_counter()
    gen = index.checkpoint()
    ckpt_s = time.perf_counter() - t1
    disk = sum(p.stat().st_size for p in gen.iterdir())
    index.close()
    del index
    qpath = pathlib.Path(tmp.name) / "xq.npy"
    np.save(qpath, xq)
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), str(qpath), repo],
                           capture_output=True, text=True, check=True)
    got = json.loads(child.stdout.strip().splitlines()[-1])
    after_ids = np.load(str(qpath) + ".ids.npy")
    out = {"n": n, "raw content B/memory": raw / n, "ingest s (with WAL, group sync)": ingest_s,
           "ingest/s": n / ingest_s, "checkpoint s": ckpt_s, "disk B/memory": disk / n,
           "open s": got["open_s"], "anon B/memory after open": got["anon_bytes"] / n,
           "anon B/memory after a search": got["anon_after_search"] / n,
           "first search s (1000 queries)": got["first_search_s"],
           "results identical after open": bool(np.array_equal(after_ids, before.ids)),
           "files": {p.name: p.stat().st_size for p in gen.iterdir()},
           "machine": common.machine(), "date": common.today()}
    table = common.markdown_table([{k: v for k, v in out.items() if k not in ("files", "machine", "date")}])
    print(table)
    print(json.dumps(out["files"]))
    common.write_results(args.tag or f"store_{n}", out, table)
    tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
