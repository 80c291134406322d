"""``lukhas-gpu serve``: a real server in a subprocess on loopback, spoken to over real HTTP.

Search equals the library (merged batches included), auth, 413 from the headers alone, 429
under a flood, bad input, a reader that sees a batch job's writes, a writer whose acknowledged
adds survive a kill, /metrics as Prometheus text, the client.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import optional_import

optional_import("fastapi")
optional_import("uvicorn")
optional_import("prometheus_client")
httpx = optional_import("httpx")

from lukhas_gpu import Filter, MemoryIndex, Rank  # noqa: E402
from lukhas_gpu.client import BadRequest, Client, Overloaded, Unauthorized  # noqa: E402
from lukhas_gpu.serve import wire  # noqa: E402

from serve_helpers import env, server  # noqa: E402

DIM, N = 32, 3000
KEY = "k3y-0123456789abcdef-serve"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def data(clustered):
    xb, xq = clustered(N, DIM, n_queries=64, seed=5)
    return xb, xq


@pytest.fixture(scope="module")
def store(tmp_path_factory, data):
    """A trained store (IVF-PQ path) with contents, tags, timestamps and importance."""
    xb, _ = data
    path = tmp_path_factory.mktemp("serve") / "store"
    s = MemoryIndex.create(path, DIM)
    s.add(xb, contents=[f"memory {i}" for i in range(N)], tags=[["even"] if i % 2 == 0 else ["odd"] for i in range(N)],
          timestamps=1.7e9 + np.arange(N, dtype=np.float64), importance=(np.arange(N) % 10) / 10)
    s.train()
    s.close()
    return path


@pytest.fixture(scope="module")
def reader_url(store):
    with server(store, "--max-batch", "64", "--max-wait-ms", "50", "--refresh-s", "0") as url:
        yield url


@pytest.fixture()
def writable(store, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(store, path)
    return path


def _post(url, path, obj, **kw):
    return httpx.post(url + path, content=json.dumps(obj), headers={"Content-Type": "application/json",
                                                                     **kw.pop("headers", {})}, timeout=60, **kw)


def _error(r) -> str:
    return r.json()["status"]["error"]


def test_concurrent_searches_are_merged_and_equal_the_library(reader_url, store, data):
    _, xq = data
    lib = MemoryIndex.open(store)
    want = lib.search(xq, k=10)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda q: _post(reader_url, "/v1/search", {"vectors": [q.tolist()], "k": 10}), xq))
    assert all(r.status_code == 200 for r in got), [r.text for r in got if r.status_code != 200][:2]
    ids = np.array([r.json()["ids"][0] for r in got])
    scores = np.array([r.json()["scores"][0] for r in got], dtype=np.float32)
    np.testing.assert_array_equal(ids, want.ids)
    np.testing.assert_allclose(scores, want.scores, rtol=1e-6, atol=1e-6)
    # the batcher did merge: some search call served more than one request
    text = httpx.get(reader_url + "/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    fam = {f.name: f for f in text_string_to_metric_families(text)}["search_batch_requests"]
    samples = {s.name: s.value for s in fam.samples}
    assert samples["search_batch_requests_sum"] > samples["search_batch_requests_count"]
    # filtered, ranked, with contents, binary in and out: the library's answers too
    flt, rank = Filter(tags_all="even", since=1.7e9 + 100), Rank(similarity=1.0, importance=0.5, recency=0.2,
                                                                  half_life=500, now=1.7e9 + N)
    c = Client(reader_url)
    want = lib.search(xq[:5], k=7, where=flt, rank=rank)
    res = c.search(xq[:5], k=7, where=flt, rank=rank, with_content=True)
    np.testing.assert_array_equal(res.ids, want.ids)
    np.testing.assert_allclose(res.scores, want.scores, rtol=1e-6, atol=1e-6)
    assert res.contents == want.contents()
    res = c.search(xq[:5], k=7, where={"tags_all": "even", "since": "2023-11-14T22:15:00Z"}, rank=rank)
    want = lib.search(xq[:5], k=7, where=Filter(tags_all="even", since=1700000100), rank=rank)
    np.testing.assert_array_equal(res.ids, want.ids)
    one = c.search(xq[0], k=3)  # a 1-D query is a batch of one, unwrapped
    assert one.ids.shape == (3,) and one.scores.dtype == np.float32
    # fewer matches than k: padded with -1 / -inf (null in JSON)
    pad = c.search(xq[:2], k=5, where={"tags_all": "even", "since": 1.7e9 + N - 3})
    assert (pad.ids[:, 1:] == -1).all() and np.isneginf(pad.scores[:, 1:]).all()
    lib.close()


def test_bad_input_is_refused_with_a_message_naming_it(reader_url):
    ok = [0.1] * DIM
    cases = [
        ({"vectors": [[0.1] * (DIM - 1)], "k": 3}, 422, "31 dimensions"),
        ({"vectors": [ok, ok[:5]]}, 422, "vectors[1] has 5 dimensions"),
        ({"vectors": [ok], "k": 0}, 422, "k"),
        ({"vectors": [ok], "k": 10**6}, 422, "k"),
        ({"vectors": [[0.0] * DIM]}, 422, "all zeros"),
        ({"vectors": [ok], "where": {"tag": "x"}}, 422, "unknown keys ['tag']"),
        ({"vectors": [ok], "where": {"min_importance": 3}}, 422, "min_importance"),
        ({"vectors": [ok], "rank": {"similarity": -1}}, 422, "Rank.similarity"),
        ({"vectors": [ok], "bogus": 1}, 422, "bogus"),
        ({"k": 3}, 422, "vectors"),
        ({"vectors": [["a"] * DIM]}, 422, "numbers"),
        ({"vectors": [ok] * 2000, "k": 1000}, 422, "results exceed"),
    ]
    for body, status, words in cases:
        r = _post(reader_url, "/v1/search", body)
        assert r.status_code == status and words in _error(r), (body if len(str(body)) < 200 else words, r.text)
    r = httpx.post(reader_url + "/v1/search", content=b'{"vectors": [[1, 2', timeout=10)
    assert r.status_code == 400 and "invalid JSON" in _error(r)
    r = httpx.post(reader_url + "/v1/search", content=b'{"vectors": [[NaN]]}', timeout=10)
    assert r.status_code == 400
    nan = np.full((2, DIM), 0.5, dtype=np.float32)
    nan[1, 3] = np.nan
    r = httpx.post(reader_url + "/v1/search?k=3", content=nan.tobytes(), timeout=10,
                   headers={"Content-Type": "application/octet-stream", "X-Shape": f"2,{DIM}"})
    assert r.status_code == 422 and "vectors[1] contains NaN" in _error(r)
    r = httpx.post(reader_url + "/v1/search", content=nan.tobytes()[:-4], timeout=10,
                   headers={"Content-Type": "application/octet-stream", "X-Shape": f"2,{DIM}"})
    assert r.status_code == 422 and "bytes" in _error(r)
    r = httpx.get(reader_url + "/v1/memories/99999", timeout=10)
    assert r.status_code == 404 and "99999" in _error(r)
    r = httpx.get(reader_url + "/v1/memories/abc", timeout=10)
    assert r.status_code == 422
    r = httpx.delete(reader_url + "/v1/memories/1", timeout=10)
    assert r.status_code == 409 and "--mode r" in _error(r)
    r = _post(reader_url, "/v1/search", {"vectors": [ok], "target_recall": 0.9})
    from lukhas_gpu.serve.app import SUPPORTS_TARGET_RECALL

    if SUPPORTS_TARGET_RECALL:
        assert r.status_code == 200
    else:
        assert r.status_code == 422 and "target_recall is not supported" in _error(r)
    with pytest.raises(BadRequest, match="31 dimensions"):
        Client(reader_url).search(np.ones((1, DIM - 1), dtype=np.float32))


def test_search_refusals_answer_exact_bodies_and_the_same_twice(reader_url):
    """POST /v1/search is served before FastAPI's routing: its refusals keep their status codes
    and whole error bodies, also for parameters seen before (validated once, then cached)."""
    ok = [0.1] * DIM

    def exact(r, status, message):
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"status": {"error": message}, "time": 0.0}, r.text

    raw = {"Content-Type": "application/json"}
    for _ in range(2):  # the second round meets cached parameters
        r = httpx.post(reader_url + "/v1/search", content=b'{"vectors": [[1, 2', headers=raw, timeout=10)
        assert r.status_code == 400 and _error(r).startswith("invalid JSON: ") and r.json()["time"] == 0.0
        r = httpx.post(reader_url + "/v1/search", content=b'{"vectors": [[NaN]], "k": 3}', headers=raw, timeout=10)
        assert r.status_code == 400 and _error(r).startswith("invalid JSON: ")
        exact(_post(reader_url, "/v1/search", [ok]), 422, "the body must be a JSON object, got list")
        exact(_post(reader_url, "/v1/search", {"vectors": [ok[:-1]], "k": 3}), 422,
              f"vectors[0] has {DIM - 1} dimensions, the store's vectors have {DIM}")
        exact(_post(reader_url, "/v1/search", {"vectors": [ok, [1e39] * DIM], "k": 3}), 422,
              "vectors[1] holds a value beyond the float32 range")
        exact(_post(reader_url, "/v1/search", {"vectors": [ok, ok[:3] + [1e39] + ok[4:]], "k": 3}), 422,
              "vectors[1] holds a value beyond the float32 range")
        exact(_post(reader_url, "/v1/search", {"vectors": [ok], "k": 0}), 422,
              "k: Input should be greater than or equal to 1 (got 0)")
        exact(_post(reader_url, "/v1/search", {"vectors": [ok], "k": 3, "zz": 1, "aa": 2}), 422,
              "zz: Extra inputs are not permitted (got 1); aa: Extra inputs are not permitted (got 2)")
        exact(_post(reader_url, "/v1/search", {"k": 3}), 422, "vectors: required (a list of query vectors)")
        exact(_post(reader_url, "/v1/search", {"vectors": [ok], "where": {"until": "bad", "since": "worse"}}), 422,
              "where.until: 'bad' is neither epoch seconds nor an ISO-8601 date-time")  # the request's key order
        nan = np.full((2, DIM), 0.5, dtype=np.float32)
        nan[1, 3] = np.inf
        exact(httpx.post(reader_url + "/v1/search?k=3", content=nan.tobytes(), timeout=10,
                         headers={"Content-Type": "application/octet-stream", "X-Shape": f"2,{DIM}"}), 422,
              "vectors[1] contains NaN or inf")
        exact(httpx.post(reader_url + "/v1/search?k=0", content=nan[:1].tobytes(), timeout=10,
                         headers={"Content-Type": "application/octet-stream", "X-Shape": f"1,{DIM}"}), 422,
              "k: Input should be greater than or equal to 1 (got '0')")
        for k in (3, 4):  # a good search between the refusals, with parameters cached after the first round
            r = _post(reader_url, "/v1/search", {"vectors": [ok], "k": k})
            assert r.status_code == 200 and len(r.json()["ids"][0]) == k


def test_b64_vectors_answer_as_the_json_lists_do(reader_url):
    """The compact body (``vectors_b64``: base64 of float32) gives the JSON list's answer exactly;
    both forms at once, or a malformed one, are refused by name."""
    x = np.random.default_rng(5).standard_normal((3, DIM)).astype(np.float32)
    plain = _post(reader_url, "/v1/search", {"vectors": x.tolist(), "k": 4})
    packed = _post(reader_url, "/v1/search", {"vectors_b64": wire.vectors_to_b64(x), "k": 4})
    assert plain.status_code == packed.status_code == 200, packed.text
    assert packed.json()["ids"] == plain.json()["ids"] and packed.json()["scores"] == plain.json()["scores"]
    both = _post(reader_url, "/v1/search", {"vectors": x.tolist(), "vectors_b64": wire.vectors_to_b64(x)})
    assert both.status_code == 422 and _error(both) == "vectors and vectors_b64: give one of them"
    short = _post(reader_url, "/v1/search", {"vectors_b64": wire.vectors_to_b64(x[0, :-1]), "k": 4})
    assert short.status_code == 422 and _error(short).startswith(f"vectors_b64 holds {(DIM - 1) * 4} bytes")
    typed = _post(reader_url, "/v1/search", {"vectors_b64": 3, "k": 4})
    assert typed.status_code == 422 and _error(typed) == "vectors_b64 must be a base64 string, got int"


def test_api_key_and_413_from_the_headers_alone(store, tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    with server(store, "--api-key-file", str(keyfile), "--max-body-mb", "1", "--refresh-s", "0") as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.get(url + "/healthz").status_code == 200  # liveness needs no key
        for path in ("/readyz", "/metrics", "/v1/stats", "/openapi.json", "/v1/memories/1"):
            assert httpx.get(url + path).status_code == 401, path
            assert httpx.get(url + path, headers={"Authorization": f"Bearer {KEY}x"}).status_code == 401, path
            assert httpx.get(url + path, headers=auth).status_code == 200, path
        r = _post(url, "/v1/search", {"vectors": [[0.1] * DIM]})
        assert r.status_code == 401 and "API key" in _error(r) and r.headers["www-authenticate"] == "Bearer"
        with pytest.raises(Unauthorized):
            Client(url, api_key="wrong-key-0123456789").search(np.ones(DIM, dtype=np.float32))
        assert Client(url, api_key=KEY).search(np.ones(DIM, dtype=np.float32), k=2).ids.shape == (2,)

        # 70 MB declared, nothing sent: the answer comes from the headers alone
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 73400320\r\n\r\n")
            got = b""
            while chunk := s.recv(4096):  # the server answers and closes; the body was never sent
                got += chunk
        assert got.startswith(b"HTTP/1.1 413"), got
        assert b"Content-Length is 73,400,320" in got
        # a chunked body (no length declared) is cut off as it streams past the limit
        def chunks():
            for _ in range(40):
                yield b"[" * 65536
        r = httpx.post(url + "/v1/search", content=chunks(), headers=auth, timeout=30)
        assert r.status_code == 413 and "exceeds the limit" in _error(r)
        # the server is fine afterwards
        assert httpx.get(url + "/readyz", headers=auth).status_code == 200
        # the refusals of the search route are counted among its responses
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(url + "/metrics", headers=auth).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        counted = {s.labels["status"]: s.value for s in fams["rest_responses"].samples
                   if s.name.endswith("_total") and s.labels["endpoint"] == "/v1/search"}
        assert counted.get("401", 0) >= 2 and counted.get("413", 0) >= 2 and counted.get("200", 0) >= 1, counted


def test_a_flood_gets_429_with_retry_after_and_metrics_parse(store, data):
    from prometheus_client.parser import text_string_to_metric_families

    _, xq = data
    big = np.repeat(xq, 8, axis=0)[:256]  # 256 queries x k=200 per request: each search takes a while
    with server(store, "--max-batch", "1", "--max-queue", "256", "--refresh-s", "0") as url:
        c = Client(url)

        def one(_):
            try:
                c.search(big, k=200)
                return 200, None
            except Overloaded as e:
                return e.status, e.retry_after

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            got = list(pool.map(one, range(48)))
        codes = [g[0] for g in got]
        assert codes.count(429) > 0 and codes.count(200) > 0, codes
        assert set(codes) <= {200, 429}
        assert all(ra is not None and ra >= 1 for code, ra in got if code == 429)
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
        for name in ("rest_responses", "rest_responses_duration_seconds", "rest_rejected_requests",
                     "search_batch_queries", "search_batch_requests", "search_queue_depth", "collection_memories",
                     "collection_memory_bytes", "collection_recall_estimate", "collection_recall_target",
                     "reader_lag_seconds", "process_rss_anon_bytes"):
            assert name in fams, name
        rejected = {s.labels.get("reason"): s.value for s in fams["rest_rejected_requests"].samples
                    if s.name.endswith("_total")}
        assert rejected.get("queue_full") == codes.count(429)
        assert [s.value for s in fams["collection_memories"].samples] == [N]
        places = {s.labels["place"] for s in fams["collection_memory_bytes"].samples}
        assert {"anon", "mapped"} <= places


WRITER = """
import sys, numpy as np
from lukhas_gpu import MemoryIndex
store, seed, checkpoint = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
w = MemoryIndex.open(store, mode="w")
x = np.random.default_rng(seed).standard_normal((1, %d)).astype("float32")
ids = w.add(x, contents=["batch job %%d" %% seed])
print(int(ids[0]), flush=True)
w.close(checkpoint=checkpoint)
""" % DIM


def _batch_job(store, seed: int, checkpoint: bool) -> tuple[int, np.ndarray]:
    out = subprocess.run([sys.executable, "-c", WRITER, str(store), str(seed), "1" if checkpoint else "0"],
                         capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1]), np.random.default_rng(seed).standard_normal((1, DIM)).astype("float32")


def test_a_reader_sees_a_batch_jobs_writes_after_refresh(writable):
    with server(writable, "--refresh-s", "0") as url:  # refreshed on request only
        c = Client(url)
        # acknowledged in the log (no checkpoint): invisible until POST /v1/refresh, then searchable
        new_id, x = _batch_job(writable, 11, checkpoint=False)
        assert c.search(x, k=1).ids[0, 0] != new_id
        assert c.refresh()["added"] == 1
        assert c.search(x, k=1).ids[0, 0] == new_id
        assert c.get([new_id])[0].content == "batch job 11"
    with server(writable, "--refresh-s", "0.5") as url:
        c = Client(url)
        assert c.search(x, k=1).ids[0, 0] == new_id
        # a checkpoint publishes a new generation: the interval picks it up, no restart
        new_id2, x2 = _batch_job(writable, 12, checkpoint=True)
        t0 = time.monotonic()
        while c.search(x2, k=1).ids[0, 0] != new_id2:
            assert time.monotonic() - t0 < 10, "the reader never caught up"
            time.sleep(0.1)
        assert time.monotonic() - t0 < 3.0  # within the interval (0.5 s) plus a loaded machine's slack
        lag = [line for line in httpx.get(url + "/metrics").text.splitlines() if line.startswith("reader_lag_seconds")]
        assert float(lag[0].split()[1]) < 5


def test_a_writer_server_acknowledges_adds_that_survive_a_kill(writable, data):
    _, xq = data
    with server(writable, "--mode", "w") as url:
        c = Client(url)
        ids = c.add(xq[:3], contents=["a", b"\x00bytes", None], tags=[["t1"], ["t2"], []],
                    timestamps=[1.8e9, 1.8e9 + 1, 1.8e9 + 2], importance=[0.1, 0.2, 0.3])
        np.testing.assert_array_equal(ids, [N, N + 1, N + 2])
        got = c.get(ids)
        assert [m.content for m in got] == ["a", b"\x00bytes", None] and got[1].tags == ["t2"]
        assert got[2].timestamp == 1.8e9 + 2 and abs(got[0].importance - 0.1) < 0.01
        assert c.search(xq[0], k=1).ids[0] == N
        assert c.delete(ids[2:]) == 1
        with pytest.raises(BadRequest, match="no memory with id"):
            c.get(ids[2:])
        with pytest.raises(BadRequest, match="no memory with id"):
            c.delete(ids[2:])
        r = httpx.delete(url + f"/v1/memories/{int(ids[1])}")
        assert r.status_code == 200 and r.json()["deleted"] == 1
        r = _post(url, "/v1/memories", {"vectors": [[0.1] * DIM], "importance": [2.0]})
        assert r.status_code == 422 and "importance" in _error(r)
        assert httpx.post(url + "/v1/refresh").status_code == 409
        # links and dedup (index/memops.py): routes of the writer, logged like the rest
        r = _post(url, "/v1/link", {"src": [0, 1], "dst": [1, 2], "kind": "cause", "weight": [1.0, 0.5]})
        assert r.status_code == 200 and r.json()["linked"] == 2
        r = _post(url, "/v1/links", {"ids": [0, 1, 2], "direction": "out"}).json()
        assert (r["indptr"], r["ids"], r["kinds"], r["weights"]) == ([0, 1, 2, 2], [1, 2], ["cause"] * 2, [1.0, 0.5])
        assert _post(url, "/v1/lineage", {"id": 0, "depth": 2}).json()["ids"] == [1, 2]
        # a search's hits followed along the links (N -> 0), as the library's search(follow_links=)
        assert _post(url, "/v1/link", {"src": [N], "dst": [0]}).json()["linked"] == 1
        r = _post(url, "/v1/search", {"vectors": [xq[0].tolist()], "k": 1, "follow_links": 1}).json()
        assert r["ids"] == [[N, 0]] and r["linked_from"] == [[-1, N]], r
        assert _post(url, "/v1/search", {"vectors": [xq[0].tolist()], "k": 1, "follow_links": 99}).status_code == 422
        assert _post(url, "/v1/unlink", {"src": [1], "dst": [2]}).json()["unlinked"] == 1
        assert _post(url, "/v1/link", {"src": [0], "dst": [10**9]}).status_code in (404, 422)
        r = _post(url, "/v1/memories", {"vectors": [xq[6].tolist()] * 2, "contents": ["same", "same"],
                                        "dedup": "exact"}).json()
        assert r["ids"][0] == r["ids"][1] and r["merged"] == 1
        assert c.checkpoint().startswith("gen-")
        last = c.add(xq[5], contents="after the checkpoint")
        # kill -9: what was acknowledged is in the log
        pid = int(subprocess.run(["pgrep", "-f", f"serve {writable} "], capture_output=True,
                                 text=True).stdout.split()[0])
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    back = MemoryIndex.open(writable)
    assert back.contains([N, N + 1, N + 2, int(last[0])]).tolist() == [True, False, False, True]
    assert back.links([0, 1]).ids.tolist() == [1]
    assert back.get(last)[0].content == "after the checkpoint"
    back.close()


def test_two_workers_share_a_store(store, data):
    _, xq = data
    with server(store, "--workers", "2", "--refresh-s", "0") as url:
        lib = MemoryIndex.open(store)
        c = Client(url)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: c.search(xq[i:i + 1], k=5).ids, range(16)))
        np.testing.assert_array_equal(np.concatenate(got), lib.search(xq[:16], k=5).ids)
        spec = httpx.get(url + "/openapi.json").json()
        assert {"/v1/search", "/v1/memories", "/v1/memories/{memory_id}", "/v1/stats"} <= set(spec["paths"])
        assert "application/octet-stream" in spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
        lib.close()


def test_importing_the_client_and_the_cli_loads_no_server_stack():
    code = ("import sys, lukhas_gpu.client; from lukhas_gpu.cli import build_parser; build_parser(); "
            "bad = [m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'starlette', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_slow_and_stalled_clients_leave_room_for_keyed_requests(tmp_path):
    """8 stalled keyed uploads and 100 slow-loris connections (all on 127.0.0.1, more than the
    per-client cap): every keyed search and body-carrying POST answers 200 within 3 s; stalled
    bodies get 408, slow headers are closed; refusals appear in the metrics (401s among the
    responses too); the recall target gauge shows the store's, the lag gauge /readyz's figure."""
    from prometheus_client.parser import text_string_to_metric_families

    from benchmarks.bench_serve_abuse import Attack
    from lukhas_gpu import IndexConfig

    path = tmp_path / "small"
    s = MemoryIndex.create(path, DIM, config=IndexConfig(target_recall=0.9, auto_tune=False))
    s.add(np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32))
    s.close()
    keyfile = tmp_path / "key"
    keyfile.write_text(KEY + "\n")
    auth = {"Authorization": f"Bearer {KEY}"}
    log = []
    with server(path, "--api-key-file", str(keyfile), "--refresh-s", "0", "--header-timeout-s", "1.5",
                "--body-timeout-s", "1.5", "--max-connections-per-client", "64", log=log) as url:
        # a binary body (a read-only view) and a value past float32: answers, and no warning in the log
        r = httpx.post(url + "/v1/search?k=2", content=np.ones((2, DIM), "<f4").tobytes(), timeout=30,
                       headers={**auth, "Content-Type": "application/octet-stream", "X-Shape": f"2,{DIM}"})
        assert r.status_code == 200
        r = _post(url, "/v1/search", {"vectors": [[1e39] * DIM]}, headers=auth)
        assert r.status_code == 422 and "float32 range" in _error(r)
        host, port = url.removeprefix("http://").split(":")
        with Attack(host, int(port), slow=100, stalled=8, key=KEY, reconnect_s=0.5) as attack:
            time.sleep(0.5)
            for _ in range(3):
                for path_, body in (("/v1/search", {"vectors": [[0.5] * DIM], "k": 3}),
                                    ("/v1/memories/lookup", {"ids": [0, 1]})):
                    t0 = time.perf_counter()
                    r = _post(url, path_, body, headers=auth)  # a fresh connection each time
                    assert r.status_code == 200 and time.perf_counter() - t0 < 3.0, (path_, r.status_code)
                time.sleep(0.3)
            time.sleep(1.5)  # past both timeouts
            counts = attack.counts()
        assert counts["answers"].get("408", 0) >= 8, counts  # every stalled upload timed out
        assert counts["closed_by_server"] >= 100, counts  # slow headers: evicted or timed out
        assert httpx.get(url + "/v1/stats").status_code == 401
        ready = httpx.get(url + "/readyz", headers=auth).json()
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics", headers=auth).text)}
    rejected = {s.labels["reason"]: s.value for s in fams["rest_rejected_requests"].samples
                if s.name.endswith("_total")}
    assert rejected.get("body_timeout", 0) >= 8 and rejected.get("unauthorized", 0) >= 1, rejected
    assert rejected.get("evicted", 0) + rejected.get("header_timeout", 0) >= 100, rejected
    statuses = {s.labels["status"] for s in fams["rest_responses"].samples if s.name.endswith("_total")}
    assert {"200", "401", "408"} <= statuses, statuses
    assert [s.value for s in fams["collection_recall_target"].samples] == [0.9]
    lag = fams["reader_lag_seconds"].samples[0].value
    assert ready["lag_s"] <= lag < ready["lag_s"] + 5.0
    assert "Warning" not in log[0] and "not writable" not in log[0] and "overflow" not in log[0], log[0][-2000:]


def test_a_damaged_store_file_answers_500_naming_it_not_a_client_error():
    from lukhas_gpu.serve import http_errors
    from lukhas_gpu.store.layout import CorruptStoreError
    from lukhas_gpu.store.walreader import WalHeaderError

    for e in (CorruptStoreError("s/gen-000002/content.bin", "the content record of row 7 fails its CRC-32"),
              WalHeaderError("s/wal.log", "damaged header")):  # a ValueError too: still the server's fault
        status, message, _ = http_errors.describe(e, None, None)
        assert status == 500 and e.path in message


def test_a_writer_server_keeps_namespaces_and_windows(writable, data):
    """add with namespace and windows, search with "namespace" / "as_of" (JSON and binary)."""
    _, xq = data
    with server(writable, "--mode", "w") as url:
        c = Client(url)
        ids = c.add(xq[:4], contents=["a", "b", "c", "d"], namespace=["t1", "t1", "t2", "t1"],
                    valid_from=[0, 0, 0, 100], valid_to=[10**10, 50, 10**10, 10**10])
        got = c.get(ids)
        assert [m.namespace for m in got] == ["t1", "t1", "t2", "t1"] and got[1].valid_to == 50
        for with_content in (False, True):
            res = c.search(xq[:4], k=10, namespace="t1", with_content=with_content)
            assert set(res.ids.ravel().tolist()) - {-1} == {int(ids[0]), int(ids[3])}
            res = c.search(xq[:4], k=10, namespace="t1", as_of=60, with_content=with_content)
            assert set(res.ids.ravel().tolist()) - {-1} == {int(ids[0])}
        r = _post(url, "/v1/search", {"vectors": xq[:1].tolist(), "k": 5, "namespace": "t2",
                                      "where": {"namespace": "t1"}})
        assert r.status_code == 422 and "disagree" in _error(r)
        r = _post(url, "/v1/search", {"vectors": xq[:1].tolist(), "k": 5, "where": {"namespace": "t2"}})
        assert r.json()["ids"][0][0] == int(ids[2])


def test_namespace_lookups_drop_and_purge_over_http(writable, reader_url, data):
    """GET /v1/namespaces, lookups in a namespace, POST /v1/namespaces/drop and /v1/purge_expired
    on a writer; bad names (unknown, too long) and a reader's refusal."""
    from lukhas_gpu.util.bounds import MAX_NAMESPACE_BYTES

    _, xq = data
    with server(writable, "--mode", "w") as url:
        c = Client(url)
        base = c.namespaces()
        ids = c.add(xq[:4], namespace=["n1", "n1", "n2", "n2"], valid_to=[10**10, 50, 10**10, 60])
        assert c.namespaces() == {**base, "n1": 2, "n2": 2}
        assert [m.id for m in c.get(ids[:2], namespace="n1")] == ids[:2].tolist()
        r = httpx.get(f"{url}/v1/memories/{int(ids[2])}", params={"namespace": "n2"}, timeout=60)
        assert r.status_code == 200 and r.json()["namespace"] == "n2"
        for ns in ("n2", "nobody"):  # another namespace, one that does not exist: not found there
            r = _post(url, "/v1/memories/lookup", {"ids": [int(ids[0])], "namespace": ns})
            assert r.status_code == 404 and repr(ns) in _error(r)
        r = httpx.get(f"{url}/v1/memories/{int(ids[0])}", params={"namespace": "n2"}, timeout=60)
        assert r.status_code == 404
        long = "x" * (MAX_NAMESPACE_BYTES + 1)
        for r in (_post(url, "/v1/memories/lookup", {"ids": [int(ids[0])], "namespace": long}),
                  _post(url, "/v1/namespaces/drop", {"namespace": long}),
                  _post(url, "/v1/memories/lookup", {"ids": [int(ids[0])], "namespace": "é" * MAX_NAMESPACE_BYTES}),
                  _post(url, "/v1/namespaces/drop", {"name": "n1"}),
                  _post(url, "/v1/purge_expired", {"now": "yesterday"})):
            assert r.status_code == 422, r.text
        r = _post(url, "/v1/namespaces/drop", {"namespace": "nobody"})
        assert r.status_code == 404 and "nobody" in _error(r)
        assert c.purge_expired(now=55) == 1  # ids[1]: its window ended at 50
        assert c.namespaces()["n1"] == 1
        r = httpx.post(url + "/v1/purge_expired", timeout=60)  # no body: the server's clock
        assert r.status_code == 200 and r.json()["deleted"] == 1  # ids[3], ended at 60
        assert c.drop_namespace("n1") == 1 and "n1" not in c.namespaces()
        assert c.namespaces() == {**base, "n2": 1}
    for path, obj in (("/v1/namespaces/drop", {"namespace": "n1"}), ("/v1/purge_expired", {})):
        r = _post(reader_url, path, obj)
        assert r.status_code == 409 and "--mode r" in _error(r)
    assert httpx.get(reader_url + "/v1/namespaces", timeout=60).json()["namespaces"]
