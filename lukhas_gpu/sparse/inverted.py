"""The inverted index over a :class:`~.arena.SparseArena` and its pruned exact top-k.

**Segments.** Posting lists live in log-structured segments, each built from a contiguous range
of arena slots: per term (``terms``, uint32, sorted) the slots holding it (uint32, ascending)
and their weights (the arena's dtype), with per-term bounds -- the largest weight and, for BM25,
the shortest document. New slots become a segment at the next search (:meth:`InvertedIndex.sync`);
the newest segments are merged while the last is at least a quarter of the one before (or the
one before is small), up to :data:`MAX_SEGMENT_NNZ` postings, so a store holds ``O(log n)``
segments and each posting is rebuilt ``O(log n)`` times. A merge rebuilds from the arena and
drops dead slots' postings; until then they stay and are skipped.

**Top-k (MaxScore, exact).** Scores are sums of non-negative per-term contributions. The query's
terms are taken by decreasing upper bound ``u_t`` (the query weight times the term's largest
contribution in any segment). Terms are accumulated in full, term at a time, into a float64
accumulator, until the bounds of the terms left, ``R``, fall below ``theta``, the k-th best
partial score (a lower bound of the k-th best final score): no memory outside the candidates can
then reach the top-k. The remaining terms are only looked up for the candidates (binary search
in each posting list), and after each one every candidate whose partial score plus the bounds
still left is below ``theta`` is dropped. The result is the brute-force top-k: ties broken by
the smaller id, only memories with a positive score, padding with id -1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .arena import SparseArena

__all__ = ["InvertedIndex", "Segment", "SparseQuery", "DotScorer", "MAX_SEGMENT_NNZ", "EXACT_SLOTS_MAX"]

#: Postings of the largest segment a merge builds (bounds a merge's temporary memory, ~24 B a posting).
MAX_SEGMENT_NNZ = 1 << 24
#: A segment smaller than this is merged with the next one whatever their ratio.
_SMALL_SEGMENT = 1 << 16
#: A filter leaving at most this many memories is scored directly from the arena rows.
EXACT_SLOTS_MAX = 8192
#: Slack on the bound comparisons: float64 sums taken in another order may differ in the last bits.
_EPS = 1e-9


@dataclasses.dataclass
class SparseQuery:
    """One query: ``terms`` (uint32, sorted, unique) and their ``weights`` (float64, > 0)."""

    terms: np.ndarray
    weights: np.ndarray


class DotScorer:
    """A memory's score is the dot product of its vector with the query's."""

    @staticmethod
    def contrib(qw, w: np.ndarray, slots: np.ndarray) -> np.ndarray:
        return qw * w.astype(np.float64)

    @staticmethod
    def bound(qw: float, max_w: float, min_len: float) -> float:
        return qw * float(max_w)


@dataclasses.dataclass
class Segment:
    """Posting lists of the arena slots ``[lo, hi)``."""

    lo: int
    hi: int
    terms: np.ndarray
    ptr: np.ndarray
    slots: np.ndarray
    weights: np.ndarray
    max_w: np.ndarray
    min_len: np.ndarray | None

    @property
    def nnz(self) -> int:
        return len(self.slots)

    def nbytes(self) -> int:
        arrays = (self.terms, self.ptr, self.slots, self.weights, self.max_w, self.min_len)
        return int(sum(a.nbytes for a in arrays if a is not None))


def _term_order(idx: np.ndarray) -> np.ndarray:
    """A stable order of ``idx`` (uint32) by value: LSD radix sort in 16-bit passes (numpy's
    stable sort of 16-bit keys is a radix sort, O(n))."""
    if len(idx) == 0:
        return np.zeros(0, np.int64)
    p = np.argsort((idx & 0xFFFF).astype(np.uint16), kind="stable")
    hi = (idx >> 16).astype(np.uint16)
    if not hi.any():
        return p
    return p[np.argsort(hi[p], kind="stable")]


def build_segment(arena: SparseArena, lo: int, hi: int) -> Segment:
    ptr = arena.indptr.view()
    a, b = int(ptr[lo]), int(ptr[hi])
    idx = arena.indices.view()[a:b]
    val = arena.values.view()[a:b] if arena.values is not None else np.zeros(0, np.float32)
    slot = np.repeat(np.arange(lo, hi, dtype=np.uint32), np.diff(ptr[lo: hi + 1]))
    dead = arena.dead.view()[lo:hi]
    if dead.any():
        keep = dead[slot - lo] == 0
        idx, val, slot = idx[keep], val[keep], slot[keep]
    order = _term_order(idx)
    idx, val, slot = idx[order], val[order], slot[order]
    del order
    if len(idx):
        starts = np.flatnonzero(np.concatenate([[True], idx[1:] != idx[:-1]]))
        max_w = np.maximum.reduceat(val, starts).astype(np.float32)
        lens = arena.slot_lengths()
        min_len = np.minimum.reduceat(lens[slot], starts).astype(np.float32) if arena.lengths is not None else None
    else:
        starts = np.zeros(0, np.int64)
        max_w = np.zeros(0, np.float32)
        min_len = np.zeros(0, np.float32) if arena.lengths is not None else None
    terms = idx[starts].astype(np.uint32)
    seg_ptr = np.concatenate([starts, [len(idx)]]).astype(np.int64)
    return Segment(lo, hi, terms, seg_ptr, np.ascontiguousarray(slot), np.ascontiguousarray(val), max_w, min_len)


class InvertedIndex:
    """Posting lists over an arena (see the module docstring); rebuilt from the arena, never stored."""

    def __init__(self):
        self.segments: list[Segment] = []
        #: Postings of the last ``topk`` call: of the queries' terms (``total``), and accumulated
        #: in full (``scanned``; the rest were skipped or only looked up for candidates).
        self.last_postings = {"total": 0, "scanned": 0}

    @property
    def indexed(self) -> int:
        return self.segments[-1].hi if self.segments else 0

    def sync(self, arena: SparseArena) -> None:
        """Index the arena's slots added since the last call, then merge (see the module docstring)."""
        n = arena.slots
        if n <= self.indexed:
            return
        self.segments.append(build_segment(arena, self.indexed, n))
        segs = self.segments
        while len(segs) >= 2:
            last, prev = segs[-1], segs[-2]
            if last.nnz + prev.nnz > MAX_SEGMENT_NNZ or not (4 * last.nnz >= prev.nnz or prev.nnz < _SMALL_SEGMENT):
                break
            merged = build_segment(arena, prev.lo, last.hi)
            segs[-2:] = [merged]

    def reset(self) -> None:
        self.segments = []

    def postings(self) -> int:
        return sum(s.nnz for s in self.segments)

    def memory_usage(self, name: str) -> dict:
        return {"anon": {name: sum(s.nbytes() for s in self.segments)}}

    # -- search -----------------------------------------------------------------------------------
    def topk(self, arena: SparseArena, queries: list[SparseQuery], k: int, *, exclude: np.ndarray | None = None,
             allowed_slots: np.ndarray | None = None, scorer=DotScorer) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of each query: ``(scores (nq, k) float32, ids (nq, k) int64)`` (memory
        ids, -1 / -inf padding).

        Parameters
        ----------
        exclude : (slots,) bool, optional
            Slots that may not be returned (dead ones are excluded always).
        allowed_slots : int64 array, optional
            When given (a narrow filter), only these slots are scored, straight from the arena.
        scorer : DotScorer or a BM25 scorer
            ``contrib(qw, w, slots)`` and ``bound(qw, max_w, min_len)``.
        """
        nq = len(queries)
        out_s = np.full((nq, k), -np.inf, np.float32)
        out_i = np.full((nq, k), -1, np.int64)
        slot_doc = arena.slot_doc.view()
        if allowed_slots is not None:
            for qi, q in enumerate(queries):
                slots, sc = score_slots(arena, q, allowed_slots, scorer)
                _emit(out_s, out_i, qi, sc, slots, slot_doc, k)
            return out_s, out_i
        self.sync(arena)
        n = arena.slots
        # the accumulator: -inf for slots that may not be returned (they stay -inf whatever is
        # added), 0 for the others; contributions are > 0, so 0 means "not a candidate yet"
        acc = np.zeros(n, np.float64)
        excl = arena.dead.view() != 0
        if exclude is not None:
            excl = excl | exclude[:n]
        acc[excl] = -np.inf
        self.last_postings = {"total": 0, "scanned": 0}
        for qi, q in enumerate(queries):
            sc, slots = self._one(q, k, acc, scorer)
            _emit(out_s, out_i, qi, sc, slots, slot_doc, k)
        return out_s, out_i

    def _one(self, q: SparseQuery, k: int, acc: np.ndarray, scorer):
        # each query term: its posting slices (one per segment holding it) and its bound
        lists: list[list] = [[] for _ in range(len(q.terms))]
        u = np.zeros(len(q.terms))
        for seg in self.segments:
            if not len(seg.terms):
                continue
            pos = np.searchsorted(seg.terms, q.terms)
            pos_c = np.minimum(pos, len(seg.terms) - 1)
            for t in np.flatnonzero(seg.terms[pos_c] == q.terms).tolist():
                p = int(pos_c[t])
                a, b = int(seg.ptr[p]), int(seg.ptr[p + 1])
                lists[t].append((seg.slots[a:b], seg.weights[a:b]))
                ml = float(seg.min_len[p]) if seg.min_len is not None else 0.0
                u[t] = max(u[t], scorer.bound(float(q.weights[t]), float(seg.max_w[p]), ml))
        order = [t for t in np.argsort(-u, kind="stable").tolist() if lists[t] and u[t] > 0]
        if not order:
            return np.zeros(0), np.zeros(0, np.int64)
        self.last_postings["total"] += sum(len(ids) for t in order for ids, _ in lists[t])
        us = u[order]
        rest = np.concatenate([np.cumsum(us[::-1])[::-1][1:], [0.0]])  # bound of the terms after each
        chunks: list[np.ndarray] = []
        ncand, theta, best, j = 0, -np.inf, -np.inf, 0
        try:
            while j < len(order):
                t = order[j]
                qw = float(q.weights[t])
                for ids, w in lists[t]:
                    g = acc[ids]
                    new = ids[g == 0]
                    if len(new):
                        chunks.append(new)
                        ncand += len(new)
                    g += scorer.contrib(qw, w, ids)
                    acc[ids] = g
                    best = max(best, float(g.max()))  # excluded slots are -inf
                    if len(g) >= k:  # the k-th best of one list's memories is a lower bound already
                        theta = max(theta, _kth(g, k))
                    self.last_postings["scanned"] += len(ids)
                j += 1
                bound = rest[j - 1] * (1 + _EPS)
                if ncand >= k and theta <= bound < best:  # worth the k-th best of all candidates?
                    cand = np.concatenate(chunks)
                    theta = max(theta, _kth(acc[cand], k))
                if bound < theta:
                    break
            cand = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
            if j < len(order) and len(cand):
                remaining = rest[j - 1]
                cand = np.sort(cand)
                cand = cand[acc[cand] + remaining * (1 + _EPS) >= theta]
                for t in order[j:]:
                    qw = float(q.weights[t])
                    for ids, w in lists[t]:
                        pos = np.minimum(np.searchsorted(ids, cand), len(ids) - 1)
                        hit = ids[pos] == cand
                        if hit.any():
                            c = cand[hit]
                            acc[c] += scorer.contrib(qw, w[pos[hit]], c)
                    remaining = max(remaining - u[t], 0.0)
                    sc = acc[cand]
                    theta = max(theta, _kth(sc, k))
                    cand = cand[sc + remaining * (1 + _EPS) >= theta]
            return acc[cand].copy(), cand.astype(np.int64)
        finally:
            for c in chunks:  # back to zero for the next query
                acc[c] = 0.0


def _kth(scores: np.ndarray, k: int) -> float:
    if len(scores) < k:
        return -np.inf
    return float(np.partition(scores, len(scores) - k)[len(scores) - k])


def _emit(out_s, out_i, qi: int, sc: np.ndarray, slots: np.ndarray, slot_doc: np.ndarray, k: int) -> None:
    """The top-k of (score, slot) into row ``qi``: by score, ties by the smaller memory id."""
    pos = sc > 0
    sc, slots = sc[pos], slots[pos]
    if not len(sc):
        return
    docs = slot_doc[slots].astype(np.int64)
    if len(sc) > k:
        kth = _kth(sc, k)
        keep = sc >= kth
        sc, docs = sc[keep], docs[keep]
    order = np.lexsort((docs, -sc))[:k]
    out_s[qi, : len(order)] = sc[order]
    out_i[qi, : len(order)] = docs[order]


def score_slots(arena: SparseArena, q: SparseQuery, slots: np.ndarray, scorer=DotScorer):
    """Exact scores of ``slots`` (live, unique) from their arena rows: ``(slots, scores)``."""
    slots = np.asarray(slots, np.int64)
    if not len(slots) or not len(q.terms):
        return slots, np.zeros(len(slots))
    ptr, idx, val = arena.slot_rows(slots)
    pos = np.minimum(np.searchsorted(q.terms, idx), len(q.terms) - 1)
    hit = q.terms[pos] == idx
    row = np.repeat(np.arange(len(slots)), np.diff(ptr))
    c = scorer.contrib(q.weights[pos[hit]], val[hit], slots[row[hit]])
    return slots, np.bincount(row[hit], weights=c, minlength=len(slots))
