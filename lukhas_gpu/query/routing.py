"""The search planner: how one search runs, chosen from the index's phase and the filter's width.

* ``"exact"``: an exact int8 scan (the whole store before training, or the rows a narrow filter
  allows, up to ``config.filter_exact_max``);
* ``"ann"``: IVF candidates (with an id selector for a filter, the probe count raised as the
  filter narrows), re-scored exactly;
* ``"resident"``: an exact scan of the device mirror (``gpu_resident``), filtered or not.

``MemoryIndex.last_plan`` is the plan of the last filtered search.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from pyroaring import BitMap

__all__ = ["SearchPlan", "plan_filtered", "STRATEGIES"]

STRATEGIES = ("exact", "ann", "resident")


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """How a filtered search runs: ``strategy`` (one of :data:`STRATEGIES`) over ``rows`` (sorted
    int64 row numbers allowed), their share of the live memories, and the probe count;
    ``metadata``: what a ``Filter(meta=...)`` read (``"columns"``: declared fields, ``"records"``:
    the stored records of undeclared keys, ``"columns+records"``; None without one)."""

    strategy: str
    rows: np.ndarray
    selectivity: float
    nprobe: int
    metadata: str | None = None


def plan_filtered(allowed: BitMap, *, n_live: int, trained: bool, exact_max: int, nprobe: int, nlist: int,
                  resident: bool = False) -> SearchPlan:
    """Exact scan when the subset is small (or the index untrained), else IVF with a selector.

    A selective filter leaves fewer qualifying codes per probed list, so the probe count grows as
    ``nprobe / sqrt(selectivity)`` (capped at ``nlist``): the same number of lists would return
    too few qualifying candidates. With ``resident`` the device scans any subset exactly.
    """
    rows = np.asarray(allowed.to_array(), dtype=np.int64)
    sel = len(rows) / max(n_live, 1)
    if resident:
        return SearchPlan("resident", rows, sel, 0)
    if not trained or len(rows) <= exact_max:
        return SearchPlan("exact", rows, sel, 0)
    probes = min(nlist, int(math.ceil(nprobe / math.sqrt(max(sel, 1e-9)))))
    return SearchPlan("ann", rows, sel, probes)
