"""The parity check of a migration: a streamed exact cosine top-k over the input, then the index's.

Query vectors are sampled from the input (seeded) and perturbed by :data:`PARITY_NOISE`; the
exact cosine top-:data:`PARITY_K` over the input's *original* float embeddings is kept as the
input streams through the import (only the queries and their running top-k are held), and is
compared with the index's answer at the end.
"""
from __future__ import annotations

import json
import logging
import math
import random

import numpy as np

from .sources import records

log = logging.getLogger(__name__)

__all__ = ["Parity", "jsonl_parity", "PARITY_K", "PARITY_NOISE"]

#: Neighbours compared by the parity check.
PARITY_K = 10
#: Norm of the Gaussian perturbation added to a (unit) sampled embedding to make a parity query:
#: close enough that its neighbourhood is the sample's, far enough that it is not an exact copy
#: (cosine to the sample about 0.999).
PARITY_NOISE = 0.05
_F32_MAX = float(np.finfo(np.float32).max)


class Parity:
    """Streamed exact cosine top-k of sampled queries over the input, then the index's answer."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q = queries  # (m, d) float32, unit rows
        self.k = k
        m = len(queries)
        self.best_s = np.full((m, k), -np.inf, dtype=np.float32)
        self.best_i = np.full((m, k), -1, dtype=np.int64)
        self.seconds = 0.0

    @classmethod
    def empty(cls) -> "Parity":
        return cls(np.empty((0, 0), dtype=np.float32), 0)

    @classmethod
    def from_samples(cls, rows: np.ndarray, x: np.ndarray, index, n: int,
                     rng: np.random.Generator) -> "Parity":
        """Queries from sampled input rows ``x`` (rows that would be rejected are dropped)."""
        x = np.asarray(x, dtype=np.float32)
        keep = np.isfinite(x).all(axis=1) & x.any(axis=1)
        x = x[keep].astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        noise = rng.standard_normal(x.shape) * (PARITY_NOISE / math.sqrt(max(x.shape[1], 1)))
        q = x + noise
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        log.debug("parity: %d query vectors from %d sampled rows", len(q), len(rows))
        return cls(q.astype(np.float32), min(PARITY_K, n))

    def update(self, x: np.ndarray, first: int) -> None:
        """Merge the rows ``x`` (records ``first, first + 1, ...``) into the running top-k."""
        if not len(self.q):
            return
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        s = self.q @ (x / np.maximum(norms, 1e-30)).T  # (m, b) cosine
        k = self.k
        if s.shape[1] > k:
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(s, top, 1)
        else:
            top = np.broadcast_to(np.arange(s.shape[1]), s.shape)
        all_s = np.concatenate([self.best_s, s], axis=1)
        all_i = np.concatenate([self.best_i, top + first], axis=1)
        keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        self.best_s = np.take_along_axis(all_s, keep, 1)
        self.best_i = np.take_along_axis(all_i, keep, 1)

    def finish(self, index, id_map: np.ndarray, *, count_match: bool) -> dict:
        m, k = len(self.q), self.k
        overlap = None
        if m and k and len(id_map):
            if len(index) > len(id_map):
                log.warning("parity: the index held %d memories before the import; the reference covers "
                            "only the %d imported", len(index) - len(id_map), len(id_map))
            got = np.asarray(index.search(self.q, k=k).ids)
            assert (self.best_i >= 0).all()  # k <= records, so every slot was filled
            ref = id_map[self.best_i]
            hits = sum(len(np.intersect1d(g[g >= 0], r)) for g, r in zip(got, ref))
            overlap = hits / (m * k)
        return {"queries": m, "k": k or PARITY_K, "top10_overlap": overlap, "count_match": bool(count_match),
                "noise": PARITY_NOISE, "seconds": self.seconds}


def jsonl_parity(src: str, index, n_queries: int, seed: int) -> Parity:
    """Sample query lines in one pass (reservoir sampling, seeded; only the sampled lines are
    parsed), so that the exact reference can be scanned during the import itself."""
    rnd = random.Random(seed)
    sample: list[tuple[int, bytes]] = []
    n = 0
    for _, raw in records(src):
        if n < n_queries:
            sample.append((n, raw))
        else:
            j = rnd.randrange(n + 1)
            if j < n_queries:
                sample[j] = (n, raw)
        n += 1
    sample.sort()
    rows, vecs = [], []
    for i, raw in sample:
        # a bad sampled line is only left out here; the import reports it with its line number
        try:
            obj = json.loads(raw)
            emb = np.asarray(obj["embedding"], dtype=np.float64)
        except Exception:  # noqa: BLE001 -- any failure means "not a usable query"
            continue
        if emb.shape == (index.dim,) and np.isfinite(emb).all() and (np.abs(emb) <= _F32_MAX).all():
            rows.append(i)
            vecs.append(emb)
    x = np.array(vecs, dtype=np.float32).reshape(-1, index.dim)
    return Parity.from_samples(np.asarray(rows, dtype=np.int64), x, index, n,
                                np.random.default_rng(seed))
