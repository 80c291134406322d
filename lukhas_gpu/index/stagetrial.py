"""A trial of another candidate structure: ``trial(structure="graph" | "rabitq" | "ivf-spill" | "ivf" | "exact")``.

The candidate is the tuner's choice forced to that structure (:func:`.tuning.tune` with
``structure=`` and ``install=False``): a graph, IVF-RaBitQ or spilled-IVF stage is built beside the live one (in
``parts.building``, so adds and updates reach it while it is built and measured; searches do not
use it), measured and chosen at the recall target (``config.target_recall``, 0.95 if unset);
``"ivf"`` and ``"exact"`` build nothing. Then, under the lock, the route a search at that target
runs now (:func:`.tuning.search_params`: the tuned choice, the stage served) and the candidate's run
the same probe queries (the recorded traffic, or ``queries=``) against the same exact neighbours,
timed and judged by the rule of every trial (:func:`.lifecycle.interleaved`, :func:`.lifecycle.judge`).

Promoted: the candidate's table and stage become the live ones (:func:`.candidates.keep`) and one
checkpoint publishes them (``tuning.npz``, ``stage.npz``) with the report -- what
``tune(structure=)`` keeps, made durable at once. Rolled back: its stage is dropped, nothing else
changes (the report is logged, :mod:`.trials`).
"""
from __future__ import annotations

import time

from . import candidates, lifecycle, quality, tuning

__all__ = ["run"]

#: Probe queries of the comparison at most (the recorded traffic's newest).
MAX_QUERIES = 20000


def _describe(params: dict) -> str:
    return params["stage"][0] if params.get("stage") else "exact" if params["exact"] else "ivf"


def _jsonable_params(params: dict) -> dict:
    p = params.get("probing")
    return {"structure": _describe(params), "nprobe": int(params["nprobe"]), "rerank": int(params["rerank"]),
            "stage_param": int(params["stage"][1]) if params.get("stage") else None,
            "adaptive": bool(p is not None and p.adaptive)}


def run(index, structure: str, queries, recall_tolerance: float, qps_tolerance, record) -> dict:
    """Build, compare, promote or drop (module docstring); ``record(report)`` is called under the
    lock once decided, before a promotion's checkpoint. Returns the report (as ``retrain``'s:
    ``accepted``, ``live``, ``candidate``, ``old``, ``new``, ``reason``, ``generation``...)."""
    t0 = time.perf_counter()
    cand = tuning.tune(index, None, queries, structure=structure, install=False)
    lock = index.lock
    with lock:
        parts = index.parts
        stage = next((s for s in parts.building if s.kind == structure), None)
        try:
            if structure in candidates.KIND_IDS and stage is None:
                raise RuntimeError(f"the candidate {structure} stage was dropped while it was built "
                                   "(a retrain, a reload or another tuning run)")
            if parts.ann is None or cand.nlist != parts.ann.nlist:
                raise RuntimeError("the index was retrained while the candidate was measured; try again")
            out = _compare(index, cand, stage, queries, recall_tolerance, qps_tolerance)
        except BaseException:
            if stage in parts.building:
                parts.building.remove(stage)
            raise
        out.update(structure=structure, target=cand.target, generation=None, nlist=parts.ann.nlist, rows=parts.rows)
        if out["accepted"]:
            parts.tuned = cand
            candidates.keep(index, cand.kind, {structure: stage} if stage is not None else {})
        elif stage in parts.building:
            parts.building.remove(stage)
        out["seconds"] = time.perf_counter() - t0
        record(out)
        if out["accepted"] and index.path is not None and index.mode == "w":
            out["generation"] = index.checkpoint().name  # durable: a crash before it finds the old index
    return out


def _compare(index, cand, stage, queries, recall_tolerance: float, qps_tolerance) -> dict:
    """Under the lock: the live route and the candidate's on the same probe (see the module)."""
    parts = index.parts
    probe = quality.setup(index, queries, cand.k, MAX_QUERIES)
    live_state = (parts.tuned, parts.stage)
    cand_state = (cand, stage if stage is not None else parts.stage)

    def params_of(state) -> dict:
        parts.tuned, parts.stage = state
        if stage is not None:
            stage.ready = parts.stage is stage  # a stage is searched only when ready
        return tuning.search_params(index, None, None, cand.target)

    try:
        sides = {"live": params_of(live_state), "candidate": params_of(cand_state)}

        def timed(state, p):
            def go():
                params_of(state)
                t = time.perf_counter()
                hits = quality.found(index, probe, cand.k, p["nprobe"], p["rerank"], resident=False,
                                     probing=p["probing"], exact=p["exact"], stage=p.get("stage"))
                return hits, time.perf_counter() - t
            return go

        old_found, new_found, t_old, t_new = lifecycle.interleaved(
            timed(live_state, sides["live"]), timed(cand_state, sides["candidate"]), qps_tolerance is not None)
    finally:
        parts.tuned, parts.stage = live_state
        if stage is not None:
            stage.ready = False
    accepted, reason, old, new, qps = lifecycle.judge(probe, old_found, new_found, t_old, t_new, recall_tolerance,
                                                      qps_tolerance)
    out = {"accepted": accepted, "old": old, "new": new, "hits": int(probe["exact_n"].sum()),
           "source": probe["source"], "queries": len(probe["q"]), "reason": reason}
    for (name, p), est, q, st in zip(sides.items(), (old, new), qps, live_state[1:] + (stage,)):
        used = st if p.get("stage") else None
        out[name] = {"recall": est["recall"], "ci": est["ci"], "qps": q, "params": _jsonable_params(p),
                     "bytes": candidates.ivf_bytes(parts) + (used.nbytes() if used is not None else 0)}
    return out
