"""The recall probe wired to the live index: ``MemoryIndex.quality()`` and the comparisons of
``retrain()`` (the measurements themselves are :mod:`lukhas_gpu.monitor.recall`)."""
from __future__ import annotations

import time

import numpy as np

from ..monitor import recall
from ..monitor.probe import recall_estimate
from ..query import executor
from ..util.checks import check_k, check_positive
from . import mirror as device_mirror

__all__ = ["estimate", "setup", "found"]




def setup(index, queries, k: int, max_queries: int) -> dict:
    """The probe's references for ``index`` (see :func:`lukhas_gpu.monitor.recall.setup`)."""
    if index.config.probe_size == 0:
        raise ValueError("the recall probe is off (config.probe_size=0)")
    return recall.setup(index.parts, index.parts.probe, queries, k, max_queries, dim=index.dim,
                        cosine=index.config.metric == "cosine")


def found(index, probe: dict, k: int, nprobe: int, rerank: int, resident: bool = True) -> np.ndarray:
    """Per probe query, how many of its exact top-k the index's search returns (``resident=False``:
    as if the device mirror were off, to compare IVF indexes)."""
    mirror = device_mirror.mirror_ready(index) if resident else None
    cfg = index.config

    def search(q, kk):
        s = executor.Search(k=kk, nprobe=nprobe, rerank=rerank, exact_max=cfg.filter_exact_max,
                            cosine=cfg.metric == "cosine")
        return executor.similar(index.parts, q, s, None, mirror)[1]

    return recall.evaluate(probe, k, search)


def estimate(index, queries, k, *, nprobe, rerank, max_queries, confidence) -> dict:
    """``MemoryIndex.quality()``."""
    t0 = time.perf_counter()
    k = check_k(k)
    nprobe = index.config.nprobe if nprobe is None else check_positive("nprobe", nprobe)
    rerank = index.config.rerank if rerank is None else check_positive("rerank", rerank)
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    probe = setup(index, queries, k, check_positive("max_queries", max_queries))
    hits = found(index, probe, k, nprobe, rerank)
    est = recall_estimate(hits, probe["exact_n"], probe["kept"], probe["true"], confidence)
    return {**est, "confidence": confidence, "queries": len(probe["q"]), "source": probe["source"],
            "sample": probe["sample"], "k": k, "nprobe": nprobe, "rerank": rerank,
            "seconds": time.perf_counter() - t0}
