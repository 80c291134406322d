"""The recall probe's measurements: the exact references and what the live index finds of them.

:func:`setup` prepares what does not depend on the ANN (the probe queries, their exact int8
top-k over the whole store, and per query the sampled true neighbours and how many the int8 rows
keep); :func:`evaluate` counts, per query, how many of the exact top-k a search function returns.
``MemoryIndex.quality()`` combines both with :func:`~.probe.recall_estimate`; ``retrain()``
compares two indexes on one setup. The search function is passed in (``search(q, k) -> ids``),
so this module reads only the parts it is given.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..util.arrays import as_batch, check_nonzero, tensor_view
from ..vectors import exact

log = logging.getLogger(__name__)

__all__ = ["setup", "choose_queries", "references", "concat", "found_in", "evaluate", "drop_own", "int8_model",
           "PROBE_CHUNK"]

#: Queries per chunk of the recall probe (bounds its temporary score matrices).
PROBE_CHUNK = 256
#: Int8 rows below the k-th that :func:`int8_model` considers, and its seeded draws.
MODEL_DEPTH, MODEL_DRAWS = 54, 200


def drop_own(ids: np.ndarray, own_ids: np.ndarray, scores: np.ndarray | None = None):
    """Move each row's own id (a probe query that is a stored memory) to the end of its results,
    as id -1 and score -inf, keeping the order of the others: ``(ids, scores)``."""
    own = ids == own_ids[:, None]
    order = np.argsort(own, axis=1, kind="stable")
    ids = np.take_along_axis(np.where(own, -1, ids), order, 1)
    if scores is not None:
        scores = np.take_along_axis(np.where(own, -np.inf, scores), order, 1)
    return ids, scores


def setup(parts, probe, queries, k: int, max_queries: int, *, dim: int, cosine: bool) -> dict:
    """What the recall probe needs that does not depend on the ANN.

    ``parts`` gives ``vectors``, ``tombstones`` and ``encoder``; ``probe`` is the index's
    :class:`~.probe.Probe`. Queries: the given ones, else the sampled queries of past searches
    (64 or more), else the sampled memories themselves (each excluding itself).
    """
    chosen = choose_queries(parts, probe, queries, max_queries, dim=dim, cosine=cosine)
    return references(parts, chosen, k, 0, len(chosen["q"]))


def choose_queries(parts, probe, queries, max_queries: int, *, dim: int, cosine: bool) -> dict:
    """The probe's queries and its sample of originals (see :func:`setup`), copied:
    ``q``, ``self_ids``, ``source``, ``s_ids``, ``s_vec``."""
    mem = probe.memories
    if len(mem):
        live = (mem.ids >= 0) & (mem.ids < len(parts.vectors)) & ~parts.tombstones.contains(mem.ids)
    else:
        live = np.zeros(0, dtype=bool)
    enc = parts.encoder
    if live.any():
        s_ids = mem.ids[live]
        s_vec = mem.vectors[live].astype(np.float32)
    else:
        s_ids, s_vec = _stored_stand_ins(parts, max(mem.capacity, 1), seed=len(mem) + int(mem.seen))
    self_ids = None
    if queries is not None:
        q, _ = as_batch(queries, dim, "queries")
        if cosine:
            check_nonzero(q, "queries")
        q = enc.normalize(q).cpu().numpy()
        source = "given"
    elif len(probe.queries) >= 64:
        q, source = probe.queries.vectors.astype(np.float32), "queries"
    else:
        q, self_ids, source = s_vec, s_ids, "memories"
    q = q[:max_queries]
    if self_ids is not None:
        self_ids = self_ids[:max_queries]
    return {"q": q, "self_ids": self_ids, "source": source, "s_ids": s_ids, "s_vec": s_vec}


def _stored_stand_ins(parts, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``size`` live stored rows, dequantized and normalised, standing in for the sampled
    originals when every sampled memory was deleted since (a mass delete, a dropped namespace or
    a purge leave a uniform sample of the history, all of it dead, beside a few live rows added
    later). Their int8 rounding error is not known: the int8 stage's model sees none (logged)."""
    n = len(parts.vectors)
    rows = np.flatnonzero(parts.tombstones.live_mask(n)) if n else np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError("the recall probe has no sampled memories yet (add memories first)")
    if len(rows) > size:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size, replace=False))
    enc = parts.encoder
    log.warning("the recall probe's sampled memories were all deleted: %d stored rows (dequantized) stand "
                "in for them; the int8 stage's loss is not modelled this time", len(rows))
    vec = enc.normalize(enc.dequantize(np.asarray(parts.vectors[rows]))).cpu().numpy()
    return rows.astype(np.int64), vec.astype(np.float16).astype(np.float32)


def references(parts, chosen: dict, k: int, start: int, stop: int) -> dict:
    """The exact references of queries ``start:stop`` of ``chosen`` (from :func:`choose_queries`):
    their exact int8 top-k over the whole store, and per query what the int8 stage keeps of the
    true float top-k: ``kept`` (expected, :func:`int8_model`) of ``true`` (the k), and the
    sampled count behind it (``sampled_kept`` of ``sampled_true``: true neighbours among the
    probe's sampled originals). Callers may run it in slices and :func:`concat` them."""
    enc = parts.encoder
    q = chosen["q"][start:stop]
    self_ids = chosen["self_ids"][start:stop] if chosen["self_ids"] is not None else None
    s_ids, s_vec = chosen["s_ids"], chosen["s_vec"]
    kk = k + 1 if self_ids is not None else k
    depth = max(kk + MODEL_DEPTH, 2 * kk)
    codes = parts.vectors.array
    s_codes = tensor_view(codes[s_ids])
    dead = parts.tombstones.array() if parts.tombstones else None
    exact_ids = np.full((len(q), k), -1, dtype=np.int64)
    true = np.zeros(len(q), dtype=np.int64)
    kept = np.zeros(len(q), dtype=np.int64)
    model = np.zeros(len(q), dtype=np.float64)
    for c0 in range(0, len(q), PROBE_CHUNK):
        qc = torch.from_numpy(np.ascontiguousarray(q[c0: c0 + PROBE_CHUNK]))
        qw = enc.query_weights(qc)
        _, cand = exact.scan(qw, codes, 2 * depth + 16, exclude=dead, kernel=exact.int8_kernel)
        sc, ids = exact.rerank(qw, codes, cand.cpu().numpy(), depth)
        sc, ids = sc.cpu().numpy(), ids.cpu().numpy()
        if self_ids is not None:  # the query's own row is not its neighbour
            ids, sc = drop_own(ids, self_ids[c0: c0 + PROBE_CHUNK], sc)
        sf = qc.numpy() @ s_vec.T  # the sampled originals' float scores, and their int8 scores
        s8 = exact.float_kernel(qw, s_codes.to(qw.device)).cpu().numpy()
        model[c0: c0 + len(sc)] = int8_model(sc[:, :depth - (kk - k)], (s8 - sf).std(1), k,
                                              seed=start + c0)
        sc, ids = sc[:, :k], ids[:, :k]
        exact_ids[c0: c0 + len(ids)] = np.where(np.isfinite(sc), ids, -1)
        tau = sc[:, k - 1]
        t = sf >= tau[:, None]  # true neighbours among the sampled originals
        # the k-th row itself, when sampled, scores tau up to float rounding (another
        # summation order): a relative tolerance keeps it
        eps = 1e-5 * np.maximum(1.0, np.abs(tau))[:, None]
        if self_ids is not None:
            t &= s_ids[None, :] != self_ids[c0: c0 + PROBE_CHUNK, None]
        true[c0: c0 + len(t)] = t.sum(1)
        kept[c0: c0 + len(t)] = (t & (s8 >= tau[:, None] - eps)).sum(1)
    exact_n = (exact_ids >= 0).sum(1)
    return {"q": q, "self_ids": self_ids, "exact_ids": exact_ids, "exact_n": exact_n,
            "true": exact_n.astype(np.float64), "kept": np.minimum(model, exact_n),
            "sampled_true": true, "sampled_kept": kept, "source": chosen["source"], "sample": len(s_ids)}


def int8_model(scores: np.ndarray, sigma: np.ndarray, k: int, *, draws: int = MODEL_DRAWS,
               seed: int = 0) -> np.ndarray:
    """Expected number of a query's exact int8 top-k that are also in its true float top-k.

    ``scores`` (nq, depth) are the query's exact int8 scores, descending (the top ``depth`` rows,
    ``-inf`` padded); ``sigma`` (nq,) the spread of its int8 score error (int8 minus float score,
    measured on the probe's sampled originals: thousands of pairs per query at any size). A
    row's float score is its int8 score minus an independent normal error of that spread; the
    expectation is taken over ``draws`` seeded draws. Rows below ``depth`` are taken never to
    reach the float top-k (``depth - k`` is several error spreads below the k-th score).

    It replaces counting true neighbours among the sampled originals, which leaves ~0.2 per
    query at 100k and 0.02 at 1M: on MiniLM/WordNet 117k, the held-out Debian 50k and 1M
    synthetic rows the model gave 0.9928 / 0.9935 / 0.9835 where the measured int8 stage kept
    0.9919 / 0.9927 / 0.9828 (sampled counts: 0.9968 / 0.9947 / 0.972 on 313 / 749 / 36 events).
    """
    nq, depth = scores.shape
    valid = np.isfinite(scores)
    head = valid[:, :k]
    if depth <= k or nq == 0:
        return head.sum(1).astype(np.float64)
    rng = np.random.default_rng(seed)
    sig = np.asarray(sigma, dtype=np.float32)[:, None]
    base = np.where(valid, scores, -np.inf).astype(np.float32)
    acc = np.zeros(nq, dtype=np.float64)
    for _ in range(draws):
        f = base - rng.standard_normal(base.shape, dtype=np.float32) * sig
        top = np.argpartition(-f, k - 1, axis=1)[:, :k]
        acc += ((top < k) & np.take_along_axis(head, np.minimum(top, k - 1), 1)).sum(1)
    return acc / draws


def concat(pieces: list[dict]) -> dict:
    """One setup from the slices :func:`references` gave, in order."""
    out = dict(pieces[0])
    for key in ("q", "exact_ids", "exact_n", "true", "kept", "sampled_true", "sampled_kept"):
        out[key] = np.concatenate([p[key] for p in pieces])
    if out["self_ids"] is not None:
        out["self_ids"] = np.concatenate([p["self_ids"] for p in pieces])
    return out


def found_in(probe: dict, ids: np.ndarray, k: int) -> np.ndarray:
    """Per probe query, how many of its exact top-k are among ``ids`` ((nq, kk) numpy, the
    results of a search for ``k + 1`` when the queries are stored memories)."""
    return _overlap(probe["exact_ids"], probe["self_ids"], ids, k)


def _overlap(exact_ids: np.ndarray, self_ids, ids: np.ndarray, k: int) -> np.ndarray:
    if self_ids is not None:  # drop the query's own row, keep k others
        ids = drop_own(ids, self_ids)[0][:, :k]
    e = exact_ids
    return ((e[:, :, None] == ids[:, None, :]) & (e[:, :, None] >= 0)).any(2).sum(1)


def evaluate(probe: dict, k: int, search) -> np.ndarray:
    """Per probe query: how many of its exact int8 top-k ``search(q, kk) -> ids`` returns
    (``q`` a float32 torch batch, ``ids`` an ``(nq, kk)`` tensor or array)."""
    q, self_ids, exact_ids = probe["q"], probe["self_ids"], probe["exact_ids"]
    kk = k + 1 if self_ids is not None else k
    found = np.zeros(len(q), dtype=np.int64)
    for c0 in range(0, len(q), PROBE_CHUNK):
        qc = torch.from_numpy(np.ascontiguousarray(q[c0: c0 + PROBE_CHUNK]))
        ids = search(qc, kk)
        ids = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        own = self_ids[c0: c0 + PROBE_CHUNK] if self_ids is not None else None
        found[c0: c0 + len(ids)] = _overlap(exact_ids[c0: c0 + len(ids)], own, ids, k)
    return found
