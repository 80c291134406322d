"""``POST /v1/search``: parse (JSON or binary), validate, queue in the batcher, answer.

:class:`SearchPath` serves the endpoint as plain ASGI, before FastAPI's routing, dependency
injection and exception middleware, which cost as much CPU as the rest of a single-query request
(profiled under 64 clients); FastAPI keeps a route of the same name for the OpenAPI schema.
"""
from __future__ import annotations

import functools
import inspect
import time
import urllib.parse

import numpy as np
import orjson
from pydantic import ValidationError

from ..index import MemoryIndex
from ..util.bounds import MAX_MMR_K
from . import http_errors, wire
from .limits import BodyTooLarge, error_body
from .models import MAX_REQUEST_RESULTS, MAX_REQUEST_VECTORS, SearchParams

__all__ = ["SearchPath", "run_search", "SUPPORTS_TARGET_RECALL"]

#: Whether this library's ``MemoryIndex.search`` takes ``target_recall``.
SUPPORTS_TARGET_RECALL = "target_recall" in inspect.signature(MemoryIndex.search).parameters
_JSON = "application/json"
#: Distinct parameter sets (all of a search but its vectors) kept validated, and the largest kept.
_CACHED_PARAMS, _CACHED_PARAMS_BYTES = 256, 2048


def _loads(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise http_errors.ApiError(400, f"invalid JSON: {e}") from None


def _params(obj) -> SearchParams:
    if not isinstance(obj, dict):
        raise http_errors.ApiError(422, f"the body must be a JSON object, got {type(obj).__name__}")
    try:  # keys in the request's order: the cached parameters are the request's, messages included
        canon = orjson.dumps(obj)
    except TypeError:  # nothing a JSON body or a query string gives; validation names it
        canon = b""
    if not canon or len(canon) > _CACHED_PARAMS_BYTES:
        return SearchParams.model_validate(obj)
    try:
        return _validated(canon)
    except ValidationError:
        return SearchParams.model_validate(obj)  # raises, the fields in the request's own order


@functools.lru_cache(maxsize=_CACHED_PARAMS)
def _validated(canon: bytes) -> SearchParams:
    """Parameters seen before are validated once (most clients send the same few); never mutated."""
    return SearchParams.model_validate(orjson.loads(canon))


def _key(p: SearchParams, nq: int) -> tuple:
    """The batch key: requests merge only with requests of the same parameters."""
    if nq * p.k > MAX_REQUEST_RESULTS:
        raise http_errors.ApiError(422, f"{nq} vectors x k={p.k} = {nq * p.k:,} results exceed the limit of "
                                   f"{MAX_REQUEST_RESULTS:,} per request; split the vectors")
    if p.target_recall is not None and not SUPPORTS_TARGET_RECALL:
        raise http_errors.ApiError(422, "target_recall is not supported by this server's lukhas_gpu "
                                   "(MemoryIndex.search has no target_recall parameter)")
    if p.diversity and p.k > MAX_MMR_K:
        raise http_errors.ApiError(422, f"k={p.k} with diversity: at most {MAX_MMR_K}")
    where = wire.parse_where(wire.merge_scope(p.where, p.namespace, p.as_of))
    return (p.k, where, wire.parse_rank(p.rank), p.nprobe, p.rerank, p.target_recall, p.diversity or None)


def hydrate(index: MemoryIndex, ids: np.ndarray) -> list:
    """Contents of ``ids`` (nq, k) in wire form, ``None`` where padded or deleted since."""
    flat = ids.reshape(-1)
    live = np.zeros(len(flat), dtype=bool)
    ok = flat >= 0
    live[ok] = index.contains(flat[ok])
    got = iter(index.contents(flat[live])) if live.any() else iter(())
    out = [wire.content_to_json(next(got)) if alive else None for alive in live]
    k = ids.shape[1]
    return [out[i * k:(i + 1) * k] for i in range(ids.shape[0])]


async def run_search(st, headers, query: str, body: bytes) -> tuple[int, str, bytes, dict]:
    """One search request -> ``(status, media type, body, headers)``; refusals raise (see
    :func:`.http_errors.describe`). ``headers``: a mapping with lower-case names."""
    t0 = time.perf_counter()
    index = st.index
    dim = index.dim
    if headers.get("content-type", "").split(";")[0].strip() == wire.BINARY:
        qs = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        for name in ("where", "rank"):
            if name in qs:
                qs[name] = _loads(qs[name].encode())
        p = _params(qs)
        q = wire.vectors_from_bytes(body, headers.get(wire.SHAPE_HEADER), headers.get(wire.DTYPE_HEADER), dim,
                                    max_rows=MAX_REQUEST_VECTORS)
    else:
        obj = _loads(body)
        if not isinstance(obj, dict):
            raise http_errors.ApiError(422, f"the body must be a JSON object, got {type(obj).__name__}")
        if "vectors_b64" in obj:  # the compact form: base64 of float32, no JSON numbers to parse
            if "vectors" in obj:
                raise http_errors.ApiError(422, "vectors and vectors_b64: give one of them")
            packed = obj.pop("vectors_b64")
            p = _params(obj)
            q = wire.vectors_from_b64(packed, dim, max_rows=MAX_REQUEST_VECTORS)
        else:
            if "vectors" not in obj:
                raise http_errors.ApiError(422, "vectors: required (a list of query vectors)")
            vectors = obj.pop("vectors")
            p = _params(obj)
            q = wire.vectors_from_json(vectors, dim, max_rows=MAX_REQUEST_VECTORS)
    if index.config.metric == "cosine":
        zero = ~q.any(axis=1)
        if zero.any():
            raise http_errors.ApiError(422, f"vectors[{int(np.flatnonzero(zero)[0])}] is all zeros (no direction "
                                       "under cosine)")
    key = _key(p, len(q))
    binary_out = wire.BINARY in headers.get("accept", "")
    if binary_out and p.with_content:
        raise http_errors.ApiError(422, "with_content needs a JSON answer (drop Accept: application/octet-stream)")
    if binary_out and p.follow_links:
        raise http_errors.ApiError(422, "follow_links needs a JSON answer (drop Accept: application/octet-stream)")
    ids, scores = await st.batcher.search(key, q, st.options.timeout_s)
    linked_from = None
    if p.follow_links:  # after the batch: the links of this request's hits only
        ids, scores, linked_from = await st.run(lambda: index.follow(ids, scores, p.follow_links, where=key[1]))
    if binary_out:
        data, shape = wire.results_to_bytes(ids, scores)
        return 200, wire.BINARY, data, {"X-Shape": shape, "X-Time": f"{time.perf_counter() - t0:.6f}"}
    out = {"ids": ids, "scores": scores}
    if linked_from is not None:
        out["linked_from"] = linked_from
    if p.with_content:
        out["contents"] = await st.run(hydrate, index, ids)
    out["time"] = time.perf_counter() - t0
    return 200, _JSON, orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY), {}


class SearchPath:
    """ASGI: ``POST /v1/search`` served directly; everything else passed to ``app``."""

    def __init__(self, app, st):
        self.app, self.st = app, st

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/search" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        st = self.st
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await _read(receive, st.options.max_body_bytes)
            status, media, data, extra = await run_search(st, headers, scope["query_string"].decode("latin-1"),
                                                          body)
        except Exception as e:
            status, message, extra = http_errors.describe(e, st.metrics, st.options)
            media, data = _JSON, error_body(message)
        out = [(b"content-type", media.encode()), (b"content-length", str(len(data)).encode())]
        out += [(k.lower().encode(), str(v).encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": data})


async def _read(receive, limit: int) -> bytes:
    chunks, n = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise http_errors.ApiError(400, "the client went away before the body was complete")
        chunk = message.get("body", b"")
        n += len(chunk)
        if n > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
