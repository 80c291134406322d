"""A store written by ``lukhas-gpu ingest``, then read by ``lukhas-gpu serve``: ready how soon, idle how quietly.

The operator's pipeline of issue "Serve in production": a batch job ingests real memories (MiniLM
embeddings of WordNet glosses with their texts; ``--rows`` of them, held-out order) into a new
store, then a reader server starts on it. Measured, in this order:

* the ingest's wall time (it leaves the store trained, tuned and checkpointed);
* the reader's start: from the process spawn to ``/readyz`` answering 200, and the first search;
* sequential searches (held-out WordNet example sentences as queries): latency p50 / p99;
* the reader idle: CPU seconds of the server process over ``--idle-s`` seconds with no request
  (utime + stime from ``/proc``), as a fraction of one core;
* a write's visibility: a writer process adds one memory; how long until the reader serves it.

    python -m benchmarks.bench_ready [--rows 50000] [--idle-s 30]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from lukhas_gpu.cli import main; sys.exit(main())", *args]


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _write_input(tmp: pathlib.Path, rows: int, seed: int):
    from benchmarks.datasets import wordnet_minilm

    ds = wordnet_minilm()
    order = np.random.default_rng(seed).permutation(len(ds.xb))[:rows]
    np.save(tmp / "emb.npy", ds.xb[order])
    with open(tmp / "payloads.jsonl", "w", encoding="utf-8") as f:
        for i in order:
            f.write(json.dumps({"content": ds.texts[i], "tags": ["wordnet"]}) + "\n")
    return ds.xq


def _write_visibility(http, url: str, store: pathlib.Path, tmp: pathlib.Path, new: np.ndarray) -> dict:
    """Another process (an ingest) writes one memory; seconds until the reader serves it."""
    np.save(tmp / "one.npy", new[None])
    (tmp / "one.jsonl").write_text(json.dumps({"content": "a memory written after start"}) + "\n")
    t1 = time.perf_counter()
    subprocess.run(_cli("ingest", str(store), str(tmp / "one.npy"), "--payloads", str(tmp / "one.jsonl")),
                   check=True, stdout=subprocess.DEVNULL)
    written = time.perf_counter()
    while "written after start" not in http.post(url + "/v1/search", json={
            "vectors": new[None].tolist(), "k": 1, "with_content": True}).text:
        if time.perf_counter() - written > 120:
            raise RuntimeError("the write never showed")
        time.sleep(0.05)
    return {"ingest_one_s": round(written - t1, 2), "write_visible_after_s": round(time.perf_counter() - written, 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--searches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import httpx

    out: dict = {"rows": args.rows, "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        tmp = pathlib.Path(d)
        xq = _write_input(tmp, args.rows, args.seed)
        store = tmp / "store"
        t0 = time.perf_counter()
        subprocess.run(_cli("ingest", str(store), str(tmp / "emb.npy"), "--payloads", str(tmp / "payloads.jsonl"),
                            "--text-index"), check=True, stdout=subprocess.DEVNULL)
        out["ingest_s"] = round(time.perf_counter() - t0, 2)

        t0 = time.perf_counter()
        proc = subprocess.Popen(_cli("serve", str(store), "--port", "0"), stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True)
        try:
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", proc.stderr.readline())
            assert m, "the server announced no address"
            url = m.group(1)
            with httpx.Client(timeout=30) as http:
                while True:
                    try:
                        if http.get(url + "/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.perf_counter() - t0 > 600:
                        raise RuntimeError("not ready after 600 s")
                    time.sleep(0.05)
                out["ready_s"] = round(time.perf_counter() - t0, 2)
                body = lambda i: {"vectors": xq[i % len(xq)][None].tolist(), "k": 10}  # noqa: E731
                t1 = time.perf_counter()
                http.post(url + "/v1/search", json=body(0)).raise_for_status()
                out["first_search_ms"] = round((time.perf_counter() - t1) * 1e3, 1)
                lat = []
                for i in range(1, args.searches + 1):
                    t1 = time.perf_counter()
                    http.post(url + "/v1/search", json=body(i)).raise_for_status()
                    lat.append(time.perf_counter() - t1)
                out["search_ms_p50"] = round(float(np.percentile(lat, 50)) * 1e3, 2)
                out["search_ms_p99"] = round(float(np.percentile(lat, 99)) * 1e3, 2)
                c0, w0 = _cpu_s(proc.pid), time.perf_counter()
                time.sleep(args.idle_s)
                out["idle_core_fraction"] = round((_cpu_s(proc.pid) - c0) / (time.perf_counter() - w0), 4)
                stats = http.get(url + "/v1/stats").json()
                out["reader_tuned"] = stats.get("tuning", stats.get("tuned"))

                out.update(_write_visibility(http, url, store, tmp, np.asarray(xq[-1], np.float32)))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
