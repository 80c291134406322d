"""Load on ``lukhas-gpu serve`` from separate client processes: QPS, latency, batch size.

On a real store (50k MiniLM embeddings of WordNet glosses, with their texts; queried with
WordNet example sentences), for 1, 16, 64 and 256 concurrent clients of single-query JSON
requests, it measures the batched server (``--max-batch 256``) and the same server with batching
off (``--max-batch 1``), and in the same run the in-process library (batched and one query per
call): the ratios are what this benchmark is for, since the machine may be shared. Then JSON vs
binary bodies for requests of 256 queries. ``--wire b64`` / ``--wire binary``: the single-query
requests with ``vectors_b64`` (base64 of float32 in the JSON body) or in the binary form (raw
float32 in, ids and scores out) instead of a JSON list of floats; the JSON list is the headline.
Each server runs one worker process a core by default (``--workers``, as a reader server is
deployed); the in-process library searches on one thread (``--threads``).

Clients: up to ``--procs`` processes (this file run with ``--client``), each holding its share
of the connections on one asyncio loop that writes prebuilt HTTP/1.1 requests and reads the
answers (keep-alive), so the clients cost little CPU; or, with ``--load wrk``, Debian's ``wrk``
(C, one thread: on a 2-core machine the clients share the server's cores, and wrk takes less of
them). Everything runs on loopback, each point
for ``--seconds``, after a warm-up.

    python -m benchmarks.bench_serve [--rows 50000] [--seconds 6] [--plot benchmarks/plots/serve_qps.png]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
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
_LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


# -- the client processes ------------------------------------------------------------------------
async def _connection(host, port, requests, start, stop, lat, errors):
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    while time.time() < start:
        await asyncio.sleep(min(0.01, start - time.time()))
    while True:
        t0 = time.perf_counter()
        if time.time() >= stop:
            break
        writer.write(requests[i % len(requests)])
        i += 1
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(_LENGTH.search(head).group(1)))
        if head[9:12] != b"200":
            errors[head[9:12].decode()] = errors.get(head[9:12].decode(), 0) + 1
            continue
        lat.append(time.perf_counter() - t0)
    writer.close()


def _request(host: str, v: np.ndarray, wire: str) -> bytes:
    """One single-query search request: a JSON body (``vectors``: a list of floats), a JSON body
    with ``vectors_b64`` (base64 of float32), or the binary form (raw float32 in, raw ids and
    scores out; ``k`` in the query string)."""
    if wire == "b64":
        body = json.dumps({"vectors_b64": base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode(),
                           "k": 10}).encode()
        return (b"POST /v1/search HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
    if wire == "binary":
        body = np.ascontiguousarray(v, dtype="<f4").tobytes()
        return (b"POST /v1/search?k=10 HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
                b"Accept: application/octet-stream\r\nX-Shape: 1,%d\r\nContent-Length: %d\r\n\r\n%s"
                % (host.encode(), len(v), len(body), body))
    body = json.dumps({"vectors": [v.tolist()], "k": 10}).encode()
    return (b"POST /v1/search HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))


def client_main(host: str, port: int, conns: int, start: float, stop: float, qfile: str, offset: int,
                wire: str = "json") -> None:
    """One client process: ``conns`` keep-alive connections; prints its latencies as JSON."""
    xq = np.load(qfile)
    requests = [_request(host, xq[(offset + j) % len(xq)], wire) for j in range(256)]
    lat: list[float] = []
    errors: dict = {}

    async def main():
        await asyncio.gather(*(_connection(host, port, requests[c % 7:] + requests[:c % 7], start, stop, lat, errors)
                               for c in range(conns)))

    asyncio.run(main())
    print(json.dumps({"lat": lat, "errors": errors}))


def run_load(url: str, clients: int, seconds: float, qfile: str, procs: int, warmup: float,
             wire: str = "json") -> dict:
    host, port = url.removeprefix("http://").split(":")
    n_procs = min(clients, procs)
    shares = [clients // n_procs + (1 if i < clients % n_procs else 0) for i in range(n_procs)]
    start = time.time() + 3.0 + warmup  # processes start, connect and warm up, then all measure together
    stop = start + seconds
    ps = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_serve", "--client", host, port, str(c),
                            repr(start - warmup), repr(start), repr(stop), qfile, str(i * 997), wire],
                           stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
          for i, c in enumerate(shares)]
    before = _batch_counters(url, wait_until=start - 0.5)  # during the warm-up, not in the window
    lat, errors = [], {}
    for p in ps:
        out, _ = p.communicate(timeout=seconds + warmup + 120)
        got = json.loads(out)
        lat += got["lat"]
        for k_, v in got["errors"].items():
            errors[k_] = errors.get(k_, 0) + v
    after = _batch_counters(url)
    a = np.array(lat) * 1e3
    dq, dc = after[0] - before[0], after[1] - before[1]
    return {"clients": clients, "qps": len(lat) / seconds, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "p999_ms": float(np.percentile(a, 99.9)),
            "mean_batch": dq / dc if dc else float("nan"), "errors": errors, "requests": len(lat)}


#: wrk's script: the requests of ``qfile`` prebuilt, one after another on each connection; at the
#: end, the exact percentiles as one JSON line.
_WRK_LUA = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "/v1/search", {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
done = function(s, lat, req)
  local e = s.errors
  io.write(string.format('{"requests": %%d, "us": %%d, "p50": %%d, "p99": %%d, "p999": %%d, '
    .. '"errors": %%d, "status": %%d}\\n',
    s.requests, s.duration, lat:percentile(50), lat:percentile(99), lat:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def run_load_wrk(url: str, clients: int, seconds: float, qfile: str, warmup: float) -> dict:
    """The same load from ``wrk`` (Debian's ``wrk``: C, one thread, keep-alive connections): a client
    that costs the shared cores far less than Python's, so the server's own ceiling shows."""
    xq = np.load(qfile)[:256]
    bodies = ",".join("[==[" + json.dumps({"vectors": [v.tolist()], "k": 10}) + "]==]" for v in xq)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA % bodies)
    try:
        cmd = ["wrk", "-t1", f"-c{clients}", "-s", f.name, url + "/v1/search"]
        subprocess.run([*cmd[:3], f"-d{max(1, round(warmup))}s", *cmd[3:]], check=True, capture_output=True)
        before = _batch_counters(url)
        ran = subprocess.run([*cmd[:3], f"-d{max(1, round(seconds))}s", *cmd[3:]], check=True,
                             capture_output=True, text=True)
        out = ran.stdout + ran.stderr
        after = _batch_counters(url)
    finally:
        os.unlink(f.name)
    found = re.search(r'\{"requests".*?\}', out)
    if found is None:
        raise RuntimeError(f"wrk printed no summary: {out[-2000:]}")
    got = json.loads(found.group(0))
    dq, dc = after[0] - before[0], after[1] - before[1]
    return {"clients": clients, "qps": got["requests"] / (got["us"] / 1e6), "p50_ms": got["p50"] / 1e3,
            "p99_ms": got["p99"] / 1e3, "p999_ms": got["p999"] / 1e3, "mean_batch": dq / dc if dc else float("nan"),
            "errors": {"socket": got["errors"], "status": got["status"]}, "requests": got["requests"]}


def _batch_counters(url: str, wait_until: float | None = None) -> tuple[float, float]:
    import httpx

    if wait_until is not None:
        time.sleep(max(0.0, wait_until - time.time()))
    text = httpx.get(url + "/metrics", timeout=60).text
    s = {m.group(1): float(m.group(2)) for m in re.finditer(r"^search_batch_queries_(sum|count) (\S+)$", text, re.M)}
    return s.get("sum", 0.0), s.get("count", 0.0)


# -- the server and the store --------------------------------------------------------------------
def start_server(store: str, *args: str, threads: int | None = None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.Popen([sys.executable, "-m", "lukhas_gpu.cli", "serve", store, "--port", "0", "--refresh-s", "0",
                          *args], stderr=subprocess.PIPE, env=env, text=True)
    url = re.search(r"on (http://\S+)", p.stderr.readline()).group(1)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                return p, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not start")


def stop_server(p) -> None:
    p.send_signal(signal.SIGTERM)
    p.wait(60)


def build_store(path: pathlib.Path, rows: int, tune: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The store (built once at ``path``) and the queries; ``tune``: the writer tunes it on the
    last 1,000 of them (recorded as its traffic, never sent by the clients), as a store written
    by a batch job and retuned on served queries is; else it keeps the config's ``nprobe``."""
    from benchmarks.datasets import wordnet_minilm
    from lukhas_gpu import MemoryIndex

    ds = wordnet_minilm(n_queries=10_000)
    xb, texts = ds.xb[:rows], ds.texts[:rows]
    if not (path / "CURRENT").exists():
        t0 = time.perf_counter()
        s = MemoryIndex.create(path, xb.shape[1], IndexConfigProduction())
        for a in range(0, rows, 10_000):
            s.add(xb[a:a + 10_000], contents=texts[a:a + 10_000])
        if tune:
            for a in range(len(ds.xq) - 1000, len(ds.xq), 250):
                s.search(ds.xq[a:a + 250], k=10)
            rep = s.tune()
            print(f"tuned: {rep['kind']} nprobe {rep.get('nprobe')} rerank {rep['rerank']}", file=sys.stderr)
        s.close()
        print(f"built {rows:,}-row store in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return xb, ds.xq


def IndexConfigProduction():
    from lukhas_gpu import IndexConfig

    return IndexConfig.preset("production")


def in_process(store: str, xq: np.ndarray, seconds: float) -> dict:
    """The library in this process on the same store: batched (256 per call) and one per call."""
    from lukhas_gpu import MemoryIndex

    index = MemoryIndex.open(store)
    index.search(xq[:256], k=10)
    out = {}
    for name, b in (("batched", 256), ("single", 1)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            index.search(xq[n % 8192: n % 8192 + b], k=10)
            n += b
        out[name] = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    reps = 20
    for i in range(reps):
        index.search(xq[i * 256:(i + 1) * 256], k=10)
    out["per_256_ms"] = (time.perf_counter() - t0) / reps * 1e3
    index.close()
    return out


def body_forms(url: str, xq: np.ndarray, reps: int) -> dict:
    """One client, requests of 256 queries: JSON in and out vs binary float32 in and out."""
    from lukhas_gpu.client import Client

    c = Client(url)
    import httpx

    out = {}
    with httpx.Client(timeout=60) as h:
        bodies = [json.dumps({"vectors": xq[i * 256:(i + 1) * 256].tolist(), "k": 10}).encode() for i in range(8)]
        for form in ("json", "binary"):
            ts = []
            for i in range(reps + 2):
                q = xq[(i % 8) * 256:((i % 8) + 1) * 256]
                t0 = time.perf_counter()
                if form == "json":
                    r = h.post(url + "/v1/search", content=bodies[i % 8], headers={"Content-Type": "application/json"})
                    r.raise_for_status()
                    np.asarray(r.json()["ids"])
                else:
                    c.search(q, k=10)
                ts.append(time.perf_counter() - t0)
            out[form + "_ms"] = float(np.median(ts[2:]) * 1e3)
    out["json_body_bytes"] = len(bodies[0])
    out["binary_body_bytes"] = 256 * xq.shape[1] * 4
    return out


#: Server processes by default: one a core (each has its own GIL: one process's event loop and
#: search threads share one, which held 64 clients to 0.39 of the in-process library on 2 cores
#: where two processes reached 0.53; RESULTS "Session 11 figures").
DEFAULT_WORKERS = max(1, min(os.cpu_count() or 1, 8))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--store", help="store directory (built there if absent; default: a temporary one)")
    ap.add_argument("--clients", default="1,16,64,256")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (ratios are medians of paired rounds)")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--procs", type=int, default=4, help="client processes at most")
    ap.add_argument("--load", choices=["python", "wrk"], default="python",
                    help="the clients: Python asyncio processes (default) or Debian's wrk (C, one thread)")
    ap.add_argument("--wire", choices=["json", "b64", "binary"], default="json",
                    help="the single-query requests' form: a JSON body with a list of floats (default; the "
                         "headline figure), JSON with vectors_b64 (base64 of float32), or the binary one "
                         "(float32 in, ids and scores out): the last two parse no JSON numbers")
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                    help="server processes of each server (`serve --workers`; default: one a core, as a reader "
                         "server is deployed; each has its own GIL and its own batcher, so batches are smaller; "
                         "mean_batch is then one worker's, whichever answers /metrics)")
    ap.add_argument("--search-threads", type=int, default=None,
                    help="the server's search threads (`serve --search-threads`; default: the server's own)")
    ap.add_argument("--tune", action="store_true",
                    help="tune the store on 1,000 held-out queries before serving it (default: the config's nprobe)")
    ap.add_argument("--reps", type=int, default=20, help="requests per body form")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/FAISS threads of the server and of the in-process library (default 1: on a "
                         "shared 2-core machine OpenMP's spinning threads cost 4x under contention)")
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "plots" / "serve_qps.png"))
    return ap


def main(argv=None) -> dict:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--client":
        a = sys.argv[2:]
        client_main(a[0], int(a[1]), int(a[2]), float(a[4]), float(a[5]), a[6], int(a[7]), a[8])
        return {}
    ap = _parser()
    args = ap.parse_args(argv)
    if args.load == "wrk" and args.wire != "json":
        ap.error("--load wrk sends JSON bodies only")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch and FAISS load, here and in the servers
    from benchmarks.common import machine, markdown_table, set_threads, today, write_results

    set_threads(args.threads)

    tmp = tempfile.TemporaryDirectory(prefix="bench_serve_")
    store = pathlib.Path(args.store) if args.store else pathlib.Path(tmp.name) / "store"
    _, xq = build_store(store, args.rows, tune=args.tune)
    qfile = str(pathlib.Path(tmp.name) / "queries.npy")
    np.save(qfile, xq[:4096])
    clients = [int(c) for c in args.clients.split(",")]

    # both servers up for the whole run, loaded in turn point by point (the order alternating),
    # the library measured at the start of every round: on a shared machine the figures compared
    # are measured seconds apart, and each ratio is a median over rounds of paired measurements
    servers = {}
    runs, forms, libs = [], {}, []
    try:
        for label, flags in (("batched (--max-batch 256)", ["--max-batch", "256"]),
                             ("unbatched (--max-batch 1)", ["--max-batch", "1"])):
            more = ["--search-threads", str(args.search_threads)] if args.search_threads else []
            more += ["--workers", str(args.workers)]
            servers[label] = start_server(str(store), *flags, *more, threads=args.threads)
        labels = list(servers)
        for rep in range(args.repeat):
            libs.append(in_process(str(store), xq, args.seconds))
            print(f"round {rep}: in-process batched {libs[-1]['batched']:,.0f} QPS, single "
                  f"{libs[-1]['single']:,.0f} QPS", file=sys.stderr)
            for i, c in enumerate(clients):
                for label in (labels if (i + rep) % 2 == 0 else labels[::-1]):
                    r = (run_load_wrk(servers[label][1], c, args.seconds, qfile, args.warmup) if args.load == "wrk"
                         else run_load(servers[label][1], c, args.seconds, qfile, args.procs, args.warmup,
                                       args.wire))
                    r.update(server=label, round=rep)
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr)
        forms = body_forms(servers[labels[0]][1], xq, args.reps)
    finally:
        for p, _ in servers.values():
            stop_server(p)
    lib = {key: float(np.median([x[key] for x in libs])) for key in libs[0]}
    forms["inprocess_256_ms"] = lib["per_256_ms"]
    rows = []
    for label in labels:
        for c in clients:
            rs = [r for r in runs if r["server"] == label and r["clients"] == c]
            row = {"server": label, "clients": c}
            for key in ("qps", "p50_ms", "p99_ms", "p999_ms", "mean_batch"):
                row[key] = float(np.median([r[key] for r in rs]))
            row["qps_range"] = f"{min(r['qps'] for r in rs):,.0f}-{max(r['qps'] for r in rs):,.0f}"
            rows.append(row)

    def paired(c, fn):
        return [fn(next(r for r in runs if r["round"] == rep and r["clients"] == c and r["server"] == labels[0]),
                   next(r for r in runs if r["round"] == rep and r["clients"] == c and r["server"] == labels[1]),
                   libs[rep]) for rep in range(args.repeat)]

    ratios = []
    for c in clients:
        bu = paired(c, lambda b, u, lb: b["qps"] / u["qps"])
        bl = paired(c, lambda b, u, lb: b["qps"] / lb["batched"])
        ratios.append({"clients": c, "batched/unbatched QPS": float(np.median(bu)),
                       "range b/u": f"{min(bu):.2f}-{max(bu):.2f}",
                       "batched server / in-process batched": float(np.median(bl)),
                       "range s/l": f"{min(bl):.2f}-{max(bl):.2f}",
                       "unbatched server / in-process 1 per call": float(np.median(
                           paired(c, lambda b, u, lb: u["qps"] / lb["single"])))})
    summary = {}
    if 64 in clients:
        r64 = next(r for r in ratios if r["clients"] == 64)
        summary = {"batched_vs_unbatched_qps_64": r64["batched/unbatched QPS"],
                   "server_vs_inprocess_batched_64": r64["batched server / in-process batched"],
                   "p99_ms_64": next(r["p99_ms"] for r in rows if r["clients"] == 64 and r["server"] == labels[0])}
    payload = {"date": today(), "machine": machine(), "rows": args.rows, "seconds": args.seconds,
               "repeat": args.repeat, "threads": args.threads, "load_form": args.load, "wire": args.wire,
               "workers": args.workers, "search_threads": args.search_threads or "default", "tuned": args.tune,
               "in_process": lib, "in_process_runs": libs,
               "load": rows, "ratios": ratios, "runs": runs, "summary": summary, "bodies_256": forms,
               "load_average": os.getloadavg()}
    cols = ["server", "clients", "qps", "qps_range", "p50_ms", "p99_ms", "p999_ms", "mean_batch"]
    table = markdown_table(rows, cols) + "\n\n" + markdown_table(ratios)
    table += (f"\n\nin-process library, same store, same run (median of {args.repeat} rounds): batched (256/call) "
              f"{lib['batched']:,.0f} QPS, one query per call {lib['single']:,.0f} QPS\n\n")
    table += markdown_table([forms], list(forms)) + "\n\n" + json.dumps(summary)
    table += (f"\n\nclients: {args.load}, requests: single-query {args.wire}, server processes: {args.workers}, "
              f"search threads: {args.search_threads or 'default'}")
    name = "serve" if args.load == "python" else f"serve_{args.load}"
    name += "" if args.wire == "json" else f"_{args.wire}"
    name += "_tuned" if args.tune else ""
    write_results(name if args.workers == DEFAULT_WORKERS else f"{name}_w{args.workers}", payload, table)
    print(table)
    if args.plot and args.load == "python" and args.wire == "json" and args.workers == DEFAULT_WORKERS \
            and not args.tune:
        plot(rows, lib, args.plot)
    tmp.cleanup()
    return payload


def plot(rows, lib, path) -> None:
    try:
        import matplotlib
    except ImportError:  # the figures are printed above; the plot needs the `bench` extra's matplotlib
        print(f"no plot written ({path}): matplotlib is not installed")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(r["server"] for r in rows):
        rs = [r for r in rows if r["server"] == label]
        ax1.plot([r["clients"] for r in rs], [r["qps"] for r in rs], "o-", label=label)
        ax2.plot([r["clients"] for r in rs], [r["p99_ms"] for r in rs], "o-", label=label)
    ax1.axhline(lib["batched"], ls="--", c="gray", label="in-process library, batched")
    ax1.axhline(lib["single"], ls=":", c="gray", label="in-process library, 1 query/call")
    for ax, name in ((ax1, "QPS (single-query requests)"), (ax2, "p99 latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.suptitle("lukhas-gpu serve, 50k MiniLM/WordNet store, loopback (shared 2-core machine)", fontsize=9)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
