"""The server's parts without a server: the batcher (merging, keys, bounds, timeouts, a bad
request among good ones), the wire forms (filters, rankings, binary bodies) and the options."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time

import numpy as np
import pytest

from lukhas_gpu import Filter, Rank
from lukhas_gpu.serve import wire
from lukhas_gpu.serve.batcher import Batcher, QueueFull
from lukhas_gpu.serve.options import ServeOptions, read_api_key

from conftest import optional_import


class _Recorder:
    """A real blocking search stand-in: id = the query's first value, score = its second;
    negative first values are bad input. Records every call's size."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple[tuple, int]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, key, q):
        with self.lock:
            self.calls.append((key, len(q)))
        time.sleep(self.delay)
        if (q[:, 0] < 0).any():
            raise ValueError("a negative query")
        k = key[0]
        return np.repeat(q[:, :1].astype(np.int64), k, axis=1), np.repeat(q[:, 1:2], k, axis=1)




@contextlib.contextmanager
def _on_loopback(asgi, protocol, **config):
    """``asgi`` served by uvicorn with the ``protocol`` class on a free 127.0.0.1 port (yielded),
    in a thread, stopped on exit."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(asgi, http=protocol, loop="asyncio", lifespan="on",
                                           log_level="warning", **config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


def _read_until(sock, end: bytes) -> bytes:
    """What ``sock`` sends until it ends with ``end`` (a closed socket fails the test)."""
    got = b""
    while not got.endswith(end):
        chunk = sock.recv(1000)
        assert chunk, got
        got += chunk
    return got

async def _lifespan(receive, send) -> None:
    """A stub ASGI app's lifespan: every startup/shutdown message completed."""
    while True:
        m = await receive()
        await send({"type": m["type"] + ".complete"})
        if m["type"] == "lifespan.shutdown":
            return

def _run(coro):
    return asyncio.run(coro)


def _batcher(rec, **kw):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    opts = {"max_batch": 64, "max_wait_s": 0.05, "max_queue": 10_000, **kw}
    return Batcher(rec, pool, **opts), pool


def _q(i: float, n: int = 1) -> np.ndarray:
    return np.array([[i + j, (i + j) / 10] for j in range(n)], dtype=np.float32)


def test_concurrent_requests_are_merged_and_split_back_in_order():
    rec = _Recorder()
    seen = []

    async def main():
        b, pool = _batcher(rec, observe=lambda nq, nr, s: seen.append((nq, nr)))
        b.start()
        got = await asyncio.gather(*(b.search((3,), _q(10 * i, n=1 + i % 3), 5) for i in range(30)))
        await b.stop()
        pool.shutdown()
        return got

    got = _run(main())
    for i, (ids, scores) in enumerate(got):
        n = 1 + i % 3
        assert ids.shape == (n, 3) and ids[:, 0].tolist() == [10 * i + j for j in range(n)]
        np.testing.assert_allclose(scores[:, 0], (10 * i + np.arange(n)) / 10, rtol=1e-6)
    assert len(rec.calls) < 30 and sum(n for _, n in rec.calls) == sum(1 + i % 3 for i in range(30))
    assert all(n <= 64 for _, n in rec.calls)
    assert sum(r for _, r in seen) == 30 and max(r for _, r in seen) > 1


def test_max_batch_bounds_a_call_and_keys_are_never_mixed():
    rec = _Recorder()

    async def main():
        b, pool = _batcher(rec, max_batch=4)
        b.start()
        reqs = [b.search((2 if i % 2 else 3,), _q(i), 5) for i in range(20)]
        reqs.append(b.search((2,), _q(100, n=9), 5))  # larger than a batch: runs alone
        got = await asyncio.gather(*reqs)
        await b.stop()
        pool.shutdown()
        return got

    got = _run(main())
    assert [g[0].shape[1] for g in got[:20]] == [2 if i % 2 else 3 for i in range(20)]
    assert got[20][0][:, 0].tolist() == list(range(100, 109))
    assert sorted(n for _, n in rec.calls if n > 4) == [9]
    assert all(n <= 4 for _, n in rec.calls if n != 9)


def test_a_full_queue_refuses_with_a_retry_hint():
    rec = _Recorder(delay=0.2)

    async def main():
        b, pool = _batcher(rec, max_batch=1, max_wait_s=0, max_queue=3)
        b.start()
        first = asyncio.ensure_future(b.search((1,), _q(0), 5))
        await asyncio.sleep(0.05)  # running: the queue is empty again
        queued = [asyncio.ensure_future(b.search((1,), _q(i), 5)) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as e:
            await b.search((1,), _q(9), 5)
        assert e.value.retry_after >= 1 and "3 queries waiting" in str(e.value)
        got = await asyncio.gather(first, *queued)
        await b.stop()
        pool.shutdown()
        return got

    assert [int(g[0][0, 0]) for g in _run(main())] == [0, 1, 2, 3]


def test_a_timed_out_request_is_dropped_and_the_others_go_on():
    rec = _Recorder(delay=0.3)

    async def main():
        b, pool = _batcher(rec, max_batch=1, max_wait_s=0)
        b.start()
        slow = asyncio.ensure_future(b.search((1,), _q(0), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await b.search((1,), _q(1), 0.05)  # queued behind the slow one, then gives up
        assert b.depth in (0, 1)
        ok = await b.search((1,), _q(2), 5)
        await slow
        await b.stop()
        pool.shutdown()
        return ok

    assert int(_run(main())[0][0, 0]) == 2
    assert [n for _, n in rec.calls] == [1, 1]  # the dropped query never ran


def test_a_bad_request_fails_alone_in_a_merged_batch():
    rec = _Recorder()

    async def main():
        b, pool = _batcher(rec)
        b.start()
        got = await asyncio.gather(*(b.search((1,), _q(-5 if i == 3 else i), 5) for i in range(8)),
                                   return_exceptions=True)
        await b.stop()
        pool.shutdown()
        return got

    got = _run(main())
    assert isinstance(got[3], ValueError)
    assert [int(g[0][0, 0]) for i, g in enumerate(got) if i != 3] == [0, 1, 2, 4, 5, 6, 7]


def test_filters_and_rankings_round_trip_through_json():
    flt = Filter(tags_all=["a", "b"], tags_none="x", since=10.0, until=20.5, min_importance=0.25)
    assert wire.parse_where(wire.where_to_json(flt)) == flt
    meta = Filter(tags_any="a", meta={"author": "ann",
                                      "$or": [{"n": {"$in": [1, 2.5]}}, {"$not": {"x": {"$exists": True}}}]})
    assert wire.parse_where(json.loads(json.dumps(wire.where_to_json(meta)))) == meta
    assert wire.parse_where({"since": "1970-01-01T00:00:10Z", "until": "1970-01-01T00:00:20.5"}) == \
        Filter(since=10.0, until=20.5)
    assert wire.parse_where({}) is None and wire.parse_where(None) is None
    rank = Rank(similarity=0.5, recency=1.0, importance=0.2, half_life=60, now=100.0)
    assert wire.parse_rank(wire.rank_to_json(rank)) == rank
    with pytest.raises(ValueError, match=r"unknown keys \['tagz'\]"):
        wire.parse_where({"tagz": "a"})
    with pytest.raises(ValueError, match="ISO-8601"):
        wire.parse_where({"since": "yesterday"})
    with pytest.raises(TypeError, match="where.tags_any"):
        wire.parse_where({"tags_any": 3})


def test_binary_bodies_round_trip_and_are_checked():
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    body, shape = wire.vectors_to_bytes(x)
    np.testing.assert_array_equal(wire.vectors_from_bytes(body, shape, None, 7, max_rows=10), x)
    with pytest.raises(ValueError, match="7 dimensions, the store's are 8"):
        wire.vectors_from_bytes(body, shape, None, 8, max_rows=10)
    with pytest.raises(ValueError, match="at most 4"):
        wire.vectors_from_bytes(body, shape, None, 7, max_rows=4)
    with pytest.raises(ValueError, match="float32"):
        wire.vectors_from_bytes(body, shape, "float64", 7, max_rows=10)
    with pytest.raises(ValueError, match="X-Shape"):
        wire.vectors_from_bytes(body, "5;7", None, 7, max_rows=10)
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    scores = np.array([[0.9, 0.5, -np.inf], [0.3, 0.2, 0.1]], dtype=np.float32)
    got_ids, got_scores = wire.results_from_bytes(*wire.results_to_bytes(ids, scores))
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_scores, scores)
    assert wire.content_from_json(wire.content_to_json(b"\x00\xff")) == b"\x00\xff"
    with pytest.raises(ValueError, match="vectors\\[1\\] contains NaN"):
        wire.vectors_from_json([[1.0, 2.0], [float("nan"), 1.0]], 2, max_rows=5)


def test_b64_vectors_equal_the_json_lists_and_are_checked():
    """``vectors_b64`` (base64 of float32) decodes to exactly what the JSON list of the same
    float32 values gives; every malformed form is named."""
    x = np.random.default_rng(3).standard_normal((6, 5)).astype(np.float32)
    packed = wire.vectors_to_b64(x)
    got = wire.vectors_from_b64(packed, 5, max_rows=6)
    np.testing.assert_array_equal(got, wire.vectors_from_json(x.tolist(), 5, max_rows=6))
    assert got.dtype == np.float32 and got.shape == (6, 5)
    np.testing.assert_array_equal(wire.vectors_from_b64(wire.vectors_to_b64(x[2]), 5, max_rows=1), x[2:3])
    with pytest.raises(ValueError, match="more than 5 vectors of 5 float32"):
        wire.vectors_from_b64(packed, 5, max_rows=5)
    with pytest.raises(ValueError, match="vectors_b64: invalid base64"):
        wire.vectors_from_b64(packed[:-4] + "!!!!", 5, max_rows=6)
    with pytest.raises(ValueError, match="holds 116 bytes, not whole vectors of 5 float32 \\(20 bytes each\\)"):
        wire.vectors_from_b64(wire.vectors_to_b64(x.reshape(-1)[:29]), 5, max_rows=6)
    with pytest.raises(ValueError, match="holds 0 bytes"):
        wire.vectors_from_b64("", 5, max_rows=6)
    with pytest.raises(TypeError, match="vectors_b64 must be a base64 string, got list"):
        wire.vectors_from_b64([1.0], 5, max_rows=6)
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="vectors_b64\\[4\\] contains NaN or inf"):
        wire.vectors_from_b64(wire.vectors_to_b64(bad), 5, max_rows=6)


def test_options_are_bounded(tmp_path):
    assert ServeOptions("s").host == "127.0.0.1"
    assert ServeOptions("s", max_batch=8).max_queue == 1024
    for bad in ({"max_batch": 0}, {"port": 70000}, {"mode": "rw"}, {"max_body_mb": float("nan")},
                {"mode": "w", "workers": 2}, {"max_wait_ms": -1}, {"header_timeout_s": 0},
                {"body_timeout_s": float("inf")}, {"max_connections_per_client": 0}, {"api_key": "short"}):
        with pytest.raises(ValueError):
            ServeOptions("s", **bad)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_api_key(tmp_path / "short")
    (tmp_path / "key").write_text("  0123456789abcdefXYZ \nignored\n")
    assert read_api_key(tmp_path / "key") == "0123456789abcdefXYZ"
    o = ServeOptions("s", api_key_file=str(tmp_path / "key"))
    assert o.api_key == "0123456789abcdefXYZ" and "XYZ" not in o.to_json() and "XYZ" not in repr(o)
    assert ServeOptions.from_json(o.to_json()).api_key == o.api_key


def test_the_guard_charges_bodies_by_the_bytes_received_and_times_out_stalled_ones():
    optional_import("orjson")
    from lukhas_gpu.serve.limits import Guard

    release = None
    seen = []

    async def app(scope, receive, send):  # holds each request until released
        seen.append((await receive())["body"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def request(n: int | None):
        headers = [(b"transfer-encoding", b"chunked")] if n is None else [(b"content-length", str(n).encode())]
        return {"type": "http", "path": "/v1/search", "method": "POST", "headers": headers}

    def body(*chunks, stall=False):
        it = iter(chunks)

        async def receive():
            try:
                data = next(it)
            except StopIteration:
                await asyncio.sleep(3600 if stall else 0)
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": data, "more_body": stall or data is not chunks[-1]}
        return receive

    async def call(guard, scope, receive):
        sent = []

        async def send(m):
            sent.append(m)

        await guard(scope, receive, send)
        return (sent[0]["status"], dict(sent[0]["headers"])) if sent else (None, {})

    async def main():
        nonlocal release
        release = asyncio.Event()
        guard = Guard(app, api_key=None, max_body=100, max_inflight=250, body_timeout_s=0.2)
        # four uploads that declare a body (or none) and send nothing hold no budget, and time out
        t0 = time.monotonic()
        stalled = [asyncio.ensure_future(call(guard, request(n), body(stall=True))) for n in (100, 100, None, None)]
        await asyncio.sleep(0.05)
        assert guard.inflight == 0
        held = [asyncio.ensure_future(call(guard, request(100), body(b"x" * 60, b"y" * 40))) for _ in range(2)]
        await asyncio.sleep(0.02)
        assert guard.inflight == 200 and seen == [b"x" * 60 + b"y" * 40] * 2
        status, headers = await call(guard, request(100), body(b"z" * 100))  # 300 > 250 held
        assert status == 503 and headers[b"retry-after"] == b"1"
        status, _ = await call(guard, request(None), body(b"z" * 30, b"z" * 30, stall=True))  # 260 > 250
        assert status == 503 and guard.inflight == 200
        assert [(await s)[0] for s in stalled] == [408] * 4
        assert time.monotonic() - t0 < 2
        assert (await call(guard, request(101), body(b"")))[0] == 413  # from the header alone
        assert (await call(guard, request(None), body(b"a" * 30, b"a" * 80)))[0] == 413  # as it streams in
        release.set()
        assert [(await h)[0] for h in held] == [200, 200]
        assert guard.inflight == 0
        assert (await call(guard, request(None), body(b"a" * 10, b"a" * 90)))[0] == 200
        assert seen[-1] == b"a" * 100 and guard.inflight == 0
        assert (await call(guard, request(50), body(b"a" * 10, stall=True)))[0] == 408
        assert guard.inflight == 0  # given back on a refusal mid-body
        msgs = iter([{"type": "http.request", "body": b"a" * 10, "more_body": True}, {"type": "http.disconnect"}])

        async def leaves():
            return next(msgs)
        assert await call(guard, request(50), leaves) == (None, {})  # the client left: no answer
        assert guard.inflight == 0

    _run(main())


def test_the_connection_table_makes_room_by_closing_the_oldest_waiting_connection():
    optional_import("uvicorn")
    from lukhas_gpu.serve.conns import ConnectionTable

    reasons = []
    table = ConnectionTable(max_connections=5, per_client=3, header_timeout_s=1.0, reject=reasons.append)

    class Conn:
        def __init__(self, client):
            self.client, self.closed = client, False

        def lukhas_close(self, reason):
            self.closed = True
            table.drop(self, self.client)
            table.rejected(reason)

    def connect(client):
        c = Conn(client)
        if not table.admit(c, client):
            return None
        table.wait(c, client)
        return c

    a = [connect("a") for _ in range(3)]
    table.busy(a[1], "a")  # a request of a[1] is being answered
    a3 = connect("a")  # over the per-client cap: the oldest waiting of "a" goes
    assert a[0].closed and not a[1].closed and not a[2].closed and reasons == ["evicted"]
    table.wait(a[2], "a")  # a[2] answered a request and waits for the next: now the newest
    a4 = connect("a")
    assert a3.closed and not a[2].closed
    b = [connect("b") for _ in range(2)]
    assert table.open == 5 and table.by_client == {"a": 3, "b": 2}
    c = connect("c")  # over the total: the oldest waiting anywhere (a[2]) goes
    assert a[2].closed and c is not None and table.open == 5
    for conn in (a4, *b, c):
        table.busy(conn, conn.client)
    assert connect("d") is None  # every connection busy: refused, nothing counted
    assert table.open == 5 and "d" not in table.by_client and len(table.waiting) == 0
    for conn in (a[1], a4, *b, c):
        table.drop(conn, conn.client)
    assert table.open == 0 and table.by_client == {} and table.waiting_by_client == {}


def test_extreme_rankings_decay_without_a_warning():
    """A server's log must not fill with numpy warnings: an age past float64 over a tiny half-life
    decays to exactly 0, silently."""
    import warnings

    r = Rank(similarity=1.0, recency=0.5, half_life=1e-300, now=1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior = r.prior(np.array([0.0, 1e300]), np.zeros(2, np.float32), 1e300)
    assert prior.tolist() == [0.0, 0.5]


@pytest.mark.parametrize("kind", ["h11", "httptools"])
def test_both_protocols_close_slow_headers_and_make_room(kind):
    """uvicorn in a thread on 127.0.0.1 with each guarded protocol: the oldest waiting connection
    of an address at its cap is closed for a new one, headers that do not complete in time or
    grow past MAX_HEADER_BYTES close theirs, and a whole request still gets its answer, twice on
    one kept-alive connection."""
    optional_import("uvicorn")  # skips without the serve extra
    import socket

    from lukhas_gpu.serve import conns
    from lukhas_gpu.serve.limits import Guard

    cls = conns.GuardedH11 if kind == "h11" else conns.GuardedHttpTools
    if cls is None:
        pytest.skip("httptools is not installed")

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    reasons = []
    table = conns.ConnectionTable(max_connections=100, per_client=3, header_timeout_s=0.5, reject=reasons.append)
    guard = Guard(app, api_key=None, max_body=1000, connections=table)
    with _on_loopback(guard, cls, limit_concurrency=None) as port:

        def connect():
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            time.sleep(0.05)  # accepted and counted before the next one
            return s

        def answer(s) -> bytes:
            return _read_until(s, b"ok")

        def closed(s) -> bool:  # the server closes it (after an answer, maybe: h11 sends a 400 first)
            try:
                while s.recv(4096):
                    pass
                return True
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False

        slow = [connect() for _ in range(3)]
        slow[0].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # incomplete headers
        good = connect()  # a 4th from this address: the oldest waiting one (slow[0]) is closed
        assert closed(slow[0])
        for _ in range(2):  # kept alive: two requests on one connection
            good.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(good).startswith(b"HTTP/1.1 200")
        big = connect()  # evicts slow[1]
        big.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (conns.MAX_HEADER_BYTES + 10))
        assert closed(big) and closed(slow[1])
        t0 = time.monotonic()
        assert closed(slow[2]) and time.monotonic() - t0 < 2.0  # header timeout (0.5 s from connecting)
        # h11 refuses headers past its own limit (16 KiB) first: httptools has none, the table's applies
        assert {"evicted", "header_timeout", *(["header_bytes"] if kind == "httptools" else [])} <= set(reasons)
        for s in (*slow, good, big):
            s.close()
        time.sleep(0.2)
        assert table.open == 0 and table.by_client == {}


def test_a_scrape_reports_the_lag_readyz_judges_without_waiting_for_a_slow_stats():
    """A refresh stuck behind the index's lock: /metrics answers within its one-second wait for
    stats(), with the lag of now (the figure /readyz reports), not the lag after the refresh."""
    optional_import("fastapi")
    import types

    from prometheus_client.parser import text_string_to_metric_families

    from lukhas_gpu.serve.app import _State

    class Slow:
        dim = 4
        parts = types.SimpleNamespace(tuned=types.SimpleNamespace(target=0.95))
        config = types.SimpleNamespace(target_recall=0.9)

        def __len__(self):
            return 7

        def stats(self):
            time.sleep(3.0)
            return {"memory": {"anon_bytes": 1}}

    st = _State(ServeOptions("s", refresh_s=1.0))
    try:
        st.index = Slow()
        st._show_target()
        st.last_refresh = time.monotonic() - 12.0
        ok, why = st.ready()
        assert not ok and "12." in why

        async def main():
            t0 = time.monotonic()
            text = await st.scrape()
            return text, time.monotonic() - t0

        text, seconds = _run(main())
        fams = {f.name: f for f in text_string_to_metric_families(text.decode())}
        assert seconds < 2.5
        assert 12.0 <= fams["reader_lag_seconds"].samples[0].value < 14.0
        assert fams["collection_recall_target"].samples[0].value == 0.95  # the tuning's, over the config's
        assert fams["collection_memories"].samples[0].value == 7
    finally:
        st.search_pool.shutdown(wait=False)
        st.other_pool.shutdown(wait=True)


# -- the traffic ring (the dashboard's and /metrics' recent searches) ------------------------------
def test_traffic_quantiles_match_an_exact_reference():
    from lukhas_gpu.serve.traffic import Traffic, quantile

    bounds = np.array([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1])
    rng = np.random.default_rng(3)
    lat = rng.lognormal(np.log(0.008), 0.6, 5000)
    counts = np.bincount(np.searchsorted(bounds, lat, side="left"), minlength=len(bounds) + 1)
    for q in (0.5, 0.9, 0.99):
        got = quantile(bounds, counts, q)
        b = int(np.searchsorted(bounds, np.quantile(lat, q), side="left"))  # the exact quantile's bucket
        lo = 0.0 if b == 0 else bounds[b - 1]
        assert lo <= got <= bounds[min(b, len(bounds) - 1)] + 1e-12, q
    assert np.isnan(quantile(bounds, np.zeros(len(bounds) + 1), 0.5))
    assert quantile(bounds, np.array([0] * len(bounds) + [3]), 0.5) == bounds[-1]  # overflow: the last bound

    now = [1000.0]
    t = Traffic(bounds, window_s=60, clock=lambda: now[0])
    for s in range(120):  # two windows: the first one's seconds are overwritten, never summed
        now[0] = 1000.0 + s
        for _ in range(2 if s < 60 else 5):
            t.observe(0.003, error=s % 10 == 0)
    now[0] = 1120.0
    out = t.summary(30)
    assert out["requests"] == 150 and out["qps"] == 5.0 and out["errors_per_s"] == pytest.approx(3 * 5 / 30)
    assert 0.002 <= out["p50"] <= 0.005 and 0.002 <= out["p99"] <= 0.005
    assert t.summary(10_000)["window_s"] == 59  # bounded by the ring
    series = t.series(10)
    assert len(series) == 5 and series[-1]["t"] == 0 and all(p["qps"] == 5.0 for p in series)
    now[0] = 1300.0  # silence: nothing recent
    assert t.summary(60)["requests"] == 0 and np.isnan(t.summary(60)["p99"])


def test_traffic_buckets_equal_numpy_searchsorted_on_seeded_latencies():
    from lukhas_gpu.serve.traffic import Traffic

    bounds = np.array([0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 1.0])
    rng = np.random.default_rng(11)
    lat = np.concatenate([rng.lognormal(np.log(0.004), 1.5, 3000), bounds, np.nextafter(bounds, 0), [0.0, 99.0]])
    t = Traffic(bounds, window_s=60, clock=lambda: 500.0)
    for x in lat.tolist():
        t.observe(x)
    want = np.bincount(np.searchsorted(bounds, lat, side="left"), minlength=len(bounds) + 1)
    np.testing.assert_array_equal(t._counts[500 % 60], want)


# -- the fast paths of a search request ------------------------------------------------------------
def test_json_vectors_one_range_check_names_what_the_detailed_checks_name():
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((6, 4)).tolist()
    got = wire.vectors_from_json(rows, 4, max_rows=8)
    np.testing.assert_array_equal(got, np.array(rows, dtype=np.float64).astype(np.float32))
    assert got.dtype == np.float32
    edge = float(np.finfo(np.float32).max)
    assert wire.vectors_from_json([[edge, -edge, 0.0, 1.0]], 4, max_rows=1).tolist() == [[edge, -edge, 0.0, 1.0]]
    for bad, message in (([[1.0] * 4, [1.0, float("inf"), 1.0, 1.0]], "vectors\\[1\\] contains NaN or inf"),
                         ([[1e39] * 4, [1.0, float("nan"), 1.0, 1.0]], "vectors\\[1\\] contains NaN or inf"),
                         ([[1.0] * 4, [1.0, 1.0, -1e39, 1.0]], "vectors\\[1\\] holds a value beyond the float32")):
        with pytest.raises(ValueError, match=message):
            wire.vectors_from_json(bad, 4, max_rows=8)


class _Transport:
    """What a socket would have sent: one entry per write."""

    def __init__(self):
        self.sent, self.closed = [], False

    def write(self, data):
        assert not self.closed
        self.sent.append(bytes(data))

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_extra_info(self, name):
        return ("127.0.0.1", 1) if name == "peername" else None


def test_a_response_head_leaves_with_its_body_in_one_write():
    from lukhas_gpu.serve.conns import JoinedWrites

    async def main():
        raw = _Transport()
        t = JoinedWrites(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        assert raw.sent == []  # held until its body
        t.write(memoryview(b"{}"))
        assert raw.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # an interim answer is never held
        assert raw.sent[-1] == b"HTTP/1.1 100 Continue\r\n\r\n"
        t.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # no body follows: written on the loop's next pass
        await asyncio.sleep(0)
        assert raw.sent[-1] == b"HTTP/1.1 204 No Content\r\n\r\n" and len(raw.sent) == 3
        t.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
        t.close()  # what is held leaves before the close
        assert raw.sent[-1].startswith(b"HTTP/1.1 400") and raw.closed
        await asyncio.sleep(0)
        assert len(raw.sent) == 4  # the pending pass writes nothing twice, nothing after the close
        assert t.get_extra_info("peername") == ("127.0.0.1", 1) and t.is_closing()

    _run(main())


@pytest.mark.parametrize("kind", ["h11", "httptools"])
def test_a_body_that_came_with_its_headers_is_read_without_a_timer(kind, monkeypatch):
    """uvicorn's request cycle says when its body is there already: the guard reads it without
    the body timeout's timer; a body still on its way is read under the timer (and arrives)."""
    optional_import("uvicorn")  # skips without the serve extra
    import socket

    from lukhas_gpu.serve import conns, limits

    cls = conns.GuardedH11 if kind == "h11" else conns.GuardedHttpTools
    if cls is None:
        pytest.skip("httptools is not installed")
    timed = []
    within = limits._within

    async def counting(receive, seconds):
        timed.append(seconds)
        return await within(receive, seconds)

    monkeypatch.setattr(limits, "_within", counting)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        body = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    guard = limits.Guard(app, api_key=None, max_body=1000, body_timeout_s=5.0)
    with _on_loopback(guard, cls) as port:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"

        def answer() -> bytes:
            return _read_until(s, b"hello")

        s.sendall(head + b"hello")  # whole
        assert answer().startswith(b"HTTP/1.1 200") and timed == []
        s.sendall(head)  # the body a moment later: read under the timer
        time.sleep(0.2)
        s.sendall(b"hello")
        assert answer().startswith(b"HTTP/1.1 200") and len(timed) >= 1
        s.close()
