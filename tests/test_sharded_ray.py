"""ShardedIndex with one Ray actor per shard, and the Ray Serve recipe over HTTP, on a real local
Ray cluster (one per module): the answers equal the local mode's."""
from __future__ import annotations

import concurrent.futures
import json
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from lukhas_gpu import Filter, MemoryIndex, Rank
from lukhas_gpu.distributed import ShardedIndex, rootfiles
from lukhas_gpu.serve import wire
from lukhas_gpu.store.layout import CorruptStoreError

from conftest import optional_import
from sharded_helpers import DAY, build_root, config, make_data

ray = optional_import("ray")
# Ray Serve's own pydantic models warn on import
pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

N, SHARDS, K = 1200, 2, 5
TEXTS = ["w3 w17 w250", "w1 w2", "w399 w5 w5"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    return make_data(N, nq=8, seed=11)


@pytest.fixture(scope="module")
def root(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("ray") / "root"
    build_root(root, data, SHARDS, config())
    return root


@pytest.fixture(scope="module")
def local(root):
    with ShardedIndex.open(root) as index:
        yield index


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_actors_answer_like_the_local_mode(cluster, root, local, data):
    rank = Rank(0.7, 0.2, 0.1, half_life=3 * DAY, now=data.now)
    where = Filter(tags_any=["a"], since=data.now - 20 * DAY)
    with ShardedIndex.open(root, actors=True) as sh:
        assert sh.actors and len(sh) == N
        _same(sh.search(data.q, K), local.search(data.q, K))
        _same(sh.search(data.q, K, where=where, rank=rank), local.search(data.q, K, where=where, rank=rank))
        _same(sh.search(data.q[:3], K, text=TEXTS, sparse=data.sparse[:3]),
              local.search(data.q[:3], K, text=TEXTS, sparse=data.sparse[:3]))
        res = sh.search(data.q[:2], K)
        assert res.contents() == local.search(data.q[:2], K).contents()
        ids = res.ids.ravel()
        assert [m.id for m in sh.get(ids)] == ids.tolist() and sh.contains(ids).all()
        assert sh.stats()["count"] == N and sh.verify()["ok"]
        with pytest.raises(KeyError, match="names no shard"):
            sh.get([5 << 32])
        with pytest.raises(ValueError, match="unknown or deleted"):  # raised in the actor, unwrapped
            sh.get([(1 << 32) | 10**6])
        extra = make_data(7, nq=1, seed=12)
        with MemoryIndex.open(rootfiles.shard_dir(root, 0), mode="w") as writer:
            writer.add(**extra.rows(0, 7))
            assert [r["added"] for r in sh.refresh()] == [7, 0] and len(sh) == N + 7
            local.refresh()
        _same(sh.search(extra.x, 1), local.search(extra.x, 1))


def test_an_actor_that_cannot_open_its_shard_names_it(cluster, root, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    gen = sorted((copy / "shard-00001").glob("gen-*"))[-1]
    (gen / "manifest.json").write_text("{")
    with pytest.raises(CorruptStoreError, match="shard-00001/gen-.*manifest.json: not valid JSON"):
        ShardedIndex.open(copy, actors=True)
    assert ray.is_initialized()  # the module's cluster: not ours to end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEY = "k" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}


def _stalled_body(port: int) -> bytes:
    """Headers and a part of a declared body, then nothing: the first line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST /v1/search HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: "
                  f"application/json\r\nContent-Length: 1000\r\n\r\n{{\"vectors\"".encode())
        return s.recv(4096).split(b"\r\n")[0]


def _post(url, body: dict, headers=AUTH):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_serve_deployment_answers_over_http_like_the_local_mode(cluster, root, local, data, tmp_path):
    from ray import serve

    from lukhas_gpu.distributed import serve_deployment
    from lukhas_gpu.distributed.ray_serve import run

    port = _free_port()
    (tmp_path / "key").write_text(KEY)
    app = serve_deployment(root, shards_per_replica=1, max_batch=16, max_wait_ms=2.0, refresh_s=0.5,
                           api_key_file=str(tmp_path / "key"), max_body_mb=1.0, body_timeout_s=1.0)
    run(app, port=port)
    url = f"http://127.0.0.1:{port}/v1/search"
    try:
        status, out = _post(url, {"vectors": data.q.tolist(), "k": K, "where": {"tags_any": "a"},
                                  "with_content": True})
        assert status == 200, out
        want = local.search(data.q, K, where=Filter(tags_any=["a"]))
        assert out["ids"] == want.ids.tolist()
        np.testing.assert_allclose(out["scores"], want.scores, rtol=1e-6)
        assert out["contents"] == want.contents()
        rank = {"similarity": 0.5, "recency": 0.5, "half_life": DAY, "now": data.now}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent requests: batched per group
            answers = list(pool.map(lambda i: _post(url, {"vectors": data.q[i].tolist(), "k": K, "rank": rank}),
                                    range(len(data.q))))
        want = local.search(data.q, K, rank=Rank(0.5, 0.5, half_life=DAY, now=data.now))
        assert [a[0] for a in answers] == [200] * len(data.q)
        assert [a[1]["ids"][0] for a in answers] == want.ids.tolist()
        body, shape = wire.vectors_to_bytes(data.q)  # the binary form, parameters in the query string
        req = urllib.request.Request(f"{url}?k={K}&nprobe=4", body, {"Content-Type": wire.BINARY, "X-Shape": shape,
                                                                   "Accept": wire.BINARY, **AUTH})
        with urllib.request.urlopen(req, timeout=60) as r:
            ids, scores = wire.results_from_bytes(r.read(), r.headers["X-Shape"])
        _same(type("R", (), {"ids": ids, "scores": scores}), local.search(data.q, K, nprobe=4))
        status, out = _post(url, {"vectors": [[1.0, 2.0]], "k": K})
        assert status == 422 and "dimensions" in out["status"]["error"]
        status, out = _post(url, {"vectors": data.q[:1].tolist(), "k": 0})
        assert status == 422
        status, _ = _post(f"http://127.0.0.1:{port}/v1/other", {})
        assert status == 404
        status, out = _post(url, {"vectors": data.q[:1].tolist()}, headers={})
        assert status == 401 and "API key" in out["status"]["error"]
        # the server's guards: a body past max_body_mb (declared, or streamed), one that stops arriving
        status, out = _post(url, {"vectors": [[0.5] * 300_000]})
        assert status == 413 and "exceeds the limit" in out["status"]["error"], out
        assert _stalled_body(port).startswith(b"HTTP/1.1 408"), "a stalled body must time out (body_timeout_s)"
        extra = make_data(5, nq=1, seed=13)  # the groups follow the writers (refresh_s)
        with MemoryIndex.open(rootfiles.shard_dir(root, 1), mode="w") as writer:
            rows = writer.add(**extra.rows(0, 5))
            want = rootfiles.global_ids(1, rows).tolist()
            for _ in range(40):
                status, out = _post(url, {"vectors": extra.x.tolist(), "k": 1})
                if [r[0] for r in out["ids"]] == want:
                    break
                time.sleep(0.25)
            assert [r[0] for r in out["ids"]] == want
            writer.link(rows[0], rows[1:3], kind="next")  # follow_links: the groups' links, hop by hop
            writer.link(rows[2], rows[3])
            for _ in range(40):
                status, out = _post(url, {"vectors": extra.x[:1].tolist(), "k": 1, "follow_links": 2})
                if status == 200 and out["ids"][0][1:] == want[1:4]:
                    break
                time.sleep(0.25)
            assert status == 200 and out["ids"][0] == want[:4], out
            assert out["linked_from"][0] == [-1, want[0], want[0], want[2]]
    finally:
        serve.shutdown()
