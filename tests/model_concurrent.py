"""The model test's ``concurrent`` op (``Run.op_concurrent``): several threads search the store at
once (searches hold the shared side of the index's lock, ``index/locking.py``) and every result is
held to the model by the checks of ``model_checks.py``: own-vector searches (the IVF with every
list probed, batched and one query at a time), the tuned target's searches and the congruence of
every route with random filters, namespaces and ``as_of``. The own-vector searches must also be
bit-identical (ids and scores) to the same searches run alone before the threads start; the
reader of this process, when open, is searched beside the writer (held to the model of its last
refresh: the op changes nothing, so ``lag`` still holds it there)."""
from __future__ import annotations

import threading
import time

import numpy as np

from model_consts import NLIST

THREADS = 3
JOIN_S = 120  # a thread not done by then: a deadlock


def _own_vector_calls(model, rng) -> tuple[list, np.ndarray]:
    """``(name, query, kwargs)`` of own-vector searches of a few live memories valid now, and
    the rows of the batched one's queries."""
    from model_scopes import in_window

    keys = [k for k in model.keys() if in_window(model.mems[k], time.time())]
    if not keys:
        return [], np.zeros(0, np.int64)
    pick = [keys[i] for i in rng.choice(len(keys), min(len(keys), 24), replace=False)]
    vecs = np.stack([model.mems[k].vec for k in pick]).astype(np.float32)
    calls = [("batched", vecs, {"nprobe": NLIST, "rerank": 16}), ("one", vecs[0], {}), ("nprobe 2", vecs[:8],
                                                                                        {"nprobe": 2})]
    if len(vecs) > 1:
        calls.append(("one-2d", vecs[1:2], {}))
    return calls, np.array([model.mems[k].row for k in pick], np.int64)


def _searcher(ix, model, known, seed: int, ref: dict, calls: list):
    from model_checks import check_congruence, check_tuned

    def run():
        rng = np.random.default_rng(seed)
        for i in rng.permutation(len(calls)).tolist() * 2:
            name, q, kw = calls[i]
            res = ix.search(q, 10, **kw)
            ids, scores = np.asarray(res.ids), np.asarray(res.scores)
            if not (np.array_equal(ids, ref[name][0]) and np.array_equal(scores, ref[name][1])):
                from model_store import Violation
                raise Violation(f"concurrent search {name!r} {kw} differs from the same search alone: ids "
                                f"{ids.reshape(-1)[:10].tolist()} vs {ref[name][0].reshape(-1)[:10].tolist()}")
        check_tuned(ix, model, rng)
        check_congruence(ix, model, rng, known, n_filters=1, skip=("resident",))  # it switches a mirror on
    return run


class ConcurrentOps:
    """``op_concurrent`` of the driver."""

    def op_concurrent(self, op, rng):
        from model_checks import _misses

        ix = self._writer()
        targets = [(ix, self.model)]
        if self.reader is not None and self.reader_model is not None:  # as of its last refresh (op_lag)
            targets.append((self.reader, self.reader_model))
        threads, errors = [], []
        for n, (index, model) in enumerate(targets):
            calls, rows = _own_vector_calls(model, rng)
            ref = {}
            for name, q, kw in calls:  # alone first: the reference, and each memory found by its vector
                res = index.search(q, 10, **kw)
                ref[name] = (np.asarray(res.ids).copy(), np.asarray(res.scores).copy())
                if name == "batched" and len(_misses(model, q, rows, ref[name][0][:, 0])):
                    from model_store import Violation
                    raise Violation("an own-vector search (every list probed) missed a memory before the threads")
            for t in range(THREADS):
                threads.append(threading.Thread(target=_catch(_searcher(index, model, self.known,
                                                                        int(rng.integers(1 << 31)), ref, calls),
                                                              errors), daemon=True))
            self.note = f"{THREADS} threads x {len(targets)} index(es), {len(calls)} own-vector calls"
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN_S)
        if any(t.is_alive() for t in threads):
            from model_store import Violation
            raise Violation(f"concurrent searches did not finish within {JOIN_S} s (deadlock?)")
        if errors:
            raise errors[0]
        self.count(f"concurrent searches: {len(threads)} threads")


def _catch(fn, errors: list):
    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - raised again by the driver's thread
            errors.append(e)
    return run
