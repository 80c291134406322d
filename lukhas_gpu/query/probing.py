"""How many IVF lists each query probes: a fixed count, or a count predicted per query.

**Fixed** probing scans the ``nprobe`` lists whose centroids score best for every query.

**Adaptive** probing (after Li et al., "Improving approximate nearest neighbor search through
learned adaptive early termination", SIGMOD 2020) predicts, per query, how deep in its list order
its true neighbours lie, from the shape of its centroid scores: the best score and its drop to
the 4th, 16th, 64th and 128th list. A query whose scores fall steeply (one dense region) gets few
lists; one whose scores are flat (between regions, out of distribution) gets many. The predictor
is a log-linear model fitted by least squares on queries with known exact neighbours (the
tuner's sample, see :mod:`lukhas_gpu.index.tuning`), and ``scale`` multiplies its prediction
to trade recall for cost; counts are clipped to ``[nprobe_min, nprobe]``. Its cost is one wider
coarse search (``max(nprobe, 128)`` centroids) per query.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Probing", "FEATURE_RANKS", "COARSE_MIN", "FOLDS", "features", "fit", "cross_fit", "needed_ranks",
           "probe_counts", "held_out_counts", "mask_lists"]

#: Ranks (0-based) of the centroid scores whose drop from the best one the predictor reads.
FEATURE_RANKS = (3, 15, 63, 127)
#: Centroids scored per query under adaptive probing (at least): the features need them.
COARSE_MIN = FEATURE_RANKS[-1] + 1
#: Coefficients of the predictor: one per feature, plus an intercept.
N_WEIGHTS = len(FEATURE_RANKS) + 2
#: Folds of the cross-fit that scores the predictor on queries it was not fitted on (the tuner's
#: estimate of an adaptive row: a predictor scored on its own training queries reads optimistic,
#: the more so the fewer and the more varied the queries).
FOLDS = 4


@dataclasses.dataclass(frozen=True)
class Probing:
    """Probing of one search: ``nprobe`` lists (the cap under adaptive), or per query
    ``clip(scale * exp(features @ weights), nprobe_min, nprobe)`` with ``weights`` set."""

    nprobe: int
    weights: tuple | None = None
    scale: float = 1.0
    nprobe_min: int = 1

    @property
    def adaptive(self) -> bool:
        return self.weights is not None

    def to_dict(self) -> dict:
        out = {"nprobe": int(self.nprobe), "adaptive": self.adaptive}
        if self.adaptive:
            out.update(weights=[float(w) for w in self.weights], scale=float(self.scale),
                       nprobe_min=int(self.nprobe_min))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Probing":
        if not d.get("adaptive"):
            return cls(int(d["nprobe"]))
        w = tuple(float(x) for x in d["weights"])
        if len(w) != N_WEIGHTS or not all(np.isfinite(w)):
            raise ValueError(f"adaptive probing needs {N_WEIGHTS} finite weights, got {d['weights']!r}")
        return cls(int(d["nprobe"]), w, float(d["scale"]), int(d["nprobe_min"]))


def features(scores: np.ndarray) -> np.ndarray:
    """Predictor inputs from centroid scores ``(nq, m)`` (best first, ``m >= COARSE_MIN``, or
    fewer lists in all): an intercept, the best score, and its drop to each of ``FEATURE_RANKS``."""
    scores = np.asarray(scores, dtype=np.float64)
    nq, m = scores.shape
    best = scores[:, 0]
    cols = [np.ones(nq), best]
    for r in FEATURE_RANKS:
        cols.append(best - scores[:, min(r, m - 1)])
    return np.stack(cols, axis=1)


def needed_ranks(query_lists: np.ndarray, neighbour_lists: np.ndarray) -> np.ndarray:
    """Per query and exact neighbour: the 1-based position of the neighbour's list in the query's
    list order (``query_lists`` (nq, m)), or ``m + 1`` beyond it. ``neighbour_lists`` (nq, k),
    -1 for a missing neighbour (reported as 0: needs nothing)."""
    nq, m = query_lists.shape
    hit = query_lists[:, None, :] == neighbour_lists[:, :, None]  # (nq, k, m)
    pos = np.where(hit.any(2), hit.argmax(2) + 1, m + 1)
    return np.where(neighbour_lists < 0, 0, pos)


def fit(scores: np.ndarray, ranks: np.ndarray, coverage: float = 0.9) -> tuple:
    """Fit the predictor: least squares of ``log(depth)`` on :func:`features`, where ``depth`` is
    the list position that covers ``coverage`` of a query's exact neighbours (``ranks`` from
    :func:`needed_ranks`). Returns the weights as a tuple."""
    x = features(scores)
    r = np.sort(ranks, axis=1)
    counted = (r > 0).sum(1)
    pick = np.clip(np.ceil(coverage * counted).astype(np.int64) - 1, 0, r.shape[1] - 1)
    depth = np.take_along_axis(r, (r.shape[1] - counted + pick)[:, None], 1)[:, 0]
    ok = counted > 0
    if ok.sum() < N_WEIGHTS * 4:
        raise ValueError(f"adaptive probing needs at least {N_WEIGHTS * 4} queries with neighbours, "
                         f"got {int(ok.sum())}")
    w, *_ = np.linalg.lstsq(x[ok], np.log(np.maximum(depth[ok], 1).astype(np.float64)), rcond=None)
    return tuple(float(v) for v in w)


def cross_fit(scores: np.ndarray, ranks: np.ndarray, folds: int = FOLDS) -> list[tuple[np.ndarray, tuple]]:
    """``(queries of a fold, weights fitted on the other folds)`` per fold (query ``i`` in fold
    ``i % folds``); raises ValueError as :func:`fit` does when a fold's complement is too small."""
    nq = len(scores)
    out = []
    for f in range(folds):
        held = np.arange(f, nq, folds)
        train = np.setdiff1d(np.arange(nq), held, assume_unique=True)
        out.append((held, fit(scores[train], ranks[train])))
    return out


def held_out_counts(scores: np.ndarray, p: Probing, fitted: list[tuple[np.ndarray, tuple]]) -> np.ndarray:
    """:func:`probe_counts` of ``p``'s scale and clipping, each query predicted by the weights of
    :func:`cross_fit` that never saw it."""
    counts = np.empty(len(scores), dtype=np.int64)
    for held, w in fitted:
        counts[held] = probe_counts(scores[held], dataclasses.replace(p, weights=w))
    return counts


def probe_counts(scores: np.ndarray, p: Probing) -> np.ndarray:
    """Lists each query probes under ``p``, int64 (nq,)."""
    nq = scores.shape[0]
    if not p.adaptive:
        return np.full(nq, p.nprobe, dtype=np.int64)
    pred = np.exp(np.clip(features(scores) @ np.asarray(p.weights), -20.0, 20.0))
    return np.clip(np.ceil(p.scale * pred - 1e-9), p.nprobe_min, p.nprobe).astype(np.int64)


def mask_lists(lists: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``lists`` (nq, m) with the entries beyond each query's count set to -1 (not probed), cut
    to the largest count."""
    width = int(counts.max()) if len(counts) else 0
    out = lists[:, :width].copy()
    out[np.arange(width)[None, :] >= counts[:, None]] = -1
    return out
