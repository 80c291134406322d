"""A Ray Serve recipe for a sharded root: :func:`serve_deployment`.

Two deployments::

    HTTP POST /v1/search --> ingress (1 replica) --+--> group 0 (shards 0..g-1)  -- Batcher -- ShardedIndex
                                                   +--> group 1 (shards g..2g-1) -- Batcher -- ShardedIndex
                                                   +--> ...

* one **group** deployment per shard group (``shards_per_replica`` shards each, one replica):
  it opens its shards as readers (:class:`~.sharded.ShardedIndex` with ``shards=``), follows
  their writers every ``refresh_s``, and merges concurrent requests with the server's
  :class:`~lukhas_gpu.serve.batcher.Batcher` (same key, one batched search);
* the **ingress** parses the server's ``POST /v1/search`` body (JSON or binary, the code of
  :mod:`lukhas_gpu.serve.search` itself, bounds and errors included), fixes a ranking's ``now``,
  fans out to every group and merges their top-k with :func:`.merge.merge_topk`, the merge of
  :class:`~.sharded.ShardedIndex`. ``with_content`` reads the contents from the groups that hold
  them. Other routes answer 404.

Ray and Ray Serve are imported when :func:`serve_deployment` runs. Resources: each replica a
fractional CPU share sized from the cluster (and a GPU share per group where it has GPUs).
:func:`run` starts it over HTTP on 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading

import numpy as np

from . import rootfiles
from .merge import fixed_rank, merge_topk

log = logging.getLogger(__name__)

__all__ = ["serve_deployment", "run", "shard_groups"]


def shard_groups(n_shards: int, shards_per_replica: int) -> list[list[int]]:
    """Consecutive shards, ``shards_per_replica`` per group (the last may hold fewer)."""
    if isinstance(shards_per_replica, bool) or not isinstance(shards_per_replica, int) or shards_per_replica < 1:
        raise ValueError(f"shards_per_replica must be a positive int, got {shards_per_replica!r}")
    return [list(range(a, min(a + shards_per_replica, n_shards))) for a in range(0, n_shards, shards_per_replica)]


class ShardGroup:
    """A group replica: its shards, the batcher, the refresh loop (see the module docstring)."""

    def __init__(self, root: str, shards: list[int], options_json: str):
        from ..serve.batcher import Batcher
        from ..serve.options import ServeOptions
        from .sharded import ShardedIndex

        o = self.options = ServeOptions.from_json(options_json)
        self.index = ShardedIndex.open(root, shards=shards)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lukhas-group")
        self.batcher = Batcher(self._search, self._pool, max_batch=o.max_batch, max_wait_s=o.max_wait_ms / 1e3,
                               max_queue=o.max_queue)
        self._started = False
        if len(self.index):  # the first search loads torch and FAISS: while deploying, not in a request
            self._search((1, None, None, None, None, None, None), np.ones((1, self.index.dim), np.float32))
        self._stop = threading.Event()
        if o.refresh_s:
            threading.Thread(target=self._refresh_loop, name="lukhas-refresh", daemon=True).start()

    def _search(self, key: tuple, q: np.ndarray):
        k, where, rank, nprobe, rerank, target, diversity = key
        return self.index.search_arrays(q, k, where, rank, nprobe, rerank, target, diversity)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.options.refresh_s):
            try:
                self.index.refresh()
            except Exception:
                log.exception("refresh of shards %s failed", self.index.shards)

    async def search(self, key: tuple, q: np.ndarray):
        if not self._started:  # the batcher's task lives on the replica's event loop
            self.batcher.start()
            self._started = True
        return await self.batcher.search(key, q, self.options.timeout_s)

    def contains(self, ids) -> np.ndarray:
        return self.index.contains(ids)

    def contents(self, ids) -> list:
        return self.index.contents(ids)

    def link_edges(self, ids, where) -> tuple:
        return self.index.link_edges(ids, where)

    def count(self) -> int:
        return len(self.index)

    def __del__(self):  # Ray Serve calls it when the replica shuts down
        self._stop.set()
        self.index.close()


class _Front:
    """What :func:`lukhas_gpu.serve.search.run_search` reads of "the index": ``dim``,
    ``config.metric``, ``contains``/``contents`` for ``with_content`` and ``follow`` for
    ``follow_links`` (routed to the groups holding the ids; called from a worker thread)."""

    def __init__(self, dim: int, metric: str, groups: list, per_group: int, n_shards: int):
        import types

        self.dim, self.config = dim, types.SimpleNamespace(metric=metric)
        self._groups, self._per, self._n = groups, per_group, n_shards

    def _route(self, ids, method: str):
        ids = np.asarray(ids, np.int64)
        shard, _ = rootfiles.split_ids(ids, self._n)
        group = shard // self._per
        calls = [(g, np.flatnonzero(group == g)) for g in np.unique(group).tolist()]
        answers = [getattr(self._groups[g], method).remote(ids[at]) for g, at in calls]
        return [(at, _result(a)) for (_, at), a in zip(calls, answers)]

    def contains(self, ids) -> np.ndarray:
        out = np.zeros(len(ids), dtype=bool)
        for at, a in self._route(ids, "contains"):
            out[at] = a
        return out

    def contents(self, ids) -> list:
        out: list = [None] * len(ids)
        for at, a in self._route(ids, "contents"):
            for j, c in zip(at.tolist(), a):
                out[j] = c
        return out

    def follow(self, ids, scores, hops: int, *, where=None):
        """``follow_links``: the merged hits followed hop by hop, each hop asking the groups
        holding the frontier for its links (:func:`lukhas_gpu.index.memops.follow_arrays`)."""
        from ..index.memops import check_depth, follow_arrays
        from .shardlinks import routed_edges

        def edges(frontier):
            group = rootfiles.split_ids(frontier, self._n)[0] // self._per

            def run(groups):
                refs = [self._groups[g].link_edges.remote(frontier[idx], where) for g, idx in groups]
                return [_result(r) for r in refs]
            return routed_edges(group, run)
        return follow_arrays(np.asarray(ids, np.int64), np.asarray(scores, np.float32),
                             check_depth(hops, "follow_links", 0), edges)


class Ingress:
    """The HTTP ingress: ``POST /v1/search`` parsed by the server's own code, fanned out, merged."""

    def __init__(self, options_json: str, dim: int, metric: str, per_group: int, n_shards: int, *groups):
        from ..serve.limits import Guard
        from ..serve.metrics import Metrics
        from ..serve.options import ServeOptions

        o = self.options = ServeOptions.from_json(options_json)  # reads the API key file, if any
        self.metrics = Metrics()
        # the server's guard, called per request (not as middleware: Ray Serve hands us a Request):
        # API key, Content-Length and streamed body bounds, bodies in flight, body timeout
        self.guard = Guard(None, api_key=o.api_key, max_body=o.max_body_bytes, body_timeout_s=o.body_timeout_s,
                           reject=self.metrics.reject)
        self.index = _Front(dim, metric, list(groups), per_group, n_shards)
        self.batcher = self  # run_search queues in ``st.batcher.search``: here, the fan-out
        self._groups = list(groups)
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="lukhas-ingress")

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def search(self, key: tuple, q: np.ndarray, timeout: float):
        """Every group's top-k of ``q``, merged (the ranking's ``now`` fixed first)."""
        k, where, rank, nprobe, rerank, target, diversity = key
        if diversity:  # MMR needs every group's candidates' vectors at the root: ShardedIndex does that
            raise ValueError("diversity is not served by the Ray Serve deployment (each group answers its own "
                             "top-k); use ShardedIndex.search(..., diversity=) or a single store's server")
        key = (k, where, fixed_rank(rank), nprobe, rerank, target, diversity)
        calls = [g.search.remote(key, q) for g in self._groups]
        try:
            parts = await asyncio.wait_for(asyncio.gather(*calls), timeout)
        except Exception as e:
            raise _cause(e) from None
        return merge_topk(parts, k)

    async def __call__(self, request):
        from starlette.responses import Response

        from ..serve import http_errors as errors
        from ..serve.limits import Refused, error_body
        from ..serve.search import run_search

        headers = {k.lower(): v for k, v in request.headers.items()}
        auth, length = headers.get("authorization"), headers.get("content-length")
        try:
            self.guard.check_request(request.url.path, None if auth is None else auth.encode("latin-1"),
                                     None if length is None else length.encode("latin-1"))
            if request.url.path.rstrip("/") != "/v1/search" or request.method != "POST":
                raise errors.ApiError(404, f"no route {request.method} {request.url.path}: this deployment serves "
                                           "POST /v1/search")
            async with self.guard.receiving(request.receive) as body:
                status, media, body, extra = await run_search(self, headers, request.url.query, body)
        except Refused as r:
            self.metrics.reject(r.reason)
            return Response(error_body(str(r)), status_code=r.status, media_type="application/json",
                            headers={k.decode(): v.decode() for k, v in r.headers})
        except Exception as e:
            status, message, extra = errors.describe(_cause(e), self.metrics, self.options)
            media, body = "application/json", error_body(message)
        return Response(body, status_code=status, media_type=media, headers={k: str(v) for k, v in extra.items()})


def _cause(e: BaseException) -> BaseException:
    """The exception a replica raised, out of Ray's wrapper (``errors.describe`` maps it)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, Exception) else e


def _result(response):
    try:
        return response.result()
    except Exception as e:
        raise _cause(e) from None


def serve_deployment(root, *, shards_per_replica: int = 1, max_batch: int = 256, max_wait_ms: float = 1.0,
                     max_queue: int | None = None, timeout_s: float = 30.0, max_body_mb: float = 64.0,
                     body_timeout_s: float = 10.0, refresh_s: float = 1.0, api_key_file: str | None = None,
                     num_cpus: float | None = None,
                     num_gpus: float | None = None, name: str = "lukhas"):
    """A Ray Serve application serving ``POST /v1/search`` over the sharded root at ``root``.

    Parameters
    ----------
    root : path
        A sharded root (checked here: the root file and every shard directory).
    shards_per_replica : int
        Shards per group replica (each opens its shards; one replica per group).
    max_batch, max_wait_ms, max_queue, timeout_s, max_body_mb, body_timeout_s, refresh_s, api_key_file
        As :class:`~lukhas_gpu.serve.options.ServeOptions` (each group's batcher and refreshes;
        the ingress's guards, those of ``lukhas-gpu serve``'s :class:`~lukhas_gpu.serve.limits.Guard`:
        with ``api_key_file`` every request needs ``Authorization: Bearer <key>`` (the ingress
        reads the file where it runs; 401 before the body is read); a body over ``max_body_mb``
        gets 413 (from its ``Content-Length``, or as it streams), bodies being received count
        against max(4 x ``max_body_mb``, 256 MiB) by the bytes that arrived (503), and a body
        that stops arriving gets 408 after ``body_timeout_s``). Ray Serve's HTTP proxy owns the
        connections, so the header timeout and the connection caps of ``lukhas-gpu serve``
        (``--header-timeout-s``, ``--max-connections[-per-client]``) have no counterpart here:
        Ray Serve offers only ``http_options`` ``request_timeout_s`` and ``keep_alive_timeout_s``.
        Keep it on loopback or a private network, or put a proxy with header timeouts and
        per-client limits (nginx, Envoy) in front.
    num_cpus, num_gpus : float, optional
        Each replica's resources; default an equal share of the cluster's (``ray.init`` first
        if Ray is not initialised), a GPU share for each group where the cluster has GPUs.
    name : str
        Prefix of the deployments' names.

    Returns
    -------
    ray.serve.Application
        Run it with ``serve.run(app)`` (after ``serve.start(http_options={"host": "127.0.0.1",
        "port": ...})``) or :func:`run`.
    """
    import ray
    from ray import serve

    from ..serve.options import ServeOptions
    from .fanout import actor_options
    from .sharded import check_root

    doc = rootfiles.read_root(root)
    check_root(root, doc, list(range(doc["shards"])))
    groups = shard_groups(doc["shards"], shards_per_replica)
    options = ServeOptions(store=str(root), max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
                           timeout_s=timeout_s, max_body_mb=max_body_mb, body_timeout_s=body_timeout_s,
                           refresh_s=refresh_s, api_key_file=api_key_file)
    if not ray.is_initialized():
        ray.init()
    cpu = actor_options(len(groups) + 1)["num_cpus"] if num_cpus is None else num_cpus  # groups + the ingress
    gpu = actor_options(len(groups)).get("num_gpus", 0.0) if num_gpus is None else num_gpus
    group_opts = {"num_cpus": cpu, **({"num_gpus": gpu} if gpu else {})}
    metric = _metric(root)
    group_dep = serve.deployment(ShardGroup, num_replicas=1, ray_actor_options=group_opts)
    handles = [group_dep.options(name=f"{name}-group-{i}").bind(str(root), g, options.to_json())
               for i, g in enumerate(groups)]
    ingress = serve.deployment(Ingress, name=f"{name}-ingress", num_replicas=1,
                               ray_actor_options={"num_cpus": cpu})
    return ingress.bind(options.to_json(), doc["dim"], metric, shards_per_replica, doc["shards"], *handles)


def _metric(root) -> str:
    """The metric of shard 0's config (``ShardedIndex.open`` checks that the shards agree)."""
    from ..store import layout as store_layout

    gen = store_layout.current_generation(rootfiles.shard_dir(root, 0))
    return store_layout.read_manifest(gen)["config"].get("metric", "cosine")


def run(app, *, host: str = "127.0.0.1", port: int = 8000, name: str = "lukhas", route_prefix: str = "/"):
    """Start Ray Serve's HTTP proxy on ``host:port`` (loopback unless told otherwise) and run
    ``app`` (:func:`serve_deployment`); returns the ingress's handle."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name=name, route_prefix=route_prefix)
