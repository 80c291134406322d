"""The search planner: how one search runs, chosen from the index's phase and the filter's width.

* ``"exact"``: an exact int8 scan (the whole store before training, or the rows a narrow filter
  allows, up to ``config.filter_exact_max``);
* ``"ann"``: IVF candidates (with an id selector for a filter, the probe count raised as the
  filter narrows), re-scored exactly. The selector names the allowed rows, or, when they are most
  of the store (:data:`EXCLUDE_ABOVE`), the rows outside them (the deleted ones among them), the
  way an unfiltered search excludes the tombstones: what it costs then follows the few rows left
  out, not the many allowed;
* ``"resident"``: an exact scan of the device mirror (``gpu_resident``), filtered or not.

``MemoryIndex.last_plan`` is the plan of the last filtered search.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from pyroaring import BitMap

from ..records.tombstones import Tombstones

__all__ = ["SearchPlan", "plan_filtered", "STRATEGIES", "EXCLUDE_ABOVE"]

STRATEGIES = ("exact", "ann", "resident")

#: Share of the store's rows (deleted ones included) above which an IVF search names the rows it
#: excludes rather than those it allows (the fewer of the two).
EXCLUDE_ABOVE = 0.5


@dataclasses.dataclass(frozen=True, eq=False)
class SearchPlan:
    """How a filtered search runs: ``strategy`` (one of :data:`STRATEGIES`) over the ``allowed``
    rows (``rows``: the same, sorted int64, made on first use), their share of the live memories,
    and the probe count; ``excluded``: for an ``"ann"`` plan over most of the store, every other
    row (deleted ones included) as a :class:`~lukhas_gpu.records.tombstones.Tombstones`-like set
    the IVF search leaves out (None: the search names the allowed rows); ``metadata``: what a
    ``Filter(meta=...)`` read (``"columns"``: declared fields, ``"records"``: the stored records
    of undeclared keys, ``"columns+records"``; None without one)."""

    strategy: str
    allowed: BitMap
    selectivity: float
    nprobe: int
    metadata: str | None = None
    excluded: Tombstones | None = None

    @functools.cached_property
    def rows(self) -> np.ndarray:
        return np.asarray(self.allowed.to_array(), dtype=np.int64)


def plan_filtered(allowed: BitMap, *, n_live: int, trained: bool, exact_max: int, nprobe: int, nlist: int,
                  resident: bool = False, n_rows: int = 0) -> SearchPlan:
    """Exact scan when the subset is small (or the index untrained), else IVF with a selector.

    A selective filter leaves fewer qualifying codes per probed list, so the probe count grows as
    ``nprobe / sqrt(selectivity)`` (capped at ``nlist``): the same number of lists would return
    too few qualifying candidates. With ``resident`` the device scans any subset exactly.
    ``n_rows``: the store's rows, deleted ones included (the complement of ``allowed`` is taken
    in ``range(n_rows)``).
    """
    n = len(allowed)
    sel = n / max(n_live, 1)
    if resident:
        return SearchPlan("resident", allowed, sel, 0)
    if not trained or n <= exact_max:
        return SearchPlan("exact", allowed, sel, 0)
    probes = min(nlist, int(math.ceil(nprobe / math.sqrt(max(sel, 1e-9)))))
    excluded = None
    if n > EXCLUDE_ABOVE * n_rows:
        excluded = Tombstones(BitMap(range(n_rows)) - allowed)  # a range: containers, not rows
    return SearchPlan("ann", allowed, sel, probes, excluded=excluded)
