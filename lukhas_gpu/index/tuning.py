"""Recall you can trust: the index chooses its own search parameters to hold a recall target.

:func:`tune` measures, on the recall probe's queries (the queries the index was asked, else its
sampled memories, or queries the caller gives), the estimated recall@k (the probe's estimator:
IVF recall of the exact int8 top-k times the int8 stage's recall of the float top-k, with its
interval) of every search it could run:

* fixed probing, ``nprobe`` in :data:`NPROBES` (up to the list count), ascending, stopping once
  the smallest rerank depth already meets the target (a larger ``nprobe`` only costs more);
* adaptive probing (:mod:`lukhas_gpu.query.probing`), its predictor fitted on the same queries'
  exact neighbours, at each scale of :data:`SCALES`;
* each with every rerank depth of :data:`RERANKS` (one IVF search per probing at the deepest
  rerank; shallower ones are prefixes of its candidate list, which the IVF returns in score order);
* the exact int8 scan (what small stores should do).

A cost model ``a * codes scanned + b * candidates + c`` (seconds per query, fitted on timed runs
of the same queries) ranks them, and the rows it ranks cheapest are timed themselves
(:mod:`.tunecost`); the cheapest whose bound meets the target -- the IVF stage's
one-sided 95% lower confidence bound times the int8 stage's estimate (common to every row: the
error model of :func:`lukhas_gpu.monitor.recall.int8_model`, fed by every probe query's k
neighbours, so it holds at any size) -- is kept, the target raised by
:data:`MEMORY_MARGIN` when only memories stand in for queries (memories as queries overestimate
recall). When no row meets it, the row of the best recall is kept and a warning logged. The whole
table is kept, so ``search(..., target_recall=x)`` is a lookup.

Runs hold the index's lock one step at a time (a slice of the exact references, one probing's
searches, one timing), so searches go on between them. :func:`maybe_retune` starts a background
run when the target is set and the index has grown by :data:`GROWTH`, was retrained, or has seen
twice as many queries as at the last run; when the index outgrows its lists (the planned list
count doubled) it first retrains with the lists its size calls for. Never in a reader: it uses its
generation's ``tuning.npz``, put there by the writer's runs, an ingest's ``tune_if_due`` or
``lukhas-gpu tune STORE``.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import statistics
import threading
import time
import weakref

import numpy as np

from ..capacity.stats import index_anon
from ..monitor.probe import recall_estimate
from ..query import probing
from ..util import runtime
from ..util.checks import check_k
from ..util.memtrim import trim
from ..vectors.policy import MIN_TRAIN_ROWS, planned_nlist
from . import candidates, tunecost
from .locking import locked
from .tunecost import costs as _costs

log = logging.getLogger(__name__)

__all__ = ["Tuned", "TuningMixin", "tune", "search_params", "maybe_retune", "NPROBES", "RERANKS", "SCALES",
           "MEMORY_MARGIN", "GROWTH", "TUNE_QUERIES"]

NPROBES = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
#: Rerank depths (candidates = k x depth). Those above :data:`SHALLOW` are tried only when no
#: shallower setting meets the target: large stores, where the 4-bit PQ order of a list's rows is
#: coarse (at 10M synthetic rows nothing up to 32 reached 0.95 and the tuner fell back to the exact
#: scan at 21 QPS; 96 reached it, measured).
RERANKS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
SHALLOW = 32
SCALES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
#: Added to the target when the probe's queries are the sampled memories (each excluding itself):
#: on MiniLM/WordNet, memories as queries read 0.05 above real queries at the same parameters.
MEMORY_MARGIN = 0.03
#: Retune once the live count has grown by this factor since the last run.
GROWTH = 2.0
#: Queries a run measures at most (the cost of a run is one exact scan of the store per query).
TUNE_QUERIES = 2000
#: Lists adaptive probing may reach per query: its coarse search scores ``max(cap, 128)``
#: centroids per query (at 4,096 through the HNSW coarse quantizer it ran at 228 QPS at 1M).
ADAPTIVE_CAP = 1024
#: A restructure (more lists for a grown index) is kept unless the probe's recall at the same share
#: of the store scanned drops by more than this: the two are within the probe's noise (0.936 ->
#: 0.934 on 10,240 sampled neighbours at 1M, measured), and the tuner runs right after.
RESTRUCTURE_TOLERANCE = 0.01
#: After a failed background run, the next one waits this long (s); queries per locked step of the
#: exact references.
RETRY_SECONDS, STEP_QUERIES = 300, 256
_KINDS = candidates.KINDS  # the table's kind column, by index
_COLUMNS = ("kind", "param", "rerank", "recall", "ci_low", "ci_high", "bound", "codes", "kc", "probes", "cap", "nmin")


@dataclasses.dataclass
class Tuned:
    """A tuning run's choice and the table it chose from (persisted with the store)."""

    target: float
    k: int
    kind: str  # "fixed", "adaptive", "exact", or a candidate stage: "graph", "rabitq", "ivf-spill"
    probing: probing.Probing | None
    rerank: int
    recall: float
    ci: tuple
    met: bool
    source: str
    queries: int
    qps: float
    count: int
    nlist: int
    queries_seen: int
    table: dict  # columns: kind (index into _KINDS), param, rerank, recall, ci_low, cost, probes
    weights: tuple | None = None
    seconds: float = 0.0

    def lookup(self, target: float, kinds=None) -> tuple[str, probing.Probing | None, int]:
        """The cheapest row of the table (of ``kinds``, indexes into ``_KINDS``, default all)
        whose interval's low end meets ``target`` (else the row of the best recall):
        ``(kind, probing, rerank)``; a stage's parameter is the probing's ``nprobe``."""
        t = self.table
        among = np.isin(t["kind"].astype(int), kinds) if kinds is not None else np.ones(len(t["kind"]), bool)
        ok = (t["bound"] >= target) & among
        if ok.any():
            i = int(np.flatnonzero(ok)[np.argmin(t["cost"][ok])])
        else:
            i = int(np.flatnonzero(among)[np.argmax(t["recall"][among])])
        return self._row(i)

    def _row(self, i: int) -> tuple[str, probing.Probing | None, int]:
        t = self.table
        kind = _KINDS[int(t["kind"][i])]
        p = None if kind == "exact" else tunecost.row_probing(t, i, self.weights)
        return kind, p, int(t["rerank"][i])

    def report(self) -> dict:
        i = _row_of(self.table, self.kind, self.probing, self.rerank)
        out = {"target": self.target, "k": self.k, "kind": self.kind, "rerank": self.rerank,
               "bound": float(self.table["bound"][i]),
               "probing": self.probing.to_dict() if self.probing is not None else None,
               "recall": self.recall, "ci": list(self.ci), "met": self.met, "source": self.source,
               "queries": self.queries, "expected_qps": self.qps, "count": self.count, "nlist": self.nlist,
               "seconds": self.seconds}
        if self.probing is not None:
            out["nprobe"] = self.probing.nprobe
        return out

    def tried(self) -> list[dict]:
        t = self.table
        return [{"kind": _KINDS[int(t["kind"][i])], "param": float(t["param"][i]), "rerank": int(t["rerank"][i]),
                 "recall": float(t["recall"][i]), "ci_low": float(t["ci_low"][i]), "bound": float(t["bound"][i]),
                 "qps": 1.0 / float(t["cost"][i]) if t["cost"][i] > 0 else None,
                 "probes": float(t["probes"][i])} for i in range(len(t["kind"]))]

    # -- persistence ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        head = {"target": self.target, "k": self.k, "kind": _KINDS.index(self.kind), "rerank": self.rerank,
                "recall": self.recall, "ci_lo": self.ci[0], "ci_hi": self.ci[1], "met": int(self.met),
                "queries": self.queries, "qps": self.qps, "count": self.count, "nlist": self.nlist,
                "queries_seen": self.queries_seen, "seconds": self.seconds}
        out = {"head_" + k: np.array([v], dtype=np.float64) for k, v in head.items()}
        out["source"] = np.frombuffer(self.source.encode(), dtype=np.uint8)
        out["weights"] = np.asarray(self.weights if self.weights is not None else [], dtype=np.float64)
        p = self.probing.to_dict() if self.probing is not None else {"nprobe": 0, "adaptive": False}
        out["probing"] = np.array([p["nprobe"], p.get("scale", 1.0), p.get("nprobe_min", 1),
                                   float(p["adaptive"])], dtype=np.float64)
        for k, v in self.table.items():
            out["table_" + k] = np.asarray(v, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, a: dict) -> "Tuned":
        h = {k[5:]: float(np.asarray(v).ravel()[0]) for k, v in a.items() if k.startswith("head_")}
        kind = _KINDS[int(h["kind"])]
        w = tuple(float(x) for x in np.asarray(a["weights"]).ravel()) or None
        pr = np.asarray(a["probing"], dtype=np.float64).ravel()
        if kind == "exact":
            p = None
        elif pr[3]:
            p = probing.Probing.from_dict({"nprobe": pr[0], "adaptive": True, "weights": w, "scale": pr[1],
                                           "nprobe_min": pr[2]})
        else:
            p = probing.Probing(int(pr[0]))
        table = {k[6:]: np.asarray(v, dtype=np.float64) for k, v in a.items() if k.startswith("table_")}
        if len({len(v) for v in table.values()}) > 1 or set(table) != {*_COLUMNS, "cost"}:
            raise ValueError("the tuning table's columns disagree")
        return cls(target=h["target"], k=int(h["k"]), kind=kind, probing=p, rerank=int(h["rerank"]),
                   recall=h["recall"], ci=(h["ci_lo"], h["ci_hi"]), met=bool(h["met"]),
                   source=bytes(np.asarray(a["source"], dtype=np.uint8)).decode(), queries=int(h["queries"]),
                   qps=h["qps"], count=int(h["count"]), nlist=int(h["nlist"]), queries_seen=int(h["queries_seen"]),
                   table=table, weights=w, seconds=h["seconds"])


def check_target(target) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < float(target) < 1.0:
        raise ValueError(f"target_recall must be a number in (0, 1), got {target!r}")
    return float(target)


# -- the run ---------------------------------------------------------------------------------------
def tune(index, target=None, queries=None, *, k: int = 10, confidence: float = 0.95,
         max_queries: int = TUNE_QUERIES, cancellable: bool = False, structure: str | None = None,
         install: bool = True) -> Tuned:
    """Measure, choose, store the choice in ``index.parts.tuned`` and return it (see the module;
    ``structure`` forces one candidate structure, :mod:`.candidates`; ``install=False``: a trial's
    candidate, returned with its stage left building beside the live one, nothing else kept)."""
    from ..monitor import recall  # torch, on first use
    structure = candidates.check_structure(structure)
    t0 = time.perf_counter()
    cfg, lock = index.config, index.lock
    target = check_target(target if target is not None else (cfg.target_recall or 0.95))
    k = check_k(k)
    with lock:
        index.state.tuning_runs += 1
        run_id = index.state.tuning_runs
        if cfg.probe_size == 0:
            raise ValueError("tuning needs the recall probe (config.probe_size > 0)")
        parts = index.parts
        chosen = recall.choose_queries(parts, parts.probe, queries, max_queries, dim=index.dim,
                                       cosine=cfg.metric == "cosine")
        count, seen, ann = parts.live, parts.probe.queries.seen, parts.ann
    nq = len(chosen["q"])
    pieces = []
    for a in range(0, nq, STEP_QUERIES):  # the exact references, one locked slice at a time
        _checkpoint_cancel(index, cancellable)
        with lock:
            pieces.append(recall.references(index.parts, chosen, k, a, min(nq, a + STEP_QUERIES)))
    ref = recall.concat(pieces)
    eff = min(target + (MEMORY_MARGIN if ref["source"] == "memories" else 0.0), 0.9999)
    kk = k + 1 if ref["self_ids"] is not None else k

    z = statistics.NormalDist().inv_cdf(confidence)
    total = float(ref["exact_n"].sum())

    def estimate(found):
        """The probe's estimate with its two-sided interval at ``2c - 1`` (reported), and the
        bound the choice is held to: the IVF stage's one-sided lower bound at ``c`` (per-query
        linearised ratio) times the int8 stage's estimate (the same for every row: a model of the
        int8 score error, not a bound; its bias measured within 0.001 on three sets)."""
        e = recall_estimate(found, ref["exact_n"], ref["kept"], ref["true"], 2 * confidence - 1)
        r = float(found.sum()) / max(total, 1.0)
        se = math.sqrt(float(((found - r * ref["exact_n"]) ** 2).sum())) / max(total, 1.0)
        int8 = e["int8_recall"] if e["int8_recall"] is not None else 1.0
        e["bound"] = max(0.0, r - z * se) * int8
        return e

    rows: list[tuple] = []  # kind, param, rerank, recall, ci_low, ci_high, bound, codes, kc, probes, cap, nmin
    e = estimate(ref["exact_n"])
    rows.append((2, 0.0, 0, e["recall"] or 0.0, e["ci"][0] or 0.0, e["ci"][1] or 0.0, e["bound"], -1.0, 0, 0.0, 0, 0))
    weights = None
    if ann is not None and ann is index.parts.ann:
        weights = _measure_ivf(index, ann, ref, k, kk, eff, estimate, rows, cancellable)
        if not any(r[0] != 2 and r[6] >= eff for r in rows):  # none met it: the deep reranks too
            deep = _measure_ivf(index, ann, ref, k, kk, eff, estimate, rows, cancellable, deep=True)
            weights = weights if weights is not None else deep
    stages = candidates.measure(index, ann, ref, k, kk, eff, estimate, rows, structure,
                                [r for r in RERANKS if r <= SHALLOW], lambda: _checkpoint_cancel(index, cancellable))
    table = {name: np.array([r[i] for r in rows], dtype=np.float64) for i, name in
             enumerate(_COLUMNS)}
    table["cost"] = _costs(index, ann, ref, table, k, weights)
    table["cost"][list(stages["costs"])] = list(stages["costs"].values())
    table = candidates.restrict(table, structure)
    tunecost.time_cheapest(index, ref, table, k, weights, eff, lambda: _checkpoint_cancel(index, cancellable))
    tuned = Tuned(target=target, k=k, kind="exact", probing=None, rerank=0, recall=0.0, ci=(0.0, 0.0), met=False,
                  source=ref["source"], queries=nq, qps=0.0, count=count, nlist=ann.nlist if ann is not None else 0,
                  queries_seen=seen, table=table, weights=weights)
    kind, p, rr = tuned.lookup(eff)
    with lock:
        if install:
            candidates.keep(index, kind, stages["built"])
    i = _row_of(table, kind, p, rr)
    tuned.kind, tuned.probing, tuned.rerank = kind, p, rr
    tuned.recall, tuned.ci = float(table["recall"][i]), (float(table["ci_low"][i]), float(table["ci_high"][i]))
    tuned.met = bool(table["bound"][i] >= eff)
    tuned.qps = 1.0 / float(table["cost"][i]) if table["cost"][i] > 0 else 0.0
    tuned.seconds = time.perf_counter() - t0
    with lock:  # a run that started later (more queries seen, the index as it is now) wins
        if not install:
            return tuned  # a trial's candidate (index/stagetrial.py)
        if index.state.tuning_runs == run_id:
            index.parts.tuned = tuned
        else:
            log.info("a tuning run started after this one: its choice is kept, not this one's")
            return tuned
    (log.info if tuned.met else log.warning)(
        "tuned for recall@%d >= %.3f on %d %s: %s, rerank %d: estimated %.3f [%.3f, %.3f], ~%.0f QPS%s",
        k, target, nq,
        {"memories": "sampled memories", "queries": "recorded queries"}.get(ref["source"], "given queries"),
        _describe(kind, p), rr, tuned.recall, tuned.ci[0], tuned.ci[1], tuned.qps,
        "" if tuned.met else " -- the target is NOT met by any setting tried")
    return tuned


def _describe(kind, p) -> str:
    names = {"exact": "exact int8 scan", "fixed": "nprobe", "graph": "HNSW graph, efSearch",
             "rabitq": "IVF-RaBitQ, nprobe", "ivf-spill": "IVF, spilled lists, nprobe"}
    return names[kind] + ("" if kind == "exact" else f" {p.nprobe}") if kind in names \
        else f"adaptive probing (scale {p.scale:g}, {p.nprobe_min}..{p.nprobe} lists)"


def _row_of(table, kind, p, rr) -> int:
    kinds = table["kind"].astype(int)
    if kind == "exact":
        return int(np.flatnonzero(kinds == 2)[0])
    param = p.scale if kind == "adaptive" else p.nprobe
    hit = (kinds == _KINDS.index(kind)) & (table["param"] == param) & (table["rerank"] == rr)
    return int(np.flatnonzero(hit)[0])


def _measure_ivf(index, ann, ref, k, kk, eff, estimate, rows, cancellable, deep: bool = False) -> tuple | None:
    """Fill ``rows`` with every fixed and adaptive probing x rerank depth up to :data:`SHALLOW`
    (``deep``: the depths above it, on deeper candidate lists); returns the adaptive predictor's
    weights (None if it could not be fitted)."""

    from ..monitor import recall
    from ..query import executor
    from ..vectors import exact
    lock = index.lock
    n_live = max(index.parts.live, 1)
    r_max = max(r for r in RERANKS if k * r <= max(n_live, k) and (deep or r <= SHALLOW)) if n_live > k else 1
    reranks = [r for r in RERANKS if r <= r_max]
    kc_max = k * r_max if n_live > k else kk
    q = np.ascontiguousarray(ref["q"], dtype=np.float32)
    with lock:
        qw, qp = candidates.query_forms(index, q)
        sizes = ann.list_sizes()
    cap = min(ann.nlist, NPROBES[-1])
    with lock:
        c_scores, c_lists = ann.coarse_search(qp, max(cap, probing.COARSE_MIN))
    cum = np.concatenate([np.zeros((len(q), 1)), np.cumsum(sizes[np.maximum(c_lists, 0)], axis=1)], axis=1)

    qw_np = qw.cpu().numpy()

    def add_rows(kind, param, cand, counts, pcap=0, nmin=0):
        codes = float(cum[np.arange(len(q)), np.minimum(counts, cum.shape[1] - 1)].mean())
        with lock:  # exact scores of every candidate once; each rerank depth is a prefix
            scores = exact.candidate_scores(qw_np, index.parts.vectors.array, cand)
        for r in reranks:
            kc = max(kk, min(k * r, cand.shape[1]))
            e = estimate(recall.found_in(ref, exact.top_candidates(scores[:, :kc], cand[:, :kc], kk)[1], k))
            if not deep or r > SHALLOW:  # the shallow depths are in the table already
                rows.append((kind, float(param), r, e["recall"] or 0.0, e["ci"][0] or 0.0, e["ci"][1] or 0.0,
                             e["bound"], codes, kc, float(counts.mean()), pcap, nmin))
            if r == reranks[0] and e["bound"] >= eff:
                return True  # deeper reranks only cost more
        return False

    s_base = executor.Search(k=kc_max, nprobe=1, rerank=1, exact_max=0)
    for nprobe in [n for n in NPROBES if n < ann.nlist] + ([ann.nlist] if ann.nlist <= cap else []):
        _checkpoint_cancel(index, cancellable)
        with lock:
            cand = executor.ann_candidates(ann, qp, kc_max, dataclasses.replace(s_base, nprobe=nprobe),
                                           exclude=index.parts.tombstones)
        if add_rows(0, nprobe, cand, np.full(len(q), nprobe)):
            break
    weights = None
    if ann.nlist >= 2 * probing.COARSE_MIN:  # adaptive probing needs lists to choose from
        with lock:
            nb, enc = ref["exact_ids"], index.parts.encoder
            rows_nb = np.maximum(nb, 0).ravel()
            xn = enc.project(enc.dequantize(index.parts.vectors[rows_nb])).cpu().numpy()
            nb_lists = np.where(nb >= 0, ann.assign(xn).reshape(nb.shape), -1)
        ranks = probing.needed_ranks(c_lists, nb_lists)
        try:  # served with the weights fitted on every query, scored on queries each fold never saw
            weights, folds = probing.fit(c_scores, ranks), probing.cross_fit(c_scores, ranks)
        except ValueError as e:
            log.info("adaptive probing not fitted: %s", e)
        if weights is not None:
            nmin, acap = 4, min(cap, ADAPTIVE_CAP)
            for scale in SCALES:
                _checkpoint_cancel(index, cancellable)
                p = probing.Probing(acap, weights, scale, nmin)
                counts = probing.held_out_counts(c_scores, p, folds)
                masked = probing.mask_lists(c_lists, counts)
                with lock:
                    cand = ann.search_lists(qp, kc_max, masked, c_scores[:, :masked.shape[1]],
                                            exclude=index.parts.tombstones)[1]
                if add_rows(1, scale, cand, counts, acap, nmin):
                    break
    return weights


# -- choosing a search's parameters -----------------------------------------------------------------
def search_params(index, nprobe, rerank, target_recall) -> dict:
    """``nprobe``/``rerank``/``probing``/``exact`` of one search: explicit arguments win; else the
    tuned choice for ``target_recall`` (per call) or ``config.target_recall``; else the config's."""
    cfg = index.config
    tuned = index.parts.tuned
    target = check_target(target_recall) if target_recall is not None else cfg.target_recall
    if nprobe is not None or rerank is not None or target is None or tuned is None \
            or index.parts.ann is None or tuned.nlist != index.parts.ann.nlist:
        if target_recall is not None and (tuned is None or index.parts.ann is None):
            log.debug("target_recall=%s: the index is not tuned yet; searching with the config's parameters",
                      target_recall)
        return {"nprobe": cfg.nprobe if nprobe is None else nprobe, "rerank": cfg.rerank if rerank is None else rerank,
                "probing": None, "exact": False}
    if target == tuned.target:
        kind, p, rr = tuned.kind, tuned.probing, tuned.rerank
    else:
        kind, p, rr = tuned.lookup(target)
    if kind in candidates.KIND_IDS:
        if (out := candidates.stage_params(index, tuned, kind, p, rr)) is not None:
            return out
        kind, p, rr = tuned.lookup(target, kinds=(0, 1, 2))  # the stage is gone (a retrain): the IVF's rows
    if kind == "exact":
        return {"nprobe": cfg.nprobe, "rerank": cfg.rerank, "probing": None, "exact": True}
    return {"nprobe": p.nprobe, "rerank": rr, "probing": p if p.adaptive else None, "exact": False}


# -- automatic runs ---------------------------------------------------------------------------------
def _due(index) -> str | None:
    parts, cfg = index.parts, index.config
    ann, tuned = parts.ann, parts.tuned
    if ann is None or cfg.target_recall is None or not cfg.auto_tune or cfg.probe_size == 0:
        return None
    if index.mode == "r":
        # a reader uses its generation's tuning as persisted; the writer (or `lukhas-gpu tune STORE`)
        # retunes, once, rather than every reader at every start
        return None
    live = parts.live
    if index.mode != "r" and planned_nlist(live, cfg) >= 2 * ann.nlist and live >= MIN_TRAIN_ROWS \
            and live >= 2 * index.state.restructure_tried_at:
        return "restructure"
    if tuned is None:
        return "first"
    if tuned.nlist != ann.nlist:
        return "retrained"
    if live >= GROWTH * max(tuned.count, 1):
        return "grown"
    seen = parts.probe.queries.seen
    if tuned.source == "memories" and len(parts.probe.queries) >= 64 \
            or seen >= 2 * max(tuned.queries_seen, 512):
        return "queries"
    return None


_RUNNING: "weakref.WeakSet" = weakref.WeakSet()


class Cancelled(Exception):
    """A background run was asked to stop (the process is exiting or the index closing)."""


def _checkpoint_cancel(index, cancellable: bool) -> None:
    if cancellable and index.state.tuning_cancel:
        raise Cancelled()


@atexit.register
def _stop_all() -> None:
    """At exit, stop background runs at their next step and wait for them (FAISS threads still
    running while the interpreter tears down abort the process)."""
    for index in list(_RUNNING):
        index.state.tuning_cancel = True
    for index in list(_RUNNING):
        wait(index, timeout=60)


def maybe_retune(index) -> None:
    """Start a background run when due (after adds and searches; cheap when not); one at once."""
    st = index.state
    if st.tuning_job is not None and st.tuning_job.is_alive() or time.monotonic() < st.tuning_retry_at:
        return
    with st.start_lock:
        if (st.tuning_job is None or not st.tuning_job.is_alive()) and (why := _due(index)) is not None:
            _start(index, why)


def _start(index, why: str) -> None:
    def run():
        try:
            with runtime.first_use("tune") as use:  # its thread's arena, OpenMP team, BLAS buffer
                start = index_anon(index)
                if why == "restructure":
                    index.state.restructure_tried_at = index.parts.live  # not again before the index doubles
                    rep = index.retrain(tolerance=RESTRUCTURE_TOLERANCE)  # the facade's, no import of lifecycle
                    log.info("restructured for %d memories: IVF%d (%s)", rep["rows"], rep["nlist"],
                             "kept" if rep["accepted"] else "discarded")
                tune(index, cancellable=True)
                use.held = index_anon(index) - start  # the index's own growth (adds meanwhile, the table)
        except Cancelled:
            log.info("background tuning (%s) stopped", why)
        except Exception:  # a background run must not take the process down
            index.state.tuning_retry_at = time.monotonic() + RETRY_SECONDS
            log.exception("background tuning (%s) failed; not retried for %d s", why, RETRY_SECONDS)
        finally:
            _RUNNING.discard(index)
            trim()  # the run's references, candidates and timings (its thread's arena) go back to the OS

    log.info("background tuning started (%s)", why)
    index.state.tuning_cancel, index.state.tuning_job = False, threading.Thread(target=run, name="lukhas-gpu-tune",
                                                                                daemon=True)
    _RUNNING.add(index)
    index.state.tuning_job.start()


def wait(index, timeout: float | None = None, *, cancel: bool = False) -> None:
    """Wait for a background run (``close()`` does, asking it to stop at its next step)."""
    index.state.tuning_cancel |= cancel
    job = index.state.tuning_job
    if job is not None and job.is_alive() and job is not threading.current_thread():
        job.join(timeout)


class TuningMixin:
    """``MemoryIndex.tune()`` and friends (see :mod:`lukhas_gpu.index.tuning`)."""

    def tune(self, target_recall: float | None = None, queries=None, *, k: int = 10,
             max_queries: int = TUNE_QUERIES, structure: str | None = None) -> dict:
        """Choose the search parameters that hold ``target_recall`` at the least cost, now.

        Parameters
        ----------
        target_recall : float, optional
            Default ``config.target_recall`` (0.95 if unset).
        queries : (nq, dim) float array, optional
            Queries like those the index will serve. Default: past searches' sample (64 or more),
            else sampled memories (the target raised by ``MEMORY_MARGIN``: they overestimate recall).
        k : int
            Results per query the target applies to (``max_queries``: the most measured).
        structure : {"ivf", "graph", "rabitq", "ivf-spill", "exact"}, optional
            Force one candidate structure; default: the cheapest that meets the target within
            ``config.ann_ram_budget`` (:mod:`lukhas_gpu.index.candidates`).

        Returns ``target``, ``kind`` ("fixed", "adaptive", "exact" or a stage of ``structure``), ``nprobe``, ``rerank``,
        ``probing``, ``recall`` and ``ci`` (two-sided 90%: its low end, the one-sided 95% bound, is held to the
        target), ``met``, ``source``, ``queries``, ``expected_qps``, ``seconds``, ``tried`` (every setting). Later
        searches without ``nprobe``/``rerank`` use it when ``config.target_recall`` is set.
        """
        if queries is not None:
            from ..util.arrays import as_batch
            as_batch(queries, self.dim, "queries")
        wait(self, cancel=True)  # a background run measured an older index or fewer queries
        tuned = tune(self, target_recall, queries, k=k, max_queries=max_queries, structure=structure)
        return {**tuned.report(), "tried": tuned.tried()}

    def tune_if_due(self) -> str | None:
        """A due background run (restructure, tune) in the foreground, returning why (or None): a
        batch job's last step, so the store it publishes is tuned for its readers."""
        wait(self, cancel=True)
        why = _due(self)
        if why == "restructure":
            self.state.restructure_tried_at = self.parts.live
            self.retrain(tolerance=RESTRUCTURE_TOLERANCE)
        if why is not None:
            tune(self)
        return why

    @locked
    def tuning(self) -> dict | None:
        """The current choice (``tune()``'s report without the table), or None before any run."""
        t = self.parts.tuned
        return t.report() if t is not None else None
