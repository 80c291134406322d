"""Does ``stats()`` count the libraries? RssAnon growth from before the first index vs ``stats()`` and ``plan()``.

Two processes per size, each a fresh child (the driver of ``bench_rss``):

* ``fresh``: imports numpy and lukhas_gpu (which loads neither torch nor FAISS), draws one batch
  of the data generator (numpy only), reads RssAnon, then builds ``n`` memories the way an
  ingest job does (``bench_rss``'s batches: 384-d embeddings of the built-in model, ~100-byte
  texts, one Zipf tag each) and searches 1,000 queries. torch and FAISS are imported and first
  used inside the measurement: ``stats()`` should count them (``anon["runtime_libraries"]``)
  and ``plan(runtime=True)`` too.
* ``warmed``: the same after another index was built, trained, searched and dropped (heap
  trimmed) before the baseline: the libraries are paid already, so ``stats()`` of the second
  index and ``plan(runtime=False)`` should count the index alone.

The growth is read once the index's background tuning (started by training and searches under
``production``'s recall target) has finished: its working memory while it runs is no part of
the index (the growth before it finished is reported too).

Goal (issue "The house keeps itself", item 7): both within 15% of the growth, at 50k and 1M.

``--durable``: the index is a store's writer (``MemoryIndex.create`` in a temporary directory),
checkpointed once built: its int8 rows are then the published file mapped copy-on-write (page
cache, not anonymous RAM), compared with ``plan(state="checkpointed")``; the growth is read again
after the queries are searched once more (``... warmed`` keys: the rows read, still not anonymous).

    python -m benchmarks.bench_rss_stats --sizes 50000
    python -m benchmarks.bench_rss_stats --sizes 200000 --modes warmed --durable
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.bench_rss import BATCH, NQ, TAG_SKEW, TAG_VOCABULARY


def _build(lukhas_gpu, model, texts, n: int, cfg, seed: int, path=None):
    import numpy as np

    index = lukhas_gpu.MemoryIndex(384, cfg) if path is None else lukhas_gpu.MemoryIndex.create(path, 384, cfg)
    rng = np.random.default_rng(seed)
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        x = model.sample(m, seed=seed * 10**7 + start + 7)
        index.add(x, contents=texts(m, seed=seed * 10**7 + start), importance=rng.random(m),
                  tags=[[f"tag{int(v)}"] for v in rng.zipf(TAG_SKEW, m) % TAG_VOCABULARY])
        del x
    index.search(model.queries(NQ, seed=seed + 3), 10)
    return index


def child(n: int, mode: str, preset: str, threads: int, durable: bool = False) -> dict:
    import tempfile

    import numpy as np

    import lukhas_gpu
    from benchmarks.bench_store import texts
    from lukhas_gpu.capacity.sizing import measure_content_ratio
    from lukhas_gpu.index.tuning import wait
    from lukhas_gpu.tools.synthetic import builtin_model
    from lukhas_gpu.util import runtime
    from lukhas_gpu.util.memtrim import free_heap, rss_anon, trim
    from lukhas_gpu.vectors.policy import train_at

    cfg = lukhas_gpu.IndexConfig.preset(preset, threads=threads)
    model = builtin_model()
    model.sample(BATCH, seed=0), texts(BATCH, seed=1)  # the user's data source is up before the index
    if mode == "warmed":  # another index first: the libraries imported and used, then dropped
        warm = _build(lukhas_gpu, model, texts, max(train_at(cfg), BATCH), cfg, seed=5)
        wait(warm)  # its background tuning holds it (and its own working memory) until done
        del warm
        trim()
    assert mode == "warmed" or "torch" not in sys.modules, "the fresh baseline must come before torch"
    store = tempfile.mkdtemp(prefix="rss_stats_") if durable else None
    before = rss_anon()
    index = _build(lukhas_gpu, model, texts, n, cfg, seed=1, path=store)
    at_end = rss_anon()  # as a user sees it right away: the background tuner may still be running
    wait(index)
    extra = {}
    if durable:
        index.checkpoint()  # the rows become the published file, mapped
        trim()
    after, free = rss_anon(), free_heap()
    st = index.stats()
    if durable:
        index.search(model.queries(NQ, seed=4), 10)
        wait(index)
        trim()
        stw = index.stats()["memory"]
        extra = {"RssAnon growth warmed B/memory": (rss_anon() - before) / n, "stats warmed B/memory":
                 stw["anon_bytes"] / n, "stats mapped B/memory": stw["mapped_bytes"] / n,
                 "anon by component B/memory": {k: round(v / n, 2) for k, v in sorted(
                     stw["anon"].items(), key=lambda kv: -kv[1]) if v >= n / 100}}
    trim()
    trimmed = rss_anon() - before
    sample = texts(20_000, seed=10**7)
    avg = float(np.mean([len(t.encode()) for t in sample]))
    ratio = measure_content_ratio(sample)
    pl = lukhas_gpu.plan(n, 384, avg_content_bytes=avg, tags_per_memory=1.0, config=cfg, content_ratio=ratio,
                         tag_vocabulary=TAG_VOCABULARY, tag_skew=TAG_SKEW, backend="cpu",
                         runtime=mode == "fresh", state="checkpointed" if durable else "built").to_dict()
    if store:
        import shutil

        index.close(checkpoint=False)
        shutil.rmtree(store, ignore_errors=True)
    grow = after - before
    anon = st["memory"]["anon"]
    return {"memories": n, "process": mode, "nlist": st["nlist"], "RssAnon growth MB": grow / 1e6,
            "stats anon MB": st["memory"]["anon_bytes"] / 1e6, "plan anon MB": pl["anon_bytes"] / 1e6,
            "runtime_libraries MB": anon.get("runtime_libraries", 0) / 1e6,
            "RssAnon growth B/memory": grow / n, "stats B/memory": st["memory"]["anon_bytes"] / n,
            "plan B/memory": pl["anon_bytes"] / n,
            "stats/measured": st["memory"]["anon_bytes"] / grow, "plan/measured": pl["anon_bytes"] / grow,
            "growth before the tuner finished MB": (at_end - before) / 1e6,
            "free heap MB": (free or 0) / 1e6, "growth after malloc_trim MB": trimmed / 1e6,
            "plan by component B/memory": {k: round(v / n, 2) for k, v in sorted(
                pl["memory"]["anon"].items(), key=lambda kv: -kv[1]) if v >= n / 100} if durable else None,
            **extra, "windows": runtime.measured()}


def main(argv=None) -> list:
    from benchmarks import common

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000")
    ap.add_argument("--modes", default="fresh,warmed")
    ap.add_argument("--preset", default="production")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="rss_stats")
    ap.add_argument("--durable", action="store_true", help="a store's writer, checkpointed (rows mapped)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="fresh", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.mode, args.preset, args.threads, args.durable)))
        return []
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for mode in args.modes.split(","):
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_rss_stats", "--child", str(n), "--mode", mode,
                                  "--preset", args.preset, "--threads", str(args.threads),
                                  *(["--durable"] if args.durable else [])],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "windows"} for r in rows]
    common.write_results(args.tag, {"machine": common.machine(), "date": common.today(), "rows": rows},
                         common.markdown_table(table))
    return rows


if __name__ == "__main__":
    main()
