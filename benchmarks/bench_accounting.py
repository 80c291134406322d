"""Does the accounting add up? ``stats()`` and ``plan()`` against measured RAM, mapped and disk bytes.

For each size: synthetic memories (the built-in 384-d model, ~100-byte texts, one Zipf tag each,
timestamps and importance, as ``bench_store``) ingested into a store under ``production`` with
``capacity=n``, 2,000 queries searched (which fills the probe's query sample), a checkpoint.

* **built**: measured in the building process, after a warm-up that sends one batch of other
  memories through the same pipeline and drops it -- anonymous RAM as RssAnon growth from before
  the store was created (``settle()`` before and after, the input batches deleted), mapped bytes
  as the sizes of this process's mappings of the store's files (``/proc/self/smaps``), disk as
  ``du`` of the store;
* **opened**: the store opened read-only in a fresh process (libraries imported and warmed up
  first), measured the same way right after ``open``.

Also reported: the RssAnon that dropping the index gives back ("released on drop"); the rest of
the growth is allocator high-water marks that stay with the process.

Each figure is compared with ``stats()`` of that index and with ``plan()`` for the same count,
config and inputs (the content ratio measured on 20,000 other texts of the same generator,
not on the stored ones). Both should be within 10% of the measurement.

    python -m benchmarks.bench_accounting --sizes 100000,1000000
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import common
from benchmarks.bench_store import texts

log = logging.getLogger("bench_accounting")
PLACES = ("anon", "mapped", "disk")
BATCH = 50_000
NQ = 2000
TAG_VOCABULARY, TAG_SKEW = 1000, 1.5


def mapped_files(root) -> tuple[int, int]:
    """(mapped bytes, resident bytes) of this process's mappings of files under ``root``."""
    root = os.path.realpath(root)
    size = rss = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) > 5 else ""
                inside = path.startswith(root + os.sep)
            elif inside and first == "Size:":
                size += int(line.split()[1]) * 1024
            elif inside and first == "Rss:":
                rss += int(line.split()[1]) * 1024
    return size, rss


def du(path) -> int:
    """Allocated bytes of a directory tree, as ``du`` counts them."""
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def config(n: int, threads: int):
    import lukhas_gpu

    return lukhas_gpu.IndexConfig.preset("production", capacity=n, threads=threads, wal_sync="group")


def warm_up(model, threads: int) -> None:
    """The same pipeline on one batch of other memories, then dropped: thread pools, BLAS buffers,
    allocator high-water marks, zstd and the WAL's thread are paid once per process, not per
    memory."""
    import lukhas_gpu

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as tmp:
        ix = lukhas_gpu.MemoryIndex.create(pathlib.Path(tmp) / "warm", 384, config(BATCH, threads))
        ix.add(model.sample(BATCH, seed=3), contents=texts(BATCH, seed=10**8),
               tags=[[f"warm{int(v)}"] for v in rng.zipf(TAG_SKEW, BATCH) % TAG_VOCABULARY])
        ix.search(model.queries(NQ, seed=2), 10)
        ix.get(np.arange(100))
        ix.checkpoint()
        ix.close()
        del ix


def measured(root, before: int) -> dict:
    anon = common.settle() - before
    size, rss = mapped_files(root)
    return {"anon": anon, "mapped": size, "mapped_resident": rss, "disk": du(root)}


def compare(n: int, state: str, meas: dict, st: dict, pl: dict) -> list[dict]:
    """Table rows: measured vs ``stats()["memory"]`` (``st``) vs ``plan().to_dict()`` (``pl``)."""
    rows = []
    for place in PLACES:
        m, s, p = meas[place], st[f"{place}_bytes"], pl[f"{place}_bytes"]
        rows.append({"memories": n, "state": state, "place": place, "measured B/memory": m / n,
                     "stats B/memory": s / n, "plan B/memory": p / n,
                     "stats/measured": s / m if m else (1.0 if s == 0 else float("inf")),
                     "plan/measured": p / m if m else (1.0 if p == 0 else float("inf"))})
    return rows


def plan_for(n: int, cfg, avg: float, ratio: float, state: str):
    import lukhas_gpu

    return lukhas_gpu.plan(n, 384, avg_content_bytes=avg, tags_per_memory=1.0, config=cfg, content_ratio=ratio,
                           runtime=False, tag_vocabulary=TAG_VOCABULARY, tag_skew=TAG_SKEW, state=state)


def opened(root: str, n: int, avg: float, ratio: float, threads: int) -> dict:
    """The child process: open the store read-only and measure (prints JSON)."""
    import lukhas_gpu

    common.set_threads(threads)
    warm = lukhas_gpu.MemoryIndex(8)
    warm.add(np.random.default_rng(0).standard_normal((64, 8)).astype("float32"))
    warm.search(np.ones(8, dtype="float32"), 5)
    del warm
    before = common.settle()
    t0 = time.perf_counter()
    ix = lukhas_gpu.MemoryIndex.open(root, mode="r")
    open_s = time.perf_counter() - t0
    meas = measured(root, before)
    st = ix.stats()
    pl = plan_for(n, config(n, threads), avg, ratio, "opened")
    with_index = common.settle()
    ix.close()
    del ix
    meas["released"] = with_index - common.settle()
    return {"measured": meas, "open_s": open_s, "stats": _slim(st), "plan": pl.to_dict()}


def _slim(st: dict) -> dict:
    """The accounting of a ``stats()`` (its ``memory`` part) with the IVF shape."""
    return {**st["memory"], **{k: st[k] for k in ("count", "nlist", "pq_m", "coarse")}}


def run(n: int, threads: int, workdir) -> tuple[list[dict], dict]:
    import lukhas_gpu
    from lukhas_gpu.capacity.sizing import measure_content_ratio
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model()
    warm_up(model, threads)
    xq = model.queries(NQ)
    ratio = measure_content_ratio(texts(20_000, seed=10**9))
    rng = np.random.default_rng(1)
    cfg = config(n, threads)
    tmp = tempfile.TemporaryDirectory(dir=workdir)
    root = pathlib.Path(tmp.name) / "store"
    before = common.settle()
    t0 = time.perf_counter()
    index = lukhas_gpu.MemoryIndex.create(root, 384, cfg)
    raw = 0
    for start, xb in zip(range(0, n, BATCH), model.iter_batches(n, BATCH)):
        m = len(xb)
        tx = texts(m, seed=start)
        raw += sum(len(t) for t in tx)
        index.add(xb, contents=tx, tags=[[f"tag{int(v)}"] for v in rng.zipf(TAG_SKEW, m) % TAG_VOCABULARY],
                  timestamps=1.75e9 - rng.random(m) * 3e7, importance=rng.random(m))
    del xb, tx
    build_s = time.perf_counter() - t0
    for i in range(0, NQ, 200):  # a store in service: its probe has sampled the queries
        index.search(xq[i: i + 200], 10)
    index.checkpoint()
    avg = raw / n
    meas_b = measured(root, before)
    st_b = index.stats()
    pl_b = plan_for(n, cfg, avg, ratio, "built")
    with_index = common.settle()
    index.close()
    del index
    # what dropping the index gives back; the rest of the growth is the process's (allocator
    # high-water marks), not the index's
    meas_b["released"] = with_index - common.settle()
    repo = str(pathlib.Path(__file__).resolve().parents[1])
    child = subprocess.run([sys.executable, "-m", "benchmarks.bench_accounting", "--open", str(root),
                            "--sizes", str(n), "--avg", repr(avg), "--ratio", repr(ratio), "--threads", str(threads)],
                           capture_output=True, text=True, cwd=repo)
    if child.returncode:
        raise RuntimeError(f"the opening process failed:\n{child.stderr[-4000:]}")
    got = json.loads(child.stdout.strip().splitlines()[-1])
    tmp.cleanup()
    rows = compare(n, "built", meas_b, _slim(st_b), pl_b.to_dict()) + \
        compare(n, "opened", got["measured"], got["stats"], got["plan"])
    for r, meas in zip(rows[::len(PLACES)], (meas_b, got["measured"])):
        r["released on drop B/memory"] = meas["released"] / n  # the anon rows
    detail = {"n": n, "raw content B/memory": avg, "content ratio (planned from a sample)": ratio,
              "build s": build_s, "open s": got["open_s"],
              "built": {"measured": meas_b, "stats": _slim(st_b), "plan": pl_b.to_dict()},
              "opened": {k: got[k] for k in ("measured", "stats", "plan")}}
    for r in rows:
        log.info("%s", r)
    return rows, detail


def components(detail: dict, state: str) -> list[dict]:
    """Per-component bytes per memory, stats vs plan, for the JSON's diagnosis table."""
    n = detail["n"]
    st, pl = detail[state]["stats"], detail[state]["plan"]["memory"]
    out = []
    for place in PLACES:
        for name in sorted(set(st[place]) | set(pl[place])):
            out.append({"memories": n, "state": state, "place": place, "component": name,
                        "stats B/memory": st[place].get(name, 0) / n, "plan B/memory": pl[place].get(name, 0) / n})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None, help="where to build the stores (default: a temporary directory)")
    ap.add_argument("--tag", default="accounting")
    ap.add_argument("--open", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--avg", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--ratio", type=float, default=0.72, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.open:
        print(json.dumps(opened(args.open, int(args.sizes), args.avg, args.ratio, args.threads), default=float))
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)
    rows, details = [], []
    for n in (int(s) for s in args.sizes.split(",")):
        r, d = run(n, args.threads, args.dir)
        rows += r
        details.append(d)
    table = common.markdown_table(rows)
    print(table)
    diag = [c for d in details for state in ("built", "opened") for c in components(d, state)]
    common.write_results(args.tag, {"machine": common.machine(), "date": common.today(), "rows": rows,
                                    "runs": details, "components": diag}, table)
    return rows


if __name__ == "__main__":
    main()
