"""Run the application: bind the socket (port 0 picks a free one), announce the address, hand
the socket to uvicorn -- one process, or ``workers`` processes sharing it, each a reader of the
store (the memory-mapped vectors and contents are shared through the page cache).
"""
from __future__ import annotations

import logging
import os
import socket
import sys

from .options import ENV_OPTIONS, ServeOptions

log = logging.getLogger(__name__)

__all__ = ["serve", "bind"]


def bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket (IPv6 when ``host`` has a colon)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _uvicorn_kw(options: ServeOptions) -> dict:
    import importlib.util

    from .conns import protocol

    fast = importlib.util.find_spec("httptools") is not None and importlib.util.find_spec("uvloop") is not None
    # no limit_concurrency: it counts connections still sending their headers, so slow clients
    # would get every request refused; conns.ConnectionTable bounds connections instead.
    # no proxy_headers: the per-address caps count the peer, never a header a client may forge
    return {"log_level": "warning", "access_log": False, "lifespan": "on", "timeout_keep_alive": 30,
            "limit_concurrency": None, "backlog": min(options.max_connections, 4096), "proxy_headers": False,
            "http": protocol(fast), "loop": "uvloop" if fast else "asyncio", "server_header": False}


def serve(options: ServeOptions, *, announce=None) -> None:
    """Serve until SIGINT/SIGTERM (a writer's store is checkpointed on the way out).

    ``announce(url)`` is called once the socket is bound (default: a line on stderr).
    """
    import uvicorn

    sock = bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if announce is None:
        print(f"lukhas-gpu serve: {options.store} (mode {options.mode}) on {url}", file=sys.stderr, flush=True)
    else:
        announce(url)
    kw = _uvicorn_kw(options)
    if options.workers == 1:
        from .app import create_app

        uvicorn.Server(uvicorn.Config(create_app(options), **kw)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[ENV_OPTIONS] = options.to_json()  # the workers build their app from it
    config = uvicorn.Config("lukhas_gpu.serve.app:create_app_from_env", factory=True, workers=options.workers, **kw)
    Multiprocess(config, sockets=[sock]).run()
