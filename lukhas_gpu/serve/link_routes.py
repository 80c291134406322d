"""The link routes of the server (``MemoryIndex.link``, ``unlink``, ``links``, ``lineage``):
POST ``/v1/link``, ``/v1/unlink`` (a writer), ``/v1/links``, ``/v1/lineage``. Ids are rows."""
from __future__ import annotations

import time
from typing import Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from ..util.bounds import MAX_LINK_BATCH, MAX_LINK_DEPTH, MAX_REQUEST_IDS
from .limits import read_body
from .models import WireId

__all__ = ["install", "ENDPOINTS"]

ENDPOINTS = frozenset({"/v1/link", "/v1/unlink", "/v1/links", "/v1/lineage"})


class LinkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    src: list[WireId] = Field(..., min_length=1, max_length=MAX_LINK_BATCH)
    dst: list[WireId] = Field(..., min_length=1, max_length=MAX_LINK_BATCH)
    kind: Optional[Union[str, list[str]]] = Field(
        None, description="one kind, or one per link (link: default 'related'; unlink: default every kind)")
    weight: Union[float, list[float]] = 1.0


class LinksRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[WireId] = Field(..., min_length=1, max_length=MAX_REQUEST_IDS)
    kind: Optional[str] = None
    direction: str = "out"


class LineageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: WireId
    depth: int = Field(3, ge=1, le=MAX_LINK_DEPTH)
    kind: Optional[str] = None
    direction: str = "out"


def install(app: FastAPI, st, respond, writable) -> None:
    """Add the routes; ``respond(obj)`` makes a JSON response, ``writable(options)`` refuses a reader."""
    o = st.options

    async def body(request, model):
        return model.model_validate_json(await read_body(request, o.max_body_bytes))

    @app.post("/v1/link", summary="link memories src[i] -> dst[i] (kind, weight)")
    async def link(request: Request):
        t0 = time.perf_counter()
        writable(o)
        r = await body(request, LinkRequest)
        n = await st.run(lambda: st.index.link(r.src, r.dst, kind=r.kind or "related", weight=r.weight))
        return respond({"linked": n, "time": time.perf_counter() - t0})

    @app.post("/v1/unlink", summary="remove the links src[i] -> dst[i] (of kind, or all)")
    async def unlink(request: Request):
        t0 = time.perf_counter()
        writable(o)
        r = await body(request, LinkRequest)
        if r.kind is not None and not isinstance(r.kind, str):
            raise ValueError("unlink takes one kind (or none: every kind)")
        n = await st.run(lambda: st.index.unlink(r.src, r.dst, kind=r.kind))
        return respond({"unlinked": n, "time": time.perf_counter() - t0})

    @app.post("/v1/links", summary="the links of each id (a CSR: indptr, ids, kinds, weights)")
    async def links(request: Request):
        t0 = time.perf_counter()
        r = await body(request, LinksRequest)
        ls = await st.run(lambda: st.index.links(np.asarray(r.ids, np.int64), kind=r.kind, direction=r.direction))
        return respond({"indptr": ls.indptr, "ids": ls.ids, "kinds": ls.kinds.tolist(), "weights": ls.weights,
                        "time": time.perf_counter() - t0})

    @app.post("/v1/lineage", summary="the memories reachable from one along links, breadth first")
    async def lineage(request: Request):
        t0 = time.perf_counter()
        r = await body(request, LineageRequest)
        lin = await st.run(lambda: st.index.lineage(r.id, depth=r.depth, kind=r.kind, direction=r.direction))
        return respond({"ids": lin.ids, "depth": lin.depth, "parent": lin.parent, "time": time.perf_counter() - t0})
