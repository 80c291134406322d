"""Searches on the shared side of the index's lock (``index/locking.py``): the lock itself
(shared holders at once, a writer never starved, re-entry, no silent upgrade), searches that
really overlap, results of concurrent searches bit-identical to a single-threaded run of the same
frozen index (every route: batched, one query, nprobe, rerank, filters, namespaces, rank,
diversity, the tuned target), and an adversarial run: searching threads beside a writer that
adds, deletes, updates and checkpoints while a retune runs, every result checked against what
must hold (ids deleted before a search began never returned), and the writer finishing in time."""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

import lukhas_gpu
from lukhas_gpu import Filter, IndexConfig, Rank
from lukhas_gpu.index import tuning
from lukhas_gpu.index.locking import SharedLock

D, N, K = 48, 3000, 10
JOIN_S = 60  # a thread not done by then is a deadlock


def _data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((16, D)).astype(np.float32)
    x = centers[rng.integers(0, 16, n)] + 0.5 * rng.standard_normal((n, D)).astype(np.float32)
    return x.astype(np.float32)


def _config(**kw) -> IndexConfig:
    return IndexConfig(train_threshold=2048, nlist=32, auto_tune=False, probe_queries=128, probe_size=256, seed=3,
                       gpu_resident="off", **kw)


def _fill(index, x) -> None:
    half = len(x) // 2
    tags = [["even"] if i % 2 == 0 else ["odd"] for i in range(len(x))]
    index.add(x[:half], tags=tags[:half], namespace="a", importance=np.linspace(0, 1, half))
    index.add(x[half:], tags=tags[half:], namespace="b")
    assert index.is_trained


def _run_threads(targets) -> None:
    errors: list = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported by the test thread
                errors.append(e)
        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "a thread did not finish: deadlock?"
    if errors:
        raise errors[0]


# -- the lock ------------------------------------------------------------------------------------
def test_shared_holders_run_at_once_and_exclusive_waits_for_them():
    lock = SharedLock()
    inside = threading.Barrier(3, timeout=10)  # three readers inside together, or it breaks
    order = []

    def reader():
        with lock.shared:
            inside.wait()
            time.sleep(0.05)
            order.append("r")

    def writer():
        time.sleep(0.02)  # the readers are in
        with lock:
            order.append("w")

    _run_threads([reader, reader, reader, writer])
    assert order == ["r", "r", "r", "w"]


def test_writer_is_not_starved_and_reentry_never_deadlocks():
    lock = SharedLock()
    writer_in = threading.Event()
    first_in, stop = threading.Event(), threading.Event()
    late_reader_got_in = []

    def reader():  # holds the shared side until the writer has waited, re-enters meanwhile
        with lock.shared:
            first_in.set()
            time.sleep(0.1)  # the writer is waiting now
            with lock.shared:  # a re-entry passes a waiting writer (else: deadlock)
                pass
        stop.wait(5)

    def writer():
        first_in.wait(5)
        with lock:
            writer_in.set()
            time.sleep(0.05)

    def late_reader():  # arrives while the writer waits: waits behind it
        first_in.wait(5)
        time.sleep(0.05)
        with lock.shared:
            late_reader_got_in.append(writer_in.is_set())
        stop.set()

    _run_threads([reader, writer, late_reader])
    assert late_reader_got_in == [True]


def test_exclusive_reentry_and_no_silent_upgrade():
    lock = SharedLock()
    with lock:
        with lock.shared:  # the writer may read
            with lock:  # and write again
                assert lock.held_exclusive()
        assert lock.held_exclusive()
    assert not lock.held_exclusive()
    with lock.shared:
        with pytest.raises(RuntimeError, match="shared"):
            lock.acquire()
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(RuntimeError):
        lock.release_shared()
    got = []
    with lock.shared:
        t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
        t.start()
        t.join(5)
        assert got == [False]  # timed out behind a reader
        with lock.shared:  # and readers are not held back by the writer that gave up
            pass
    assert lock.acquire(blocking=False)
    lock.release()


# -- searches on one index -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def frozen():
    x = _data(N, 1)
    index = lukhas_gpu.MemoryIndex(D, _config(target_recall=0.9))
    _fill(index, x)
    index.delete(np.arange(0, N, 7))  # deletions present
    traffic = _data(300, 2)
    index.tune(queries=traffic)
    return index, _data(64, 3)


def _routes(xq):
    """Search calls covering every route a search can take under the shared lock."""
    return [
        ("batched", xq[:20], {}),
        ("single-1d", xq[20], {}),
        ("single-2d", xq[21:22], {}),
        ("nprobe", xq[:8], {"nprobe": 3}),
        ("nprobe-big", xq[8:16], {"nprobe": 32, "rerank": 2}),
        ("tags", xq[:10], {"where": Filter(tags_any=["even"])}),
        ("namespace", xq[10:20], {"namespace": "b"}),
        ("rank", xq[:6], {"rank": Rank(similarity=1.0, importance=0.3)}),
        ("diversity", xq[6:12], {"diversity": 0.5}),
        ("target", xq[12:30], {"target_recall": 0.9}),
        ("target-single", xq[30], {"target_recall": 0.9}),
    ]


def test_searches_overlap(frozen, monkeypatch):
    """Two searches are inside the index at the same time (the barrier breaks if they queue)."""
    index, xq = frozen
    together = threading.Barrier(2, timeout=10)
    real = tuning.search_params
    met = []

    def meet(*a, **kw):
        together.wait()
        met.append(threading.get_ident())
        return real(*a, **kw)

    monkeypatch.setattr(tuning, "search_params", meet)
    _run_threads([lambda: index.search(xq[:4], K), lambda: index.search(xq[4:8], K)])
    assert len(set(met)) == 2  # both searches reached the barrier, inside the index, at once


def test_concurrent_searches_are_bit_identical(frozen):
    index, xq = frozen
    ref = {}
    for name, q, kw in _routes(xq):
        r = index.search(q, K, **kw)
        ref[name] = (np.asarray(r.ids).copy(), np.asarray(r.scores).copy())
    calls = _routes(xq)

    def searcher(seed):
        def run():
            order = list(calls) * 3
            random.Random(seed).shuffle(order)
            for name, q, kw in order:
                r = index.search(q, K, **kw)
                ids, scores = ref[name]
                np.testing.assert_array_equal(np.asarray(r.ids), ids, err_msg=name)
                np.testing.assert_array_equal(np.asarray(r.scores), scores, err_msg=name)
        return run

    _run_threads([searcher(s) for s in range(4)])


def test_upgrade_inside_a_search_raises(frozen, monkeypatch):
    """Code reached from a search that asks for the exclusive side fails loudly, never hangs."""
    index, xq = frozen

    def grab(*a, **kw):
        with index.lock:
            pass

    monkeypatch.setattr(tuning, "search_params", grab)
    with pytest.raises(RuntimeError, match="shared"):
        index.search(xq[:2], K)


def test_first_searches_of_a_freshly_opened_store_race_safely(tmp_path):
    """Threads whose searches are the first of a store just opened (the encoder, built on first
    use, and the lazy CRC checks of the int8 rows run under the shared lock) all get the answer
    of a store searched alone."""
    x, xq = _data(N, 11), _data(16, 12)
    with lukhas_gpu.MemoryIndex.create(tmp_path / "s", D, _config()) as w:
        _fill(w, x)
        w.delete(np.arange(0, N, 9))
    alone = lukhas_gpu.MemoryIndex.open(tmp_path / "s")
    want = [(np.asarray(r.ids), np.asarray(r.scores)) for r in (alone.search(xq, K), alone.search(xq[0], K))]
    alone.close()
    for _ in range(6):  # a race lost once in three tries without the encoder's lock
        index = lukhas_gpu.MemoryIndex.open(tmp_path / "s")
        start = threading.Barrier(4, timeout=10)

        def first(i):
            def run():
                start.wait()
                r = index.search(xq if i % 2 == 0 else xq[0], K)
                ids, scores = want[i % 2]
                np.testing.assert_array_equal(np.asarray(r.ids), ids)
                np.testing.assert_array_equal(np.asarray(r.scores), scores)
            return run

        _run_threads([first(i) for i in range(4)])
        index.close()


# -- beside a writer -----------------------------------------------------------------------------
def _check_result(ids, scores, *, gone_before, namespace_b_from=None, ordered=True):
    """What any result must satisfy whatever the writer did meanwhile."""
    ids, scores = np.atleast_2d(np.asarray(ids)), np.atleast_2d(np.asarray(scores))
    for row_i, row_s in zip(ids, scores):
        live = row_i[row_i >= 0]
        assert len(set(live.tolist())) == len(live), "an id twice in one result"
        assert not np.isin(live, gone_before).any(), "an id deleted before the search began"
        fin = row_s[np.isfinite(row_s)]
        assert not ordered or np.all(np.diff(fin) <= 1e-6), "scores not in order"  # MMR's are not
        if namespace_b_from is not None:
            assert np.all(live >= namespace_b_from), "another namespace's memory"


def test_searches_beside_a_writer_and_a_retune(tmp_path):
    x = _data(N, 4)
    extra = _data(2000, 5)
    index = lukhas_gpu.MemoryIndex.create(tmp_path / "store", D, _config(target_recall=0.9))
    _fill(index, x)
    first_b = N // 2  # namespace "b" is rows N/2..N and every row the writer adds (below)
    gone0 = np.arange(0, N, 5)
    index.delete(gone0)
    index.checkpoint()
    deleted: list = [(time.monotonic(), gone0)]  # (when the delete returned, its ids)
    deleted_lock = threading.Lock()
    stop = threading.Event()
    xq = _data(40, 6)
    counts = {"searches": 0}

    def gone_at(t0: float) -> np.ndarray:
        with deleted_lock:
            return np.concatenate([ids for t, ids in deleted if t < t0])

    def searcher(seed):
        def run():
            rng = random.Random(seed)
            calls = _routes(xq)
            while not stop.is_set():
                name, q, kw = rng.choice(calls)
                t0 = time.monotonic()
                r = index.search(q, K, **kw)
                _check_result(r.ids, r.scores, gone_before=gone_at(t0),
                              namespace_b_from=first_b if kw.get("namespace") == "b" else None,
                              ordered="diversity" not in kw)
                counts["searches"] += 1
        return run

    def writer():
        rng = np.random.default_rng(7)
        try:
            for step in range(12):
                ids = index.add(extra[step * 150:(step + 1) * 150], namespace="b")
                live = np.flatnonzero(index.contains(np.arange(len(index.parts.vectors))))
                victims = rng.choice(live[live >= first_b], 40, replace=False)
                index.delete(victims)
                with deleted_lock:
                    deleted.append((time.monotonic(), victims))
                index.update(ids[:5], embeddings=_data(5, 100 + step), tags=[["odd"]] * 5)
                if step % 4 == 3:
                    index.checkpoint()
        finally:
            stop.set()

    def retuner():
        index.tune(queries=_data(200, 8))
        index.retrain()

    _run_threads([searcher(s) for s in range(3)] + [writer, retuner])
    assert counts["searches"] > 0
    index.close()
    reopened = lukhas_gpu.MemoryIndex.open(tmp_path / "store")
    gone = np.concatenate([ids for _, ids in deleted])
    r = reopened.search(xq, K)
    _check_result(r.ids, r.scores, gone_before=gone)


def test_a_writer_among_many_readers_finishes():
    """Write-preferring: a writer gets in although readers never stop coming."""
    x = _data(N, 9)
    index = lukhas_gpu.MemoryIndex(D, _config())
    _fill(index, x)
    stop = threading.Event()
    xq = _data(8, 10)
    done = []

    def reader():
        while not stop.is_set():
            index.search(xq[0], K)
            index.search(xq, K)

    def writer():
        t0 = time.monotonic()
        for i in range(20):
            index.add(x[i: i + 1])
        done.append(time.monotonic() - t0)
        stop.set()

    _run_threads([reader] * 6 + [writer])
    assert done and done[0] < 30


# -- the server's search threads -------------------------------------------------------------------
def test_the_batcher_runs_batches_on_several_threads_at_once():
    """``--search-threads 2``: two batches of different keys are inside ``run`` together (the
    barrier breaks if they queue), and every request gets its own answer; 1 keeps one at a time."""
    import asyncio
    import concurrent.futures

    from lukhas_gpu.serve.batcher import Batcher
    from lukhas_gpu.serve.options import ServeOptions, default_search_threads

    def make(threads: int):
        together, met = threading.Barrier(threads, timeout=5), threading.Event()
        inside, peak = [0], [0]
        guard = threading.Lock()

        def run(key, q):
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            if threads > 1 and not met.is_set():  # the first two batches meet inside
                together.wait()
                met.set()
            time.sleep(0.02)
            with guard:
                inside[0] -= 1
            return np.repeat(q[:, :1].astype(np.int64), key[0], 1), np.repeat(q[:, 1:2], key[0], 1)
        return run, peak

    for threads in (1, 2):
        run, peak = make(threads)

        async def main():
            pool = concurrent.futures.ThreadPoolExecutor(threads)
            b = Batcher(run, pool, max_batch=4, max_wait_s=0.0, max_queue=1000, threads=threads)
            b.start()
            qs = [np.array([[i, i / 10]], np.float32) for i in range(12)]
            got = await asyncio.gather(*(b.search((2 + i % 2,), q, 10) for i, q in enumerate(qs)))
            await b.stop()
            pool.shutdown()
            return got

        got = asyncio.run(main())
        assert [g[0][0, 0] for g in got] == list(range(12)) and [g[0].shape[1] for g in got] == [2, 3] * 6
        assert peak[0] == threads
    assert ServeOptions("s").search_threads == default_search_threads() >= 1
    assert ServeOptions("s", workers=64).search_threads == default_search_threads(64) == 1  # one process a core or more
    for bad in (0, 65, 1.5, True):
        with pytest.raises(ValueError, match="search_threads"):
            ServeOptions("s", search_threads=bad)
