"""The recall probe wired to the live index: ``MemoryIndex.quality()`` and the comparisons of
``retrain()`` (the measurements themselves are :mod:`lukhas_gpu.monitor.recall`)."""
from __future__ import annotations

import logging
import time

import numpy as np

from ..monitor import recall
from ..monitor.probe import recall_estimate
from ..query import executor
from ..util.checks import check_k, check_positive
from . import mirror_upkeep as device_mirror

log = logging.getLogger(__name__)

__all__ = ["estimate", "setup", "found"]




def setup(index, queries, k: int, max_queries: int) -> dict:
    """The probe's references for ``index`` (see :func:`lukhas_gpu.monitor.recall.setup`)."""
    if index.config.probe_size == 0:
        raise ValueError("the recall probe is off (config.probe_size=0)")
    return recall.setup(index.parts, index.parts.probe, queries, k, max_queries, dim=index.dim,
                        cosine=index.config.metric == "cosine")


def found(index, probe: dict, k: int, nprobe: int, rerank: int, resident: bool = True, *,
          probing=None, exact: bool = False, stage=None) -> np.ndarray:
    """Per probe query, how many of its exact top-k the index's search returns (``resident=False``:
    as if the device mirror were off, to compare IVF indexes)."""
    mirror = device_mirror.mirror_ready(index) if resident else None
    cfg = index.config

    def search(q, kk):
        s = executor.Search(k=kk, nprobe=nprobe, rerank=rerank, exact_max=cfg.filter_exact_max,
                            cosine=cfg.metric == "cosine", probing=probing, exact=exact, stage=stage)
        return executor.similar(index.parts, q, s, None, mirror)[1]

    return recall.evaluate(probe, k, search)


def estimate(index, queries, k, *, nprobe, rerank, max_queries, confidence) -> dict:
    """``MemoryIndex.quality()``."""
    from .tuning import search_params

    t0 = time.perf_counter()
    k = check_k(k)
    # what a search without parameters runs: the tuned choice, else the config's
    chosen = search_params(index, None if nprobe is None else check_positive("nprobe", nprobe),
                           None if rerank is None else check_positive("rerank", rerank), None)
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    probe = setup(index, queries, k, check_positive("max_queries", max_queries))
    hits = found(index, probe, k, chosen["nprobe"], chosen["rerank"], probing=chosen["probing"],
                 exact=chosen["exact"], stage=chosen.get("stage"))
    est = recall_estimate(hits, probe["exact_n"], probe["kept"], probe["true"], confidence)
    out = {**est, "confidence": confidence, "queries": len(probe["q"]), "source": probe["source"],
           "sample": probe["sample"], "k": k, "nprobe": chosen["nprobe"], "rerank": chosen["rerank"],
           "adaptive": chosen["probing"] is not None, "exact": chosen["exact"], "warning": None,
           "hits": int(probe["sampled_true"].sum()),
           "int8_sampled": (float(probe["sampled_kept"].sum() / probe["sampled_true"].sum())
                            if probe["sampled_true"].sum() else None),
           "seconds": time.perf_counter() - t0}
    if probe["source"] == "memories":
        out["warning"] = ("estimated with stored memories as queries (no searches seen yet): memories "
                          "as queries overestimate recall (by 0.05 on MiniLM/WordNet); pass queries or "
                          "search first")
        log.warning("quality(): %s", out["warning"])
    target = index.config.target_recall
    if target is not None and est["recall"] is not None and est["recall"] < target:
        log.warning("quality(): estimated recall@%d %.3f is below the target %.3f", k, est["recall"], target)
    return out
