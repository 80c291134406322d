"""Soak test: does a long-running index hold its memory flat under a mixed workload?

The index is grown to ``--size`` synthetic memories (384-d vectors from the built-in model,
~100-byte texts, power-law tags, timestamps and importance, made by the same helpers as
``bench_store`` and ``bench_payload``), then for ``--duration`` seconds it runs cycles of:

* three search batches: plain, filtered by a tag (alternating a ~10% tag, answered by the IVF
  with an id selector, and a ~1% one, answered by an exact scan), and ranked with recency and
  importance (``Rank``);
* an update of the contents, tags and importance of random live memories;
* by ``--mode``:

  - ``steady``: no adds; a few deletes per cycle, spread evenly over the run so that the live
    count ends at ``--floor`` of the size (never below);
  - ``churn``: a batch of adds and as many deletes of random live memories (live count flat);

* ``compact()`` every ``--compact-every`` cycles, and, with ``--store``, a checkpoint every
  ``--checkpoint-every`` seconds.

Every ``--interval`` seconds it samples RssAnon and RssFile, the C heap in use and free (glibc's
``mallinfo2``), the live count, the rows, ``stats()["memory"]["anon_bytes"]`` and the operations done so
far. The verdict rests on the least-squares slope of RssAnon over the soak phase (the first
``--warmup`` fraction skipped), in MB/h (1 MB = 10**6 B) and in bytes per operation (an
operation: one query, or one memory added, updated or deleted).

Ids are row numbers and never reused: a delete keeps the memory's int8 row and metadata row, so
under ``churn`` the rows grow by the adds while the live count stays flat. The expected growth is
then what the index accounts per row (vector row, metadata, content offset, tag start/count,
tag bitmaps, tombstones and ANN entries, summed from ``stats()["memory"]["logical"]``, plus the two-byte
empty content record a deleted memory leaves after ``compact()``); a leak shows as the excess of
the RssAnon slope over that expectation. Verdict: flat when ``|slope|`` (steady) or ``|excess|``
(churn) is below ``--threshold`` percent of the mean RssAnon per hour (default 1%/h: growing
by the whole footprint would take over four days of continuous load). A rise of RssAnon that is
all free heap (memory malloc keeps for reuse after a large temporary, which ``malloc_trim``
returns) is reported as allocator retention, not as a leak: the verdict then also looks at
RssAnon less the free heap. A rise that ``stats()["memory"]["anon_bytes"]`` follows is reported as
accounted growth, with the components that grew; only what neither explains reads as a leak.
One step in a short run dominates a least-squares slope; the largest step between two samples
is reported beside the rise.

    python -m benchmarks.soak --mode steady
    python -m benchmarks.soak --mode churn
    python -m benchmarks.soak --mode churn --store soak_store/ --duration 300
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import pathlib
import textwrap
import time
import tracemalloc

import numpy as np

from benchmarks import common
from benchmarks.bench_payload import NOW, make_payload
from benchmarks.bench_store import texts

log = logging.getLogger("soak")

PLOT_DIR = pathlib.Path(__file__).resolve().parent / "plots"
MB = 1e6
DIM = 384
#: Components of ``stats()["memory"]["logical"]`` that grow with the rows (or the deletes) and not with the
#: live contents: what ``churn`` is expected to add as its rows grow. The tag bitmaps are among
#: them because the live rows spread over a widening id range, so each tag's roaring bitmap
#: keeps gaining containers while the live count stays flat.
ROW_LINKED = ("vectors_int8", "metadata", "content_offsets", "tags_start", "tags_count",
              "tags_bitmaps", "tombstones", "ann_codes", "ann_ids")
#: A deleted memory's content becomes a two-byte empty record at the next ``compact()`` (the
#: content arena's record format): counted per deleted row with the row-linked bytes.
DEAD_RECORD_BYTES = 2
#: Seed of the vectors that churn adds (the database is the model's seed-0 stream, as in the
#: other benchmarks; queries come from ``model.queries``).
ADD_SEED = 2
FILTER_TAGS = ("tag0006", "tag0077")  # ~10% and ~1% of memories (see bench_payload)


def rss() -> tuple[int, int]:
    """``(RssAnon, RssFile)`` of this process in bytes, from /proc/self/status."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found[key] = int(rest.split()[0]) * 1024
    return found["RssAnon"], found["RssFile"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc, or glibc < 2.33
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def heap() -> tuple[int, int]:
    """``(in use, free)`` bytes of the C heap over all malloc arenas (glibc's ``mallinfo2``), or
    ``(-1, -1)`` where it is not available. Free heap is memory the allocator keeps for reuse
    instead of returning it: it counts in RssAnon, but is not held by anything."""
    if _MALLINFO2 is None:
        return -1, -1
    m = _MALLINFO2()
    return m.uordblks + m.hblkhd, m.fordblks


def source_digest(package) -> str:
    """SHA-256 (first 12 hex digits) of the package's Python sources: which code was soaked."""
    h = hashlib.sha256()
    for f in sorted(pathlib.Path(package.__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def fit(x, y) -> dict:
    """Least-squares line ``y = slope * x + intercept`` with the slope's standard error.

    The standard error assumes independent residuals; samples of a process's RSS are
    autocorrelated, so read it as a lower bound on the uncertainty.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "stderr": float("nan"), "n": len(x)}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    se = np.sqrt((resid @ resid) / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean())))
    return {"slope": float(slope), "intercept": float(intercept), "stderr": float(se), "n": len(x)}


class Soak:
    """The index under test, the live ids, the counters and the samples."""

    def __init__(self, index, model, args, t0: float):
        self.index, self.model, self.args, self.t0 = index, model, args, t0
        self.rng = np.random.default_rng(args.seed)
        self.live = np.empty(0, dtype=np.int64)  # live ids (a fixed-size array under churn)
        self.ops = {"queries": 0, "updated": 0, "deleted": 0, "added": 0, "compactions": 0,
                    "checkpoints": 0, "cycles": 0}
        self.samples: list[dict] = []
        self.next_sample = 0.0
        self.phase = "grow"
        self.seeds = iter(range(10_000, 1 << 62))  # one payload seed per synthesised batch

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, force: bool = False) -> None:
        t = time.perf_counter() - self.t0
        if not force and t < self.next_sample:
            return
        self.next_sample = t + self.args.interval
        anon, file_ = rss()
        used, free = heap()
        st = self.index.stats()
        b = st["memory"]["logical"]
        ops = self.ops
        self.samples.append({
            "t": t, "phase": self.phase, "rss_anon": anon, "rss_file": file_, "heap_used": used,
            "heap_free": free, "rss_anon_less_free_heap": anon - max(free, 0), "count": st["count"],
            "rows": st["rows"], "anon_bytes": st["memory"]["anon_bytes"],
            "row_linked_bytes": int(sum(b.get(k, 0) for k in ROW_LINKED)) + DEAD_RECORD_BYTES * st["deleted"],
            "bytes": {k: int(v) for k, v in b.items()},
            "ops": ops["queries"] + ops["updated"] + ops["deleted"] + ops["added"], **ops})
        log.info("%s t=%.0f s RssAnon %.1f MB RssFile %.1f MB free heap %.1f MB live %d rows %d anon_bytes %.1f MB "
                 "ops %d", self.phase, t, anon / MB, file_ / MB, free / MB, st["count"], st["rows"],
                 st["memory"]["anon_bytes"] / MB, self.samples[-1]["ops"])

    # -- payloads ------------------------------------------------------------------------------
    def payload(self, n: int):
        """``(contents, tags, timestamps, importance)`` for ``n`` memories, a fresh seed each time."""
        seed = next(self.seeds)
        tags, ts, imp, _, _ = make_payload(n, seed=seed)
        return texts(n, seed=seed), tags, ts, imp

    # -- phases --------------------------------------------------------------------------------
    def grow(self, batch: int) -> None:
        ids = []
        for xb in self.model.iter_batches(self.args.size, batch):
            contents, tags, ts, imp = self.payload(len(xb))
            ids.append(self.index.add(xb, contents=contents, tags=tags, timestamps=ts, importance=imp))
            self.ops["added"] += len(xb)
            self.sample()
        self.live = np.concatenate(ids)

    def cycle(self, queries: np.ndarray, rank, floor: int, t_end: float) -> None:
        from lukhas_gpu import Filter

        a, index, ops = self.args, self.index, self.ops
        i = ops["cycles"]
        q = queries[(i * a.nq) % len(queries):][: a.nq]
        index.search(q, a.k)
        index.search(q, a.k, where=Filter(tags_all=[FILTER_TAGS[i % len(FILTER_TAGS)]]))
        index.search(q, a.k, rank=rank)
        ops["queries"] += 3 * len(q)

        picks = self.rng.choice(len(self.live), min(a.updates, len(self.live)), replace=False)
        contents, tags, _, imp = self.payload(len(picks))
        index.update(self.live[picks], contents=contents, tags=tags, importance=imp)
        ops["updated"] += len(picks)

        if a.mode == "steady":
            # on schedule: (size - floor) deletes spread evenly over the run
            left = max(t_end - time.perf_counter(), 0.0)
            target = round((a.size - floor) * (1.0 - left / a.duration))
            n_del = int(min(max(target - ops["deleted"], 0), len(self.live) - floor))
            if n_del > 0:
                pos = self.rng.choice(len(self.live), n_del, replace=False)
                index.delete(self.live[pos])
                self.live = np.delete(self.live, pos)
                ops["deleted"] += n_del
        else:
            pos = self.rng.choice(len(self.live), a.churn, replace=False)
            index.delete(self.live[pos])
            ops["deleted"] += a.churn
            b = next(self.seeds)
            xb = self.model.block(b, seed=ADD_SEED, rows=a.churn)
            contents, tags, ts, imp = self.payload(a.churn)
            self.live[pos] = index.add(xb, contents=contents, tags=tags, timestamps=ts, importance=imp)
            ops["added"] += a.churn

        ops["cycles"] = i + 1
        if a.compact_every and ops["cycles"] % a.compact_every == 0:
            index.compact()
            ops["compactions"] += 1


def check(index, live: np.ndarray, queries: np.ndarray, rank) -> dict:
    """After the soak: the index agrees with the ids we kept, and filters and ranks still hold."""
    from lukhas_gpu import Filter

    q = queries[:64]
    out = {"count matches": len(index) == len(live), "all kept ids live": bool(index.contains(live).all())}
    res = index.search(q, 10)
    ids = res.ids[res.ids >= 0]
    out["results are live"] = bool(np.isin(ids, live).all())
    res = index.search(q, 10, where=Filter(tags_all=[FILTER_TAGS[0]]))
    got = index.get(np.unique(res.ids[res.ids >= 0]))
    out["filtered results carry the tag"] = all(FILTER_TAGS[0] in m.tags for m in got)
    res = index.search(q, 10, rank=rank)
    out["ranked results are live"] = bool(np.isin(res.ids[res.ids >= 0], live).all())
    return out


def analyse(samples: list[dict], t_soak: float, t_end: float, args) -> dict:
    """Slopes over the soak phase after the warm-up, and the verdict."""
    skip = t_soak + args.warmup * (t_end - t_soak)
    win = [s for s in samples if s["phase"] == "soak" and s["t"] >= skip]
    t = [s["t"] for s in win]

    def col(key):
        return [s[key] for s in win]

    def per_hour(key):
        f = fit(t, col(key))
        return {"MB/h": f["slope"] * 3600 / MB, "stderr MB/h": f["stderr"] * 3600 / MB, "n": f["n"]}

    anon = per_hour("rss_anon")
    mean_rss = float(np.mean(col("rss_anon"))) if win else float("nan")
    threshold = args.threshold / 100 * mean_rss / MB  # MB/h
    out = {"window s": [skip, t_end], "samples in fit": len(win), "mean RssAnon MB": mean_rss / MB,
           "RssAnon": anon, "RssAnon B/op": fit(col("ops"), col("rss_anon"))["slope"],
           "RssFile": per_hour("rss_file"), "stats anon_bytes": per_hour("anon_bytes"),
           # A rise of RssAnon that malloc keeps as free heap (glibc raises its mmap and trim
           # thresholds after large frees, so later temporaries stay in the heap) is held by
           # nothing: the slope with the free heap taken out tells it from memory still held.
           "RssAnon less free heap": per_hour("rss_anon_less_free_heap"),
           "heap in use": per_hour("heap_used"), "free heap": per_hour("heap_free"),
           "row-linked bytes": per_hour("row_linked_bytes"),
           "threshold MB/h": threshold, "threshold %/h": args.threshold, "fit": fit(t, col("rss_anon"))}
    # What RssAnon gains beyond what the index itself accounts for: the closest thing to a leak
    # detector this side of the allocator.
    unacc = [s["rss_anon"] - s["anon_bytes"] for s in win]
    f = fit(t, unacc)
    out["RssAnon less stats anon_bytes"] = {"MB/h": f["slope"] * 3600 / MB, "stderr MB/h": f["stderr"] * 3600 / MB}
    comps = {k: round(fit(t, [s["bytes"].get(k, 0) for s in win])["slope"] * 3600 / MB, 4)
             for k in (win[0]["bytes"] if win else ())}
    out["component slopes MB/h"] = dict(sorted(comps.items(), key=lambda kv: -abs(kv[1])))
    rss_win = np.array(col("rss_anon"), dtype=np.float64)
    out["RssAnon rise MB"] = float(rss_win[-1] - rss_win[0]) / MB if len(win) else float("nan")
    out["largest step MB"] = float(np.diff(rss_win).max()) / MB if len(win) > 1 else float("nan")
    has_heap = bool(win) and win[0]["heap_free"] >= 0
    if args.mode == "steady":
        what = "slope"
        judged, se, live = anon["MB/h"], anon["stderr MB/h"], out["RssAnon less free heap"]["MB/h"]
        unaccounted = out["RssAnon less stats anon_bytes"]["MB/h"]
    else:
        # Fitted against the rows rather than time, so that a throughput that varies (a shared
        # machine) does not bend the line: bytes per row added, then at the window's mean rate.
        what = "excess over the per-row expectation"
        rows = col("rows")
        rows_per_h = (rows[-1] - rows[0]) / (t[-1] - t[0]) * 3600 if len(win) > 1 and t[-1] > t[0] else float("nan")
        per_row = fit(rows, col("rss_anon"))
        expected = fit(rows, col("row_linked_bytes"))["slope"]
        excess = per_row["slope"] - expected
        out.update({"rows added/h": rows_per_h, "RssAnon B/row": per_row["slope"],
                    "stderr B/row": per_row["stderr"], "expected B/row": expected, "excess B/row": excess,
                    "RssAnon less free heap B/row": fit(rows, col("rss_anon_less_free_heap"))["slope"]})
        out["unaccounted B/row"] = fit(rows, unacc)["slope"]
        judged, se = excess * rows_per_h / MB, per_row["stderr"] * rows_per_h / MB
        live = (out["RssAnon less free heap B/row"] - expected) * rows_per_h / MB
        unaccounted = out["unaccounted B/row"] * rows_per_h / MB
        out["excess MB/h (time fit)"] = anon["MB/h"] - out["row-linked bytes"]["MB/h"]
    out.update({"judged MB/h": judged, "judged stderr MB/h": se,
                "judged less free heap MB/h": live if has_heap else float("nan"),
                "unaccounted MB/h": unaccounted})
    band = f"+-{threshold:.2f} MB/h ({args.threshold:g}% of RssAnon per hour)"
    if not np.isfinite(judged):
        verdict = "inconclusive: too few samples in the fit window"
    elif abs(judged) < threshold:
        verdict = f"flat: RssAnon {what} {judged:+.2f} MB/h (+-{se:.2f}), within {band}"
    elif judged > 0 and has_heap and live < threshold:
        verdict = (f"flat in use (allocator retention): RssAnon {what} {judged:+.2f} MB/h is outside {band}, "
                   f"but without the free heap it is {live:+.2f} MB/h; the rise "
                   f"({out['RssAnon rise MB']:.1f} MB, largest single step {out['largest step MB']:.1f} MB) "
                   "is free heap kept by malloc")
    elif judged > 0 and abs(unaccounted) < threshold:
        skip_keys = ROW_LINKED if args.mode == "churn" else ()
        top = [f"{k} {v:+.2f}" for k, v in out["component slopes MB/h"].items() if k not in skip_keys and v > 0][:3]
        verdict = (f"accounted growth: RssAnon {what} {judged:+.2f} MB/h (+-{se:.2f}) is outside {band}, but "
                   f"RssAnon less stats()['anon_bytes'] grows {unaccounted:+.2f} MB/h: the index accounts for it "
                   f"({', '.join(top)} MB/h)")
    elif judged > 0:
        verdict = (f"GROWING: RssAnon {what} {judged:+.2f} MB/h (+-{se:.2f}), outside {band}; "
                   f"{unaccounted:+.2f} MB/h of it not in stats()['anon_bytes']")
    else:
        verdict = f"shrinking: RssAnon {what} {judged:+.2f} MB/h (+-{se:.2f}), outside {band}"
    out["verdict"] = verdict
    return out


def plot(samples: list[dict], result: dict, path: pathlib.Path, title: str) -> None:
    """RssAnon over time with the grow phase shaded and the fitted soak-phase line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    minutes = np.array([s["t"] for s in samples]) / 60
    fig, (top, mid, bottom) = pyplot.subplots(3, 1, figsize=(8, 7.5), sharex=True, height_ratios=[3, 1.5, 1.2])
    grow_end = max((s["t"] for s in samples if s["phase"] == "grow"), default=0) / 60
    for ax in (top, mid, bottom):
        ax.axvspan(0, grow_end, color="0.88", label="grow" if ax is top else None)
        ax.grid(True, alpha=0.3)
    top.plot(minutes, [s["rss_anon"] / MB for s in samples], label="RssAnon", color="C0")
    if samples[0]["heap_free"] >= 0:
        top.plot(minutes, [s["rss_anon_less_free_heap"] / MB for s in samples], color="C4", lw=1,
                 label="RssAnon less free heap")
    a = result["analysis"]
    f = a["fit"]
    xs = np.array(a["window s"])
    top.plot(xs / 60, (f["slope"] * xs + f["intercept"]) / MB, "k--",
             label=f"fit {a['RssAnon']['MB/h']:+.2f} MB/h")
    top.set_ylabel("RssAnon, MB")
    top.set_title("\n".join(textwrap.fill(line, 100) for line in title.splitlines()), fontsize=9)
    top.legend(fontsize=8, loc="lower right")
    mid.plot(minutes, [s["anon_bytes"] / MB for s in samples], label='stats()["anon_bytes"]', color="C2")
    mid.plot(minutes, [s["rss_file"] / MB for s in samples], label="RssFile", color="C1")
    if samples[0]["heap_free"] >= 0:
        mid.plot(minutes, [s["heap_free"] / MB for s in samples], label="free heap (malloc)", color="C3", lw=1)
    mid.set_ylabel("MB")
    mid.legend(fontsize=8, loc="lower right")
    bottom.plot(minutes, [s["count"] / 1e3 for s in samples], label="live memories")
    bottom.plot(minutes, [s["rows"] / 1e3 for s in samples], label="rows (ids assigned)")
    bottom.set_ylabel("thousands")
    bottom.set_xlabel("minutes")
    bottom.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


# the soak's driver (options, then the timed loop and its report): kept whole to read as the run goes
def main(argv=None) -> dict:  # noqa: PLR0915
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["steady", "churn"], default="steady")
    ap.add_argument("--size", type=int, default=200_000, help="memories after the grow phase")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of the soak phase")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--store", default=None,
                    help="a directory (new or empty) for a durable store open for writing; default an in-process index")
    ap.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between checkpoints (with --store)")
    ap.add_argument("--nq", type=int, default=32, help="queries per search batch")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--updates", type=int, default=64, help="memories updated per cycle")
    ap.add_argument("--churn", type=int, default=128, help="churn: memories added and deleted per cycle")
    ap.add_argument("--floor", type=float, default=0.9, help="steady: live count at the end, as a fraction of --size")
    ap.add_argument("--compact-every", type=int, default=50, help="cycles between compact() calls (0: never)")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the soak phase left out of the fit")
    ap.add_argument("--threshold", type=float, default=1.0, help="flat below this many %% of RssAnon per hour")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tracemalloc", action="store_true",
                    help="diff Python allocations between the end of the warm-up and the end (slows the run)")
    ap.add_argument("--tag", default=None, help="name of the output files (default soak_<mode>[_store])")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads(args.threads)
    import lukhas_gpu
    from lukhas_gpu.tools.synthetic import builtin_model

    sources = source_digest(lukhas_gpu)  # read now: a shared tree may change during the run
    log.info("lukhas_gpu sources %s", sources)
    tag = args.tag or f"soak_{args.mode}" + ("_store" if args.store else "")
    model = builtin_model()
    queries = model.queries(2048)
    rank = lukhas_gpu.Rank(similarity=1.0, recency=0.3, importance=0.2, half_life=30 * 86400.0, now=NOW)
    cfg = lukhas_gpu.IndexConfig.preset("production", capacity=args.size, threads=args.threads,
                                        wal_sync="group")
    rss_start = common.settle()
    t0 = time.perf_counter()
    if args.store:
        index = lukhas_gpu.MemoryIndex.create(args.store, DIM, cfg)
    else:
        index = lukhas_gpu.MemoryIndex(DIM, cfg)
    soak = Soak(index, model, args, t0)
    soak.sample(force=True)
    soak.grow(16_384)
    if args.store:
        index.checkpoint()
        soak.ops["checkpoints"] += 1
    grow_s = time.perf_counter() - t0
    soak.sample(force=True)
    rss_grown = soak.samples[-1]["rss_anon"]
    grow_stats = {k: v for k, v in index.stats().items() if k not in ("capabilities", "config")}
    log.info("grown to %d memories in %.0f s; soaking (%s) for %.0f s", len(index), grow_s, args.mode, args.duration)

    soak.phase = "soak"
    floor = int(np.ceil(args.floor * args.size))
    t_soak = time.perf_counter()
    t_end = t_soak + args.duration
    next_ckpt = t_soak + args.checkpoint_every
    snap = None
    warm_end = t_soak + args.warmup * args.duration
    while time.perf_counter() < t_end:
        soak.cycle(queries, rank, floor, t_end)
        now = time.perf_counter()
        if args.store and now >= next_ckpt:
            index.checkpoint()
            soak.ops["checkpoints"] += 1
            next_ckpt = now + args.checkpoint_every
        if args.tracemalloc and snap is None and now >= warm_end:
            tracemalloc.start(8)
            snap = tracemalloc.take_snapshot()
        soak.sample()
    soak.sample(force=True)
    soak_s = time.perf_counter() - t_soak
    if snap is not None:
        top = tracemalloc.take_snapshot().compare_to(snap, "traceback")[:10]
        tracemalloc.stop()
        for stat in top:
            log.info("tracemalloc %+.1f kB in %+d blocks, most recent frame first:\n  %s", stat.size_diff / 1e3,
                     stat.count_diff, "\n  ".join(stat.traceback.format(limit=4, most_recent_first=True)))

    ops = dict(soak.ops)
    analysis = analyse(soak.samples, t_soak - t0, t_end - t0, args)
    correct = check(index, soak.live, queries, rank)
    end_stats = {k: v for k, v in index.stats().items() if k not in ("capabilities", "config")}
    rss_end, trimmed = rss()[0], common.settle()
    if args.store:
        index.checkpoint()
        index.close()
        with lukhas_gpu.MemoryIndex.open(args.store) as reopened:
            correct["reopened count matches"] = len(reopened) == len(soak.live)

    summary = {
        "mode": args.mode, "store": "durable (WAL group sync)" if args.store else "in-process",
        "size": args.size, "soak s": soak_s, "cycles": ops["cycles"],
        "queries": ops["queries"], "updated": ops["updated"], "deleted during soak": ops["deleted"],
        "added during soak": ops["added"] - args.size, "compactions": ops["compactions"],
        "checkpoints": ops["checkpoints"], "grow s": grow_s,
        "RssAnon after grow MB": rss_grown / MB,
        "RssAnon end MB": rss_end / MB, "RssAnon end after malloc_trim MB": trimmed / MB,
        "RssAnon before the index MB": rss_start / MB,
        "mean RssAnon (fit window) MB": analysis["mean RssAnon MB"],
        "RssAnon slope MB/h": analysis["RssAnon"]["MB/h"], "stderr MB/h": analysis["RssAnon"]["stderr MB/h"],
        "RssAnon B/op": analysis["RssAnon B/op"],
        "RssAnon rise MB (fit window)": analysis["RssAnon rise MB"],
        "largest step MB": analysis["largest step MB"],
        "RssAnon less free heap slope MB/h": analysis["RssAnon less free heap"]["MB/h"],
        "free heap slope MB/h": analysis["free heap"]["MB/h"],
        "stats anon_bytes slope MB/h": analysis["stats anon_bytes"]["MB/h"],
        "RssAnon less stats anon_bytes slope MB/h": analysis["RssAnon less stats anon_bytes"]["MB/h"],
        "row-linked bytes slope MB/h": analysis["row-linked bytes"]["MB/h"],
    }
    for key in ("rows added/h", "RssAnon B/row", "stderr B/row", "expected B/row", "excess B/row",
                "unaccounted B/row"):
        if key in analysis:
            summary[key] = analysis[key]
    summary.update({
        ("slope" if args.mode == "steady" else "excess") + " judged MB/h": analysis["judged MB/h"],
        "its stderr MB/h": analysis["judged stderr MB/h"],
        "same, less free heap MB/h": analysis["judged less free heap MB/h"],
        "threshold MB/h": analysis["threshold MB/h"], "correct": all(correct.values())})
    title = (f"soak {args.mode} ({summary['store']}): {args.size:,} memories, {soak_s / 60:.0f} min, "
             f"{common.today()}\n{analysis['verdict']}")
    payload = {"machine": common.machine(), "date": common.today(), "sources": sources,
               "args": vars(args), "summary": summary,
               "analysis": analysis, "correctness": correct, "grow_stats": grow_stats,
               "end_stats": end_stats, "samples": soak.samples}
    plot_path = PLOT_DIR / f"{tag}.png"
    plot(soak.samples, payload, plot_path, title)
    table = common.markdown_table([{"quantity": k, "value": v} for k, v in summary.items()])
    text = f"{table}\n\nVerdict: {analysis['verdict']}\n\nPlot: benchmarks/plots/{plot_path.name}"
    print(text)
    common.write_results(tag, payload, text)
    return payload


if __name__ == "__main__":
    main()
