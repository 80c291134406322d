"""Connections before they are requests: the guard against slow clients at the protocol level.

A request reaches the application (and its API key check) only once its headers are complete, so
a client that trickles header bytes, or opens connections and sends nothing, is invisible to
every ASGI guard -- and uvicorn's ``limit_concurrency`` counts such connections, answering 503 to
every request once there are enough of them. Here each connection is in one of two states:

* *waiting*: connected, or between two requests of a kept-alive connection, or with a request's
  headers incomplete. Its headers must be complete within ``header_timeout_s`` of its first byte
  (of the connection, for a new one), else it is closed; at most :data:`MAX_HEADER_BYTES` of
  headers. Idle kept-alive connections follow uvicorn's ``timeout_keep_alive``.
* *busy*: its request's headers are complete; the application answers it (the key is checked
  first, a body must arrive within the body timeout of :class:`~.limits.Guard`).

A new connection past ``max_connections`` in all, or past ``per_client`` from its address, closes
the *oldest waiting* connection (of that address, for the per-client cap) to make room; only when
every connection is busy is the new one refused (503). A client whose headers arrive at once --
every honest client, an authenticated one included -- is never the oldest waiting, so it always
gets in, however many slow connections are open.

The table lives in the application (:class:`~.limits.Guard` puts it in the lifespan state, so
each worker process has its own); :class:`GuardedH11` and :class:`GuardedHttpTools` are uvicorn's
protocols with the table consulted. Without the table (no lifespan) they are uvicorn's own, but
for one thing: a response's head is written together with its body (:class:`JoinedWrites`).
"""
from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionTable", "GuardedH11", "GuardedHttpTools", "JoinedWrites", "protocol", "STATE_KEY",
           "MAX_HEADER_BYTES"]

#: Where the table is found in the lifespan state (``scope["state"]``).
STATE_KEY = "lukhas_gpu.connections"
#: Most bytes of a request's headers (the request line included); more closes the connection.
MAX_HEADER_BYTES = 64 << 10

_FULL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
         b"retry-after: 1\r\nconnection: close\r\n\r\n%s")


class ConnectionTable:
    """The open connections of one server process: counts by client address, and the waiting
    ones oldest first. ``reject(reason)`` is called for each connection closed or refused here."""

    def __init__(self, *, max_connections: int, per_client: int, header_timeout_s: float, reject=None):
        self.max_connections, self.per_client, self.header_timeout_s = max_connections, per_client, header_timeout_s
        self.reject = reject
        self.open = 0
        self.by_client: dict[str, int] = {}
        self.waiting: dict = {}  # connection -> None, oldest first (dicts keep insertion order)
        self.waiting_by_client: dict[str, dict] = {}

    def admit(self, conn, client: str) -> bool:
        """Count ``conn`` in, closing the oldest waiting connection where a cap is reached;
        False (and nothing counted) when the cap is held by busy connections only."""
        if self.by_client.get(client, 0) >= self.per_client and not self._evict(self.waiting_by_client.get(client)):
            return False
        if self.open >= self.max_connections and not self._evict(self.waiting):
            return False
        self.open += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return True

    def wait(self, conn, client: str) -> None:
        """``conn`` waits for a request's headers (moved to the newest end)."""
        self.waiting.pop(conn, None)
        self.waiting[conn] = None
        mine = self.waiting_by_client.setdefault(client, {})
        mine.pop(conn, None)
        mine[conn] = None

    def busy(self, conn, client: str) -> None:
        self.waiting.pop(conn, None)
        mine = self.waiting_by_client.get(client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.waiting_by_client[client]

    def drop(self, conn, client: str) -> None:
        self.busy(conn, client)
        self.open -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]

    def _evict(self, waiting) -> bool:
        if not waiting:
            return False
        oldest = next(iter(waiting))
        oldest.lukhas_close("evicted")
        return True

    def rejected(self, reason: str) -> None:
        if self.reject is not None:
            self.reject(reason)


class JoinedWrites:
    """A transport whose responses leave in one send: the head of a response (its status line and
    headers, one write of uvicorn's) is held back and written with the write that follows (its
    body), or, if none follows in this step of the event loop (a HEAD, a streamed body), on the
    loop's next pass or before a close. Two sends per answer wake a client on loopback twice; the
    first of them was a third of the event loop's time under 64 clients (profiled). An interim
    ``100 Continue`` is never held. Everything else is the wrapped transport's own."""

    __slots__ = ("transport", "_loop", "_held")

    def __init__(self, transport, loop):
        self.transport, self._loop, self._held = transport, loop, None

    def write(self, data) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.transport.write(b"".join((held, data)))
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1":  # a final response's head
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name):
        return getattr(self.transport, name)


class _Guarded:
    """What the two protocols add to uvicorn's (a mixin: its methods come first)."""

    _lk_table: ConnectionTable | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = JoinedWrites(transport, self.loop)  # what each request's cycle writes to
        table = (self.app_state or {}).get(STATE_KEY)
        if table is None:
            return
        self._lk_client = self.client[0] if self.client else ""
        self._lk_timer = None
        self._lk_bytes = 0
        self._lk_busy = False
        if not table.admit(self, self._lk_client):
            table.rejected("connections")
            body = b'{"status": {"error": "too many connections, every one busy; retry"}, "time": 0.0}'
            transport.write(_FULL % (len(body), body))
            transport.close()
            return
        self._lk_table = table
        self._lk_wait(arm=True)

    def connection_lost(self, exc) -> None:
        self._lk_forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lk_table is None or self._lk_busy:
            return super().data_received(data)
        before = self.cycle
        super().data_received(data)
        if self._lk_table is None:
            return
        if self.cycle is not before:  # the headers are complete: a request
            self._lk_busy = True
            self._lk_cancel()
            self._lk_table.busy(self, self._lk_client)
        else:
            if self._lk_timer is None:  # the first bytes after a kept-alive pause, headers incomplete
                self._lk_arm()
            self._lk_bytes += len(data)
            if self._lk_bytes > MAX_HEADER_BYTES:
                self.lukhas_close("header_bytes")

    def on_response_complete(self) -> None:
        before, queued = self.cycle, bool(getattr(self, "pipeline", ()))  # httptools queues pipelined requests
        super().on_response_complete()
        if self._lk_table is not None and self.cycle is before and not queued and not self.transport.is_closing():
            self._lk_wait(arm=False)  # kept alive: uvicorn's keep-alive timer runs until a byte comes

    # -- the table's side ----------------------------------------------------------------------
    def lukhas_close(self, reason: str) -> None:
        """Close this connection (evicted, or too slow); counted as ``reason``."""
        table = self._lk_table
        self._lk_forget()
        if table is not None:
            table.rejected(reason)
        self.transport.close()

    def _lk_wait(self, *, arm: bool) -> None:
        self._lk_busy = False
        self._lk_bytes = 0
        self._lk_cancel()
        if arm:
            self._lk_arm()
        self._lk_table.wait(self, self._lk_client)

    def _lk_arm(self) -> None:
        self._lk_timer = self.loop.call_later(self._lk_table.header_timeout_s, self.lukhas_close, "header_timeout")

    def _lk_cancel(self) -> None:
        if self._lk_timer is not None:
            self._lk_timer.cancel()
            self._lk_timer = None

    def _lk_forget(self) -> None:
        table, self._lk_table = self._lk_table, None
        if table is not None:
            self._lk_cancel()
            table.drop(self, self._lk_client)


class GuardedH11(_Guarded, H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionTable`."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional
    GuardedHttpTools = None
else:
    class GuardedHttpTools(_Guarded, HttpToolsProtocol):
        """uvicorn's httptools protocol under a :class:`ConnectionTable`."""


def protocol(fast: bool):
    """The guarded protocol class: httptools' when ``fast`` and installed, else h11's."""
    return GuardedHttpTools if fast and GuardedHttpTools is not None else GuardedH11
