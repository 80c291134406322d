"""Migration from the old naive JSONL: throughput, parity with the exact search, peak RSS.

A naive JSONL export (the old store's format: float embeddings as JSON lists, one memory a line)
is generated from the built-in synthetic model (MiniLM/WordNet fit, 384-d) with ~100-byte texts
from a seeded word list, Zipf-ish tags, timestamps (a fifth as ISO-8601 strings) and importance,
then imported with :func:`lukhas_gpu.ingest.migrate.migrate_jsonl` into
``MemoryIndex(384, IndexConfig.preset("production", capacity=n))``.

Rows, each measured in its own process (so that ``ru_maxrss`` is that phase's peak), after a
warm-up import of 2,000 records in the same process:

* ``dry run``: parse and validate only -- the baseline, what reading the format costs;
* ``jsonl``: the full import (parse, validate, add, training when the index crosses its
  threshold) plus the streamed parity check;
* ``npz + payload``: the same memories as an uncompressed ``.npz`` (memory-mapped) plus a JSONL
  of payloads, to show what the JSON floats cost.

Peak RSS is ``ru_maxrss`` of the phase's process, reset after the warm-up (``/proc/self/clear_refs``),
so it is the peak of the import itself, libraries included; ``RSS before`` is the settled VmRSS
just before it (both count file-backed pages: for the npz row, the memory-mapped array's pages,
which the OS can drop).

Correctness is checked before any number is reported: every phase compares ``get`` of 500
sampled records with what was generated, and the imports must report ``count_match``.

    python -m benchmarks.bench_migrate                  # M: 100k records
    python -m benchmarks.bench_migrate --size S         # 10k
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

log = logging.getLogger("bench_migrate")

SIZES = {"S": 10_000, "M": 100_000, "L": 1_000_000}
YEAR = 365 * 86400.0
NOW = 1_790_000_000.0
WARMUP = 2_000
CHECK = 500


# -- data ---------------------------------------------------------------------------------------
def word_list(n_words: int = 2000, seed: int = 0) -> list[str]:
    """Pronounceable pseudo-words from seeded syllables."""
    rng = np.random.default_rng(seed)
    syl = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["th", "sh", "ch", "qu"]
    return ["".join(rng.choice(syl, int(rng.integers(1, 4)))) for _ in range(n_words)]


def make_payload(n: int, seed: int = 0, vocab: int = 1000):
    """Texts (~100 B), Zipf-ish tags (rank r with probability 0.5 r^-0.9), timestamps, importance."""
    rng = np.random.default_rng(seed)
    words = word_list(seed=seed)
    zipf = 1.0 / np.arange(1, len(words) + 1)
    w_idx = rng.choice(len(words), size=(n, 24), p=zipf / zipf.sum())
    texts = []
    for row in w_idx:
        t = " ".join(words[i] for i in row)
        texts.append(t[: 100 - 1 - (len(texts) % 7)].rstrip() + ".")
    names = [f"tag{r:04d}" for r in range(1, vocab + 1)]
    p = 0.5 * np.arange(1, vocab + 1, dtype=np.float64) ** -0.9
    tags: list[list[str]] = [[] for _ in range(n)]
    for r in range(vocab):
        for i in rng.choice(n, rng.binomial(n, p[r]), replace=False).tolist():
            tags[i].append(names[r])
    ts = NOW - rng.random(n) * YEAR
    stamps: list = ts.tolist()
    iso = rng.random(n) < 0.2  # some old records carry ISO-8601 strings
    for i in np.flatnonzero(iso).tolist():
        stamps[i] = np.datetime_as_string(np.datetime64(int(ts[i] * 1e6), "us"), unit="us") + "Z"
    imp = rng.random(n)
    return texts, tags, stamps, ts, imp


def generate(d: pathlib.Path, n: int, seed: int) -> dict:
    from lukhas_gpu.ingest.migrate import write_naive_jsonl
    from lukhas_gpu.tools.synthetic import builtin_model

    t0 = time.perf_counter()
    x = builtin_model().sample(n, seed=seed)
    texts, tags, stamps, ts, imp = make_payload(n, seed)
    ids = [f"mem-{i:08d}" for i in range(n)]
    write_naive_jsonl(d / "old.jsonl", x, texts, tags, stamps, imp, ids=ids)
    write_naive_jsonl(d / "payload.jsonl", None, texts, tags, stamps, imp, ids=ids)
    np.savez(d / "emb.npz", embeddings=x)
    h = min(WARMUP, n)
    write_naive_jsonl(d / "warm.jsonl", x[:h], texts[:h], tags[:h], stamps[:h], imp[:h])
    pick = np.sort(np.random.default_rng(seed + 1).choice(n, min(CHECK, n), replace=False))
    truth = {"rows": pick.tolist(), "contents": [texts[i] for i in pick], "tags": [tags[i] for i in pick],
             "timestamps": ts[pick].tolist(), "importance": imp[pick].tolist()}
    (d / "truth.json").write_text(json.dumps(truth))
    return {"generate_s": time.perf_counter() - t0, "jsonl_bytes": (d / "old.jsonl").stat().st_size,
            "tag_uses_per_record": sum(map(len, tags)) / n, "mean_text_bytes": sum(len(t) for t in texts) / n}


# -- one phase, in its own process -------------------------------------------------------------
def run_phase(phase: str, d: pathlib.Path, n: int, args) -> dict:
    import lukhas_gpu
    from lukhas_gpu.ingest.migrate import migrate_jsonl, migrate_npz

    common.set_threads(args.threads)
    warm = lukhas_gpu.MemoryIndex(384, lukhas_gpu.IndexConfig(train_threshold=100_000, threads=args.threads))
    migrate_jsonl(d / "warm.jsonl", warm, batch_size=500, parity_queries=10)
    del warm
    common.settle()
    rss0 = proc_status("VmRSS")  # anon + file-backed, like ru_maxrss
    peak_reset = reset_peak_rss()
    cfg = lukhas_gpu.IndexConfig.preset("production", capacity=n, threads=args.threads)
    index = lukhas_gpu.MemoryIndex(384, cfg)
    kw = {"batch_size": args.batch_size, "parity_queries": args.parity_queries, "seed": args.seed}
    if phase == "dry":
        rep = migrate_jsonl(d / "old.jsonl", index, dry_run=True, **kw)
    elif phase == "jsonl":
        rep = migrate_jsonl(d / "old.jsonl", index, id_map_path=d / "id_map.jsonl", **kw)
    else:
        rep = migrate_npz(d / "emb.npz", d / "payload.jsonl", index, **kw)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out = {"phase": phase, "records": rep.records, "imported": rep.imported, "seconds": rep.seconds,
           "records/s": rep.records_per_second, "parity": rep.parity, "peak_rss": peak, "peak_reset": peak_reset,
           "rss_before": rss0, "rss_after": proc_status("VmRSS"), "rss_file_after": proc_status("RssFile"),
           "trained": index.is_trained}
    if phase != "dry":
        truth = json.loads((d / "truth.json").read_text())
        got = index.get(rep.id_map[truth["rows"]])
        ok = all(m.content == c and m.tags == t and abs(m.timestamp - s) <= 1e-6 and abs(m.importance - i) <= 1e-4
                 for m, c, t, s, i in zip(got, truth["contents"], truth["tags"], truth["timestamps"],
                                          truth["importance"]))
        out["get_matches"] = bool(ok)
        out["train_s"] = index.stats()["train_seconds"]
    else:
        out["get_matches"] = len(index) == 0  # a dry run leaves the index empty
    return out


def proc_status(field: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``RssFile``...), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux: ``/proc/self/clear_refs`` 5), so
    that ``ru_maxrss`` read later is the peak of what follows, not of the imports and warm-up."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        log.warning("cannot reset the peak RSS: ru_maxrss includes the warm-up")
        return False


def _child(phase: str, d: pathlib.Path, args) -> dict:
    result = d / f"{phase}.result.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_migrate", "--phase", phase, "--dir", str(d),
           "--n", str(args.n), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
           "--parity-queries", str(args.parity_queries), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=pathlib.Path(__file__).resolve().parent.parent)
    out = json.loads(result.read_text())
    log.info("%s done in %.1f s (process wall time)", phase, time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="M")
    ap.add_argument("--n", type=int, default=None, help="records (overrides --size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--parity-queries", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["dry", "jsonl", "npz"])
    ap.add_argument("--keep", default=None, help="generate into this directory and keep it")
    ap.add_argument("--tag", default="migrate")
    ap.add_argument("--phase", choices=["generate", "dry", "jsonl", "npz"], help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.n = args.n or SIZES[args.size]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.phase:  # child process: one phase, result as JSON next to the data
        d = pathlib.Path(args.dir)
        res = generate(d, args.n, args.seed) if args.phase == "generate" else run_phase(args.phase, d, args.n, args)
        (d / f"{args.phase}.result.json").write_text(json.dumps(res, default=float))
        return res

    with common.work_dir(args.keep, "bench_migrate_") as d:
        gen = _child("generate", d, args)
        log.info("generated %d records, %.0f MB of JSONL, in %.1f s", args.n, gen["jsonl_bytes"] / 2**20,
                 gen["generate_s"])
        phases = {p: _child(p, d, args) for p in ("dry", "jsonl", "npz") if p not in args.skip}
    for p, r in phases.items():
        if not r["get_matches"]:
            raise SystemExit(f"{p}: the imported memories differ from the generated ones")
        if p != "dry" and not r["parity"]["count_match"]:
            raise SystemExit(f"{p}: the index count does not match the records imported")

    labels = {"dry": "dry run (parse + validate)", "jsonl": "naive JSONL", "npz": "npz (mmap) + payload JSONL"}
    base = phases.get("dry", {}).get("records/s")
    rows = []
    for p, r in phases.items():
        par = r["parity"] or {}
        rows.append({"input": labels[p], "records": r["records"], "seconds": r["seconds"],
                     "records/s": r["records/s"], "vs dry run": r["records/s"] / base if base else None,
                     "top10 overlap": par.get("top10_overlap"), "parity queries": par.get("queries"),
                     "count match": par.get("count_match"), "parity s": par.get("seconds"),
                     "train s": r.get("train_s"), "peak RSS MB": r["peak_rss"] / 2**20,
                     "RSS before MB": r["rss_before"] / 2**20, "file-backed after MB": r["rss_file_after"] / 2**20,
                     "trained": r["trained"]})
    cols = ["input", "records", "seconds", "records/s", "vs dry run", "top10 overlap", "parity queries",
            "count match", "parity s", "train s", "peak RSS MB", "RSS before MB", "file-backed after MB"]
    table = common.markdown_table(rows, cols)
    header = (f"n = {args.n:,}, 384-d, batch {args.batch_size:,}, {args.threads} threads, JSONL "
              f"{gen['jsonl_bytes'] / 2**20:.0f} MB ({gen['jsonl_bytes'] / args.n:,.0f} B/record), "
              f"{gen['mean_text_bytes']:.0f} B texts, {gen['tag_uses_per_record']:.1f} tags/record; "
              f"load average {os.getloadavg()[0]:.2f} at the end")
    text = header + "\n\n" + table
    print(text)
    for p, r in phases.items():
        print(f"{labels[p]}: parity {json.dumps(r['parity'])}")
    payload = {"machine": common.machine(), "date": common.today(), "n": args.n, "batch_size": args.batch_size,
               "threads": args.threads, "loadavg_end": os.getloadavg(), "generate": gen, "phases": phases,
               "rows": rows}
    path = common.write_results(args.tag, payload, text)
    print(f"results: {path}")
    return payload


if __name__ == "__main__":
    main()
