"""What a search of each row of the tuning table costs, in seconds per query.

:func:`costs` times the exact scan and fits the IVF rows' model ``a * codes scanned + b *
candidates + c`` on four timed corners of the table (the candidate stages time their own rows,
:mod:`.candidates`); :func:`time_cheapest` then times the rows meeting the target that the model
ranks cheapest, each directly, in alternating rounds, and keeps what they measured: a model
fitted on four timings can be thrown by one disturbed timing (WordNet 117k, 2026-12-07: it priced
nprobe 64 rerank 32 at 14,611 QPS and chose it over nprobe 96 rerank 8; it ran at 9,325, the other
at ~12,000).
"""
from __future__ import annotations

import numpy as np

from ..query import probing
from ..util.timing import fastest

__all__ = ["costs", "time_cheapest", "row_probing", "TIME_QUERIES", "CHECKED_ROWS", "CHECK_ROUNDS", "CHECK_PASSES"]

#: Queries a timing run searches (one batch, as a batched caller would).
TIME_QUERIES = 512
#: Rows meeting the target, cheapest first, timed directly before the choice; the alternating
#: rounds each is timed in (its figure: the fastest); the passes at most (see :func:`time_cheapest`).
CHECKED_ROWS, CHECK_ROUNDS, CHECK_PASSES = 3, 3, 3


def _runner(index, ref, k):
    """``(run, nq)``: ``run(kind, nprobe, kc, p)`` searches the timing queries once under the lock."""
    import torch

    from ..query import executor
    lock = index.lock
    q = torch.from_numpy(np.ascontiguousarray(ref["q"][:TIME_QUERIES], dtype=np.float32))

    def run(kind, nprobe=1, kc=k, p=None):
        s = executor.Search(k=k, nprobe=nprobe, rerank=max(1, kc // k), exact_max=0,
                            probing=p, exact=kind == 2)
        with lock:
            executor.similar(index.parts, q, s, None)
    return run, q.shape[0]


def row_probing(table, i: int, weights) -> probing.Probing:
    """The probing of IVF row ``i`` of the table: adaptive (kind 1, ``weights`` its predictor's)
    or a fixed ``nprobe``; a stage's row holds its parameter the same way."""
    if int(table["kind"][i]) == 1:
        return probing.Probing(int(table["cap"][i]), weights, float(table["param"][i]), int(table["nmin"][i]))
    return probing.Probing(int(table["param"][i]))


def costs(index, ann, ref, table, k, weights) -> np.ndarray:
    """Seconds per query of every row: the exact scan timed; the IVF rows from a model
    ``a * codes + b * candidates + c`` fitted on timed runs (plus the adaptive coarse overhead)."""
    run, nq = _runner(index, ref, k)
    cost = np.zeros(len(table["kind"]))
    kinds = table["kind"].astype(int)

    cost[kinds == 2] = fastest(lambda: run(2)) / nq
    if ann is None or not (kinds < 2).any():
        return cost
    fixed = kinds == 0
    grid = sorted({int(v) for v in table["param"][fixed]})
    n_lo, n_hi = grid[0], grid[-1]
    r_lo, r_hi = 1, int(table["rerank"].max())
    pts = [(n_lo, r_lo), (n_hi, r_lo), (n_lo, r_hi), (n_hi, r_hi)]
    x, y = [], []
    for n, r in pts:
        row = np.flatnonzero(fixed & (table["param"] == n))
        if not len(row):
            continue
        codes = table["codes"][row[0]]
        x.append([codes, k * r, 1.0])
        y.append(fastest(lambda: run(0, n, k * r)) / nq)
    coef, *_ = np.linalg.lstsq(np.array(x), np.array(y), rcond=None)
    coef = np.maximum(coef, 0.0)
    ivf = kinds < 2
    cost[ivf] = table["codes"][ivf] * coef[0] + table["kc"][ivf] * coef[1] + coef[2]
    ad = kinds == 1
    if ad.any() and weights is not None:  # the wider coarse search and the predictor, measured once
        i = int(np.flatnonzero(ad)[len(np.flatnonzero(ad)) // 2])
        p = row_probing(table, i, weights)
        t = fastest(lambda: run(1, kc=int(table["kc"][i]), p=p)) / nq
        cost[ad] += max(0.0, t - cost[i])
    return np.maximum(cost, 1e-9)


def time_cheapest(index, ref, table, k, weights, target, checkpoint=None) -> None:
    """Replace the modelled cost of the IVF rows (fixed or adaptive probing) that meet ``target``
    and rank cheapest by their own timings, until the :data:`CHECKED_ROWS` cheapest are all timed
    (at most :data:`CHECK_PASSES` passes: a row the model priced below what the timed ones measured
    is timed next, beside the best timed one). Each pass times its rows once a round for
    :data:`CHECK_ROUNDS` rounds, in turn (the order reversed each round), keeping each one's
    fastest. The exact scan and the stages' rows are timings already. ``checkpoint()`` is called
    before each pass (a background run's cancellation point)."""
    kinds = table["kind"].astype(int)
    ok = np.flatnonzero((table["bound"] >= target) & (kinds < 2))
    if len(ok) < 2:  # nothing to choose between
        return
    run, nq = _runner(index, ref, k)

    def call(i):  # a fixed row's probing carries its nprobe as an adaptive one's its cap
        kind, kc, p = int(kinds[i]), int(table["kc"][i]), row_probing(table, i, weights)
        return lambda: run(kind, kc=kc, p=p)

    timed: dict[int, float] = {}
    for _ in range(CHECK_PASSES):
        if checkpoint is not None:
            checkpoint()
        top = ok[np.argsort(table["cost"][ok], kind="stable")][:CHECKED_ROWS]
        todo = [int(i) for i in top if int(i) not in timed]
        if not todo:
            return
        group = todo + ([min(timed, key=timed.get)] if timed else [])
        calls = {i: call(i) for i in group}
        best = dict.fromkeys(group, np.inf)
        for r in range(CHECK_ROUNDS):
            for i in (group if r % 2 == 0 else group[::-1]):
                best[i] = min(best[i], fastest(calls[i], 1))
        for i, t in best.items():
            timed[i] = table["cost"][i] = max(t / nq, 1e-9)
