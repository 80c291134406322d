"""Giving freed heap memory back to the operating system.

glibc's malloc keeps freed chunks in its arenas: after a training run (samples, k-means buffers,
FAISS's temporary tables), a checkpoint or a compaction, hundreds of MB can stay resident though
nothing uses them, and the process's RssAnon then says far more than the index holds (3,545 B
per memory against 588 B accounted, measured at 50k real memories before this). ``malloc_trim(0)``
returns the free pages of every arena. Elsewhere (musl, macOS, Windows) :func:`trim` does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
import time

log = logging.getLogger(__name__)

__all__ = ["trim", "maybe_trim", "free_heap", "rss_anon", "TRIM_FREE_BYTES", "TRIM_BATCH_BYTES", "TRIM_SEARCH_EVERY_S"]

_last_check = 0.0
#: An ``add`` of at least this many input bytes checks the heap every time (smaller ones at most
#: once a second).
TRIM_BATCH_BYTES = 4 << 20
#: A search checks the heap at most once in this many seconds, whatever its size (jemalloc's
#: default decay of dirty pages is 10 s too). Checking after every large batch gave its tens of MB
#: of candidates and rerank buffers back each time, and the next batch faulted them in again:
#: batched QPS 12k -> 15.5k on WordNet (117k, 1,000 queries a call) once throttled to a second;
#: a batch after 300 single queries and a pause of 1.1 s (Debian 50k, 1,000 queries a call, 12
#: interleaved pairs) ran at a median 10.6k QPS with that second, 11.6k with 10 s. The cost: the
#: last batch's temporaries (52 MB measured at 1,000 queries, 50k memories) stay resident until a
#: search 10 s later, or the next add.
TRIM_SEARCH_EVERY_S = 10.0
#: Free heap bytes past which an ``add`` or a search gives them back (see :func:`maybe_trim`).
TRIM_FREE_BYTES = 32 << 20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


@functools.lru_cache(maxsize=1)
def _mallinfo2():
    if _malloc_trim() is None:
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], _Mallinfo2
    return fn


def free_heap() -> int | None:
    """Bytes free inside malloc's arenas (glibc's ``mallinfo2().fordblks``), None elsewhere."""
    fn = _mallinfo2()
    return int(fn().fordblks) if fn is not None else None


def maybe_trim(min_free: int = TRIM_FREE_BYTES, *, every: float = 0.0) -> bool:
    """:func:`trim` when at least ``min_free`` bytes sit free in the heap (checked at most once
    every ``every`` seconds).

    Called at the end of every large ``add`` (:data:`TRIM_BATCH_BYTES`), of other adds at most
    once a second and of searches at most once in :data:`TRIM_SEARCH_EVERY_S`: a batch's
    temporaries (and the caller's, freed before) are given back, so the process's RssAnon follows
    what the index holds instead of its high-water mark. Pages a trim released still count as
    free for malloc, so a large heap is trimmed again each time (a no-op costing ~1 ms per 100 MB
    when nothing came back). The check costs ~0.1 ms; a trim ~30 ms per 400 MB returned
    (measured, 2 cores).
    """
    global _last_check
    if every:
        now = time.monotonic()
        if now - _last_check < every:
            return False
        _last_check = now
    free = free_heap()
    if free is None or free < min_free:
        return False
    return trim()


def trim() -> bool:
    """Return free heap pages to the OS (glibc ``malloc_trim(0)``); False where unavailable."""
    fn = _malloc_trim()
    if fn is None:
        return False
    return bool(fn(0))


def rss_anon() -> int | None:
    """This process's anonymous resident memory in bytes (``RssAnon`` of ``/proc/self/status``),
    None where the kernel does not report it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
