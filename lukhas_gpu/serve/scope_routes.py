"""The namespace routes of the server (``MemoryIndex.namespaces``, ``drop_namespace``,
``purge_expired``): GET ``/v1/namespaces``, POST ``/v1/namespaces/drop`` and
``/v1/purge_expired`` (a writer). Lookups in a namespace are the memory routes' (``app``)."""
from __future__ import annotations

import time

from fastapi import FastAPI, Request

from ..records.scopes import check_namespace
from . import http_errors, wire
from .limits import read_body
from .models import DeleteResponse, ErrorResponse, NamespaceRequest, NamespacesResponse, PurgeRequest

__all__ = ["install", "ENDPOINTS"]

ENDPOINTS = frozenset({"/v1/namespaces", "/v1/namespaces/drop", "/v1/purge_expired"})
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422)}


def install(app: FastAPI, st, json_, writable) -> None:
    """Add the routes to ``app`` (``st``: the server's state; ``json_`` / ``writable``: the
    app's JSON answer and its writer-only check)."""
    o = st.options

    @app.get("/v1/namespaces", summary="live memories of every namespace holding one",
             responses={200: {"model": NamespacesResponse}, **_ERRORS})
    async def namespaces():
        t0 = time.perf_counter()
        return json_({"namespaces": await st.run(st.index.namespaces), "time": time.perf_counter() - t0})

    @app.post("/v1/namespaces/drop", summary="delete every memory of a namespace (logged as one delete)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": NamespaceRequest.model_json_schema()}}}},
              responses={200: {"model": DeleteResponse}, **_ERRORS})
    async def drop_namespace(request: Request):
        t0 = time.perf_counter()
        writable(o)
        req = NamespaceRequest.model_validate_json(await read_body(request, o.max_body_bytes))
        name = check_namespace(req.namespace)  # its bytes (pydantic counted characters): 422
        if name not in await st.run(st.index.namespaces):
            raise http_errors.ApiError(404, f"no memory in namespace {name!r}")
        n = await st.run(st.index.drop_namespace, name)
        return json_({"deleted": n, "time": time.perf_counter() - t0})

    @app.post("/v1/purge_expired", summary="delete every memory whose validity window has ended",
              openapi_extra={"requestBody": {"required": False, "content": {
                  "application/json": {"schema": PurgeRequest.model_json_schema()}}}},
              responses={200: {"model": DeleteResponse}, **_ERRORS})
    async def purge_expired(request: Request):
        t0 = time.perf_counter()
        writable(o)
        body = await read_body(request, o.max_body_bytes)
        req = PurgeRequest.model_validate_json(body) if body.strip() else PurgeRequest()
        now = None if req.now is None else wire.parse_time(req.now, "now")
        n = await st.run(st.index.purge_expired, now)
        return json_({"deleted": n, "time": time.perf_counter() - t0})
