"""Shared benchmark helpers: memory readings, timing, recall, result files."""
from __future__ import annotations

import contextlib
import gc
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time
from datetime import date

import numpy as np

OUT_DIR = pathlib.Path(__file__).resolve().parent / "out"


def rss_anon() -> int:
    """Anonymous resident memory of this process, bytes (RssAnon in /proc/self/status)."""
    from lukhas_gpu.util.memtrim import rss_anon as read

    value = read()
    if value is None:
        raise RuntimeError("RssAnon not found in /proc/self/status")
    return value


def settle() -> int:
    """Collect garbage and give freed heap back to the OS, then read RssAnon."""
    from lukhas_gpu.util.memtrim import trim

    gc.collect()
    trim()
    return rss_anon()


def set_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


def timed(fn, *, repeat: int = 5, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs; returns (s, last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def latencies(fn, queries: np.ndarray, n: int = 200) -> tuple[float, float]:
    """p50 / p99 single-query latency in ms over the first ``n`` queries (after one warm-up)."""
    fn(queries[:1])
    ts = []
    for i in range(min(n, len(queries))):
        t0 = time.perf_counter()
        fn(queries[i: i + 1])
        ts.append(time.perf_counter() - t0)
    a = np.array(ts) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def recall_at(ids: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean |top-k(ids) ∩ top-k(gt)| / k."""
    ids = np.asarray(ids)[:, :k]
    gt = np.asarray(gt)[:, :k]
    hits = sum(len(np.intersect1d(a[a >= 0], b)) for a, b in zip(ids, gt))
    return hits / (k * len(gt))


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def today() -> str:
    return date.today().isoformat()


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(rows[0])

    def fmt(v):
        if isinstance(v, float):
            if v != v:
                return "-"
            if abs(v) >= 1000:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict, table: str) -> pathlib.Path:
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    (OUT_DIR / f"{name}.md").write_text(table + "\n")
    return path


def dir_bytes(path) -> int:
    """Apparent size of every regular file under ``path``, bytes."""
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


def saved_bytes(save) -> tuple[int, float]:
    """Call ``save(directory)`` on a new temporary directory; return (bytes written there, seconds).

    The directory is removed afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="bench_save_") as d:
        t0 = time.perf_counter()
        save(pathlib.Path(d))
        sec = time.perf_counter() - t0
        return dir_bytes(d), sec


@contextlib.contextmanager
def work_dir(keep: str | None, prefix: str):
    """The directory a benchmark's parts share: ``keep`` (created, kept), else a temporary one."""
    if keep:
        d = pathlib.Path(keep)
        d.mkdir(parents=True, exist_ok=True)
        yield d
    else:
        with tempfile.TemporaryDirectory(prefix=prefix) as t:
            yield pathlib.Path(t)
