"""What one more shard process costs: the anonymous RAM of a process that serves lukhas_gpu.

The cluster plan (``lukhas_gpu.distributed.cluster``) charges every process that holds shards (a Ray
actor per shard, or per shard group) this baseline on top of its shards' own bytes: the
interpreter, torch, FAISS and numpy loaded, their first-use working memory (BLAS/OpenMP buffers,
allocator arenas) and, in an actor, Ray's worker runtime. Measured as RssAnon (anonymous resident
memory; the shared libraries' file pages are shared between processes and not counted) of

* a fresh Python process: after ``import lukhas_gpu, torch, faiss``, then after an index of ``n``
  random 384-d vectors was built (trained), searched (256 queries) and dropped (``gc``,
  ``malloc_trim``): what stays with the process;
* a Ray actor (a private local cluster, ``num_cpus=0.25``) doing the same (needs the ``ray`` extra).

    python -m benchmarks.bench_actor_rss --n 40000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks import common


def measure(n: int, threads: int) -> dict:
    """RssAnon / RssFile after the imports, then after an index of ``n`` rows lived and died."""
    import gc

    def status() -> dict:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

    import faiss  # noqa: F401
    import numpy as np
    import torch  # noqa: F401

    from lukhas_gpu import IndexConfig, MemoryIndex
    from lukhas_gpu.util.memtrim import trim

    out = {"imported": status()}
    x = np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32)
    index = MemoryIndex(384, IndexConfig.preset("production", threads=threads))
    index.add(x)
    index.search(x[:256], k=10)
    del index, x
    gc.collect()
    trim()
    out["after_index"] = status()
    return out


def in_actor(n: int, threads: int) -> dict | None:
    try:
        import ray
    except ImportError:
        return None
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=False)
    try:
        return ray.get(ray.remote(num_cpus=0.25)(measure).remote(n, threads))
    finally:
        ray.shutdown()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40_000, help="rows of the index built and dropped")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.n, args.threads)))
        return
    cmd = [sys.executable, "-m", "benchmarks.bench_actor_rss", "--child", "--n", str(args.n),
           "--threads", str(args.threads)]
    found = {"process": json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)}
    actor = in_actor(args.n, args.threads)
    if actor is not None:
        found["ray actor"] = actor
    rows = [{"where": where, "stage": stage, "RssAnon MB": v["RssAnon"] / 1e6, "RssFile MB": v["RssFile"] / 1e6}
            for where, stages in found.items() for stage, v in stages.items()]
    table = common.markdown_table(rows)
    print(table)
    common.write_results("actor_rss", {"machine": common.machine(), "date": common.today(), "n": args.n,
                                       "threads": args.threads, "found": found}, table)


if __name__ == "__main__":
    main()
