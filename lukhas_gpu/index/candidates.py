"""The candidate stage the tuner chooses: IVF-PQ fast-scan, an HNSW graph, IVF-RaBitQ, a second
(SOAR) entry of every row beside the IVF's (the spilled lists), or none.

:func:`measure` runs inside :func:`lukhas_gpu.index.tuning.tune`, beside the IVF-PQ rows: each
stage of :data:`lukhas_gpu.vectors.graph.AUTO_STRUCTURES` whose expected bytes fit the RAM budget
(``config.ann_ram_budget`` bytes per memory for every ANN structure together, the IVF-PQ
included) is built over the stored rows (their int8 rows dequantized and projected, in locked
steps so searches go on; rows added during the build wait for it, rows re-vectored in it are
re-added by the update), searched on the tuner's queries at each of its parameters (efSearch,
nprobe) with every rerank depth, and timed. The table then holds the rows of every structure;
the tuner keeps the cheapest meeting the target (:func:`keep`), and the stage chosen stays in
``parts.stage`` (saved in the checkpoint as ``stage.npz``, replayed adds and updates go to it,
a retrain drops it); the others go.

``tune(structure=...)`` forces one structure (``"ivf"``, ``"graph"``, ``"rabitq"``, ``"ivf-spill"``,
``"exact"``),
the budget aside: what the model test uses to hold every route to its allowed set.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..util.timing import fastest
from ..vectors import graph
from ..vectors.ann import train_sample_size
from . import ivflists

log = logging.getLogger(__name__)

__all__ = ["STRUCTURE_CHOICES", "KINDS", "KIND_IDS", "check_structure", "fits_budget", "measure", "keep", "build",
           "persist", "load", "held", "drop", "restrict", "stage_params", "check"]

#: What ``tune(structure=)`` accepts (None: chosen by measured cost).
STRUCTURE_CHOICES = ("ivf", "exact", *graph.STRUCTURES)
#: The tuning table's ``kind`` column, by index: the IVF's fixed and adaptive probing, the exact
#: scan, then each candidate stage. Saved with a store's tuning: append only.
KINDS = ("fixed", "adaptive", "exact", *graph.STRUCTURES)
#: The table's ``kind`` of each stage.
KIND_IDS = {kind: KINDS.index(kind) for kind in graph.STRUCTURES}
#: Kinds of the table each forced structure keeps.
_FORCED = {"ivf": (0, 1), "exact": (2,), **{kind: (i,) for kind, i in KIND_IDS.items()}}
#: Queries timed per stage parameter (the fastest of 3 runs).
TIME_QUERIES = 256


def check_structure(structure) -> str | None:
    if structure is not None and structure not in STRUCTURE_CHOICES:
        raise ValueError(f"structure must be None or one of {STRUCTURE_CHOICES}, got {structure!r}")
    return structure


def ivf_bytes(parts) -> int:
    return int(sum(parts.ann.memory_usage().get("anon", {}).values())) if parts.ann is not None else 0


def fits_budget(parts, kind: str, budget: int) -> bool:
    """Whether the IVF-PQ plus a stage of ``kind`` over the store's rows stay within ``budget``
    bytes per memory."""
    n = max(parts.rows, 1)
    nlist = parts.ann.nlist if parts.ann is not None else None
    return ivf_bytes(parts) + graph.stage_bytes(kind, n, parts.dim_out, nlist=nlist) <= budget * n


def build(index, kind: str, cancel=None):
    """A stage of ``kind`` over every stored row, built in locked steps; from its first step it is
    in ``parts.building`` (adds and updates reach it, searches do not use it) until :func:`keep`."""
    lock, parts = index.lock, index.parts
    with lock:
        n = parts.rows
        m = min(n, max(65536, train_sample_size(graph.rabitq_nlist(n)) if kind == "rabitq" else 0))  # k-means' sample
        pick = np.sort(np.random.default_rng(index.config.seed).choice(n, m, replace=False))
        sample = ivflists.vectors_of(parts, pick)
        stage = graph.new_stage(kind, parts.dim_out, sample, n, like=parts.ann)
        parts.building.append(stage)
    try:
        while True:
            if cancel is not None:
                cancel()
            with lock:
                if index.parts is not parts or stage not in parts.building:
                    raise RuntimeError("the candidate stage was dropped while it was built (a retrain or reload)")
                a, b = stage.covered(), parts.rows
                if a >= b:
                    return stage
                rows = np.arange(a, min(b, a + graph.BUILD_BATCH), dtype=np.int64)
                stage.add(ivflists.vectors_of(parts, rows), rows)
    except BaseException:
        with lock:
            if stage in parts.building:
                parts.building.remove(stage)
        raise


def held(parts, kind: str) -> bool:
    """Whether ``parts`` hold a ready stage of ``kind`` (a search's tuned stage can run)."""
    st = parts.stage
    return st is not None and st.ready and st.kind == kind


def stage_params(index, tuned, kind: str, p, rr: int) -> dict | None:
    """A search's parameters for a tuned stage row: the stage's when it is held, the config's
    when the table has nothing else (a retrain dropped the stage it was forced to), else None
    (look the IVF's rows up)."""
    cfg = index.config
    if held(index.parts, kind):
        return {"nprobe": cfg.nprobe, "rerank": rr, "probing": None, "exact": False, "stage": (kind, p.nprobe)}
    if not (tuned.table["kind"] < min(KIND_IDS.values())).any():
        return {"nprobe": cfg.nprobe, "rerank": cfg.rerank, "probing": None, "exact": False}
    return None


def query_forms(index, q) -> tuple:
    """``(query weights (torch), projected queries (numpy float32))`` of the tuner's queries, by the
    index's encoder (the caller holds the index's lock)."""
    import torch

    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))
    enc = index.parts.encoder
    return enc.query_weights(qt), enc.project(qt).cpu().numpy()


def measure(index, ann, ref, k: int, kk: int, eff: float, estimate, rows: list, structure, reranks,
            cancel) -> dict:
    """Build and measure the stages allowed (by ``structure`` or the budget) when the IVF ``ann``
    is trained: rows appended to ``rows`` (the tuner's tuple layout, ``codes`` -1); returns
    ``costs`` (seconds per query by row index) and ``built`` (the stages by kind)."""

    from ..monitor import recall
    from ..vectors import exact
    parts, cfg, lock = index.parts, index.config, index.lock
    kinds = [structure] if structure in graph.STRUCTURES else [] if structure is not None else \
        [kd for kd in graph.AUTO_STRUCTURES if fits_budget(parts, kd, cfg.ann_ram_budget)]
    costs, built = {}, {}
    with lock:  # what a failed run left building (its writes' cost) goes
        parts.building = []
    if ann is None or ann is not parts.ann or not kinds:
        return {"costs": costs, "built": built}
    n_live = max(parts.live, 1)
    reranks = [r for r in reranks if k * r <= max(n_live, k)] or [1]
    with lock:
        qw, qp = query_forms(index, ref["q"])
    qw_np = qw.cpu().numpy()
    kc_max = max(kk, k * max(reranks))
    for kind in kinds:
        t0 = time.perf_counter()
        stage = build(index, kind, cancel)
        built[kind] = stage
        log.info("candidate stage %s built over %d rows in %.1f s", kind, stage.ntotal, time.perf_counter() - t0)
        params = graph.GRAPH_EF if kind == "graph" else [p for p in graph.RABITQ_NPROBES if p <= stage.index.nlist]
        if kind == "ivf-spill":  # deeper than RaBitQ's: the fixed probes the IVF's rows were measured at
            params = sorted({int(r[1]) for r in rows if r[0] == 0} | set(params))
        first = len(rows)
        for param in params:
            cancel()
            with lock:
                cand = stage.search(qp, kc_max, param, exclude=index.parts.tombstones)
                scores = exact.candidate_scores(qw_np, index.parts.vectors.array, cand)
            met = False
            for r in reranks:
                kc = max(kk, min(k * r, cand.shape[1]))
                e = estimate(recall.found_in(ref, exact.top_candidates(scores[:, :kc], cand[:, :kc], kk)[1], k))
                rows.append((KIND_IDS[kind], float(param), r, e["recall"] or 0.0, e["ci"][0] or 0.0,
                             e["ci"][1] or 0.0, e["bound"], -1.0, kc, float(param), 0, 0))
                if e["bound"] >= eff:
                    met = r == reranks[0]
                    break  # deeper reranks only cost more
            if met:
                break  # a larger parameter only costs more
        costs.update(_stage_costs(index, stage, rows, first, qw[:TIME_QUERIES], qp[:TIME_QUERIES], k))
        _time_cheapest(index, stage, rows, first, costs, eff, qw[:TIME_QUERIES], qp[:TIME_QUERIES], k)
    return {"costs": costs, "built": built}


def _time_cheapest(index, stage, rows: list, first: int, costs: dict, eff: float, qw, qp, k: int) -> None:
    """The stage's cheapest row meeting ``eff`` by the model, timed itself: the corners' linear
    model put the spilled lists at 15.0k QPS on WordNet where their search ran at 9.7k, and won
    the choice from the IVF's 14.4k (measured 14.0k)."""
    met = [i for i in range(first, len(rows)) if rows[i][6] >= eff and i in costs]
    if met:
        i = min(met, key=costs.__getitem__)
        costs[i] = max(_timed_stage(index, stage, qw, qp, k, int(rows[i][8]), int(rows[i][1])), 1e-9)


def _work(kind: str, param: np.ndarray, kc: np.ndarray) -> np.ndarray:
    """What a stage's search visits grows with: a graph's beam (``max(efSearch, kc)``), the
    lists IVF-RaBitQ and the spilled IVF scan (``nprobe``)."""
    return np.maximum(param, kc) if kind == "graph" else param


def _stage_costs(index, stage, rows: list, first: int, qw, qp, k: int) -> dict:
    """Seconds per query of ``rows[first:]`` (one stage): a model ``a * work + b * kc + c``
    fitted on timed runs at the corners of the parameters and candidate counts measured."""
    param = np.array([r[1] for r in rows[first:]])
    kc = np.array([r[8] for r in rows[first:]], dtype=np.float64)
    if not len(param):
        return {}
    corners = {(p, c) for p in (param.min(), param.max()) for c in (kc.min(), kc.max())}
    x, y = [], []
    for p, c in sorted(corners):
        x.append([_work(stage.kind, np.array(p), np.array(c)), c, 1.0])
        y.append(_timed_stage(index, stage, qw, qp, k, int(c), int(p)))
    coef = np.maximum(np.linalg.lstsq(np.array(x, dtype=np.float64), np.array(y), rcond=None)[0], 0.0)
    cost = _work(stage.kind, param, kc) * coef[0] + kc * coef[1] + coef[2]
    return {first + i: max(float(c), 1e-9) for i, c in enumerate(cost)}


def _timed_stage(index, stage, qw, qp, k: int, kc: int, param: int) -> float:
    """Seconds per query of the stage's search and the int8 rerank (fastest of 3 runs)."""
    from ..vectors import exact

    def run():
        with index.lock:
            cand = stage.search(qp, kc, param, exclude=index.parts.tombstones)
            exact.rerank(qw, index.parts.vectors.checked(cand), cand, k)
    return fastest(run, 3) / max(len(qp), 1)


def restrict(table: dict, structure) -> dict:
    """The table's rows a forced ``structure`` may choose (all without one)."""
    if structure is None:
        return table
    keep_rows = np.isin(table["kind"].astype(int), _FORCED[structure])
    if not keep_rows.any():
        raise ValueError(f"structure={structure!r}: nothing of it could be measured (is the index trained?)")
    return {name: col[keep_rows] for name, col in table.items()}


def keep(index, kind: str, built: dict) -> None:
    """After the choice: the stage of ``kind`` (if it is one) ready in ``parts.stage``, in place
    of the one served so far; the others dropped (their rows stay in the table: a lookup that
    lands on one falls back to the IVF's, :func:`stage_params`)."""
    parts = index.parts
    chosen = built.get(kind)
    if chosen is not None and chosen in parts.building:
        chosen.ready = True
        parts.stage = chosen
    elif kind in graph.STRUCTURES and parts.stage is not None and parts.stage.kind == kind:
        pass  # nothing new was built of it: the one served stays
    else:
        parts.stage = None
    parts.building = []


def drop(parts, why: str) -> None:
    """No stage from now on (a retrain changed the projected space it was built in)."""
    if parts.stage is not None or parts.building:
        log.info("candidate stages dropped: %s", why)
    parts.stage, parts.building = None, []


def check(parts) -> str | None:
    """What is wrong with a ready stage (a node for every row, one FAISS entry per node), or None."""
    st = parts.stage
    if st is None or not st.ready:
        return None
    if st.covered() != parts.rows:
        return f"the candidate stage ({st.kind}) covers {st.covered()} rows, the index holds {parts.rows}"
    if st.ntotal != st.nodes.n:
        return f"the candidate stage ({st.kind}) holds {st.ntotal} entries, its node map {st.nodes.n}"
    return st.problems(parts.ann)


# -- persistence -----------------------------------------------------------------------------------
def persist(parts) -> dict | None:
    """The ``stage.npz`` members of a ready stage (None without one)."""
    st = parts.stage
    if st is None or not st.ready:
        return None
    return st.to_arrays(parts.rows)


def load(parts, arrays: dict) -> None:
    """``parts.stage`` from ``stage.npz``'s members (ValueError when they disagree)."""
    parts.stage = graph.stage_from_arrays(arrays, parts.rows) if arrays else None
    if parts.stage is not None:
        parts.stage.bind(parts.ann)  # a spilled stage's first entries are the IVF's
