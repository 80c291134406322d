"""The FastAPI application of ``lukhas-gpu serve``: routes, the store's life, errors.

Every blocking library call (search, add, get, refresh, stats, ...) runs in a worker thread,
never on the event loop: searches in one thread fed by the :class:`~.batcher.Batcher` (the
index holds one lock anyway, and a batched search uses the cores through FAISS and torch), the
rest in a small pool of their own so a checkpoint never queues behind searches' Python code.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import math
import time
from typing import Annotated

import numpy as np
import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from ..index import MemoryIndex
from ..records.scopes import check_namespace
from ..store.layout import StoreError
from ..util.bounds import MAX_ID, MAX_NAMESPACE_BYTES, MIN_ID
from . import dashboard, http_errors, link_routes, scope_routes, search as search_mod, wire
from .batcher import Batcher, QueueFull
from .conns import ConnectionTable
from .limits import PUBLIC_PATHS, BodyTooLarge, Guard, error_body, read_body
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .models import (
    MAX_REQUEST_VECTORS,
    AddRequest,
    AddResponse,
    DeleteResponse,
    ErrorResponse,
    IdsRequest,
    LookupRequest,
    MemoriesResponse,
    MemoryOut,
    SearchRequest,
    SearchResponse,
    TrialRequest,
)
from .options import ServeOptions, search_omp_threads
from .search import SUPPORTS_TARGET_RECALL

log = logging.getLogger(__name__)

#: /metrics reads ``stats()`` (bytes by place, RssAnon) at most this often; counts and lag every time.
STATS_EVERY_S = 5.0

__all__ = ["create_app", "create_app_from_env", "SUPPORTS_TARGET_RECALL"]

_ENDPOINTS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/search", "/v1/memories", "/v1/memories/lookup",
                        "/v1/memories/delete", "/v1/checkpoint", "/v1/refresh", "/v1/stats", "/v1/trial",
                        "/v1/drift", "/openapi.json", "/docs", "/v1/dashboard", "/v1/dashboard/search",
                        *dashboard.STATIC}) | link_routes.ENDPOINTS | scope_routes.ENDPOINTS
#: A memory id in a path: an int64 (a larger one is a 422 naming it, never a 500 from numpy).
_PathId = Annotated[int, Path(ge=MIN_ID, le=MAX_ID, description="the memory's id (int64)")]
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 422, 429, 503)}


def _json(obj, status: int = 200, headers=None) -> Response:
    body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _error(status: int, message: str, headers=None) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json", headers=headers)


class _State:
    """What one application holds: the options, the index, the pools, the batcher, the metrics."""

    def __init__(self, options: ServeOptions):
        self.options = options
        self.metrics = Metrics()
        self.index: MemoryIndex | None = None
        self.search_pool = concurrent.futures.ThreadPoolExecutor(
            options.search_threads, thread_name_prefix="lukhas-search", initializer=_search_thread,
            initargs=(search_omp_threads(options.workers),))
        self.other_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="lukhas-io")
        self.batcher = Batcher(self._search, self.search_pool, max_batch=options.max_batch,
                               max_wait_s=options.max_wait_ms / 1e3, max_queue=options.max_queue,
                               observe=self.metrics.observe_batch, threads=options.search_threads)
        # monotonic time at which the last successful refresh (or the open) began: the one figure
        # behind /readyz, reader_lag_seconds and /v1/stats' lag_s
        self.last_refresh: float | None = None
        self.refresh_error: str | None = None
        self.generation: int | None = None  # the generation a reader shows (from its refreshes)
        self.tasks: list[asyncio.Task] = []
        self.stats_at: float | None = None  # when /metrics last asked for stats()
        self.stats_job: asyncio.Future | None = None
        self.quality: dict | None = None  # the last recall estimate (quality_loop) and when it ended
        self.quality_at: float | None = None

    # -- blocking calls (worker threads) -------------------------------------------------------
    def _search(self, key: tuple, queries: np.ndarray):
        k, where, rank, nprobe, rerank, target, diversity = key
        kw = {"where": where, "rank": rank, "nprobe": nprobe, "rerank": rerank}
        if diversity:
            kw["diversity"] = diversity
        if target is not None:
            kw["target_recall"] = target
        index = self.index
        if index.backend == "cuda":  # the batch goes to the device once; the kernels stay there
            from ..util.arrays import tensor_view  # a request body's view is read-only: read, never written

            queries = tensor_view(queries).to(index.device, non_blocking=True)
        res = index.search(queries, k, **kw)
        ids, scores = res.ids, res.scores
        if not isinstance(ids, np.ndarray):
            ids, scores = ids.cpu().numpy(), scores.cpu().numpy()
        return ids, scores

    def open(self) -> None:
        o = self.options
        t0 = time.monotonic()
        self.index = MemoryIndex.open(o.store, mode=o.mode)
        self._show_target()
        if len(self.index):  # the first search loads torch and FAISS: before readiness, not in a request
            self._search((1, None, None, None, None, None, None), np.ones((1, self.index.dim), dtype=np.float32))
        self.last_refresh = t0
        # what is loaded now (torch, FAISS, the app) lives as long as the server: keep it out of the
        # collector's full passes, which otherwise pause every request for tens of milliseconds
        gc.collect()
        gc.freeze()

    def close(self) -> None:
        if self.index is not None:
            self.index.close()  # a writer checkpoints what its log holds

    def recall_target(self) -> float | None:
        """The recall target the store holds: its tuning's, else ``config.target_recall``."""
        tuned = self.index.parts.tuned
        return tuned.target if tuned is not None else self.index.config.target_recall

    def _show_target(self) -> None:
        target = self.recall_target()
        self.metrics.recall_target.set(math.nan if target is None else target)

    def stats(self) -> dict:
        """``GET /v1/stats``: ``MemoryIndex.stats()`` and this server's own figures (a worker thread)."""
        o = self.options
        out = self.index.stats()
        out["server"] = {"mode": o.mode, "max_batch": o.max_batch, "max_wait_ms": o.max_wait_ms,
                         "queue_depth": self.batcher.depth, "lag_s": self.lag(),
                         "target_recall": SUPPORTS_TARGET_RECALL}
        return out

    def refresh(self) -> dict:
        t0 = time.monotonic()
        try:
            out = self.index.refresh()
        except Exception as e:
            self.refresh_error = f"{type(e).__name__}: {e}"
            self.metrics.refreshes.labels("error").inc()
            raise
        self.refresh_error = None
        self.generation = out.get("generation")
        self.last_refresh = t0
        self._show_target()
        self.metrics.refreshes.labels("ok").inc()
        return out

    def lag(self) -> float:
        if self.options.mode == "w" or self.last_refresh is None:
            return 0.0
        return time.monotonic() - self.last_refresh

    def ready(self) -> tuple[bool, str]:
        if self.index is None:
            return False, "the store is not open yet"
        if self.options.mode == "r":
            if self.refresh_error is not None:
                return False, f"the last refresh failed: {self.refresh_error}"
            limit, lag = 2 * self.options.refresh_s + 1.0, self.lag()
            if self.options.refresh_s and lag > limit:
                return False, f"the last refresh began {lag:.1f} s ago (more than {limit:.1f} s)"
        return True, "ok"

    async def scrape(self) -> bytes:
        """The metrics page. The figures of now (lag, counts) are read first; ``stats()`` (bytes by
        place) at most every :data:`STATS_EVERY_S` and waited for at most a second, so a scrape
        never reports the lag of after a refresh it queued behind."""
        m = self.metrics
        if self.index is not None:
            m.reader_lag.set(self.lag())
            m.memories.set(len(self.index))
            now = time.monotonic()
            if self.stats_job is None and (self.stats_at is None or now - self.stats_at > STATS_EVERY_S):
                self.stats_at = now
                self.stats_job = asyncio.ensure_future(self.run(self.figures))
            if self.stats_job is not None:
                await asyncio.wait({self.stats_job}, timeout=1.0)
                if self.stats_job.done():
                    job, self.stats_job = self.stats_job, None
                    if job.exception() is None:
                        m.update_from_stats(job.result()[0], generation=self.generation)
                        m.update_tag_drift(job.result()[1])
        m.queue_depth.set(self.batcher.depth)
        return m.render()

    def figures(self) -> tuple:
        """What a scrape reads at most every STATS_EVERY_S: ``stats()`` and the per-tag drift."""
        return self.index.stats(), self.index.drift(by_tag=True)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.other_pool, fn, *args)

    # -- background loops ----------------------------------------------------------------------
    async def refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.refresh_s)
            try:
                await self.run(self.refresh)
            except Exception:
                log.exception("refresh of %s failed", self.options.store)

    async def quality_loop(self) -> None:
        delay = min(self.options.quality_s, 30.0)
        while True:
            await asyncio.sleep(delay)
            delay = self.options.quality_s
            try:
                if len(self.index) >= 64:
                    q = await self.run(lambda: self.index.quality(max_queries=256))
                    self.metrics.recall.set(q["recall"])
                    self.quality, self.quality_at = q, time.monotonic()
            except Exception:
                log.exception("recall estimate failed")


def _search_thread(omp: int) -> None:
    """A search thread's FAISS calls on at most ``omp`` OpenMP threads (the setting is a thread's
    own; an ``OMP_NUM_THREADS`` below it stands)."""
    from ..util.device import faiss_module

    faiss = faiss_module()
    if faiss.omp_get_max_threads() > omp:
        faiss.omp_set_num_threads(omp)


def create_app(options: ServeOptions) -> FastAPI:
    """The application serving ``options.store`` (opened when the server starts)."""
    st = _State(options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await st.run(st.open)
        st.batcher.start()
        if options.mode == "r" and options.refresh_s:
            st.tasks.append(asyncio.create_task(st.refresh_loop()))
        if options.quality_s:
            st.tasks.append(asyncio.create_task(st.quality_loop()))
        log.info("serving %s (mode %s, %d memories)", options.store, options.mode, len(st.index))
        try:
            yield
        finally:
            for t in st.tasks:
                t.cancel()
            await st.batcher.stop()
            await st.run(st.close)
            st.search_pool.shutdown(wait=True)
            st.other_pool.shutdown(wait=True)

    app = FastAPI(title="lukhas-gpu", version="1", lifespan=lifespan,
                  description="Vector memory retrieval over one lukhas_gpu store. Errors: "
                              '{"status": {"error": "..."}, "time": 0}.')
    app.state.lukhas = st
    _install_errors(app, st)
    _routes(app, st)
    # outermost: timing, so refusals are counted among the responses too; then the refusals from
    # the headers and the body's arrival; then searches, which skip FastAPI's routing and
    # dependency machinery (half of a single-query request's CPU, measured)
    reject = st.metrics.reject
    table = ConnectionTable(max_connections=options.max_connections, per_client=options.max_connections_per_client,
                            header_timeout_s=options.header_timeout_s, reject=reject)
    guard = Guard(search_mod.SearchPath(app, st), api_key=options.api_key, max_body=options.max_body_bytes,
                  body_timeout_s=options.body_timeout_s, reject=reject, connections=table,
                  public=PUBLIC_PATHS | set(dashboard.STATIC))
    outer = _Timing(guard, st.metrics)
    outer.fastapi, outer.connections = app, table
    return outer


def create_app_from_env():
    """The uvicorn factory of each worker process (``--workers``): options from the environment."""
    return create_app(ServeOptions.from_env())


class _Timing:
    """Counts and times each response by endpoint (path templates only: bounded labels)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        finally:
            path = scope["path"]
            if path not in _ENDPOINTS:
                path = "/v1/memories/{id}" if path.startswith("/v1/memories/") else "other"
            self.metrics.observe_response(scope["method"], path, status[0], time.perf_counter() - t0)


def _install_errors(app: FastAPI, st: _State) -> None:
    async def handler(request, e):
        status, message, headers = http_errors.describe(e, st.metrics, st.options)
        return _error(status, message, headers)

    for cls in (http_errors.ApiError, QueueFull, BodyTooLarge, asyncio.TimeoutError, ValidationError,
                RequestValidationError, ValueError, TypeError, StoreError):
        app.add_exception_handler(cls, handler)


def _memory(m) -> dict:
    return {"id": m.id, "content": wire.content_to_json(m.content), "tags": m.tags, "timestamp": m.timestamp,
            "importance": m.importance, "namespace": m.namespace,
            "valid_from": m.valid_from if m.valid_from != float("-inf") else None,
            "valid_to": m.valid_to if m.valid_to != float("inf") else None}


def _routes(app: FastAPI, st: _State) -> None:
    _probe_routes(app, st)
    _memory_routes(app, st)
    scope_routes.install(app, st, _json, _writable)
    _store_routes(app, st)
    dashboard.install(app, st)
    link_routes.install(app, st, _json, _writable)


def _writable(o) -> None:
    if o.mode != "w":
        raise http_errors.ApiError(409, f"this server reads {o.store} (--mode r); writes go to its writer")


def _probe_routes(app: FastAPI, st: _State) -> None:
    """Liveness, readiness and the Prometheus metrics."""
    o = st.options

    @app.get("/healthz", summary="alive (no API key needed)")
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz", summary="store open and caught up (503 otherwise)", responses=_ERRORS)
    async def readyz():
        ok, why = st.ready()
        if not ok:
            return _error(503, why)
        return _json({"status": "ok", "mode": o.mode, "count": len(st.index), "lag_s": round(st.lag(), 3)})

    @app.get("/metrics", summary="Prometheus text format")
    async def metrics():
        return Response(await st.scrape(), media_type=CONTENT_TYPE_LATEST)


def _memory_routes(app: FastAPI, st: _State) -> None:
    """Search, add, get, look up and delete memories."""
    o = st.options
    search_doc = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": SearchRequest.model_json_schema()},
        wire.BINARY: {"schema": {"type": "string", "format": "binary",
                                 "description": "little-endian float32 (nq, dim), shape in X-Shape: 'nq,dim'; "
                                                "the other parameters in the query string (where, rank as JSON)"}}}}}

    @app.post("/v1/search", summary="top-k memories of each query vector", openapi_extra=search_doc,
              responses={200: {"model": SearchResponse, "description": "JSON, or with Accept: application/"
                               "octet-stream ids (int64) then scores (float32), shape in X-Shape"}, **_ERRORS})
    async def search(request: Request):
        # served by search.SearchPath before routing; this route documents it (and serves it too)
        body = await read_body(request, o.max_body_bytes)
        status, media, data, headers = await search_mod.run_search(st, request.headers, request.url.query, body)
        return Response(data, status_code=status, media_type=media, headers=headers)

    @app.post("/v1/memories", summary="add memories (answered once the write-ahead log holds them)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": AddRequest.model_json_schema()}}}},
              responses={200: {"model": AddResponse}, **_ERRORS})
    async def add(request: Request):
        t0 = time.perf_counter()
        _writable(o)
        req = AddRequest.model_validate_json(await read_body(request, o.max_body_bytes))
        x = wire.vectors_from_json(req.vectors, st.index.dim, max_rows=MAX_REQUEST_VECTORS)
        contents = None if req.contents is None else [wire.content_from_json(c, f"contents[{i}]")
                                                      for i, c in enumerate(req.contents)]
        stamps = None if req.timestamps is None else [wire.parse_time(t, f"timestamps[{i}]")
                                                      for i, t in enumerate(req.timestamps)]
        def add_one():  # the add and what it merged, under the index's lock (no other add in between)
            with st.index.lock:
                return st.index.add(x, contents=contents, tags=req.tags, timestamps=stamps, importance=req.importance,
                                    namespace=req.namespace, valid_from=req.valid_from, valid_to=req.valid_to,
                                    dedup=req.dedup), st.index.last_add.merged

        ids, merged = await st.run(add_one)
        return _json({"ids": ids, "merged": merged, "time": time.perf_counter() - t0})

    async def _ids_body(request) -> np.ndarray:
        req = IdsRequest.model_validate_json(await read_body(request, o.max_body_bytes))
        return np.asarray(req.ids, dtype=np.int64)

    async def _known(ids: np.ndarray) -> None:
        live = await st.run(st.index.contains, ids)
        if not live.all():
            raise http_errors.ApiError(404, f"no memory with id {int(ids[~live][0])} (never assigned, or deleted)")

    async def _get(ids: np.ndarray, namespace: str | None) -> list:
        await _known(ids)
        if namespace is None:
            return await st.run(st.index.get, ids)
        namespace = check_namespace(namespace)  # a bad name: 422
        try:
            return await st.run(lambda: st.index.get(ids, namespace=namespace))
        except ValueError as e:  # the ids are live: one is in another namespace
            raise http_errors.ApiError(404, f"no memory with that id in namespace {namespace!r} ({e})") from None

    @app.get("/v1/memories/{memory_id}", summary="one memory", responses={200: {"model": MemoryOut}, **_ERRORS})
    async def get_one(memory_id: _PathId, namespace: Annotated[
            str | None, Query(max_length=MAX_NAMESPACE_BYTES, description="404 unless the memory is in it")] = None):
        ids = np.asarray([memory_id], dtype=np.int64)
        return _json(_memory((await _get(ids, namespace))[0]))

    @app.post("/v1/memories/lookup", summary="memories by id, in the order given (in one namespace)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": LookupRequest.model_json_schema()}}}},
              responses={200: {"model": MemoriesResponse}, **_ERRORS})
    async def lookup(request: Request):
        t0 = time.perf_counter()
        req = LookupRequest.model_validate_json(await read_body(request, o.max_body_bytes))
        got = await _get(np.asarray(req.ids, dtype=np.int64), req.namespace)
        return _json({"memories": [_memory(m) for m in got], "time": time.perf_counter() - t0})

    @app.delete("/v1/memories/{memory_id}", summary="delete one memory",
                responses={200: {"model": DeleteResponse}, **_ERRORS})
    async def delete_one(memory_id: _PathId):
        t0 = time.perf_counter()
        _writable(o)
        ids = np.asarray([memory_id], dtype=np.int64)
        await _known(ids)
        n = await st.run(st.index.delete, ids)
        return _json({"deleted": n, "time": time.perf_counter() - t0})

    @app.post("/v1/memories/delete", summary="delete memories by id (all or none)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": IdsRequest.model_json_schema()}}}},
              responses={200: {"model": DeleteResponse}, **_ERRORS})
    async def delete_many(request: Request):
        t0 = time.perf_counter()
        _writable(o)
        ids = await _ids_body(request)
        if len(np.unique(ids)) != len(ids):
            raise http_errors.ApiError(422, "ids: an id appears twice")
        await _known(ids)
        n = await st.run(st.index.delete, ids)
        return _json({"deleted": n, "time": time.perf_counter() - t0})


def _store_routes(app: FastAPI, st: _State) -> None:
    """Checkpoint (a writer), refresh (a reader) and the store's stats."""
    o = st.options

    @app.post("/v1/checkpoint", summary="write and publish a new generation of the store", responses=_ERRORS)
    async def checkpoint():
        t0 = time.perf_counter()
        _writable(o)
        gen = await st.run(st.index.checkpoint)
        return _json({"generation": gen.name, "time": time.perf_counter() - t0})

    @app.post("/v1/refresh", summary="a reader catches up with the store's writer now", responses=_ERRORS)
    async def refresh():
        if o.mode != "r":
            raise http_errors.ApiError(409, "refresh follows a store read with --mode r; this server is its writer")
        return _json(await st.run(st.refresh))

    @app.post("/v1/trial", summary="MemoryIndex.trial: a candidate config built beside the live index, promoted "
                                    "only if recall and QPS hold (a writer)", responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": TrialRequest.model_json_schema()}}}})
    async def trial(request: Request):
        _writable(o)
        req = TrialRequest.model_validate_json(await read_body(request, o.max_body_bytes))
        rule = {"recall_tolerance": req.recall_tolerance, "qps_tolerance": req.qps_tolerance}
        changes = {k: v for k, v in req.model_dump().items() if v is not None and k not in rule}
        return _json(await st.run(lambda: st.index.trial(**rule, **changes)))

    @app.get("/v1/drift", summary="MemoryIndex.drift: whole-store and (by_tag=true) per-tag drift", responses=_ERRORS)
    async def drift(by_tag: bool = False):
        return _json(await st.run(lambda: st.index.drift(by_tag=by_tag)))

    @app.get("/v1/stats", summary="MemoryIndex.stats(): counts, phase, bytes by place and component",
             responses=_ERRORS)
    async def stats():
        return _json(await st.run(st.stats))
