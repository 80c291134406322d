"""Does ``lukhas-gpu serve`` keep answering keyed requests under slow and stalled clients?

Two kinds of abuse, from one address on loopback, held for ``--seconds``:

* *slow-loris*: connections that trickle header bytes (one every ``--byte-every-s``) and never
  complete them; each reconnects a second after the server closes it;
* *stalled uploads*: keyed chunked ``POST /v1/search`` requests that send their headers and then
  nothing; each reconnects a second after its answer.

Meanwhile a keyed client makes a fresh connection every half second for a search, then for a
``POST /v1/memories/lookup`` (a body-carrying POST), and records each status and latency; the
same probes run first with no abuse (the baseline). Scenarios: ``--stalled`` with each count of
``--slow`` (default 8 stalled with 300 slow -- the target: every keyed search 200 within 3 s --
and with 2,100 slow, past the 2,048 connections of the default ``--max-connections``). The
server's refusals by reason come from its ``/metrics``.

    python -m benchmarks.bench_serve_abuse [--slow 300,2100] [--stalled 8] [--seconds 20]

:class:`Attack` is the abuse itself (also used by ``tests/test_serve.py``, with fewer connections).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET_S = 3.0


class Attack:
    """``slow`` slow-loris connections and ``stalled`` stalled uploads against ``host:port``, on
    an asyncio loop in a thread of its own, from entering the context to leaving it. Counts:
    ``opened`` connections, ``closed`` by the server, ``answers`` (status -> count) received."""

    def __init__(self, host: str, port: int, *, slow: int, stalled: int, key: str | None = None,
                 byte_every_s: float = 1.0, reconnect_s: float = 1.0):
        self.host, self.port, self.slow, self.stalled, self.key = host, port, slow, stalled, key
        self.byte_every_s, self.reconnect_s = byte_every_s, reconnect_s
        self.opened = self.closed = self.failed = 0
        self.answers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="attack", daemon=True)

    def __enter__(self):
        self._thread.start()
        deadline = time.monotonic() + 30
        while self.opened < self.slow + self.stalled and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)

    def counts(self) -> dict:
        return {"opened": self.opened, "closed_by_server": self.closed, "connect_failed": self.failed,
                "answers": {str(k): v for k, v in sorted(self.answers.items())}}

    async def _main(self):
        tasks = [asyncio.create_task(self._slow(i)) for i in range(self.slow)]
        tasks += [asyncio.create_task(self._upload()) for _ in range(self.stalled)]
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connect(self):
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.failed += 1
            return None

    async def _until_answer(self, reader, writer, trickle: bytes | None) -> None:
        """Trickle ``trickle`` byte by byte (or send nothing) until the server answers or closes."""
        i = 0
        while not self._stop.is_set():
            if trickle is not None:
                writer.write(trickle[i % len(trickle):i % len(trickle) + 1])
                i += 1
            try:
                data = await asyncio.wait_for(reader.read(4096), self.byte_every_s)
            except asyncio.TimeoutError:
                continue
            if data:
                m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
                if m:
                    self.answers[int(m.group(1))] = self.answers.get(int(m.group(1)), 0) + 1
            self.closed += 1
            return

    async def _session(self, first: bytes, trickle: bytes | None):
        while not self._stop.is_set():
            conn = await self._connect()
            if conn is None:
                await asyncio.sleep(self.reconnect_s)
                continue
            reader, writer = conn
            self.opened += 1
            try:
                writer.write(first)
                await self._until_answer(reader, writer, trickle)
            except (ConnectionError, OSError):
                self.closed += 1
            finally:
                writer.close()
            await asyncio.sleep(self.reconnect_s)

    async def _slow(self, i: int):
        await asyncio.sleep((i % 100) / 100 * self.byte_every_s)  # spread the bytes over the second
        await self._session(b"G", b"ET /v1/stats HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 4000)

    async def _upload(self):
        auth = b"Authorization: Bearer " + self.key.encode() + b"\r\n" if self.key else b""
        await self._session(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth
                            + b"Transfer-Encoding: chunked\r\n\r\n", None)


def probe(url: str, key: str, dim: int, *, rounds: int, every_s: float = 0.5, timeout: float = 10.0) -> list[dict]:
    """A keyed search and a keyed lookup (POST with a body) on fresh connections, ``rounds`` times."""
    import httpx

    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    search = json.dumps({"vectors": [[1.0] * dim], "k": 5})
    out = []
    for _ in range(rounds):
        for name, path, body in (("search", "/v1/search", search), ("lookup", "/v1/memories/lookup", '{"ids": [0]}')):
            t0 = time.perf_counter()
            try:
                with httpx.Client(timeout=timeout) as c:  # a new connection each time
                    status = c.post(url + path, content=body, headers=auth).status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            out.append({"probe": name, "status": status, "seconds": time.perf_counter() - t0})
        time.sleep(every_s)
    return out


def rejected(url: str, key: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=30).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'rest_rejected_requests_total\{reason="(\w+)"\} (\S+)',
                                                                 text)}


def start_server(store: str, keyfile: str, *args: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "lukhas_gpu.cli", "serve", store, "--port", "0", "--refresh-s", "0",
                          "--api-key-file", keyfile, *args], stderr=subprocess.PIPE, env=env, text=True)
    url = re.search(r"on (http://\S+)", p.stderr.readline()).group(1)
    import httpx

    key = pathlib.Path(keyfile).read_text().strip()
    for _ in range(900):
        try:
            if httpx.get(url + "/readyz", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code == 200:
                return p, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not start")


def summarise(label: str, probes: list[dict]) -> dict:
    row = {"scenario": label}
    for name in ("search", "lookup"):
        ps = [p for p in probes if p["probe"] == name]
        secs = np.array([p["seconds"] for p in ps])
        ok = [p for p in ps if p["status"] == 200]
        row[f"{name} 200/n"] = f"{len(ok)}/{len(ps)}"
        row[f"{name} p50 ms"] = float(np.median(secs) * 1e3)
        row[f"{name} max ms"] = float(secs.max() * 1e3)
        row[f"{name} ok within {TARGET_S:g} s"] = all(p["status"] == 200 and p["seconds"] <= TARGET_S for p in ps)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--slow", default="300,2100", help="slow-loris connections, one scenario each")
    ap.add_argument("--stalled", type=int, default=8, help="stalled uploads in every scenario")
    ap.add_argument("--seconds", type=float, default=20.0, help="probing time per scenario, under the abuse")
    args = ap.parse_args(argv)
    from benchmarks.common import machine, markdown_table, today, write_results
    from lukhas_gpu import MemoryIndex

    tmp = tempfile.TemporaryDirectory(prefix="bench_serve_abuse_")
    store, keyfile = pathlib.Path(tmp.name) / "store", pathlib.Path(tmp.name) / "key"
    key = "abuse-bench-0123456789abcdef"
    keyfile.write_text(key + "\n")
    x = np.random.default_rng(0).standard_normal((args.rows, args.dim)).astype(np.float32)
    s = MemoryIndex.create(store, args.dim)
    s.add(x, contents=[f"memory {i}" for i in range(args.rows)])
    s.close()
    rounds = max(2, int(args.seconds / 0.5))
    p, url = start_server(str(store), str(keyfile))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    rows, raw = [], {}
    try:
        probe(url, key, args.dim, rounds=2)  # warm-up
        base = probe(url, key, args.dim, rounds=rounds)
        rows.append(summarise("no abuse", base))
        raw["no abuse"] = {"probes": base}
        for slow in [int(v) for v in args.slow.split(",")]:
            label = f"{args.stalled} stalled + {slow} slow-loris"
            before = rejected(url, key)
            with Attack(host, int(port), slow=slow, stalled=args.stalled, key=key) as attack:
                time.sleep(2.0)  # every connection open and trickling
                got = probe(url, key, args.dim, rounds=rounds)
                counts = attack.counts()
            after = rejected(url, key)
            row = summarise(label, got)
            row["attacker connections"] = counts["opened"]
            rows.append(row)
            raw[label] = {"probes": got, "attack": counts,
                          "server_rejected": {k: v - before.get(k, 0.0) for k, v in after.items()}}
            print(json.dumps({label: {**row, **raw[label]["server_rejected"]}}), file=sys.stderr)
            time.sleep(12)  # the last slow connections time out before the next scenario
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        tmp.cleanup()
    payload = {"date": today(), "machine": machine(), "rows": args.rows, "dim": args.dim, "seconds": args.seconds,
               "target_s": TARGET_S, "summary": rows, "scenarios": raw, "load_average": os.getloadavg()}
    table = markdown_table(rows)
    table += "\n\nserver refusals under each scenario: " + json.dumps(
        {k: v.get("server_rejected") for k, v in raw.items() if "server_rejected" in v})
    write_results("serve_abuse", payload, table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
