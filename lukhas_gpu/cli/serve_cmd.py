"""``lukhas-gpu serve``: a retrieval server over a store (FastAPI + uvicorn, the ``serve`` extra).

Nothing of the server (fastapi, uvicorn, prometheus-client) is imported until the command runs.
"""
from __future__ import annotations

import argparse

from lukhas_gpu.serve.options import MIN_API_KEY_CHARS  # stdlib only: no server package loaded

__all__ = ["add_parsers", "cmd_serve"]


def add_parsers(sub) -> None:
    s = sub.add_parser(
        "serve", help="serve a store over HTTP: batched search, add, get, delete, metrics",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serves STORE over HTTP (JSON or binary float32 bodies; OpenAPI at /docs). Concurrent\n"
                    "searches are merged into batched searches (--max-batch, --max-wait-ms).\n\n"
                    "--mode r (default): a reader beside the store's writer (e.g. `lukhas-gpu ingest`), refreshed\n"
                    "every --refresh-s and on POST /v1/refresh. --mode w: the server is the store's writer.\n"
                    "Binds 127.0.0.1 unless --host says otherwise; --port 0 picks a free port (printed).")
    s.add_argument("store", help="store directory")
    s.add_argument("--mode", choices=("r", "w"), default="r", help="r: reader (default), w: the writer")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free port)")
    s.add_argument("--api-key-file", metavar="F", help="require 'Authorization: Bearer <key>' on every endpoint but "
                                                         "/healthz; the key is the file's first line, at least "
                                                         f"{MIN_API_KEY_CHARS} characters")
    s.add_argument("--max-batch", type=int, default=256, metavar="N", help="queries merged into one search "
                                                                         "(default 256; 1: no batching)")
    s.add_argument("--max-wait-ms", type=float, default=1.0, metavar="MS",
                   help="under concurrency, longest wait of a queued search for others (default 1)")
    s.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="queries waiting beyond which requests get 429 (default max(64 x max-batch, 1024))")
    s.add_argument("--max-body-mb", type=float, default=64.0, metavar="MB",
                   help="largest request body; larger gets 413 from its headers (default 64)")
    s.add_argument("--timeout-s", type=float, default=30.0, metavar="S", help="per-request search timeout (default 30)")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes sharing the port, each a reader of the store (default 1)")
    s.add_argument("--refresh-s", type=float, default=1.0, metavar="S",
                   help="readers: seconds between refreshes (default 1; 0: only POST /v1/refresh)")
    s.add_argument("--quality-s", type=float, default=0.0, metavar="S",
                   help="seconds between recall estimates for /metrics (default 0: never)")
    s.add_argument("--max-connections", type=int, default=2048, metavar="N",
                   help="open connections in all; past it a new one closes the oldest connection still waiting "
                        "for a request, and gets 503 only when every one is busy (default 2048)")
    s.add_argument("--max-connections-per-client", type=int, default=256, metavar="N",
                   help="the same per client address (default 256; behind a proxy, raise it)")
    s.add_argument("--header-timeout-s", type=float, default=10.0, metavar="S",
                   help="a request's headers must be complete within S of their first byte (default 10)")
    s.add_argument("--body-timeout-s", type=float, default=10.0, metavar="S",
                   help="a request body must keep arriving: each chunk within S, the whole within S plus its size "
                        "at 64 KiB/s; else 408 (default 10)")
    s.add_argument("--search-threads", type=int, default=None, metavar="N",
                   help="batches searched at once, in parallel (default 2 on 2 cores or more, else 1)")
    s.set_defaults(func=cmd_serve, catch_errors=True)


def cmd_serve(args) -> int:
    from lukhas_gpu.ingest.input_errors import MissingExtra

    try:
        import fastapi  # noqa: F401  (the extra is there)
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingExtra(f"lukhas-gpu serve needs the serve extra ({e}): pip install 'lukhas-gpu[serve]'") from None
    from lukhas_gpu.serve.options import ServeOptions
    from lukhas_gpu.serve.server import serve

    options = ServeOptions(store=args.store, mode=args.mode, host=args.host, port=args.port,
                           api_key_file=args.api_key_file, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                           max_queue=args.max_queue, max_body_mb=args.max_body_mb, timeout_s=args.timeout_s,
                           workers=args.workers, refresh_s=args.refresh_s, quality_s=args.quality_s,
                           max_connections=args.max_connections,
                           max_connections_per_client=args.max_connections_per_client,
                           header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                           **({} if args.search_threads is None else {"search_threads": args.search_threads}))
    serve(options)
    return 0
