"""The options of ``lukhas-gpu serve`` (one dataclass; the CLI maps its flags onto the fields)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

from ..util.bounds import (
    MAX_BODY_MB,
    MAX_CONNECTIONS,
    MAX_QUEUE,
    MAX_SEARCH_THREADS,
    MAX_SERVE_BATCH as MAX_BATCH,
    MAX_WORKERS,
)

__all__ = ["ServeOptions", "read_api_key", "default_search_threads", "search_omp_threads", "ENV_OPTIONS", "MAX_BATCH",
           "MAX_BODY_MB", "MIN_API_KEY_CHARS"]

#: The environment variable that carries the options to uvicorn's worker processes (``--workers``).
ENV_OPTIONS = "LUKHAS_GPU_SERVE_OPTIONS"
#: Fewest characters of an API key.
MIN_API_KEY_CHARS = 16
#: ``MAX_BATCH`` (``--max-batch``) and ``MAX_BODY_MB`` (``--max-body-mb``) are ``util.bounds``'.


def search_omp_threads(workers: int) -> int:
    """OpenMP threads of each search thread's FAISS calls: the process's share of the cores. One
    process a core runs its FAISS on one thread: a team of two in each of two processes spins
    on the core the other one needs (the same load: 6,492 / 5,702 QPS on one, 5,454 / 4,924 on
    the default two, 2026-12-08)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(int(workers), 1))


def default_search_threads(workers: int = 1) -> int:
    """Batches each server process searches at once by default: 2 where a process has 2 cores or
    more of its own (:func:`search_omp_threads`; searches share the index's lock and run in
    parallel; a second thread also keeps one batch's Python work beside another's kernels), else
    1. With one process a core, a second search thread only contends for the process's GIL:
    ``serve --workers 2`` on 2 cores, the 50k WordNet store tuned, wrk with 64 connections, 2
    pairs of runs: 5,430 / 5,369 QPS with one thread, 4,637 / 4,236 with two (2026-12-08)."""
    return 2 if search_omp_threads(workers) >= 2 else 1


@dataclasses.dataclass
class ServeOptions:
    """How the server runs.

    Parameters
    ----------
    store : str
        The store directory (built by ``lukhas-gpu ingest`` or ``MemoryIndex.create``).
    mode : {"r", "w"}
        ``"r"`` (default): a reader beside whatever writes the store (a batch job); it refreshes
        every ``refresh_s`` and on ``POST /v1/refresh``, takes no lock, changes no file, and
        rejects writes (409). ``"w"``: the server is the store's one writer (add, delete,
        checkpoint); ``workers`` must then be 1.
    host, port : str, int
        Where to listen: 127.0.0.1 unless told otherwise; port 0 picks a free port (printed).
    api_key : str or None
        When set, every endpoint but ``/healthz`` needs ``Authorization: Bearer <key>``.
    api_key_file : str or None
        Where the key was read (:func:`read_api_key`); worker processes read it again there, so
        the key never travels in the environment.
    max_batch : int
        Most queries merged into one search (1: batching off).
    max_wait_ms : float
        Under concurrency (the last batch merged several requests), how long the oldest queued
        request waits for others before its batch runs; a lone client never waits. While a
        batch runs, requests queue anyway, so under load batches fill without waiting.
    max_queue : int
        Most queries waiting; beyond it requests get 429 with ``Retry-After`` (default
        ``max(64 * max_batch, 1024)``, at least one batch).
    max_body_mb : float
        Largest request body; larger ones get 413 from their ``Content-Length`` alone.
    timeout_s : float
        A search not answered within it gets 503 (its queries are dropped if still queued).
    workers : int
        Server processes sharing the socket; each opens the store as a reader (memory-mapped
        vectors and contents are shared through the page cache).
    refresh_s : float
        Readers: seconds between refreshes (0: only on ``POST /v1/refresh``).
    quality_s : float
        Seconds between recall estimates for ``/metrics`` (0: never; each costs an exact scan
        per probe query, see ``MemoryIndex.quality``).
    max_connections : int
        Open connections in all; a new one past it closes the oldest connection still waiting
        for a request's headers, and is refused (503) only when every one is busy.
    max_connections_per_client : int
        The same, per client address (behind a proxy every client has the proxy's address:
        raise it there).
    header_timeout_s : float
        A request's headers must be complete within it of their first byte (of the
        connection, for a new one), else the connection is closed (slow clients).
    body_timeout_s : float
        A request body must keep arriving: each chunk within it, the whole within it plus
        its size at 64 KiB/s; else 408.
    search_threads : int
        Batches searched at once (threads of the search pool; searches hold the index's shared
        lock, so they run in parallel). Default: :func:`default_search_threads` (2 where each
        process has 2 cores or more, else 1); 1 gives one search at a time.
    """

    store: str
    mode: str = "r"
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = dataclasses.field(default=None, repr=False)
    api_key_file: str | None = None
    max_batch: int = 256
    max_wait_ms: float = 1.0
    max_queue: int | None = None
    max_body_mb: float = 64.0
    timeout_s: float = 30.0
    workers: int = 1
    refresh_s: float = 1.0
    quality_s: float = 0.0
    max_connections: int = 2048
    max_connections_per_client: int = 256
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    search_threads: int | None = None

    def __post_init__(self):
        if self.mode not in ("r", "w"):
            raise ValueError(f"mode must be 'r' (a reader) or 'w' (the writer), got {self.mode!r}")
        _int_in("port", self.port, 0, 65535)
        _int_in("max_batch", self.max_batch, 1, MAX_BATCH)
        _int_in("workers", self.workers, 1, MAX_WORKERS)
        _int_in("max_connections", self.max_connections, 1, MAX_CONNECTIONS)
        if self.search_threads is None:
            self.search_threads = default_search_threads(self.workers)
        _int_in("search_threads", self.search_threads, 1, MAX_SEARCH_THREADS)
        _int_in("max_connections_per_client", self.max_connections_per_client, 1, MAX_CONNECTIONS)
        _float_in("header_timeout_s", self.header_timeout_s, 1e-3, 3600.0)
        _float_in("body_timeout_s", self.body_timeout_s, 1e-3, 3600.0)
        if self.max_queue is None:
            self.max_queue = max(64 * self.max_batch, 1024)
        _int_in("max_queue", self.max_queue, 1, MAX_QUEUE)
        _float_in("max_wait_ms", self.max_wait_ms, 0.0, 10_000.0)
        _float_in("max_body_mb", self.max_body_mb, 1e-3, MAX_BODY_MB)
        _float_in("timeout_s", self.timeout_s, 1e-3, 86_400.0)
        _float_in("refresh_s", self.refresh_s, 0.0, 86_400.0)
        _float_in("quality_s", self.quality_s, 0.0, 86_400.0)
        if self.mode == "w" and self.workers != 1:
            raise ValueError(f"a writer server runs one worker (a store has one writer), got workers={self.workers}; "
                             "serve readers (--mode r) with several workers beside a batch job instead")
        if self.api_key is not None and len(self.api_key) < MIN_API_KEY_CHARS:
            raise ValueError(f"the API key must have at least {MIN_API_KEY_CHARS} characters, got {len(self.api_key)}")
        if self.api_key_file is not None and self.api_key is None:
            self.api_key = read_api_key(self.api_key_file)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    def to_json(self) -> str:
        """The options without the key itself (see ``api_key_file``)."""
        out = dataclasses.asdict(self)
        out.pop("api_key")
        return json.dumps(out)

    @classmethod
    def from_json(cls, text: str) -> "ServeOptions":
        kw = json.loads(text)
        if kw.get("api_key_file"):
            kw["api_key"] = read_api_key(kw["api_key_file"])
        return cls(**kw)

    @classmethod
    def from_env(cls) -> "ServeOptions":
        text = os.environ.get(ENV_OPTIONS)
        if not text:
            raise RuntimeError(f"{ENV_OPTIONS} is not set: start the server with `lukhas-gpu serve`")
        return cls.from_json(text)


def read_api_key(path) -> str:
    """The API key in ``path``: its first line, stripped; refuses an empty key."""
    p = pathlib.Path(path)
    with open(p, "rb") as f:
        raw = f.read(4097)
    if len(raw) > 4096:
        raise ValueError(f"{p}: an API key file holds one key of at most 4096 bytes")
    lines = raw.decode("utf-8").strip().splitlines()
    key = lines[0].strip() if lines else ""
    if len(key) < MIN_API_KEY_CHARS:
        raise ValueError(f"{p}: the API key must have at least {MIN_API_KEY_CHARS} characters, got {len(key)}")
    return key


def _int_in(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")


def _float_in(name, v, lo, hi):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")
