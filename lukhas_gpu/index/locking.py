"""The index's lock, for the facade and the mixins that add public methods to it.

One :class:`SharedLock` per index: a reader-writer lock. Searches (pure reads of the index's
parts) take its shared side, so threads searching one index run at once (FAISS, numpy and torch
release the GIL in their kernels); every other call -- writes, checkpoint, refresh, a retrain's
or retune's swap, close -- takes its exclusive side, which waits for the shared holders to leave.
``MemoryIndex.lock`` is the exclusive side (``with index.lock:`` keeps meaning "nothing else runs").

What a search mutates while it holds only the shared side (the probe's query sample, the lazily
built encoder and device mirror, the start of a background retune, lazy CRC checks, caches)
has its own small lock or is per call; ARCHITECTURE.md lists which lock guards what.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["SharedLock", "locked", "locked_shared", "search_exclusive"]


class SharedLock:
    """A write-preferring reader-writer lock, re-entrant on both sides.

    * ``exclusive`` (also ``acquire``/``release``/``with lock:``): one thread; re-entrant; the
      holder may take the shared side too (it counts as a re-entry of the exclusive side).
    * ``shared``: any number of threads at once; re-entrant per thread. A thread asking for it
      while a writer waits waits too (a writer is never starved), unless it already holds it.
    * A thread holding only the shared side that asks for the exclusive side would wait for
      itself forever: :class:`RuntimeError` instead.
    """

    def __init__(self):
        self._mutex = threading.Lock()  # held briefly by every acquire and release
        self._cond = threading.Condition(self._mutex)  # waits and wake-ups, on the same lock
        self._readers: dict[int, int] = {}  # thread id -> shared holds (re-entries counted)
        self._writer: int | None = None  # thread id of the exclusive holder
        self._depth = 0  # its holds (exclusive and shared re-entries)
        self._writers_waiting = 0
        self.shared = _Side(self.acquire_shared, self.release_shared)
        self.exclusive = _Side(self.acquire, self.release)

    # -- the exclusive side: threading.RLock's interface --------------------------------------
    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._writer == me:
                self._depth += 1
                return True
            if me in self._readers:
                raise RuntimeError("this thread holds the index's shared (search) lock and asked for its "
                                   "exclusive lock: release the shared side first (an upgrade would deadlock)")
            if self._writer is None and not self._readers:
                self._writer, self._depth = me, 1
                return True
            if not blocking:
                return False
            self._writers_waiting += 1
            try:
                ok = self._cond.wait_for(lambda: self._writer is None and not self._readers,
                                         None if timeout is None or timeout < 0 else timeout)
            finally:
                self._writers_waiting -= 1
            if not ok:
                self._cond.notify_all()  # readers held back by this writer may go on
                return False
            self._writer, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._mutex:
            if self._writer != threading.get_ident():
                raise RuntimeError("cannot release the index's exclusive lock: this thread does not hold it")
            self._leave_exclusive()

    def _leave_exclusive(self) -> None:
        """One hold of the exclusive holder released (the mutex held): the last one frees it."""
        self._depth -= 1
        if self._depth == 0:
            self._writer = None
            self._cond.notify_all()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    # -- the shared side ------------------------------------------------------------------------
    def acquire_shared(self) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._writer == me:  # inside its own exclusive hold: a re-entry
                self._depth += 1
                return True
            held = self._readers.get(me, 0)
            if not held and (self._writer is not None or self._writers_waiting):
                # a new reader waits behind a waiting writer; a re-entry never does
                self._cond.wait_for(lambda: self._writer is None and not self._writers_waiting)
            self._readers[me] = held + 1
            return True

    def release_shared(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._writer == me:  # a shared re-entry inside its exclusive hold
                self._leave_exclusive()
                return
            held = self._readers.get(me, 0)
            if not held:
                raise RuntimeError("cannot release the index's shared lock: this thread does not hold it")
            if held == 1:
                del self._readers[me]
                if not self._readers:
                    self._cond.notify_all()
            else:
                self._readers[me] = held - 1

    # -- introspection (tests) -------------------------------------------------------------------
    def held_shared(self) -> int:
        """Threads holding the shared side now."""
        with self._mutex:
            return len(self._readers)

    def held_exclusive(self) -> bool:
        """Whether this thread holds the exclusive side."""
        return self._writer == threading.get_ident()


class _Side:
    """One side of a :class:`SharedLock` as a context manager."""

    __slots__ = ("acquire", "release")

    def __init__(self, acquire, release):
        self.acquire, self.release = acquire, release

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def locked(method):
    """Run ``method`` holding the index's exclusive lock (``MemoryIndex.lock``: nothing else
    reads or changes the index meanwhile, so a background retrain or retune can swap its result
    in between two calls)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return wrapper


def locked_shared(method=None, *, exclusive_if=None):
    """Run ``method`` holding the shared side of the index's lock (``MemoryIndex.lock.shared``):
    a pure read that other shared holders may run beside. ``exclusive_if(kwargs)``: True for a
    call whose route is not audited for shared holders (it takes the exclusive side)."""
    if method is None:
        return functools.partial(locked_shared, exclusive_if=exclusive_if)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        side = self.lock if exclusive_if is not None and exclusive_if(kwargs) else self.lock.shared
        with side:
            return method(self, *args, **kwargs)
    return wrapper


def search_exclusive(kwargs: dict) -> bool:
    """Whether a ``search`` call takes a route not audited for shared holders, which then runs
    under the exclusive side: a hybrid part (``text=``/``sparse=``: the BM25 and sparse indexes'
    caches), ``follow_links`` (the links' reads), or a filter on metadata (``Filter.meta``: the
    records' shared zstd decompressors, which are not thread-safe)."""
    where = kwargs.get("where")
    return (kwargs.get("text") is not None or kwargs.get("sparse") is not None or bool(kwargs.get("follow_links"))
            or getattr(where, "meta", None) is not None)
