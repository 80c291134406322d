"""Plain numpy searches, as a server's workers send them: the lean route of ``MemoryIndex.search``.

A plain search (no filter, namespace, ``as_of``, rank, diversity, links, hybrid part or fixed
parameter) of float32 numpy queries on the host -- one, or a batch such as a server's merged
requests -- of a store with no validity window and no device mirror, once the process's first
search is measured (``util.runtime``), is served here: the same checks and the same numbers as
the general route (``tests/test_single.py`` holds them equal, deletions included), in numpy from
end to end, without the general route's torch tensors, ``Filter`` and clock read (per call, most
of a small batch's time but FAISS's: WordNet 50k, 4 queries a call, 2026-12-08). Anything else
returns None and takes the general route, which also names every bad input.
"""
from __future__ import annotations

import math
import weakref

import numpy as np

from ..query import executor
from ..util import runtime
from ..util.checks import check_queries
from ..util.memtrim import TRIM_SEARCH_EVERY_S, maybe_trim
from . import tuning
from .results import SearchResult

__all__ = ["ENABLED", "search_plain"]

#: The facade serves plain numpy searches here when True (benchmarks switch it off to measure
#: the general route in the same run).
ENABLED = True


def _plain(options: tuple, diversity, follow_links) -> bool:
    """No keyword of the call asks for more than a plain similarity search."""
    return all(o is None for o in options) and type(diversity) in (int, float) and diversity == 0 \
        and type(follow_links) is int and follow_links == 0


def _rows(index, queries) -> tuple[np.ndarray, bool] | None:
    """``queries`` as (n, dim) float32 rows and whether they were one 1-D vector, or None when the
    general route must see them (another kind or dtype, NaN/inf, a zero vector under cosine, an
    empty batch; ``check_queries`` bounds its length as the general route does)."""
    if type(queries) is not np.ndarray or queries.dtype != np.float32:
        return None
    if queries.shape == (index.dim,):
        x, single = queries.reshape(1, -1), True
    elif queries.ndim == 2 and queries.shape[1] == index.dim and queries.shape[0] > 0:
        x, single = queries, False
    else:
        return None
    x = np.ascontiguousarray(x)
    # NaN or inf for a NaN or inf; 0 for a zero vector (an overflow or underflow of the square
    # goes to the general route too, which names it or serves it)
    cosine = index.config.metric == "cosine"
    if len(x) == 1:
        sq = float(np.dot(x[0], x[0]))
        return (x, single) if (0.0 < sq < math.inf or (sq == 0.0 and not cosine)) else None
    sq = np.einsum("ij,ij->i", x, x)
    return (x, single) if np.all(((sq > 0.0) if cosine else (sq >= 0.0)) & (sq < math.inf)) else None


def search_plain(index, queries, k, options: tuple, diversity, follow_links) -> SearchResult | None:
    """The general route's result for a plain search of float32 numpy queries, or None where that
    route serves.

    ``options``: the call's ``where, rank, nprobe, rerank, target_recall, text, sparse, fusion,
    namespace, as_of`` (all None for this route)."""
    if not ENABLED or not _plain(options, diversity, follow_links):
        return None
    parts, cfg = index.parts, index.config
    if parts.mirror_wanted or parts.mirror is not None or parts.validity.windowed \
            or parts.encoder.device.type != "cpu" or not runtime.done("search"):
        return None
    got = _rows(index, queries)
    if got is None:
        return None
    x, single = got
    s = executor.Search(k=check_queries(len(x), k), exact_max=cfg.filter_exact_max, cosine=cfg.metric == "cosine",
                        **tuning.search_params(index, None, None, None))
    # once, for the probe's sample and the search (projected where the candidates come from the IVF)
    forms = parts.encoder.host_query_forms(x, project=parts.ann is not None and not s.exact)
    parts.probe.queries.offer(forms[0])
    scores, ids = executor.similar_plain(parts, x, s, forms)
    maybe_trim(every=TRIM_SEARCH_EVERY_S)
    if cfg.target_recall is not None:
        tuning.maybe_retune(index)
    if single:
        ids, scores = ids[0], scores[0]
    return SearchResult(ids=ids, scores=scores, _index_ref=weakref.ref(index))
