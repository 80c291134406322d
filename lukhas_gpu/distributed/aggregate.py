"""What a :class:`~.sharded.ShardedIndex` reports about itself: totals of the shards' ``stats()``
and one recall estimate from their ``quality()``.

**Recall of a sharded search.** A query's global top-k is split over the shards: shard ``s``
holds ``m_s`` of it, and those are its own top-``m_s``, so the sharded search finds them when
the shard's search does (the merge loses nothing, :mod:`.merge`). Each shard's ``quality()``
estimates its recall@k; for a partition that does not depend on the vectors (hash, round robin:
what ``distributed.ingest`` writes) a shard holds on average a share ``w_s = count_s / count``
of every global top-k, so the sharded recall is estimated by the count-weighted mean
``sum_s w_s * recall_s``. (A shard's recall@m for ``m < k`` is, if anything, higher than its
recall@k, so the estimate errs low.) The shards' estimates are independent (disjoint memories,
their own probe samples); each interval is read as a normal one with standard error
``(high - low) / (2 z)``, and the combined interval is ``recall +- z * sqrt(sum_s w_s^2 se_s^2)``,
clipped to [0, 1]. Shards without an estimate (empty, or too small to probe) are left out and
the weights renormalised over the others.
"""
from __future__ import annotations

import math
import statistics

from ..capacity.accounting import PLACES as _PLACES

__all__ = ["stats", "quality"]

_SUMMED = ("count", "rows", "deleted")


def stats(per_shard: list[dict], n_shards: int) -> dict:
    """``count``, ``rows``, ``deleted``, ``dim``, ``phase`` ("exact", "ivfpq" or "mixed"),
    ``memory`` (each place's components and totals summed over the shards, ``per_memory``
    recomputed), ``bytes_per_memory``, ``content`` (bytes summed), ``shards`` (opened / in the
    root) and ``per_shard`` (each shard's own ``stats()``, with its ``shard`` number)."""
    out = {key: sum(s[key] for s in per_shard) for key in _SUMMED}
    phases = {s["phase"] for s in per_shard}
    mem: dict = {place: {} for place in _PLACES}
    for s in per_shard:
        for place in _PLACES:
            for comp, nbytes in s["memory"][place].items():
                mem[place][comp] = mem[place].get(comp, 0) + nbytes
    for place in _PLACES:
        mem[f"{place}_bytes"] = sum(s["memory"][f"{place}_bytes"] for s in per_shard)
    n = out["count"]
    mem["per_memory"] = {place: (mem[f"{place}_bytes"] / n if n else 0.0) for place in _PLACES}
    out.update(dim=per_shard[0]["dim"], phase=phases.pop() if len(phases) == 1 else "mixed", memory=mem,
               bytes_per_memory=(mem["anon_bytes"] + mem["mapped_bytes"]) / n if n else 0.0,
               content={k: sum(s["content"][k] for s in per_shard) for k in ("raw_bytes", "stored_bytes")},
               shards={"opened": len(per_shard), "root": n_shards}, per_shard=per_shard)
    return out


def quality(per_shard: list[dict], counts: list[int], confidence: float) -> dict:
    """One estimate from the shards' ``quality()`` reports (the rule is the module docstring's):
    ``recall``, ``ci``, ``confidence``, ``ann_recall`` and ``int8_recall`` (weighted alike),
    ``hits`` and ``queries`` (summed), ``k``, ``rule``, ``weights`` and ``per_shard``."""
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    have = [(r, c) for r, c in zip(per_shard, counts) if r.get("recall") is not None and c > 0]
    total = sum(c for _, c in have)
    out = {"confidence": confidence, "k": per_shard[0]["k"], "hits": sum(r["hits"] for r in per_shard),
           "queries": sum(r["queries"] for r in per_shard), "rule": "count-weighted mean of the shards' estimates",
           "per_shard": per_shard}
    if not total:
        out.update(recall=None, ci=(None, None), ann_recall=None, int8_recall=None, weights=[0.0] * len(per_shard))
        return out
    w = [c / total if r.get("recall") is not None and c > 0 else 0.0 for r, c in zip(per_shard, counts)]
    recall = sum(wi * r["recall"] for wi, r in zip(w, per_shard) if wi)
    var = sum((wi * (r["ci"][1] - r["ci"][0]) / (2 * z)) ** 2 for wi, r in zip(w, per_shard) if wi)
    half = z * math.sqrt(var)
    out.update(recall=recall, ci=(max(0.0, recall - half), min(1.0, recall + half)), weights=w,
               ann_recall=sum(wi * r["ann_recall"] for wi, r in zip(w, per_shard) if wi),
               int8_recall=sum(wi * r["int8_recall"] for wi, r in zip(w, per_shard) if wi))
    return out
