"""Knowing whether a store still answers well: the recall probe and drift detection.

* :class:`Reservoir` -- a uniform sample (reservoir sampling, Algorithm R, vectorised per batch)
  of vectors kept as float16. The index keeps two: the *originals* of the memories added (with
  their ids), and the *queries* it was asked. Both are bounded (``config.probe_size`` and
  ``config.probe_queries`` rows) and deterministic for a given sequence of batches, so a
  write-ahead-log replay rebuilds the same sample.
* :func:`recall_estimate` -- the estimator behind ``MemoryIndex.quality()``: recall@k against
  exact float search as the product of the ANN stage's recall of the exact int8 top-k (every
  row's int8 vector is held, so that one is measured on k neighbours per query) and the int8
  stage's recall of the float top-k (modelled per query from its int8 top scores and its int8
  score error, measured on the sampled originals: :func:`lukhas_gpu.monitor.recall.int8_model`).
  The interval linearises the product of the two ratios per query (delta method), so misses
  clustered in a few queries widen it honestly.
* :class:`DriftMonitor` -- per added batch, on a bounded sample of its rows: the int8
  quantization error, the coarse (IVF) residual energy, the PQ reconstruction error and the
  distribution of the rows over the IVF lists; recent values are compared with their values at
  training time. Their largest ratio is the drift score; past ``config.drift_threshold`` a
  retrain is recommended and a warning logged (once per crossing).
"""
from __future__ import annotations

import logging
import math
import threading

import numpy as np

from ..util.memory import DRIFT_HISTORY, DRIFT_HISTORY_COLUMNS

log = logging.getLogger(__name__)

__all__ = ["Reservoir", "Probe", "DriftMonitor", "recall_estimate", "imbalance_factor"]

#: Rows of each added batch the drift monitor measures (bounds its cost per ``add``).
DRIFT_SAMPLE = 1024
#: One added row in this many is measured (the measure costs a coarse assignment, which is most
#: of an add's time: 1/16 keeps the monitor near 4% of ingest).
DRIFT_RATE = 16
#: Measured rows per drift window: "recent" is the current window (once a quarter full) plus
#: the last complete one.
DRIFT_WINDOW = 16384
#: Measured rows the recent window needs before it is compared with the baseline (a mean of
#: fewer rows of these heavy-tailed errors moves by 10-20% by chance).
DRIFT_MIN_ROWS = 512


_M64 = (1 << 64) - 1


def _uniform(seed: int, t: int) -> float:
    """A uniform float in [0, 1) from (``seed``, ``t``): SplitMix64's output for step ``t``."""
    z = (int(seed) * 0xD1B54A32D192ED03 + (int(t) + 1) * 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return ((z ^ (z >> 31)) >> 11) * (1.0 / (1 << 53))


#: Draws from which :func:`_uniforms` computes in numpy rather than one Python hash each.
_NUMPY_DRAWS = 16


def _uniforms(seed: int, t: np.ndarray) -> np.ndarray:
    """:func:`_uniform` of each step in ``t`` (int64, >= 0) as float64: the same numbers, in
    numpy's wrapping uint64 arithmetic for more than a few steps."""
    if len(t) < _NUMPY_DRAWS:
        return np.array([_uniform(seed, int(x)) for x in t], dtype=np.float64)
    z = np.uint64((int(seed) * 0xD1B54A32D192ED03) & _M64) + (t.astype(np.uint64) + np.uint64(1)) * \
        np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((z ^ (z >> np.uint64(31))) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class Reservoir:
    """A uniform sample of at most ``capacity`` rows of everything offered, as float16.

    Parameters
    ----------
    capacity : int
        Rows kept (0: nothing is kept).
    dim : int
    seed : int
        With the number of rows seen so far, seeds each batch's draws (one row past the fill:
        a hash of both): the same batches give the same sample.
    with_ids : bool
        Keep an int64 id per row.
    """

    def __init__(self, capacity: int, dim: int, *, seed: int = 1234, with_ids: bool = True):
        self.capacity, self.dim, self.seed, self.with_ids = int(capacity), int(dim), int(seed), with_ids
        self.vectors = np.zeros((0, dim), dtype=np.float16)
        self.ids = np.zeros(0, dtype=np.int64)
        self.seen = 0
        # offers come from searches holding only the index's shared lock: one at a time
        self._offer_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.vectors)

    def offer(self, x, ids: np.ndarray | None = None, transform=None) -> None:
        """Offer a batch ``x`` (n, dim) (and its ids); keeps each row with probability
        ``capacity / rows seen`` overall. Row number ``t`` (0-based, over every offer) fills slot
        ``t`` while the reservoir fills, then goes to slot ``floor(u * (t + 1))`` when that is a
        kept one, ``u`` a hash of (seed, ``t``) (:func:`_uniform`; not a seeded Generator per call:
        12 us a search): the sample depends on the rows' order only, not on how they were
        batched, so a write-ahead-log replay rebuilds it. ``transform`` maps the rows kept (a
        slice or fancy index of ``x``) to a float numpy array (e.g. normalisation): only those
        rows are transformed. Thread-safe (concurrent searches offer their queries)."""
        with self._offer_lock:
            self._offer(x, ids, transform)

    def _offer(self, x, ids, transform) -> None:
        take = transform or np.asarray
        n = len(x)
        if self.capacity == 0 or n == 0:
            self.seen += n
            return
        if n == 1 and self.seen >= self.capacity:  # one row past the fill (a server's query): one draw
            t = self.seen
            slot = int(_uniform(self.seed, t) * (t + 1))
            if slot < self.capacity:
                self.vectors[slot] = take(x[0:1]).astype(np.float16)[0]
                if self.with_ids:
                    self.ids[slot] = int(np.asarray(ids, dtype=np.int64).reshape(-1)[0])
            self.seen = t + 1
            return
        t = self.seen + np.arange(n, dtype=np.int64)  # 0-based arrival number of each row
        m = max(0, min(n, self.capacity - self.seen))
        if m:  # the first rows fill the reservoir
            self.vectors = np.concatenate([self.vectors, take(x[:m]).astype(np.float16)])
            if self.with_ids:
                self.ids = np.concatenate([self.ids, np.asarray(ids[:m], dtype=np.int64)])
        if m < n:
            rest = t[m:]
            slot = (_uniforms(self.seed, rest) * (rest + 1)).astype(np.int64)  # uniform in [0, t]
            keep = np.flatnonzero(slot < self.capacity)
            if len(keep):
                # numpy applies repeated indices in order: the last row offered to a slot wins, as
                # in the sequential algorithm
                rows, slot = keep + m, slot[keep]
                self.vectors[slot] = take(x[rows]).astype(np.float16)
                if self.with_ids:
                    self.ids[slot] = np.asarray(ids, dtype=np.int64)[rows]
        self.seen += n

    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.ids.nbytes)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}_vectors": self.vectors, f"{prefix}_seen": np.array([self.seen], dtype=np.int64)}
        if self.with_ids:
            out[f"{prefix}_ids"] = self.ids
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray], prefix: str) -> None:
        v = np.asarray(arrays[f"{prefix}_vectors"], dtype=np.float16)
        if v.ndim != 2 or v.shape[1] != self.dim or len(v) > max(self.capacity, 0):
            raise ValueError(f"{prefix} reservoir has shape {v.shape}, expected (<= {self.capacity}, {self.dim})")
        self.vectors = v.copy()
        self.seen = int(arrays[f"{prefix}_seen"][0])
        if self.with_ids:
            ids = np.asarray(arrays[f"{prefix}_ids"], dtype=np.int64)
            if len(ids) != len(v):
                raise ValueError(f"{prefix} reservoir has {len(v)} vectors and {len(ids)} ids")
            self.ids = ids.copy()


class Probe:
    """The two reservoirs an index keeps: sampled originals (with ids) and sampled queries."""

    def __init__(self, dim: int, *, size: int, queries: int, seed: int):
        self.memories = Reservoir(size, dim, seed=seed)
        self.queries = Reservoir(queries, dim, seed=seed + 1, with_ids=False)

    def nbytes(self) -> int:
        return self.memories.nbytes() + self.queries.nbytes()

    def memory_usage(self) -> dict:
        """``probe``: both reservoirs, in ``anon``."""
        return {"anon": {"probe": int(self.nbytes())}}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {**self.memories.to_arrays("memories"), **self.queries.to_arrays("queries")}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.memories.load_arrays(arrays, "memories")
        self.queries.load_arrays(arrays, "queries")


def recall_estimate(ann_found, ann_total, int8_kept, int8_true, confidence: float = 0.95) -> dict:
    """Recall as the product of two ratio estimates, with a delta-method interval.

    Parameters
    ----------
    ann_found, ann_total : (nq,) int
        Per probe query: exact int8 top-k neighbours the index returned / their number.
    int8_kept, int8_true : (nq,) int or float
        Per probe query: true (float) neighbours that int8 also ranks in the top-k (an expected
        count from the int8 error model, or a count among sampled originals) / their number.

    Returns
    -------
    dict
        ``recall`` (``ann_recall * int8_recall``), ``ci`` (low, high), ``ann_recall``,
        ``int8_recall`` (1.0 when no true neighbour was counted), ``hits`` (``int8_true``'s sum).
    """
    a, b, c, d = (np.asarray(v, dtype=np.float64) for v in (ann_found, ann_total, int8_kept, int8_true))
    n = len(a)
    if n == 0 or b.sum() == 0:
        return {"recall": None, "ci": (None, None), "ann_recall": None, "int8_recall": None,
                "hits": int(round(d.sum()))}
    r1 = a.sum() / b.sum()
    r2 = c.sum() / d.sum() if d.sum() else 1.0
    r = r1 * r2
    # per-query influence of the product of the two ratios
    u = r2 * (a - r1 * b) / b.sum()
    if d.sum():
        u = u + r1 * (c - r2 * d) / d.sum()
    var = (u ** 2).sum() * (n / (n - 1) if n > 1 else 1.0)
    z = _normal_quantile(0.5 + confidence / 2)
    if 0.0 < r < 1.0:  # on the logit scale: near 1 the interval is skewed, as a proportion's is
        half = z * math.sqrt(var) / (r * (1.0 - r))
        lo, hi = (1.0 / (1.0 + math.exp(-(math.log(r / (1.0 - r)) + s * half))) for s in (-1.0, 1.0))
    else:
        lo = hi = r
    return {"recall": float(r), "ci": (float(lo), float(hi)),
            "ann_recall": float(r1), "int8_recall": float(r2), "hits": int(round(d.sum()))}


def _normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    if not 0.0 < p < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {2 * p - 1}")
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - lo:
        return -_normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def imbalance_factor(counts: np.ndarray) -> float | None:
    """FAISS's imbalance factor ``nlist * sum(p_i^2)`` (1.0: perfectly even lists), estimated
    without the small-sample bias: ``sum(c_i (c_i - 1)) / (n (n - 1))`` for ``sum(p_i^2)``."""
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum()
    if n < 2:
        return None
    return float(len(c) * (c * (c - 1)).sum() / (n * (n - 1)))


class _Window:
    """Sums of the per-row drift measures over a run of measured rows, and their list histogram."""

    __slots__ = ("rows", "quant", "coarse", "pq", "hist")

    def __init__(self, nlist: int):
        self.rows = 0
        self.quant = self.coarse = self.pq = 0.0
        self.hist = np.zeros(nlist, dtype=np.int64)

    def merged(self, other: "_Window") -> "_Window":
        w = _Window(len(self.hist))
        w.rows = self.rows + other.rows
        w.quant, w.coarse, w.pq = self.quant + other.quant, self.coarse + other.coarse, self.pq + other.pq
        if len(other.hist) == len(self.hist):
            w.hist = self.hist + other.hist
        return w


class DriftMonitor:
    """Per-batch drift measures against their training-time values (see the module docstring).

    Measures, each a mean over measured rows of a relative squared error:

    * ``quant``: ``|x - dequant(quant(x))|^2 / |x|^2`` of the int8 codes (clipping raises it);
    * ``coarse``: ``|y - c(y)|^2 / |y|^2``, ``y`` the projected vector and ``c(y)`` its IVF
      centroid -- what the lists no longer cover;
    * ``pq``: ``|y - c(y) - pq(y - c(y))|^2 / |y|^2`` (``|y - pq(y)|^2 / |y|^2`` where the codes
      are of the rows, ``ann.PQ_BY_RESIDUAL``), the ANN code's reconstruction error;
    * ``imbalance``: :func:`imbalance_factor` of the rows' distribution over the lists.
    """

    def __init__(self, threshold: float, *, seed: int = 1234):
        self.threshold = float(threshold)
        self.seed = int(seed)
        self.baseline: dict[str, float] = {}
        self.nlist = 0
        self.measured = 0  # rows measured since the baseline
        self.batches = 0
        self._cur = _Window(0)
        self._last = _Window(0)
        # rows, quant, coarse, pq, imbalance, score
        self._history = np.zeros((0, DRIFT_HISTORY_COLUMNS), dtype=np.float64)
        self._alerted = False

    # -- measuring -------------------------------------------------------------------------------
    def sample_rows(self, n: int, offset: int) -> np.ndarray:
        """Rows of a batch of ``n`` to measure: one in ``DRIFT_RATE`` (rounded at random, so
        single-row adds are measured one time in ``DRIFT_RATE``), at most ``DRIFT_SAMPLE``;
        seeded by ``offset`` (the batch's first id)."""
        rng = np.random.default_rng([self.seed, offset])
        m = n // DRIFT_RATE + int(rng.random() < (n % DRIFT_RATE) / DRIFT_RATE)
        m = min(m, DRIFT_SAMPLE, n)
        if m == 0:
            return np.zeros(0, dtype=np.int64)
        return np.sort(rng.choice(n, m, replace=False))

    @staticmethod
    def measure(x_n, codes_deq, proj, ann) -> dict[str, np.ndarray]:
        """Per-row measures of one batch sample: ``x_n`` the normalised originals (n, D),
        ``codes_deq`` their dequantized int8 codes, ``proj`` their projections (n, d), ``ann``
        the IVF-PQ index (or ``None`` before training). numpy float32 arrays in, dict out."""
        norm = np.maximum((x_n * x_n).sum(1), 1e-30)
        out = {"quant": ((x_n - codes_deq) ** 2).sum(1) / norm}
        if ann is not None:
            pnorm = np.maximum((proj * proj).sum(1), 1e-30)
            assign, resid, recon = ann.residuals(proj)
            out["coarse"] = (resid * resid).sum(1) / pnorm
            out["pq"] = ((resid - recon) ** 2).sum(1) / pnorm
            out["assign"] = assign
        return out

    def record(self, m: dict[str, np.ndarray]) -> None:
        """Account one batch's measures; warn when the drift score crosses the threshold."""
        n = len(m["quant"])
        if n == 0:
            return
        w = self._cur
        w.rows += n
        w.quant += float(m["quant"].sum())
        if "coarse" in m and len(w.hist) == self.nlist and self.nlist:
            w.coarse += float(m["coarse"].sum())
            w.pq += float(m["pq"].sum())
            np.add.at(w.hist, m["assign"], 1)
        self.measured += n
        self.batches += 1
        if w.rows >= DRIFT_WINDOW:
            self._last, self._cur = w, _Window(self.nlist)
        rep = self.report()
        row = [n, float(m["quant"].mean()), float(m["coarse"].mean()) if "coarse" in m else np.nan,
               float(m["pq"].mean()) if "pq" in m else np.nan,
               rep["recent"].get("imbalance") or np.nan, rep["score"] if rep["score"] is not None else np.nan]
        self._history = np.concatenate([self._history[-(DRIFT_HISTORY - 1):], [row]])
        if rep["retrain_recommended"] and not self._alerted:
            log.warning("drift: %s is %.2fx its value at training time (threshold %.2fx); a retrain is "
                        "recommended (MemoryIndex.retrain())", rep["worst"], rep["score"], self.threshold)
            self._alerted = True
        elif not rep["retrain_recommended"]:
            self._alerted = False

    # -- baselines ---------------------------------------------------------------------------------
    def set_baseline(self, m: dict[str, np.ndarray] | None, *, nlist: int, quant: float | None = None) -> None:
        """Start comparing against ``m`` (the measures of the training sample) and ``quant`` (the
        int8 error of the rows measured so far, which ``m`` cannot give: its rows are already
        int8). Resets the recent windows."""
        if quant is None:
            quant = self._mean_quant()
        self.baseline = {"quant": quant}
        if m is not None:
            self.baseline.update(coarse=float(m["coarse"].mean()), pq=float(m["pq"].mean()),
                                 imbalance=imbalance_factor(np.bincount(m["assign"], minlength=nlist)))
        self.nlist = nlist
        self.measured = 0
        self._cur, self._last = _Window(nlist), _Window(nlist)
        self._alerted = False

    def _mean_quant(self) -> float | None:
        w = self._cur.merged(self._last)
        return w.quant / w.rows if w.rows else None

    # -- reporting ---------------------------------------------------------------------------------
    def report(self) -> dict:
        w = self._cur if self._cur.rows >= DRIFT_WINDOW // 4 else self._cur.merged(self._last)
        recent: dict[str, float | None] = {"rows": w.rows}
        if w.rows:
            recent["quant"] = w.quant / w.rows
            hist_rows = int(w.hist.sum())
            if hist_rows:
                recent["coarse"] = w.coarse / hist_rows
                recent["pq"] = w.pq / hist_rows
            # the list histogram is only meaningful once it holds a few rows per list
            recent["imbalance"] = imbalance_factor(w.hist) if hist_rows >= max(4 * self.nlist, 1024) else None
        ratios = {}
        if w.rows >= DRIFT_MIN_ROWS:  # fewer measured rows: too noisy to compare (no score yet)
            for key, base in self.baseline.items():
                cur = recent.get(key)
                if base and cur is not None:
                    ratios[key] = cur / base
        worst = max(ratios, key=ratios.get) if ratios else None
        score = ratios[worst] if worst else None
        return {"baseline": dict(self.baseline), "recent": recent, "ratios": ratios, "score": score,
                "worst": worst, "threshold": self.threshold,
                "retrain_recommended": bool(score is not None and score > self.threshold),
                "batches": self.batches, "rows_measured": self.measured}

    def history(self) -> dict[str, np.ndarray]:
        h = self._history
        return {"rows": h[:, 0].astype(np.int64), "quant": h[:, 1], "coarse": h[:, 2], "pq": h[:, 3],
                "imbalance": h[:, 4], "score": h[:, 5]}

    # -- accounting --------------------------------------------------------------------------------
    def memory_usage(self) -> dict:
        """``drift_monitor``: the two windows' list histograms and the per-batch history, in ``anon``."""
        return {"anon": {"drift_monitor": int(self._cur.hist.nbytes + self._last.hist.nbytes + self._history.nbytes)}}

    # -- persistence -------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        keys = ("quant", "coarse", "pq", "imbalance")
        base = np.array([self.baseline.get(k) if self.baseline.get(k) is not None else np.nan for k in keys])
        win = np.array([[w.rows, w.quant, w.coarse, w.pq] for w in (self._cur, self._last)], dtype=np.float64)
        hist = np.stack([self._cur.hist, self._last.hist]) if len(self._cur.hist) == len(self._last.hist) \
            else np.zeros((2, self.nlist), dtype=np.int64)
        return {"baseline": base, "baseline_set": np.array([k in self.baseline for k in keys]),
                "windows": win, "hist": hist, "history": self._history,
                "counters": np.array([self.nlist, self.measured, self.batches], dtype=np.int64)}

    def load_arrays(self, a: dict[str, np.ndarray]) -> None:
        keys = ("quant", "coarse", "pq", "imbalance")
        self.baseline = {k: (None if np.isnan(v) else float(v))
                         for k, v, s in zip(keys, a["baseline"], a["baseline_set"]) if s}
        self.nlist, self.measured, self.batches = (int(v) for v in a["counters"])
        hist = np.asarray(a["hist"], dtype=np.int64)
        windows = []
        for row, h in zip(a["windows"], hist):
            w = _Window(self.nlist)
            w.rows, w.quant, w.coarse, w.pq = int(row[0]), float(row[1]), float(row[2]), float(row[3])
            if len(h) == self.nlist:
                w.hist = h.copy()
            windows.append(w)
        self._cur, self._last = windows
        self._history = np.asarray(a["history"], dtype=np.float64).reshape(-1, DRIFT_HISTORY_COLUMNS)
