"""Guards that decide from a request's headers, then its body as it arrives, before the
application sees it: the API key (401), the body size (413 from a ``Content-Length``, or as a
chunked body streams past the limit), the bytes of bodies being received together (503), and a
body that does not arrive in time (408). A pure ASGI middleware, so a refused request costs no
routing and no parsing. The connections themselves (headers that never complete, too many from
one address) are guarded below it, in :mod:`.conns`.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

import orjson

__all__ = ["Guard", "Refused", "BodyTooLarge", "read_body", "error_body", "PUBLIC_PATHS", "MIN_BODY_RATE"]

#: Paths that need no API key (liveness probes carry no secrets).
PUBLIC_PATHS = frozenset({"/healthz"})
#: Bytes a second a body must average past its first ``body_timeout_s`` (a 64 MiB body may take
#: ``body_timeout_s`` + 1024 s; one trickled byte by byte times out after about ``body_timeout_s``).
MIN_BODY_RATE = 64 << 10


def error_body(message: str) -> bytes:
    """The error form of every answer, Qdrant's: ``{"status": {"error": ...}, "time": 0}``."""
    return orjson.dumps({"status": {"error": message}, "time": 0.0})


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the request body exceeds the limit of {limit:,} bytes (--max-body-mb)")


class Refused(Exception):
    """A request refused by a :class:`Guard`: ``status``, ``reason`` (the metrics label), the
    message, ``headers`` (name, value) as bytes."""

    def __init__(self, status: int, reason: str, message: str, headers=()):
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, list(headers)



class _Gone(Exception):
    """The client went away before its body was complete: nothing to answer."""


class Guard:
    """ASGI middleware: 401 without the right bearer token, 413 for a body over ``max_body``
    (declared, or as it streams in), 400 for a malformed ``Content-Length``, 503
    (``Retry-After``) when the bytes of bodies received and not yet answered would pass
    ``max_inflight`` -- charged by the bytes that actually arrived, so connections that declare
    a body and send nothing hold none of it -- and 408 when a body stalls: each of its chunks
    must come within ``body_timeout_s``, and the whole within ``body_timeout_s`` plus its size at
    :data:`MIN_BODY_RATE`. The body is read here, whole, before the application is called.

    The key is compared in constant time (:func:`hmac.compare_digest`). ``reject(reason)`` is
    called for every refusal (metrics). ``connections`` (a :class:`~.conns.ConnectionTable`) is
    handed to the server's protocol through the lifespan state. ``public``: the paths that need no
    key (:data:`PUBLIC_PATHS` and the dashboard's static files)."""

    def __init__(self, app, *, api_key: str | None, max_body: int, max_inflight: int | None = None,
                 body_timeout_s: float = 10.0, reject=None, connections=None, public=PUBLIC_PATHS):
        self.app = app
        self.public = frozenset(public)  # paths served without the key (no data behind them)
        self._expected = None if api_key is None else b"Bearer " + api_key.encode("utf-8")
        self.max_body = max_body
        self.max_inflight = max(4 * max_body, 256 << 20) if max_inflight is None else max_inflight
        self.body_timeout_s = body_timeout_s
        self.inflight = 0  # bytes of the bodies received for requests not yet answered
        self.connections = connections
        self._reject = reject

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan" and self.connections is not None:
            from .conns import STATE_KEY

            scope.setdefault("state", {})[STATE_KEY] = self.connections
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
        try:
            n = self._check_headers(scope, auth, length)
            if n == 0 and not chunked:  # no body
                return await self.app(scope, receive, send)
            held = [0]
            try:
                body = await self._read(receive, held)
            except BaseException:
                self.inflight -= held[0]
                raise
        except Refused as r:
            return await self._refuse(send, r.status, r.reason, str(r), r.headers)
        except _Gone:
            return None
        given = False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            return await self.app(scope, replay, send)
        finally:
            self.inflight -= held[0]

    def check_request(self, path: str, auth: bytes | None, length: bytes | None) -> int:
        """The checks from the headers alone (key, ``Content-Length``, the budget) for a front that
        is not this middleware (the Ray Serve ingress): the declared length; raises :class:`Refused`."""
        return self._check_headers({"path": path}, auth, length)

    @contextlib.asynccontextmanager
    async def receiving(self, receive):
        """The whole body from ``receive`` (ASGI), read under this guard's rules (size, budget,
        timeouts; :class:`Refused` otherwise), its bytes held in the budget until the block ends."""
        held = [0]
        try:
            try:
                body = await self._read(receive, held)
            except _Gone:
                raise Refused(400, "gone", "the client went away before the body was complete") from None
            yield body
        finally:
            self.inflight -= held[0]

    def _check_headers(self, scope, auth, length) -> int:
        """The declared body length (0 if none); refusals raise :class:`Refused`."""
        if self._expected is not None and scope["path"] not in self.public:
            if auth is None or not hmac.compare_digest(auth, self._expected):
                why = "missing" if auth is None else "wrong"
                raise Refused(401, "unauthorized", f"{why} API key: send the header 'Authorization: Bearer <key>'",
                               [(b"www-authenticate", b"Bearer")])
        if length is None:
            return 0
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise Refused(400, "bad_request", f"malformed Content-Length {length[:40]!r}") from None
        if n > self.max_body:
            raise Refused(413, "too_large", str(BodyTooLarge(self.max_body)) + f": Content-Length is {n:,}")
        self._budget(n)
        return n

    def _budget(self, n: int) -> None:
        if n and self.inflight + n > self.max_inflight:
            raise Refused(503, "inflight_bytes", f"the server holds {self.inflight:,} bytes of request bodies "
                                                  f"already (at most {self.max_inflight:,}); retry",
                           [(b"retry-after", b"1")])

    async def _read(self, receive, held: list) -> bytes:
        """The whole body; each chunk charged to ``inflight`` (and to ``held[0]``) as it arrives."""
        chunks = []
        t0 = time.monotonic()
        while True:
            wait = min(self.body_timeout_s, t0 + self.body_timeout_s + held[0] / MIN_BODY_RATE - time.monotonic())
            try:
                message = await (receive() if _ready(receive) else _within(receive, max(wait, 0.0)))
            except asyncio.TimeoutError:
                raise Refused(408, "body_timeout", f"the request body stopped arriving ({held[0]:,} bytes in "
                                                    f"{time.monotonic() - t0:.1f} s; --body-timeout-s is "
                                                    f"{self.body_timeout_s:g})") from None
            if message["type"] == "http.disconnect":
                raise _Gone()
            chunk = message.get("body", b"")
            if held[0] + len(chunk) > self.max_body:
                raise Refused(413, "too_large", str(BodyTooLarge(self.max_body)))
            self._budget(len(chunk))
            self.inflight += len(chunk)
            held[0] += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, send, status: int, reason: str, message: str, headers=()):
        if self._reject is not None:
            self._reject(reason)
        body = error_body(message)
        # Connection: close -- the unread body must not be taken for the next request
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), *headers]})
        await send({"type": "http.response.body", "body": body})


def _ready(receive) -> bool:
    """Whether ``receive`` (uvicorn's) answers at once: its request cycle's message event is set
    (a chunk of the body, its end or a disconnect is there), so it needs no timer. A body that
    arrived with its headers -- every search from an honest client -- skips the timer's cost
    (a timer handle set and cancelled, ~6 us of the event loop's time a request)."""
    event = getattr(getattr(receive, "__self__", None), "message_event", None)
    return event is not None and event.is_set()


if hasattr(asyncio, "timeout"):  # Python 3.11+: a timer on the request's own task
    async def _within(receive, seconds: float):
        async with asyncio.timeout(seconds):
            return await receive()
else:  # wait_for runs ``receive`` in a task of its own: three more passes of the event loop a request
    async def _within(receive, seconds: float):
        return await asyncio.wait_for(receive(), seconds)


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
