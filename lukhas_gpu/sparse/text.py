"""BM25 over the memories' contents, with no model: :class:`TextIndex`.

Each memory's content (a ``str``; bytes and ``None`` count as empty texts) is tokenized
(:mod:`.tokenize`) and stored as a sparse vector of term frequencies in a
:class:`~.arena.SparseArena` (term ids from a vocabulary that grows with the texts), indexed by
an :class:`~.inverted.InvertedIndex`. The statistics BM25 needs -- live documents ``N``, each
term's document frequency ``df`` and the total length -- are kept up to date by every add,
update and delete, and IDF and length normalisation are applied at query time, so deletes and
growth need no rebuild and the scores always reflect the live memories.

For a query term ``t`` (counted once per occurrence in the query, as bm25s does) and a memory of
length ``dl`` holding it ``tf`` times::

    score += idf(t) * tf * c / (tf + k1 * (1 - b + b * dl / avgdl))

=========== ========================================= =========
variant     idf                                       c
=========== ========================================= =========
lucene      ln(1 + (N - df + 0.5) / (df + 0.5))       1
robertson   ln(max(1, (N - df + 0.5) / (df + 0.5)))   1
atire       ln(N / df)                                k1 + 1
=========== ========================================= =========

(the definitions of Kamphuis et al., ECIR 2020, which bm25s implements).

``N``, ``df`` and the average length are the collection's. A collection split over several
indexes (the shards of ``lukhas_gpu.distributed``) scores each shard with the statistics of the
whole (:class:`BM25Stats`, summed over the shards), so that scores from different shards are
those one index over all the memories gives, and can be merged.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from .arena import SparseArena
from .inverted import InvertedIndex, SparseQuery
from .sparse_input import PackedSparse
from .tokenize import Tokenizer

__all__ = ["TextIndex", "BM25Params", "BM25Scorer", "BM25Stats", "VARIANTS", "MAX_QUERY_CHARS"]

VARIANTS = ("lucene", "robertson", "atire")
#: Characters of one query text.
MAX_QUERY_CHARS = 1 << 16


@dataclasses.dataclass(frozen=True)
class BM25Params:
    k1: float = 1.5
    b: float = 0.75
    variant: str = "lucene"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"bm25 variant must be one of {VARIANTS}, got {self.variant!r}")
        if not (np.isfinite(self.k1) and self.k1 >= 0):
            raise ValueError(f"bm25 k1 must be a finite number >= 0, got {self.k1!r}")
        if not (0.0 <= self.b <= 1.0):
            raise ValueError(f"bm25 b must be in [0, 1], got {self.b!r}")

    def idf(self, df: np.ndarray, n: int) -> np.ndarray:
        df = df.astype(np.float64)
        if self.variant == "lucene":
            return np.log1p((n - df + 0.5) / (df + 0.5))
        if self.variant == "robertson":
            return np.log(np.maximum(1.0, (n - df + 0.5) / (df + 0.5)))
        return np.log(n / df)

    @property
    def c(self) -> float:
        return self.k1 + 1.0 if self.variant == "atire" else 1.0


@dataclasses.dataclass(frozen=True)
class BM25Stats:
    """The collection statistics a BM25 score depends on, for the terms of some query texts:
    live documents ``n``, their ``total_len`` and each term's document frequency ``df``
    (``{term: count}``; terms no document holds are left out)."""

    n: int
    total_len: float
    df: dict

    @classmethod
    def combine(cls, parts) -> "BM25Stats":
        """The statistics of the union of disjoint collections (the shards of one root)."""
        df: dict = {}
        for p in parts:
            for t, c in p.df.items():
                df[t] = df.get(t, 0) + int(c)
        return cls(sum(int(p.n) for p in parts), float(sum(p.total_len for p in parts)), df)


class BM25Scorer:
    """Per-posting BM25 contributions for one search (``K`` per slot from the live average length)."""

    def __init__(self, params: BM25Params, lengths: np.ndarray, avgdl: float):
        self.k1, self.b, self.c = params.k1, params.b, params.c
        self.avgdl = max(avgdl, 1e-12)
        self.K = self.k1 * (1.0 - self.b + self.b * lengths.astype(np.float64) / self.avgdl)

    def contrib(self, qw, w: np.ndarray, slots: np.ndarray) -> np.ndarray:
        tf = w.astype(np.float64)
        return qw * self.c * tf / (tf + self.K[slots])

    def bound(self, qw: float, max_w: float, min_len: float) -> float:
        kmin = self.k1 * (1.0 - self.b + self.b * min_len / self.avgdl)
        return qw * self.c * max_w / (max_w + kmin) if max_w + kmin > 0 else 0.0


class TextIndex:
    """Term frequencies of the memories' contents and live BM25 statistics (module docstring)."""

    def __init__(self, params: BM25Params | None = None, tokenizer: Tokenizer | None = None):
        self.params = params or BM25Params()
        self.tokenizer = tokenizer or Tokenizer()
        self.vocab: dict[str, int] = {}
        self.terms: list[str] = []
        self.arena = SparseArena(keep_lengths=True)
        self.inverted = InvertedIndex()
        self.df = np.zeros(0, np.int64)
        self.total_len = 0.0

    # -- writes -----------------------------------------------------------------------------------
    def _pack(self, contents) -> PackedSparse:
        counts = [0]
        idx_parts, tf_parts = [], []
        for text in contents:
            ids = []
            if isinstance(text, str):
                for term in self.tokenizer(text):
                    i = self.vocab.get(term)
                    if i is None:
                        i = self.vocab[term] = len(self.terms)
                        self.terms.append(term)
                    ids.append(i)
            u, c = np.unique(np.asarray(ids, np.int64), return_counts=True)
            idx_parts.append(u)
            tf_parts.append(c)
            counts.append(len(u))
        indptr = np.cumsum(counts).astype(np.int64)
        indices = np.concatenate(idx_parts).astype(np.uint32) if idx_parts else np.zeros(0, np.uint32)
        tf = np.concatenate(tf_parts).astype(np.float32) if tf_parts else np.zeros(0, np.float32)
        if len(self.df) < len(self.terms):
            self.df = np.concatenate([self.df, np.zeros(len(self.terms) - len(self.df), np.int64)])
        return PackedSparse(indptr, indices, tf)

    def set_texts(self, rows: np.ndarray, contents) -> None:
        """Index ``contents`` (one per memory of ``rows``: new memories, or updated ones)."""
        rows = np.asarray(rows, np.int64)
        self._forget(rows)
        packed = self._pack(contents)
        self.arena.append(rows, packed)
        if packed.nnz:
            self.df += np.bincount(packed.indices, minlength=len(self.df))
        self.total_len += float(packed.values.sum(dtype=np.float64))

    def delete(self, rows: np.ndarray) -> None:
        self._forget(np.asarray(rows, np.int64))

    def _forget(self, rows: np.ndarray) -> None:
        ds = self.arena.doc_slot.view()
        known = rows[rows < len(ds)]
        if not len(known):
            return
        slots = self.arena.delete_docs(known)
        if len(slots):
            _, idx, tf = self.arena.slot_rows(slots)
            self.df -= np.bincount(idx, minlength=len(self.df))
            self.total_len -= float(tf.sum(dtype=np.float64))

    # -- search -----------------------------------------------------------------------------------
    @property
    def n_docs(self) -> int:
        return self.arena.live_slots

    def stats(self, texts) -> BM25Stats:
        """This index's :class:`BM25Stats` for the terms of ``texts``."""
        ids = sorted({self.vocab[t] for text in texts for t in self.tokenizer(text) if t in self.vocab})
        return BM25Stats(self.n_docs, self.total_len,
                         {self.terms[i]: int(self.df[i]) for i in ids if self.df[i] > 0})

    def queries(self, texts, stats: BM25Stats | None = None) -> list[SparseQuery]:
        """Each text's terms known to the index, weighted by ``idf * occurrences`` (the IDF from
        ``stats`` when given: a shard of a larger collection)."""
        out = []
        n = self.n_docs if stats is None else stats.n
        for text in texts:
            ids = [self.vocab[t] for t in self.tokenizer(text) if t in self.vocab]
            u, c = np.unique(np.asarray(ids, np.int64), return_counts=True)
            if stats is None:
                df = self.df[u] if len(u) else np.zeros(0, np.int64)
            else:
                df = np.array([stats.df.get(self.terms[i], 0) for i in u.tolist()], np.int64)
            live = df > 0
            u, c, df = u[live], c[live], df[live]
            w = self.params.idf(df, n) * c if len(u) else np.zeros(0)
            pos = w > 0
            out.append(SparseQuery(u[pos].astype(np.uint32), w[pos].astype(np.float64)))
        return out

    def scorer(self, stats: BM25Stats | None = None) -> BM25Scorer:
        n, total = (self.n_docs, self.total_len) if stats is None else (stats.n, stats.total_len)
        return BM25Scorer(self.params, self.arena.slot_lengths(), total / n if n else 1.0)

    # -- persistence and accounting ---------------------------------------------------------------
    def to_arrays(self) -> dict:
        blob = "\x00".join(self.terms).encode("utf-8", "surrogatepass")
        return {"vocab": np.frombuffer(blob, np.uint8).copy(), "n_terms": np.array([len(self.terms)], np.int64),
                **self.arena.to_arrays()}

    def load_arrays(self, a: dict) -> None:
        """Restore from :meth:`to_arrays` (statistics recomputed from the live slots); ValueError
        for arrays that do not fit together."""
        n_terms = int(a["n_terms"][0])
        text = bytes(a["vocab"]).decode("utf-8", "surrogatepass")
        terms = text.split("\x00") if n_terms else []
        if len(terms) != n_terms:
            raise ValueError(f"the text vocabulary holds {len(terms)} terms, expected {n_terms}")
        arena = SparseArena.from_arrays(a, keep_lengths=True)
        idx = arena.indices.view()
        if len(idx) and int(idx.max()) >= n_terms:
            raise ValueError("the text index names a term beyond its vocabulary")
        self.terms = terms
        self.vocab = {t: i for i, t in enumerate(terms)}
        self.arena = arena
        self.inverted = InvertedIndex()
        live = np.flatnonzero(arena.dead.view() == 0)
        _, li, tf = arena.slot_rows(live)
        self.df = np.bincount(li, minlength=n_terms).astype(np.int64)
        self.total_len = float(tf.sum(dtype=np.float64))

    def vocab_bytes(self) -> int:
        """The vocabulary's Python objects: one str per term and the dict's table."""
        return sum(sys.getsizeof(t) for t in self.terms) + sys.getsizeof(self.vocab) + sys.getsizeof(self.terms)

    def memory_usage(self) -> dict:
        anon = {f"text_{k}": v.nbytes() for k, v in self.arena.columns().items() if not v.mapped}
        mapped = {f"text_{k}": v.nbytes() for k, v in self.arena.columns().items() if v.mapped}
        anon["text_postings"] = self.inverted.memory_usage("x")["anon"]["x"]
        anon["text_vocabulary"] = self.vocab_bytes()
        anon["text_df"] = int(self.df.nbytes)
        return {"anon": anon, "mapped": mapped,
                "reserved": {"text_columns": sum(v.slack() for v in self.arena.columns().values())}}
