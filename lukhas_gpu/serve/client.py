"""``Client``: a :class:`~lukhas_gpu.MemoryIndex`-like handle on a ``lukhas-gpu serve`` server.

Standard library only (``http.client``, one keep-alive connection per thread) plus numpy: an
inference server can call it without the ``serve`` extra. Searches travel as binary float32 both
ways unless contents are asked for (then JSON, the vectors as ``vectors_b64``); everything else
as JSON. Errors keep the library's types:
bad input (400/404/413/422) raises :class:`BadRequest`, a ``ValueError``.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
import urllib.parse

import numpy as np

from . import wire

__all__ = ["Client", "RemoteSearchResult", "ServerError", "BadRequest", "Unauthorized", "Overloaded"]


class ServerError(RuntimeError):
    """An answer other than 2xx: ``status`` and the server's ``message``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class BadRequest(ServerError, ValueError):
    """400, 404, 409, 413 or 422: the request was refused for what it holds."""


class Unauthorized(ServerError, PermissionError):
    """401: no or a wrong API key."""


class Overloaded(ServerError):
    """429 or 503: the server is busy; ``retry_after`` seconds is its hint."""


@dataclasses.dataclass
class RemoteSearchResult:
    """``ids`` (nq, k) int64, ``scores`` (nq, k) float32 (``-inf`` where padded), ``contents``
    (lists shaped like ``ids``, only with ``with_content=True``); 1-D for a 1-D query."""

    ids: np.ndarray
    scores: np.ndarray
    contents: list | None = None
    time: float = 0.0

    def __iter__(self):
        yield self.ids
        yield self.scores

    def __len__(self) -> int:
        return len(self.ids)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class Client:
    """Talk to ``lukhas-gpu serve`` at ``url``.

    Parameters
    ----------
    url : str
        ``http://host:port`` of the server.
    api_key : str, optional
        Sent as ``Authorization: Bearer <key>``.
    timeout : float
        Seconds to wait for a connection or an answer.

    Examples
    --------
    >>> client = Client("http://127.0.0.1:8080")                    # doctest: +SKIP
    >>> ids, scores = client.search(queries, k=10)                  # doctest: +SKIP
    """

    #: Reconnect before reusing a connection idle this long (the server keeps them 30 s).
    IDLE_S = 20.0

    def __init__(self, url: str = "http://127.0.0.1:8080", api_key: str | None = None, *, timeout: float = 60.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"url must be http://host:port, got {url!r}")
        self.host, self.port, self.timeout = u.hostname, u.port or 80, timeout
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._local = threading.local()

    # -- transport ---------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None or time.monotonic() - self._local.used > self.IDLE_S:
            if c is not None:
                c.close()
            c = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.used = time.monotonic()
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, *,
                idempotent: bool = True):
        """One request; returns ``(headers, body bytes)``, raises :class:`ServerError` subclasses."""
        h = {**self._headers, **(headers or {})}
        for attempt in (0, 1):
            c = self._conn()
            try:
                c.request(method, path, body=body, headers=h)
                r = c.getresponse()
                data = r.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt or not idempotent:
                    raise
        if r.getheader("connection", "").lower() == "close":
            self.close()
        if r.status >= 300:
            try:
                msg = json.loads(data)["status"]["error"]
            except (ValueError, KeyError, TypeError):
                msg = data[:500].decode("utf-8", "replace")
            retry = r.getheader("retry-after")
            cls = (Unauthorized if r.status == 401 else Overloaded if r.status in (429, 503)
                   else BadRequest if r.status in (400, 404, 409, 413, 422) else ServerError)
            raise cls(r.status, msg, float(retry) if retry else None)
        return r.headers, data

    def _json(self, method: str, path: str, obj=None, *, idempotent: bool = True):
        body = None if obj is None else json.dumps(obj).encode()
        _, data = self.request(method, path, body, {"Content-Type": "application/json"} if body else None,
                               idempotent=idempotent)
        return json.loads(data)

    # -- the MemoryIndex API -------------------------------------------------------------------
    def search(self, queries, k: int = 10, *, where=None, rank=None, nprobe: int | None = None,
               rerank: int | None = None, target_recall: float | None = None,
               with_content: bool = False, diversity: float = 0.0, namespace: str | None = None,
               as_of: float | None = None) -> RemoteSearchResult:
        """Top-k memories for each query, as :meth:`MemoryIndex.search` (numpy out).

        ``where`` / ``rank``: a :class:`~lukhas_gpu.Filter` / :class:`~lukhas_gpu.Rank` or their
        JSON objects. ``with_content=True`` also returns the contents (a JSON answer; the vectors
        travel in it as ``vectors_b64``, base64 of float32, never as JSON numbers).
        """
        q = _numpy(queries)
        one = q.ndim == 1
        params = {"k": k, "nprobe": nprobe, "rerank": rerank, "target_recall": target_recall,
                  "diversity": diversity or None, "namespace": namespace, "as_of": as_of}
        params = {key: v for key, v in params.items() if v is not None}
        w, r = wire.where_to_json(where), wire.rank_to_json(rank)
        if with_content:
            obj = {**params, "vectors_b64": wire.vectors_to_b64(np.atleast_2d(q)), "with_content": True}
            if w:
                obj["where"] = w
            if r:
                obj["rank"] = r
            out = self._json("POST", "/v1/search", obj)
            ids = np.asarray(out["ids"], dtype=np.int64).reshape(-1, k)
            scores = np.asarray([[-np.inf if s is None else s for s in row] for row in out["scores"]],
                                dtype=np.float32).reshape(-1, k)
            contents = [[wire.content_from_json(c) for c in row] for row in out["contents"]]
            res = RemoteSearchResult(ids, scores, contents, out["time"])
        else:
            if w:
                params["where"] = json.dumps(w)
            if r:
                params["rank"] = json.dumps(r)
            body, shape = wire.vectors_to_bytes(q)
            t0 = time.perf_counter()
            h, data = self.request("POST", "/v1/search?" + urllib.parse.urlencode(params), body,
                                   {"Content-Type": wire.BINARY, "Accept": wire.BINARY, "X-Shape": shape})
            ids, scores = wire.results_from_bytes(data, h.get("x-shape"))
            res = RemoteSearchResult(ids, scores, None, float(h.get("x-time") or time.perf_counter() - t0))
        if one:
            res.ids, res.scores = res.ids[0], res.scores[0]
            res.contents = None if res.contents is None else res.contents[0]
        return res

    def add(self, embeddings, contents=None, tags=None, timestamps=None, importance=None, *, namespace=None,
            valid_from=None, valid_to=None) -> np.ndarray:
        """Add memories; returns their ids ``(n,)`` int64 once the server's log holds them."""
        x = np.atleast_2d(_numpy(embeddings)).astype(np.float32)
        obj: dict = {"vectors": x.tolist()}
        if namespace is not None:
            obj["namespace"] = namespace if isinstance(namespace, str) else list(namespace)
        for key, v in (("valid_from", valid_from), ("valid_to", valid_to)):
            if v is not None:
                a = np.asarray(v, np.float64)
                obj[key] = float(a) if a.ndim == 0 else a.tolist()
        if contents is not None:
            obj["contents"] = [wire.content_to_json(c) for c in ([contents] if isinstance(contents, (str, bytes))
                                                                  else contents)]
        if tags is not None:
            obj["tags"] = [list(t) for t in ([tags] if tags and isinstance(tags[0], str) else tags)]
        if timestamps is not None:
            obj["timestamps"] = [float(t) for t in np.atleast_1d(_numpy(timestamps))]
        if importance is not None:
            imp = _numpy(importance)
            obj["importance"] = float(imp) if imp.ndim == 0 else [float(v) for v in imp]
        return np.asarray(self._json("POST", "/v1/memories", obj, idempotent=False)["ids"], dtype=np.int64)

    def get(self, ids, *, namespace: str | None = None) -> list:
        """The memories with these ids (:class:`~lukhas_gpu.Memory`), in the order given (with
        ``namespace``: a 404 :class:`BadRequest` unless every one is in it)."""
        from ..index.results import Memory

        obj: dict = {"ids": [int(i) for i in np.atleast_1d(_numpy(ids))]}
        if namespace is not None:
            obj["namespace"] = namespace
        out = self._json("POST", "/v1/memories/lookup", obj)
        return [Memory(m["id"], wire.content_from_json(m["content"]), m["tags"], m["timestamp"], m["importance"],
                       namespace=m.get("namespace", ""),
                       valid_from=-np.inf if m.get("valid_from") is None else m["valid_from"],
                       valid_to=np.inf if m.get("valid_to") is None else m["valid_to"])
                for m in out["memories"]]

    def delete(self, ids) -> int:
        """Delete memories by id (all or none); returns the count."""
        obj = {"ids": [int(i) for i in np.atleast_1d(_numpy(ids))]}
        return self._json("POST", "/v1/memories/delete", obj, idempotent=False)["deleted"]

    def namespaces(self) -> dict:
        """``{name: live memories}`` of every namespace holding one."""
        return self._json("GET", "/v1/namespaces")["namespaces"]

    def drop_namespace(self, name: str) -> int:
        """Delete every memory of namespace ``name`` (a writer server); returns how many."""
        return self._json("POST", "/v1/namespaces/drop", {"namespace": name}, idempotent=False)["deleted"]

    def purge_expired(self, now: float | None = None) -> int:
        """Delete every memory whose validity window ended at or before ``now`` (default: the
        server's clock); returns how many."""
        return self._json("POST", "/v1/purge_expired", {} if now is None else {"now": now},
                          idempotent=False)["deleted"]

    def checkpoint(self) -> str:
        return self._json("POST", "/v1/checkpoint", idempotent=False)["generation"]

    def refresh(self) -> dict:
        return self._json("POST", "/v1/refresh")

    def stats(self) -> dict:
        return self._json("GET", "/v1/stats")

    def ready(self) -> bool:
        try:
            self._json("GET", "/readyz")
            return True
        except (ServerError, OSError):
            return False

    def __len__(self) -> int:
        return int(self.stats()["count"])
