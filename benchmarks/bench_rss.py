"""Does ``stats()`` say what a user sees? RssAnon growth of a plain ingest vs ``stats()`` and ``plan()``.

The user's view, with nothing done for the measurement's sake: a fresh process imports
lukhas_gpu and its dependencies (torch, FAISS), starts the data generator (one batch drawn: the
generator keeps ~60 MB of its own, as an embedding model would), reads its RssAnon, then builds an index of ``n``
memories the way an ingest job does -- batches of embeddings (the built-in 384-d model), ~100-byte
texts, one Zipf tag each, timestamps and importance, each batch dropped once added -- searches
1,000 queries and reads RssAnon again. No warm-up, no ``malloc_trim`` and no ``gc`` call by the
benchmark: whatever the library leaves resident counts. The growth is compared with
``stats()["memory"]["anon_bytes"]`` and with ``plan()`` for the same count and config (content
ratio measured on other texts of the same generator).

Each size runs in its own process. Goal (issue "One house"): both within 15% at 50k and at 1M.

    python -m benchmarks.bench_rss --sizes 50000,1000000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

BATCH = 10_000
NQ = 1000
TAG_VOCABULARY, TAG_SKEW = 1000, 1.5


def child(n: int, preset: str, threads: int) -> dict:
    import faiss  # noqa: F401  (a dependency: loaded in any process that uses the index)
    import numpy as np
    import torch  # a pipeline that embeds has torch loaded before the index exists

    import lukhas_gpu
    from benchmarks.bench_store import texts
    from lukhas_gpu.capacity.sizing import measure_content_ratio
    from lukhas_gpu.tools.synthetic import builtin_model
    from lukhas_gpu.util import runtime
    from lukhas_gpu.util.memtrim import rss_anon

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    model = builtin_model()
    model.sample(BATCH, seed=0), texts(BATCH, seed=1)  # the user's data source is up before the index
    cfg = lukhas_gpu.IndexConfig.preset(preset, threads=threads)
    before = rss_anon()
    index = lukhas_gpu.MemoryIndex(384, cfg)
    rng = np.random.default_rng(1)
    for start in range(0, n, BATCH):
        m = min(BATCH, n - start)
        x = model.sample(m, seed=start + 7)
        tags = [[f"tag{int(v)}"] for v in rng.zipf(TAG_SKEW, m) % TAG_VOCABULARY]
        index.add(x, contents=texts(m, seed=start), tags=tags, importance=rng.random(m))
        del x
    index.search(model.queries(NQ, seed=3), 10)
    after = rss_anon()
    st = index.stats()
    sample = texts(20_000, seed=10**7)
    avg = float(np.mean([len(t.encode()) for t in sample]))
    ratio = measure_content_ratio(sample)
    # the libraries were imported before the baseline: plan() without a fresh process's runtime, plus
    # what this process measured of their first use after it (encode, training, search, tuning so far),
    # which stats() counts too (anon["runtime_libraries"])
    pl = lukhas_gpu.plan(n, 384, avg_content_bytes=avg, tags_per_memory=1.0, config=cfg, content_ratio=ratio,
                         tag_vocabulary=TAG_VOCABULARY, tag_skew=TAG_SKEW, backend="cpu", runtime=False).to_dict()
    pl["anon_bytes"] += runtime.total()
    grow = after - before
    return {"memories": n, "preset": preset, "nlist": st["nlist"], "RssAnon growth B/memory": grow / n,
            "stats anon B/memory": st["memory"]["anon_bytes"] / n, "plan anon B/memory": pl["anon_bytes"] / n,
            "stats/measured": st["memory"]["anon_bytes"] / grow, "plan/measured": pl["anon_bytes"] / grow,
            "stats top components": dict(sorted(st["memory"]["anon"].items(), key=lambda kv: -kv[1])[:6])}


def main(argv=None) -> list:
    from benchmarks import common

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,1000000")
    ap.add_argument("--preset", default="production")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="rss")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size (each a fresh process)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.preset, args.threads)))
        return []
    rows = []
    for n in [int(s) for s in args.sizes.split(",") for _ in range(args.repeat)]:
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_rss", "--child", str(n), "--preset", args.preset,
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = [{k: v for k, v in r.items() if k != "stats top components"} for r in rows]
    common.write_results(args.tag, {"machine": common.machine(), "date": common.today(), "rows": rows},
                         common.markdown_table(table))
    return rows


if __name__ == "__main__":
    main()
