"""Ingest on Ray vs the single-process CLI: rows/s overall and per stage, bytes per memory, RAM.

One Parquet file of ``--n`` synthetic memories (the built-in MiniLM/WordNet model, 384-d, with
~100-byte texts, Zipf-ish tags, timestamps and importance: ``bench_migrate.make_payload``) is
ingested twice, each part in its own process (so that its peak RSS is its own):

* ``cli``: ``lukhas-gpu ingest STORE INPUT`` (one store, the ``--preset``; the CLI's own
  checkpoints every ``--checkpoint-every`` batches). Its stages are timed by wrapping
  ``MemoryIndex.add`` (write), ``index.lifecycle.train`` (train, inside an add) and
  ``MemoryIndex.checkpoint``; ``read`` is the rest: reading and checking the Parquet batches.
* ``ray``: :func:`lukhas_gpu.distributed.ingest` into ``--shards`` shards on a local Ray
  cluster of the machine's CPUs (started first; its start-up is reported apart). The stages are
  those of its report (:data:`lukhas_gpu.distributed.report.STAGES`): ``read`` is the driver's
  wait for prepared batches, ``prepare`` the checking tasks' summed seconds, ``write`` / ``train``
  / ``checkpoint`` the slowest shard's.

Every part checks its result before a number is reported: the store (or each shard) holds
``n`` memories, and 500 sampled rows come back with their contents (a shard's row ``j`` of
shard ``s`` is input row ``s + j * shards``).

    python -m benchmarks.bench_ray                       # 1M rows (the lead's run)
    python -m benchmarks.bench_ray --n 20000             # smoke run

* ``search`` (after both): the single store and the sharded root, each tuned on one half of the
  queries, searched with the other half: recall@10 and QPS of one index, of the shards in this
  process, and of one Ray actor per shard.

Each part is a function (``PARTS``) taking the data directory and the options and returning a
row of the table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks import common

log = logging.getLogger("bench_ray")

CHUNK = 65_536
CHECK = 500
INPUT = "memories.parquet"


# -- data -----------------------------------------------------------------------------------------
class _Real:
    """A cached real set (``benchmarks.datasets``) read like the synthetic model: rows by position."""

    def __init__(self, name: str):
        from benchmarks import datasets

        self.ds = datasets.wordnet_minilm() if name == "wordnet" else datasets.debian_minilm()
        self.dim, self.texts = self.ds.d, self.ds.texts

    def sample(self, n: int, seed: int = 0, start: int = 0) -> np.ndarray:
        return np.ascontiguousarray(self.ds.xb[start: start + n], dtype=np.float32)

    def queries(self, nq: int, seed: int = 0) -> np.ndarray:
        return np.ascontiguousarray(self.ds.xq[:nq], dtype=np.float32)


def generate(d: pathlib.Path, n: int, seed: int, data: str = "synthetic") -> dict:
    """Write ``d/memories.parquet`` (row groups of ``CHUNK``) and ``d/truth.json`` (sampled rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.bench_migrate import make_payload
    from lukhas_gpu.tools.synthetic import builtin_model

    t0 = time.perf_counter()
    model = builtin_model() if data == "synthetic" else _Real(data)
    texts, tags, _, ts, imp = make_payload(n, seed)
    if data != "synthetic":
        texts = model.texts[:n]
    schema = pa.schema([("embedding", pa.list_(pa.float32(), model.dim)), ("content", pa.string()),
                        ("tags", pa.list_(pa.string())), ("timestamp", pa.float64()), ("importance", pa.float64())])
    with pq.ParquetWriter(d / INPUT, schema) as w:
        for a in range(0, n, CHUNK):
            b = min(n, a + CHUNK)
            x = model.sample(b - a, seed=seed, start=a)
            w.write_table(pa.table([pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), model.dim),
                                    pa.array(texts[a:b]), pa.array(tags[a:b], type=pa.list_(pa.string())),
                                    pa.array(ts[a:b]), pa.array(imp[a:b])], schema=schema))
    pick = np.sort(np.random.default_rng(seed + 1).choice(n, min(CHECK, n), replace=False))
    (d / "truth.json").write_text(json.dumps({"rows": pick.tolist(), "contents": [texts[i] for i in pick]}))
    return {"generate_s": time.perf_counter() - t0, "parquet_bytes": (d / INPUT).stat().st_size,
            "mean_text_bytes": sum(len(t) for t in texts) / n}


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- parts (each runs in its own process) ---------------------------------------------------------
def part_cli(d: pathlib.Path, args) -> dict:
    """The single-process ``lukhas-gpu ingest``, its stages timed around the library's calls."""
    from lukhas_gpu import MemoryIndex, cli
    from lukhas_gpu.index import lifecycle

    spent = {"add": 0.0, "train": 0.0, "checkpoint": 0.0}

    def timed(owner, name, key):
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        setattr(owner, name, wrapper)

    timed(MemoryIndex, "add", "add")
    timed(lifecycle, "train", "train")
    timed(MemoryIndex, "checkpoint", "checkpoint")
    store = d / "cli-store"
    t0 = time.perf_counter()
    rc = cli.main(["ingest", str(store), str(d / INPUT), "--preset", args.preset, "--batch-size", str(args.batch_size),
                   "--checkpoint-every", str(args.checkpoint_every), "--json"])
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"lukhas-gpu ingest exited with {rc}")
    with MemoryIndex.open(store) as ix:
        st = ix.stats()
        _check(args, [ix], 1)
    n = st["count"]
    write = spent["add"] - spent["train"]
    return {"part": "single process (lukhas-gpu ingest)", "rows": n, "seconds": seconds,
            "stages": {"read": seconds - spent["add"] - spent["checkpoint"], "write": write, "train": spent["train"],
                       "checkpoint": spent["checkpoint"]},
            "nlist": [st["nlist"]], "ram_per_memory": st["bytes_per_memory"],
            "disk_per_memory": st["memory"]["disk_bytes"] / n, "peak_rss": _peak_rss(), "workers_rss": None}


def part_ray(d: pathlib.Path, args) -> dict:
    """:func:`lukhas_gpu.distributed.ingest` on a local Ray cluster of this machine."""
    import ray

    from lukhas_gpu import IndexConfig, MemoryIndex
    from lukhas_gpu.distributed import ingest, rootfiles

    t0 = time.perf_counter()
    ray.init(num_cpus=args.cpus or os.cpu_count(), include_dashboard=False, logging_level="warning",
             log_to_driver=False)
    started = time.perf_counter() - t0
    try:
        rep = ingest(d / INPUT, d / "ray-root", shards=args.shards, config=IndexConfig.preset(args.preset),
                     tags_column="tags", timestamp_column="timestamp", importance_column="importance",
                     batch_size=args.batch_size, progress=False)
    finally:
        ray.shutdown()
    shards = [MemoryIndex.open(rootfiles.shard_dir(d / "ray-root", s)) for s in range(args.shards)]
    try:
        _check(args, shards, args.shards)
    finally:
        for ix in shards:
            ix.close()
    return {"part": f"Ray, {args.shards} shards", "rows": sum(rep.shard_rows), "seconds": rep.seconds,
            "ray_start_s": started, "stages": rep.stages, "nlist": rep.shard_nlist,
            "ram_per_memory": rep.bytes_per_memory, "disk_per_memory": rep.disk_bytes_per_memory,
            "peak_rss": _peak_rss(), "workers_rss": [s["rss_anon"] for s in rep.shard_stats]}


def _check(args, stores: list, shards: int) -> None:
    """Every row is stored; sampled rows hold their contents (row r: store r % shards, row r // shards)."""
    truth = json.loads((pathlib.Path(args.dir) / "truth.json").read_text())
    if sum(len(ix) for ix in stores) != args.n:
        raise SystemExit(f"{sum(len(ix) for ix in stores):,} memories stored, {args.n:,} ingested")
    for r, c in zip(truth["rows"], truth["contents"]):
        got = stores[r % shards].contents([r // shards])[0]
        if got != c:
            raise SystemExit(f"row {r}: stored content {got!r}, generated {c!r}")


def part_search(d: pathlib.Path, args) -> dict:
    """Sharded search vs one index over the same rows (the stores the two ingest parts built).

    Held-out protocol (as ``bench_tune``): ``--queries`` model queries split in halves; each
    store (the single one, and every shard) is tuned on the first half for the preset's target,
    every figure is measured on the second half against a streamed exact float32 ground truth.
    Rows: the single index; the sharded root searched in this process (one thread per shard);
    the same root with one Ray actor per shard (a local cluster of this machine's CPUs).
    """
    import ray

    from benchmarks.bench_scale import exact_streaming
    from benchmarks.bench_tune import per_query_recall, qps
    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.distributed import ShardedIndex, rootfiles
    from lukhas_gpu.tools.synthetic import builtin_model

    model = builtin_model() if args.data == "synthetic" else _Real(args.data)
    xq = model.queries(args.queries, seed=args.seed)
    half = len(xq) // 2
    a, b = np.ascontiguousarray(xq[:half]), np.ascontiguousarray(xq[half:])
    if args.data == "synthetic":  # input row numbers (the seeded stream = the Parquet rows)
        gt = exact_streaming(model, args.n, b, 10)
    else:
        from benchmarks.datasets import exact_knn

        gt = exact_knn(model.sample(args.n), b, 10)
    root = d / "ray-root"
    tuned = {}
    for name, path in [("single", d / "cli-store")] + [
            (f"shard {s}", rootfiles.shard_dir(root, s)) for s in range(args.shards)]:
        with MemoryIndex.open(path, "w") as ix:
            rep = ix.tune(queries=a)
            tuned[name] = {k: rep[k] for k in ("nprobe", "rerank", "recall", "bound", "nlist") if k in rep}

    def to_rows(ids):  # global id (shard << 32 | row) -> input row (row * shards + shard)
        ids = np.asarray(ids)
        return np.where(ids >= 0, (ids & rootfiles.ROW_MASK) * args.shards + (ids >> rootfiles.SHARD_SHIFT), -1)

    out = []
    with MemoryIndex.open(d / "cli-store") as one:
        r = per_query_recall(one.search(b, 10).ids, gt)
        out.append({"search": "one index", "recall@10": float(r.mean()),
                    "QPS": qps(lambda q: one.search(q, 10), b, args.repeat)})
    with ShardedIndex.open(root) as sh:
        r = per_query_recall(to_rows(sh.search(b, 10).ids), gt)
        out.append({"search": f"{args.shards} shards, threads", "recall@10": float(r.mean()),
                    "QPS": qps(lambda q: sh.search(q, 10), b, args.repeat)})
    ray.init(num_cpus=args.cpus or os.cpu_count(), include_dashboard=False, logging_level="warning",
             log_to_driver=False)
    try:
        with ShardedIndex.open(root, actors=True) as sh:
            r = per_query_recall(to_rows(sh.search(b, 10).ids), gt)
            out.append({"search": f"{args.shards} shards, Ray actors", "recall@10": float(r.mean()),
                        "QPS": qps(lambda q: sh.search(q, 10), b, args.repeat)})
    finally:
        ray.shutdown()
    for row in out:
        row["vs one index"] = row["QPS"] / out[0]["QPS"]
    return {"part": "search", "rows": args.n, "queries": len(b), "tuned": tuned, "search": out}


PARTS = {"cli": part_cli, "ray": part_ray, "search": part_search}


# -- driver ---------------------------------------------------------------------------------------
def _child(part: str, d: pathlib.Path, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_ray", "--part", part, "--dir", str(d), "--n", str(args.n),
           "--shards", str(args.shards), "--batch-size", str(args.batch_size), "--preset", args.preset,
           "--checkpoint-every", str(args.checkpoint_every), "--seed", str(args.seed),
           "--queries", str(args.queries), "--repeat", str(args.repeat), "--data", args.data]
    if args.cpus:
        cmd += ["--cpus", str(args.cpus)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=pathlib.Path(__file__).resolve().parent.parent)
    log.info("%s done in %.1f s (process wall time)", part, time.perf_counter() - t0)
    return json.loads((d / f"{part}.result.json").read_text())


def table(results: list[dict]) -> str:
    rows = []
    searches = [r for r in results if r["part"] == "search"]
    results = [r for r in results if r["part"] != "search"]
    for r in results:
        st, n = r["stages"], r["rows"]
        row = {"ingest": r["part"], "rows": n, "seconds": r["seconds"], "rows/s": n / r["seconds"]}
        for k in ("read", "prepare", "write", "train", "checkpoint"):
            v = st.get(k)
            row[f"{k} s"] = v
            row[f"{k} rows/s"] = n / v if v else None
        row.update({"nlist": ", ".join("exact" if v is None else str(v) for v in r["nlist"]),
                    "RAM B/memory": r["ram_per_memory"], "disk B/memory": r["disk_per_memory"],
                    "peak RSS MB (process)": r["peak_rss"] / 2**20,
                    "writers RSS MB": (None if r["workers_rss"] is None else
                                       ", ".join(f"{v / 2**20:.0f}" for v in r["workers_rss"] if v)),
                    "Ray start s": r.get("ray_start_s")})
        rows.append(row)
    text = common.markdown_table(rows)
    for r in searches:
        text += (f"\n\nSearch, {r['queries']:,} held-out queries, k = 10, each store tuned on the other half "
                 f"(target 0.95): {json.dumps(r['tuned'])}\n\n" + common.markdown_table(r["search"]))
    return text


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="rows (default 1,000,000)")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--preset", default="production")
    ap.add_argument("--checkpoint-every", type=int, default=10, help="the CLI's (its default: 10 batches)")
    ap.add_argument("--cpus", type=int, default=None, help="the Ray cluster's CPUs (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=2000, help="search part: queries, split in halves")
    ap.add_argument("--data", choices=["synthetic", "wordnet", "debian"], default="synthetic",
                    help="the rows: the built-in model, or a cached real set (MiniLM embeddings, --n at most its size)")
    ap.add_argument("--repeat", type=int, default=3, help="search part: timed runs (best kept)")
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--keep", default=None, help="generate into this directory and keep it")
    ap.add_argument("--tag", default="ray")
    ap.add_argument("--part", choices=["generate", *PARTS], help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 1 <= args.n <= 100_000_000:
        raise SystemExit("--n must be in 1..100,000,000")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.part:  # child process: one part, its result as JSON next to the data
        d = pathlib.Path(args.dir)
        res = generate(d, args.n, args.seed, args.data) if args.part == "generate" else PARTS[args.part](d, args)
        (d / f"{args.part}.result.json").write_text(json.dumps(res, default=float))
        return res

    with common.work_dir(args.keep, "bench_ray_") as d:
        gen = _child("generate", d, args)
        log.info("generated %d rows, %.0f MB of Parquet, in %.1f s", args.n, gen["parquet_bytes"] / 2**20,
                 gen["generate_s"])
        results = [_child(p, d, args) for p in args.parts]
    header = (f"{args.data}, n = {args.n:,}, 384-d, preset {args.preset}, batch {args.batch_size:,}, "
              f"{args.shards} shards, {common.machine()}; Parquet {gen['parquet_bytes'] / 2**20:.0f} MB, "
              f"{gen['mean_text_bytes']:.0f} B "
              f"texts; load average {os.getloadavg()[0]:.2f} at the end")
    text = header + "\n\n" + table(results)
    print(text)
    payload = {"machine": common.machine(), "date": common.today(), "n": args.n, "shards": args.shards,
               "batch_size": args.batch_size, "preset": args.preset, "loadavg_end": os.getloadavg(),
               "generate": gen, "results": results}
    path = common.write_results(f"bench_{args.tag}", payload, text)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
