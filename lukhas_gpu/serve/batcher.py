"""The dynamic batcher: concurrent searches merged into one batched ``search`` call.

Requests wait in one bounded queue (counted in queries). One task takes the oldest request
and every queued request with the same parameters (``k``, filter, ranking, ...) up to
``max_batch`` queries; stacks their queries; runs the search in a worker thread (never on the
event loop); and splits the answer back. While a batch runs, new requests queue, so under load
batches fill without waiting. When the last batch merged several requests (concurrent clients),
the oldest request also waits up to ``max_wait_s`` after its arrival for more to come; a lone
client (batches of one request) is never delayed. Up to ``threads`` batches run at once (the
index's searches share its lock); the next batch is taken when a thread is free, so batches
still fill while every thread is busy.

A full queue raises :class:`QueueFull` (the server answers 429 with ``Retry-After``): memory
stays bounded under a flood. A request not answered within its timeout raises
``asyncio.TimeoutError`` and its queries are dropped if they are still queued. A merged batch
that fails is run again request by request, so one bad request fails alone.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Batcher", "QueueFull"]


class QueueFull(Exception):
    """The queue holds ``max_queue`` queries; ``retry_after`` is a hint in whole seconds."""

    def __init__(self, depth: int, retry_after: int):
        super().__init__(f"the search queue is full ({depth} queries waiting); retry after {retry_after} s")
        self.depth, self.retry_after = depth, retry_after

    def __reduce__(self):  # pickled whole (a shard group's refusal crosses to the Ray Serve ingress)
        return type(self), (self.depth, self.retry_after)


@dataclasses.dataclass(eq=False)
class _Item:
    key: tuple
    queries: np.ndarray
    future: asyncio.Future
    t0: float


class Batcher:
    """Merge concurrent searches.

    Parameters
    ----------
    run : callable ``(key, queries) -> (ids, scores)``
        The blocking search of a ``(nq, dim)`` float32 batch: ``(nq, k)`` int64 ids and float32
        scores as numpy. Called in ``executor``.
    executor : concurrent.futures.Executor
    max_batch, max_wait_s, max_queue
        See :class:`~.options.ServeOptions`.
    observe : callable ``(n_queries, n_requests, seconds)``, optional
        Called after each batch (metrics).
    threads : int, default 1
        Batches run at once (``executor`` should have as many threads); see
        :attr:`~.options.ServeOptions.search_threads`.
    """

    def __init__(self, run, executor, *, max_batch: int, max_wait_s: float, max_queue: int, observe=None,
                 threads: int = 1):
        self._run, self._executor = run, executor
        self.threads = int(threads)
        self._free: asyncio.Semaphore | None = None  # a search thread free
        self._running: set[asyncio.Task] = set()
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._observe = observe
        self._pending: collections.deque[_Item] = collections.deque()
        self.depth = 0  # queries queued
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._rate = 0.0  # queries per second of recent batches, for Retry-After
        self._last_requests = 2  # requests merged into the last batch (start as if under load)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._free = asyncio.Semaphore(self.threads)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for t in list(self._running):
            t.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self.depth = 0

    async def search(self, key: tuple, queries: np.ndarray, timeout: float):
        """Queue ``queries`` (``(nq, dim)`` float32) and wait for their ``(ids, scores)``."""
        n = len(queries)
        if self.depth and self.depth + n > self.max_queue:
            wait = self.depth / self._rate if self._rate > 0 else 1.0
            raise QueueFull(self.depth, max(1, math.ceil(wait)))
        loop = asyncio.get_running_loop()
        item = _Item(key, queries, loop.create_future(), loop.time())
        self._pending.append(item)
        self.depth += n
        self._wake.set()
        # a timer rather than wait_for + shield: no task per request (measurable at 1,000 requests/s)
        timer = loop.call_later(timeout, _expire, item.future)
        try:
            return await item.future  # cancelled with its request (the client left): dropped if still queued
        finally:
            timer.cancel()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            await self._free.acquire()  # a thread free: requests queue (and batches fill) meanwhile
            if not self._pending:
                self._free.release()
                continue
            first = self._pending[0]
            # wait for company only under concurrency (the last batch merged requests): a lone
            # client is never delayed, a busy server fills its batches
            if self.max_batch > 1 and self.max_wait_s > 0 and self._last_requests > 1:
                deadline = first.t0 + self.max_wait_s
                while self.depth < self.max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            batch = self._take()
            if not batch:
                self._free.release()
                continue
            task = loop.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._free.release()
        if not task.cancelled() and (e := task.exception()) is not None:  # _execute settles requests' errors
            log.error("a search batch failed outside its requests", exc_info=e)

    def _take(self) -> list[_Item]:
        """The oldest live request and the queued ones with its key, up to ``max_batch`` queries
        (a single request larger than that runs alone)."""
        batch: list[_Item] = []
        keep: collections.deque[_Item] = collections.deque()
        n, key = 0, None
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():  # timed out or cancelled: dropped
                self.depth -= len(item.queries)
                continue
            if key is None:
                key = item.key
            if item.key == key and (not batch or n + len(item.queries) <= self.max_batch):
                batch.append(item)
                n += len(item.queries)
                self.depth -= len(item.queries)
                if n >= self.max_batch:
                    break
            else:
                keep.append(item)
        keep.extend(self._pending)
        self._pending = keep
        return batch

    async def _execute(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        queries = batch[0].queries if len(batch) == 1 else np.concatenate([b.queries for b in batch])
        try:
            ids, scores = await loop.run_in_executor(self._executor, self._run, batch[0].key, queries)
        except Exception as e:
            if len(batch) == 1:
                _settle(batch[0].future, exc=e)
            else:  # one bad request must not fail the others: run them one by one
                for item in batch:
                    try:
                        _settle(item.future, await loop.run_in_executor(self._executor, self._run, item.key,
                                                                        item.queries))
                    except Exception as e1:
                        _settle(item.future, exc=e1)
            return
        seconds = time.perf_counter() - t0
        self._last_requests = len(batch)
        at = 0
        for item in batch:
            m = len(item.queries)
            _settle(item.future, (ids[at:at + m], scores[at:at + m]))
            at += m
        rate = len(queries) / max(seconds, 1e-6)
        self._rate = rate if self._rate == 0 else 0.9 * self._rate + 0.1 * rate
        if self._observe is not None:
            self._observe(len(queries), len(batch), seconds)


def _expire(future: asyncio.Future) -> None:
    if not future.done():  # dropped from the queue if still there
        future.set_exception(asyncio.TimeoutError())


def _settle(future: asyncio.Future, result=None, *, exc: BaseException | None = None) -> None:
    if future.done():  # timed out meanwhile
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
