"""Sparse vectors per memory (SPLADE-style, from the user's own model) and BM25 over contents.

* :mod:`.arena` -- :class:`SparseArena`: the CSR rows ("slots") of every sparse vector, append-only,
  a memory per live slot; a replaced vector gets a new slot and the old one is marked dead.
* :mod:`.inverted` -- :class:`InvertedIndex`: posting lists per term in log-structured segments
  built from the arena, with per-term bounds, and the pruned exact top-k (MaxScore).
* :mod:`.tokenize` -- the BM25 tokenizer; :mod:`.text` -- :class:`TextIndex`: vocabulary, term
  frequencies and live BM25 statistics.
* :mod:`.sparse_vectors` -- :class:`SparseVectors`: the user's vectors (arena + inverted index).
* :mod:`.sparse_input` -- sparse input (scipy CSR or ``(indices, values)`` pairs) checked and packed.

numpy only (scipy is accepted as input, never imported here).
"""
from .arena import SparseArena
from .inverted import InvertedIndex, SparseQuery
from .sparse_input import PackedSparse, pack_sparse
from .sparse_vectors import SparseVectors, as_queries
from .text import BM25Params, TextIndex
from .tokenize import Tokenizer

__all__ = ["SparseArena", "InvertedIndex", "SparseQuery", "TextIndex", "BM25Params", "Tokenizer",
           "PackedSparse", "pack_sparse", "SparseVectors", "as_queries"]
