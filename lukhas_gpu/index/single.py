"""One query per call, as a server's workers send them: the lean route of ``MemoryIndex.search``.

A plain search (no filter, namespace, ``as_of``, rank, diversity, links, hybrid part or fixed
parameter) of one float32 numpy query on the host, of a store with no validity window and no
device mirror, once the process's first search is measured (``util.runtime``), is served here:
the same checks and the same numbers as the general route (``tests/test_single.py`` holds them
equal, deletions included), without its per-call torch tensors, ``Filter`` and clock read, and
with the probe's one-row draw. Anything else returns None and takes the general route, which
also names every bad input.
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

__all__ = ["ENABLED", "search_one"]

#: The facade serves plain single queries here when True (benchmarks switch it off to measure
#: the general route in the same run).
ENABLED = True


def _plain(options: tuple, diversity, follow_links) -> bool:
    """No keyword of the call asks for more than a plain similarity search."""
    return all(o is None for o in options) and type(diversity) in (int, float) and diversity == 0 \
        and type(follow_links) is int and follow_links == 0


def _one_row(index, queries) -> tuple[np.ndarray, bool] | None:
    """``queries`` as a (1, dim) float32 row and whether it was 1-D, or None when the general
    route must see it (another kind or dtype, a batch, NaN/inf, a zero vector under cosine)."""
    if type(queries) is not np.ndarray or queries.dtype != np.float32:
        return None
    if queries.shape == (index.dim,):
        x, single = queries.reshape(1, -1), True
    elif queries.shape == (1, index.dim):
        x, single = queries, False
    else:
        return None
    x = np.ascontiguousarray(x)
    sq = float(np.dot(x[0], x[0]))  # NaN or inf for a NaN or inf; 0 for a zero vector
    if not (0.0 < sq < math.inf or (sq == 0.0 and index.config.metric != "cosine")):
        return None  # (also an overflow of the square or an underflow: the general route sees them)
    return x, single


def search_one(index, queries, k, options: tuple, diversity, follow_links) -> SearchResult | None:
    """The general route's result for a plain one-query search, or None where that route serves.

    ``options``: the call's ``where, rank, nprobe, rerank, target_recall, text, sparse, fusion,
    namespace, as_of`` (all None for this route)."""
    if not ENABLED or not _plain(options, diversity, follow_links):
        return None
    parts, cfg = index.parts, index.config
    if parts.mirror_wanted or parts.mirror is not None or parts.validity.windowed \
            or parts.encoder.device.type != "cpu" or not runtime.done("search"):
        return None
    row = _one_row(index, queries)
    if row is None:
        return None
    x, single = row
    s = executor.Search(k=check_queries(1, k), exact_max=cfg.filter_exact_max, cosine=cfg.metric == "cosine",
                        **tuning.search_params(index, None, None, None))
    forms = parts.encoder.one_query_forms(x)  # once, for the probe's sample and the search
    parts.probe.queries.offer(x, transform=lambda _row: forms[0])
    scores, ids = executor.similar_one(parts, x, s, forms)
    maybe_trim(every=TRIM_SEARCH_EVERY_S)
    if cfg.target_recall is not None:
        tuning.maybe_retune(index)
    if single:
        ids, scores = ids[0], scores[0]
    return SearchResult(ids=ids, scores=scores, _index_ref=weakref.ref(index))
