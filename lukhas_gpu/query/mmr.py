"""Maximal marginal relevance (``search(..., diversity=)``): the top-k re-chosen from an
oversampled candidate list so that near-copies of a pick give way to other relevant memories.

The usual route (filters, ``Rank``, the device mirror, a sharded root's merge) returns
:func:`pool` candidates per query with their relevance (the search's score). Picks are greedy:
the first is the most relevant, each next one maximises ``lam * rel - (1 - lam) * max sim to the
picks so far`` with ``lam = 1 - diversity`` (ties: the more relevant candidate). Similarities
between candidates are exact dot products of their dequantized int8 rows (``codes * scale``,
the vectors the executor's scores are computed against), clipped at 1 for cosine. Returned
scores are the picks' relevance, in pick order.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

from ..util.bounds import MAX_MMR_K

__all__ = ["check_diversity", "pool", "select", "POOL_MIN", "POOL_FACTOR"]

#: Candidates per query: ``max(POOL_FACTOR * k, POOL_MIN)``.
POOL_FACTOR, POOL_MIN = 4, 50
#: Floats of gathered candidate vectors (or of their Gram matrices) per group of queries (64 MB).
_GROUP_FLOATS = 1 << 24


def check_diversity(diversity, k: int) -> float | None:
    """``lam = 1 - diversity`` for a diversity in ``[0, 1]``; None when off (None or 0).

    Raises TypeError for a bool or a non-number, ValueError outside ``[0, 1]`` (or NaN) or for
    ``k`` over ``util.bounds.MAX_MMR_K``."""
    if diversity is None:
        return None
    if isinstance(diversity, bool) or not isinstance(diversity, Real):
        raise TypeError(f"diversity must be a number in [0, 1], got {type(diversity).__name__}")
    d = float(diversity)
    if not math.isfinite(d) or not 0.0 <= d <= 1.0:
        raise ValueError(f"diversity must be in [0, 1] (0: off), got {diversity!r}")
    if d == 0.0:
        return None
    if k > MAX_MMR_K:
        raise ValueError(f"k={k} with diversity: at most {MAX_MMR_K} (lukhas_gpu.util.bounds.MAX_MMR_K)")
    return 1.0 - d


def pool(k: int) -> int:
    """Candidates per query an MMR search of ``k`` takes from the usual route."""
    return max(POOL_FACTOR * k, POOL_MIN)


def select(rel: torch.Tensor, ids: torch.Tensor, vectors_of, dim: int, k: int, lam: float, *, cosine: bool):
    """The MMR top-k of each row of candidates: ``(scores (nq, k), ids (nq, k))`` tensors on
    ``rel``'s device, ``-inf`` / ``-1`` padded.

    ``rel``, ``ids``: (nq, m) candidates (ids unique per row, -1 for none), best first;
    ``vectors_of(rows)``: the (n, dim) float vectors of sorted int64 numpy ``rows`` (numpy or
    torch), asked once per group of queries."""
    nq, m = ids.shape
    dev = rel.device
    out_s = torch.full((nq, k), -float("inf"), device=dev)
    out_i = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    ids_np = ids.cpu().numpy()
    group = max(1, _GROUP_FLOATS // max(m * max(m, dim), 1))  # vectors and the Gram matrix
    for a in range(0, nq, group):
        g_ids = ids_np[a:a + group]
        uniq = np.unique(g_ids[g_ids >= 0])
        if not len(uniq):
            continue
        table = torch.as_tensor(vectors_of(uniq)).to(dev, torch.float32)
        pos = torch.from_numpy(np.searchsorted(uniq, np.maximum(g_ids, 0))).to(dev)
        out_s[a:a + group], out_i[a:a + group] = _greedy(rel[a:a + group], ids[a:a + group].to(dev), table[pos],
                                                         k, lam, cosine)
    return out_s, out_i


def _greedy(rel, ids, x, k: int, lam: float, cosine: bool):
    """Greedy MMR over one group: ``x`` (g, m, D) the candidates' vectors (their Gram matrix once:
    one batched product rather than one per pick)."""
    g, m = ids.shape
    out_s = torch.full((g, k), -float("inf"), device=rel.device)
    out_i = torch.full((g, k), -1, dtype=torch.int64, device=rel.device)
    rel = rel.to(torch.float32)
    taken = ids < 0
    max_sim = torch.full((g, m), -float("inf"), device=rel.device)
    rows = torch.arange(g, device=rel.device)
    gram = torch.bmm(x, x.transpose(1, 2))
    if cosine:
        gram = gram.clamp_(max=1.0)
    for t in range(min(k, m)):
        score = rel.clone() if t == 0 else lam * rel - (1.0 - lam) * max_sim
        score = score.masked_fill(taken, -float("inf"))
        pick = torch.argmax(score, dim=1)  # the first maximum: the more relevant candidate
        ok = ~taken[rows, pick]
        out_i[:, t] = torch.where(ok, ids[rows, pick], -1)
        out_s[:, t] = torch.where(ok, rel[rows, pick], -float("inf"))
        sim = gram[rows, pick]  # (g, m): each candidate against this pick
        max_sim = torch.where(ok[:, None], torch.maximum(max_sim, sim), max_sim)
        taken[rows[ok], pick[ok]] = True
    return out_s, out_i
