"""The dashboard at ``/ui``: one static page (``serve/ui/``, package data, nothing from a CDN)
and the two keyed JSON endpoints it reads.

* ``GET /ui`` (and its script and style sheet) -- public: the page holds no data. It asks for
  the API key (or reads it from the URL fragment, ``/ui#key=...``, which no browser sends to the
  server) and sends it as ``Authorization: Bearer`` on every data call.
* ``GET /v1/dashboard`` -- everything the page shows, from the sources of ``/v1/stats`` and
  ``/metrics``: ``stats`` (exactly ``/v1/stats``' answer), ``traffic`` (the searches of the last
  minute and the window's series, :class:`~.traffic.Traffic`, the ring behind the windowed gauges
  of ``/metrics``), ``recall`` (the last ``--quality-s`` estimate, the target), ``lag_s``,
  ``tuning`` (``MemoryIndex.tuning()``), ``drift`` (``MemoryIndex.drift()`` without its history).
* ``POST /v1/dashboard/search`` -- ``{"text": "...", "k": 10}`` (BM25, stores with a text index)
  or ``{"like": id, "k": 10}`` (the memories nearest to memory ``id``'s stored vector, itself
  left out), answered with ids, scores and contents.
"""
from __future__ import annotations

import importlib.resources
import math
import time

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from ..util.bounds import MAX_ID, MAX_UI_K, MAX_UI_TEXT, MIN_ID, is_int
from . import http_errors
from .limits import read_body
from .metrics import RECENT_S
from .search import hydrate

__all__ = ["install", "STATIC"]

#: The page's files: path -> (file in ``serve/ui/``, media type). Public (see :mod:`.limits`).
STATIC = {"/ui": ("index.html", "text/html; charset=utf-8"),
          "/ui/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/ui/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
#: The page runs only its own files: no inline script, nothing from elsewhere.
_CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
#: Seconds per point of the traffic chart.
_STEP_S = 10


def _files() -> dict[str, tuple[bytes, str]]:
    ui = importlib.resources.files(__package__).joinpath("ui")
    return {path: (ui.joinpath(name).read_bytes(), media) for path, (name, media) in STATIC.items()}


def _json(obj) -> Response:
    return Response(orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=_plain),
                    media_type="application/json")


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _drift(d: dict) -> dict:
    d = dict(d)
    d.pop("history", None)  # per-batch arrays: the page shows the summary
    return d


def install(app: FastAPI, st) -> None:
    """Add the page and its endpoints to ``app`` (``st``: the application's state, app._State)."""
    files = _files()
    for path, (data, media) in files.items():
        _static(app, path, data, media)

    @app.get("/v1/dashboard", summary="what the /ui page shows: /v1/stats, recent searches, recall, tuning, drift")
    async def dashboard():
        index = st.index
        stats, tuning, drift = await st.run(lambda: (st.stats(), index.tuning(), _drift(index.drift())))
        q = st.quality
        recall = {"target": st.recall_target(), "estimate": None}
        if q is not None:
            recall.update(estimate=q["recall"], ci=q["ci"], confidence=q["confidence"], queries=q["queries"],
                          k=q["k"], source=q["source"], age_s=time.monotonic() - st.quality_at)
        m = st.metrics
        return _json({"stats": stats, "traffic": {"recent": m.recent(), "step_s": _STEP_S,
                                                  "series": m.traffic.series(_STEP_S), "recent_s": RECENT_S},
                      "recall": recall, "lag_s": st.lag(), "generation": st.generation, "mode": st.options.mode,
                      "ready": st.ready()[1], "tuning": tuning, "drift": drift,
                      "text_index": bool(index.config.text_index), "time": time.time()})

    @app.post("/v1/dashboard/search", summary="the dashboard's search: BM25 text or more like a memory")
    async def dashboard_search(request: Request):
        t0 = time.perf_counter()
        body = await read_body(request, st.options.max_body_bytes)
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise http_errors.ApiError(400, f"invalid JSON: {e}") from None
        text, like, k = _search_args(req)
        index = st.index
        if text is not None:
            if not index.config.text_index:
                raise http_errors.ApiError(422, "this store has no text index (create it with ingest --text-index); "
                                           "search like a memory's id instead")
            res = await st.run(lambda: index.search_text([text], k))
            ids, scores = np.asarray(res.ids), np.asarray(res.scores)
        else:
            vec = await st.run(index.vectors_at, np.asarray([like], dtype=np.int64))
            ids, scores = await st.batcher.search((k + 1, None, None, None, None, None, None), vec,
                                                  st.options.timeout_s)
            keep = ids[0] != like
            ids, scores = ids[:, keep][:, :k], scores[:, keep][:, :k]
        contents = (await st.run(hydrate, index, ids))[0]
        out = [{"id": int(i), "score": None if not math.isfinite(float(s)) else float(s), "content": c}
               for i, s, c in zip(ids[0].tolist(), scores[0].tolist(), contents) if i >= 0]
        return _json({"results": out, "time": time.perf_counter() - t0})


def _search_args(req) -> tuple[str | None, int | None, int]:
    if not isinstance(req, dict):
        raise http_errors.ApiError(422, f"the body must be a JSON object, got {type(req).__name__}")
    unknown = set(req) - {"text", "like", "k"}
    if unknown:
        raise http_errors.ApiError(422, f"unknown field(s) {sorted(unknown)}: expected text or like, and k")
    k = req.get("k", 10)
    if not is_int(k) or not 1 <= k <= MAX_UI_K:
        raise http_errors.ApiError(422, f"k: an integer in 1..{MAX_UI_K}, got {k!r}")
    text, like = req.get("text"), req.get("like")
    if (text is None) == (like is None):
        raise http_errors.ApiError(422, "give exactly one of text (a BM25 query) and like (a memory id)")
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise http_errors.ApiError(422, "text: a non-empty string")
        if len(text) > MAX_UI_TEXT:
            raise http_errors.ApiError(422, f"text: at most {MAX_UI_TEXT:,} characters, got {len(text):,}")
        return text, None, k
    if not is_int(like) or not MIN_ID <= like <= MAX_ID:
        raise http_errors.ApiError(422, f"like: a memory id (an int64), got {like!r}")
    return None, int(like), k


def _static(app: FastAPI, path: str, data: bytes, media: str) -> None:
    headers = {"Cache-Control": "no-cache", "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}

    async def page():
        return Response(data, media_type=media, headers=headers)

    app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
