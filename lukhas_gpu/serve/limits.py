"""Guards that decide from a request's headers alone, before any of its body is read: the API
key (401) and the body size (413). A pure ASGI middleware, outermost, so a refused request
costs no routing, no parsing and no buffer; bodies without a ``Content-Length`` (chunked) are
bounded as they stream in, by :func:`read_body`.
"""
from __future__ import annotations

import hmac

import orjson

__all__ = ["Guard", "BodyTooLarge", "read_body", "error_body", "PUBLIC_PATHS"]

#: Paths that need no API key (liveness probes carry no secrets).
PUBLIC_PATHS = frozenset({"/healthz"})


def error_body(message: str) -> bytes:
    """The error form of every answer, Qdrant's: ``{"status": {"error": ...}, "time": 0}``."""
    return orjson.dumps({"status": {"error": message}, "time": 0.0})


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the request body exceeds the limit of {limit:,} bytes (--max-body-mb)")


class Guard:
    """ASGI middleware: 401 without the right bearer token, 413 for a declared body over the
    limit, 400 for a malformed ``Content-Length``, 503 (``Retry-After``) when the bodies being
    received would pass ``max_inflight`` bytes together (a body without a length counts as
    ``max_body``). The key is compared in constant time (:func:`hmac.compare_digest`).
    ``reject(reason)`` is called for every refusal (metrics)."""

    def __init__(self, app, *, api_key: str | None, max_body: int, max_inflight: int | None = None, reject=None):
        self.app = app
        self._expected = None if api_key is None else b"Bearer " + api_key.encode("utf-8")
        self.max_body = max_body
        self.max_inflight = max(4 * max_body, 256 << 20) if max_inflight is None else max_inflight
        self.inflight = 0  # bytes of the bodies of requests being served
        self._reject = reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        auth = length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if self._expected is not None and scope["path"] not in PUBLIC_PATHS:
            if auth is None or not hmac.compare_digest(auth, self._expected):
                why = "missing" if auth is None else "wrong"
                return await self._refuse(send, 401, "unauthorized",
                                          f"{why} API key: send the header 'Authorization: Bearer <key>'",
                                          [(b"www-authenticate", b"Bearer")])
        if length is not None:
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                return await self._refuse(send, 400, "bad_request", f"malformed Content-Length {length[:40]!r}")
            if n > self.max_body:
                return await self._refuse(send, 413, "too_large", str(BodyTooLarge(self.max_body))
                                          + f": Content-Length is {n:,}")
        else:
            n = self.max_body if chunked else 0
        if n and self.inflight + n > self.max_inflight:
            return await self._refuse(send, 503, "inflight_bytes",
                                      f"the server is receiving {self.inflight:,} bytes of bodies already "
                                      f"(at most {self.max_inflight:,}); retry", [(b"retry-after", b"1")])
        self.inflight += n
        try:
            return await self.app(scope, receive, send)
        finally:
            self.inflight -= n

    async def _refuse(self, send, status: int, reason: str, message: str, headers=()):
        if self._reject is not None:
            self._reject(reason)
        body = error_body(message)
        # Connection: close -- the unread body must not be taken for the next request
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *headers]})
        await send({"type": "http.response.body", "body": body})


async def read_body(request, limit: int) -> bytes:
    """The whole body of ``request``, refusing past ``limit`` bytes as it streams in (for
    chunked bodies; a declared ``Content-Length`` was checked by :class:`Guard` already)."""
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)
