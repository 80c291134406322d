"""Running a search: candidates (exact int8 scan, IVF, or the device mirror), exact rerank, fusion.

Functions over the index's parts (``parts.vectors``, ``.tombstones``, ``.encoder``, ``.ann``,
``.meta``; see :class:`lukhas_gpu.index.parts.IndexParts`) and a :class:`Search` holding one call's
parameters. They return ``(scores, ids, plan)`` with torch ``(nq, k)`` tensors on the queries'
device, ``-inf`` / ``-1`` where padded; the facade turns them into a ``SearchResult``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from pyroaring import BitMap

from ..util import runtime
from ..util.arrays import tensor_view
from ..util.device import faiss_module
from ..vectors import exact
from . import probing as probing_
from .ranking import Rank
from .routing import plan_filtered

__all__ = ["Search", "similar", "similar_plain", "ann_candidates", "ranked", "resident_search", "topk_unique",
           "RANK_EXTRA_MAX"]

#: Rows a memory-aware search may add to its candidates because recency/importance could lift
#: them into the top-k (the highest priors first).
RANK_EXTRA_MAX = 65536


@dataclasses.dataclass(frozen=True)
class Search:
    """One search's parameters: ``k``, ``nprobe``, ``rerank`` (candidates per result from the
    IVF), ``exact_max`` (``config.filter_exact_max``), ``cosine`` (clip similarities at 1: int8
    rounding can give 1.0009 for a stored vector queried with itself), ``probing`` (adaptive
    probing of unfiltered IVF searches, see :mod:`.probing`; None: ``nprobe`` lists each),
    ``exact`` (an exact int8 scan even when trained: what the tuner picks when it is cheapest),
    ``stage`` (``(kind, param)``: unfiltered candidates from the candidate stage ``parts.stage``
    of that kind, an HNSW graph's efSearch or IVF-RaBitQ's nprobe; the IVF when it is gone)."""

    k: int
    nprobe: int
    rerank: int
    exact_max: int
    cosine: bool = True
    probing: probing_.Probing | None = None
    exact: bool = False
    stage: tuple | None = None

    def with_k(self, k: int) -> "Search":
        return dataclasses.replace(self, k=k)


def _n_live(parts) -> int:
    return len(parts.vectors) - len(parts.tombstones)


def _clip(scores: torch.Tensor, s: Search) -> torch.Tensor:
    return scores.clamp_(max=1.0) if s.cosine else scores


def similar(parts, q: torch.Tensor, s: Search, allowed: BitMap | None, mirror=None):
    """Top-k by similarity, optionally restricted to ``allowed`` rows: ``(scores, ids, plan)``.

    ``mirror`` is the device mirror when the resident mode serves (see :func:`resident_search`);
    ``plan`` is None for an unfiltered search. The process's first search is a ``util.runtime``
    window (what the search path's threads and buffers keep, less the results)."""
    with runtime.first_use("search") as use:
        out = _similar(parts, q, s, allowed, mirror)
        use.held = sum(t.nbytes for t in out[:2] if not t.is_cuda)
    return out


def _similar(parts, q: torch.Tensor, s: Search, allowed: BitMap | None, mirror):
    plan = None
    if mirror is not None:
        rows = None
        if allowed is not None:  # any width: the device scans the subset exactly
            plan = plan_filtered(allowed, n_live=_n_live(parts), trained=False, exact_max=0,
                                 nprobe=s.nprobe, nlist=1, resident=True)
            rows = plan.rows
        sc, ids = resident_search(parts, mirror, q, s, rows)
        return _clip(sc, s), ids, plan
    enc, ann = parts.encoder, parts.ann
    ivf = allowed is None and ann is not None and not s.exact
    qw, qp = enc.query_forms(q, project=ivf)  # one normalisation; numpy on a CPU encoder
    k = s.k
    if allowed is None:
        if not ivf:
            codes = parts.vectors.array  # a scan reads every row: every block checked (once)
            # int8 x int8 scan for candidates (2.2x the float GEMM's speed, 50x for single
            # queries), then the float query re-scores them: exact top-k of the int8 vectors
            # unless the query's own rounding pushed a true neighbour below rank 2k + 16
            dead = parts.tombstones.array() if parts.tombstones else None
            _, cand = exact.scan(qw, codes, 2 * k + 16, exclude=dead, kernel=exact.int8_kernel)
            sc, ids = exact.rerank(qw, codes, cand.cpu().numpy(), k)
            return _clip(sc, s), ids, None
        cand = _unfiltered_candidates(parts, qp, s)
        sc, ids = exact.rerank(qw, parts.vectors.checked(cand), cand, k)
        return _clip(sc, s), ids, None
    plan = plan_filtered(allowed, n_live=_n_live(parts), trained=ann is not None, exact_max=s.exact_max,
                         nprobe=s.nprobe, nlist=ann.nlist if ann is not None else 1, n_rows=len(parts.vectors))
    if plan.strategy == "exact":
        codes = parts.vectors.checked(plan.rows)
        _, cand = exact.scan(qw, codes, 2 * k + 16, rows=plan.rows, kernel=exact.int8_kernel)
        sc, ids = exact.rerank(qw, codes, cand.cpu().numpy(), k)
        return _clip(sc, s), ids, plan
    qp = enc.project(q).cpu().numpy()
    kc = min(max(k * s.rerank, k), len(plan.allowed))
    if plan.excluded is not None:  # most of the store: its few other rows excluded, as deletions are
        _, cand = ann.search(qp, kc, nprobe=plan.nprobe, exclude=plan.excluded)
    else:
        faiss = faiss_module()
        bits = np.zeros(len(parts.vectors), dtype=bool)
        bits[plan.rows] = True
        packed = np.packbits(bits, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(packed))
        _, cand = ann.search(qp, kc, nprobe=plan.nprobe, selector=selector)
        del selector, packed
    sc, ids = exact.rerank(qw, parts.vectors.checked(cand), cand, k)
    return _clip(sc, s), ids, plan


def _unfiltered_candidates(parts, qp: np.ndarray, s: Search) -> np.ndarray:
    """``k * rerank`` candidates of every live row for projected queries ``qp``: from the
    candidate stage ``s.stage`` names when it is ready, else the IVF."""
    kc = min(max(s.k * s.rerank, s.k), max(_n_live(parts), 1))
    st = parts.stage if s.stage is not None else None
    if st is not None and st.ready and st.kind == s.stage[0]:
        return st.search(qp, kc, s.stage[1], exclude=parts.tombstones)
    return ann_candidates(parts.ann, qp, kc, s, exclude=parts.tombstones)


def similar_plain(parts, x: np.ndarray, s: Search, forms: tuple) -> tuple[np.ndarray, np.ndarray]:
    """:func:`similar` of unfiltered queries ``x`` ((n, dim) float32 numpy, a CPU encoder, no
    device mirror; ``forms`` their ``Encoder.host_query_forms``) in numpy: ``(scores, ids)``
    (n, k), the same numbers. The lean route (:mod:`lukhas_gpu.index.single`): no torch op on
    the IVF and stage routes."""
    if parts.ann is None or s.exact:  # a scan of every row: its cost is the scan's
        sc, ids, _ = _similar(parts, torch.from_numpy(x if x.flags.writeable else x.copy()), s, None, None)
        return sc.numpy(), ids.numpy()
    _, qw, qp = forms
    cand = np.ascontiguousarray(_unfiltered_candidates(parts, qp, s), dtype=np.int64)
    table = parts.vectors.checked(cand)
    if not len(table) or not cand.shape[1]:
        sc, ids = exact.rerank(torch.from_numpy(qw), table, cand, s.k)
        return _clip(sc, s).numpy(), ids.numpy()
    if len(cand) == 1:
        sc, ids = exact.rerank_one(qw, table, cand, s.k)
    else:
        sc, ids = exact.top_candidates(exact.candidate_scores(qw, table, cand), cand, s.k)
    return (np.minimum(sc, np.float32(1.0), out=sc) if s.cosine else sc), ids


def ann_candidates(ann, qp: np.ndarray, kc: int, s: Search, *, exclude) -> np.ndarray:
    """``kc`` IVF candidates per projected query (int64 (nq, kc), -1 padded): ``s.nprobe`` lists
    each, or per query under adaptive ``s.probing``. ``exclude``: the tombstones (the lists keep
    deleted rows' entries; none is returned)."""
    p = s.probing
    if p is None or not p.adaptive:
        return ann.search(qp, kc, nprobe=s.nprobe if p is None else p.nprobe, exclude=exclude)[1]
    scores, lists = ann.coarse_search(qp, max(p.nprobe, probing_.COARSE_MIN))
    counts = probing_.probe_counts(scores, p)
    masked = probing_.mask_lists(lists, counts)
    return ann.search_lists(qp, kc, masked, scores[:, :masked.shape[1]], exclude=exclude)[1]


def resident_search(parts, mirror, q: torch.Tensor, s: Search, rows: np.ndarray | None):
    """Exact int8 scan of the device mirror (or of ``rows`` of it), then the exact rerank.

    Without a projection the mirror holds the stored rows: the int8 x int8 scan takes ``2k + 16``
    candidates and the float query re-scores them on the device, the CPU exact path's result.
    With one, the scan in the projected space takes ``k * rerank`` and the full-dimension int8
    rows (on the host) re-score them.
    """
    enc = parts.encoder
    qw = enc.query_weights(q)
    qr = enc.resident_query_weights(q) if enc.projects else qw  # the same without a projection
    rows_t = torch.from_numpy(rows).to(mirror.device) if rows is not None else None
    k = s.k
    kc = 2 * k + 16 if not enc.projects else max(k * s.rerank, 2 * k + 16)
    _, cand = exact.scan(qr, mirror.rows, kc, rows=rows_t, dead=mirror.dead, kernel=exact.int8_kernel)
    table = mirror.rows if not enc.projects else parts.vectors.array
    return exact.rerank(qw, table, cand, k)


def ranked(parts, q: torch.Tensor, s: Search, allowed: BitMap | None, rank: Rank, *, oversample: int,
           mirror=None):
    """Exact top-k of the fused score over (approximate) similarity candidates: ``(scores, ids, plan)``.

    ``fused = a * sim + prior(row)``. Candidates come by similarity (``k * oversample`` of them);
    any row outside them has ``sim <= s_min``, the lowest candidate similarity, so it can only
    enter the top-k if ``prior(row) > tau_k - a * s_min`` (``tau_k`` the k-th best fused score
    among the candidates). Those rows are few unless recency and importance dominate; they are
    scored exactly too (at most ``RANK_EXTRA_MAX``, the highest priors first). Torch throughout,
    on the device the candidates come from; the prior is computed on the host (it reads the
    metadata columns) and moved once.
    """
    k = s.k
    meta = parts.meta
    prior_np = rank.prior(meta.timestamp.view(), meta.importance(), rank.reference_time())
    kc = k * oversample
    sims, cand, plan = similar(parts, q, s.with_k(kc), allowed, mirror)
    prior = torch.from_numpy(prior_np).to(sims.device)
    a = float(rank.similarity)
    valid = cand >= 0
    # no row at all (an empty store): every candidate is padding, and the prior has no row to index
    at = prior[cand.clamp_min(0)] if len(prior_np) else torch.zeros_like(sims)
    fused = torch.where(valid, a * sims + at, -float("inf"))
    n_allowed = len(allowed) if allowed is not None else _n_live(parts)
    if n_allowed > kc:
        tau = torch.topk(fused, k, dim=1).values[:, -1]
        s_min = torch.where(valid, sims, float("inf")).amin(dim=1)
        bound = float((tau - a * s_min).min())
        eligible = prior_np > bound
        if parts.tombstones:
            eligible[parts.tombstones.array()] = False
        if allowed is not None:
            mask = np.zeros(len(parts.vectors), dtype=bool)
            mask[np.asarray(allowed.to_array(), dtype=np.int64)] = True
            eligible &= mask
        extra = np.flatnonzero(eligible)
        if len(extra) > RANK_EXTRA_MAX:
            extra = extra[np.argpartition(-prior_np[extra], RANK_EXTRA_MAX)[:RANK_EXTRA_MAX]]
        if len(extra):
            e_s, e_i = _fused_scan(parts, q, extra, prior, a, k, mirror, s.cosine)
            fused = torch.cat([fused, e_s.to(fused.device)], dim=1)
            cand = torch.cat([cand, e_i.to(cand.device)], dim=1)
    sc, ids = topk_unique(fused, cand, k)
    return sc, ids, plan


def _fused_scan(parts, q: torch.Tensor, rows: np.ndarray, prior: torch.Tensor, a: float, k: int, mirror,
                cosine: bool):
    """Exact fused top-k over ``rows``: (scores (nq, k), ids (nq, k)) tensors. Reads the mirror's
    codes when they are the stored rows (no projection), else the host rows."""
    enc = parts.encoder
    res = mirror if mirror is not None and not enc.projects else None
    qw = enc.query_weights(q)
    table = res.rows if res is not None else parts.vectors.array
    rows_t = torch.from_numpy(rows).to(qw.device)
    pr = prior.to(qw.device)[rows_t]
    best_s = best_i = None
    step = max(1024, exact.DEFAULT_BUDGET // max(q.shape[0], 1))
    for s0 in range(0, len(rows), step):
        ids = rows_t[s0: s0 + step]
        if res is not None:
            block = exact.gather_rows(table, ids)
        else:
            block = tensor_view(table[rows[s0: s0 + step]]).to(qw.device)
        sim = exact.float_kernel(qw, block)
        if cosine:
            sim = sim.clamp_(max=1.0)
        fused = a * sim + pr[s0: s0 + step]
        top = torch.topk(fused, min(k, fused.shape[1]), dim=1)
        best_s, best_i = exact.merge_topk(best_s, best_i, top.values, ids[top.indices], k)
    return best_s, best_i


def topk_unique(scores: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row of candidates that may repeat an id (found both by similarity and by the
    prior bound): one entry per id, ``-1`` / ``-inf`` padding."""
    by_id, perm = torch.sort(ids, dim=1)
    s = torch.gather(scores, 1, perm)
    repeat = torch.zeros_like(by_id, dtype=torch.bool)
    repeat[:, 1:] = by_id[:, 1:] == by_id[:, :-1]
    s = s.masked_fill(repeat | (by_id < 0), -float("inf"))
    kk = min(k, s.shape[1])
    top = torch.topk(s, kk, dim=1)
    out_s = torch.full((ids.shape[0], k), -float("inf"), device=scores.device)
    out_i = torch.full((ids.shape[0], k), -1, dtype=torch.int64, device=scores.device)
    out_s[:, :kk] = top.values
    out_i[:, :kk] = torch.gather(by_id, 1, top.indices)
    out_i[torch.isinf(out_s)] = -1
    return out_s, out_i

