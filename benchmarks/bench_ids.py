"""Bytes per memory of external ids and free metadata, against the naive Python way.

Each memory: a 36-char UUID4 id and a small dict ``{"source": one of 3, "turn": 0..99}``.

* **lukhas, free dict**: ``external_ids="str"``, the dict as free metadata;
* **lukhas, declared**: the same with ``source`` (str) and ``turn`` (int) declared as columns;
* **baseline**: a Python ``dict`` id -> row and a ``list`` of the dicts (what an adapter keeps
  when the store has no ids or metadata), measured by ``tracemalloc``.

Bytes are the components' own counts (``stats()["memory"]["anon"]``: ``external_ids``,
``metadata_records``, ``metadata_fields``) and the process's RssAnon growth (which includes the
vectors and the rest, so it is given for both runs with the same vectors). Timings: median of
``--repeat`` runs of ``get`` of 1,000 random ids and of ``add`` of 1,000 memories with ids and
metadata vs without.

    python -m benchmarks.bench_ids --n 200000
"""
from __future__ import annotations

import argparse
import json
import random
import time
import tracemalloc
import uuid

import numpy as np

from benchmarks.common import settle


def _data(n: int, seed: int = 0):
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    metas = [{"source": rng.choice(("chat", "email", "doc")), "turn": rng.randrange(100)} for _ in range(n)]
    return ids, metas


def _build(n: int, dim: int, fields: bool, ids, metas, batch: int = 10_000):
    from lukhas_gpu import IndexConfig, MemoryIndex

    cfg = IndexConfig(external_ids="str", train_threshold=max(1024, n + 1),
                      metadata_fields={"source": "str", "turn": "int"} if fields else None)
    ix = MemoryIndex(dim, cfg)
    x = np.random.default_rng(1).standard_normal((batch, dim)).astype(np.float32)
    before = settle()
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        m = min(batch, n - i)
        ix.add(x[:m], ids=ids[i:i + m], metadata=metas[i:i + m])
    secs = time.perf_counter() - t0
    grew = settle() - before
    return ix, secs, grew


def _median_ms(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    n = args.n
    ids, metas = _data(n)
    out: dict = {"n": n, "dim": args.dim}

    tracemalloc.start()
    t0 = tracemalloc.take_snapshot()
    ref_map = {k: i for i, k in enumerate(ids)}
    ref_meta = [dict(m) for m in metas]
    ref_ids = list(ids)
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    base = sum(s.size_diff for s in snap.compare_to(t0, "filename"))
    out["baseline_bytes_per_memory"] = base / n  # (the id strings themselves are the same objects)
    # the id strings as a baseline holds them (36-char str objects), counted too:
    out["baseline_with_id_strings"] = (base + sum(len(k) + 49 for k in ids)) / n
    del ref_meta, ref_ids

    rng = np.random.default_rng(2)
    probe = [ids[i] for i in rng.integers(0, n, 1000)]
    out["baseline_get_1000_ms"] = _median_ms(lambda: [ref_map[k] for k in probe], args.repeat)
    ref_map = None  # noqa: F841 (freed before the indexes are built)

    from lukhas_gpu import MemoryIndex as _Warm  # the libraries' first use, paid before measuring

    warm = _Warm(args.dim)
    warm.add(np.ones((2, args.dim), np.float32))
    warm.search(np.ones(args.dim, np.float32), k=1)
    del warm
    for label, fields in (("free", False), ("declared", True)):
        ix, secs, grew = _build(n, args.dim, fields, ids, metas)
        anon = ix.stats()["memory"]["anon"]
        parts = {k: int(anon.get(k, 0)) for k in ("external_ids", "metadata_records", "metadata_fields")}
        out[label] = {"bytes_per_memory": sum(parts.values()) / n,
                      **{f"{k}_per_memory": v / n for k, v in parts.items()},
                      "rss_anon_growth_per_memory": grew / n, "add_seconds": secs,
                      "get_1000_ms": _median_ms(lambda: ix.get(probe), args.repeat),
                      "contains_1000_ms": _median_ms(lambda: ix.contains(probe), args.repeat)}
        assert ix.get(probe[:5])[0].metadata == metas[ids.index(probe[0])]
        ix = None  # noqa: F841
    # add throughput: 1,000 memories with ids + metadata vs plain, on the same fresh index size
    from lukhas_gpu import IndexConfig, MemoryIndex

    x = np.random.default_rng(3).standard_normal((1000, args.dim)).astype(np.float32)
    more_ids, more_meta = _data(1000 * (args.repeat + 1), seed=9)

    def add_named():
        add_named.k += 1
        s = slice(1000 * add_named.k, 1000 * (add_named.k + 1))
        named.add(x, ids=more_ids[s], metadata=more_meta[s])
    add_named.k = -1
    named = MemoryIndex(args.dim, IndexConfig(external_ids="str", train_threshold=10**6))
    plain = MemoryIndex(args.dim, IndexConfig(train_threshold=10**6))
    out["add_1000_named_ms"] = _median_ms(add_named, args.repeat)
    out["add_1000_plain_ms"] = _median_ms(lambda: plain.add(x), args.repeat)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
