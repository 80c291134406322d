"""Per-tag drift: where each tag's recent memories sit against the ones it had when its
reference was taken (``MemoryIndex.drift(by_tag=True)``).

Space: the stored vectors (the int8 rows dequantized, ``dim`` floats), not the projected one --
a retrain or a trial changes the projection, the stored rows stay.

* **Reference** of a tag: the centroid and the spread (root-mean-square distance to the
  centroid) of its newest :data:`TAG_WINDOW` live rows when it is taken, with the tag's count
  then. Taken (the index's wiring, :mod:`lukhas_gpu.index.driftwatch`): when an add or an
  update first brings a tag to :data:`TAG_MIN_COUNT` live memories (on the write path: a replay
  of the log takes the same one, so readers have it); for every tag with enough memories at
  training, at a retrain or trial that is kept (the data the index was built on is the normal
  again), and at ``drift(reset=True)``.
* **Recent**: the newest :data:`TAG_WINDOW` live rows of the tag (the top of its bitmap).
* ``shift``: ``|c_recent - c_ref| / spread_ref``. Two samples of ``n`` rows of one
  distribution differ by about ``sqrt(2 / n)`` spreads (0.09 at 256 rows), whatever the
  dimension: :data:`TAG_DRIFT_SHIFT` is three times that. ``cosine_distance`` of the two
  centroids, ``spread_ratio`` (recent / reference). ``drifted``: the shift past
  :data:`TAG_DRIFT_SHIFT`, or the spread ratio outside ``[1 / TAG_DRIFT_SPREAD, TAG_DRIFT_SPREAD]``.

State: numpy arrays of one row per tag (``tags x dim`` float32 centroids, spreads, counts) and
the tags' names; at most :data:`~lukhas_gpu.util.bounds.MAX_DRIFT_TAGS` tags.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from ..util.bounds import MAX_DRIFT_TAGS
from ..util.memory import TAG_MIN_COUNT, tag_drift_bytes

log = logging.getLogger(__name__)

__all__ = ["TagDrift", "TAG_MIN_COUNT", "TAG_WINDOW", "TAG_DRIFT_SHIFT", "TAG_DRIFT_SPREAD", "summarize"]

# TAG_MIN_COUNT (util.memory, where the planner reads it too): live memories a tag needs before
# it has a reference and a drift figure.
#: Rows of a tag a reference and the recent centroid are taken on (its newest live ones).
TAG_WINDOW = 256
#: Shift (in reference spreads) past which a tag has drifted: 3x the noise of two 256-row samples.
TAG_DRIFT_SHIFT = 0.27
#: Spread ratio (either way) past which a tag has drifted.
TAG_DRIFT_SPREAD = 1.5


def summarize(x: np.ndarray) -> tuple[np.ndarray, float]:
    """``(centroid (dim,) float32, spread)`` of rows ``x`` (n, dim): the spread is the
    root-mean-square distance of the rows to their centroid."""
    x = np.asarray(x, dtype=np.float32)
    c = x.mean(0, dtype=np.float64)
    spread = float(np.sqrt(max(((x - c) ** 2).sum(1).mean(), 0.0)))
    return c.astype(np.float32), spread


class TagDrift:
    """The per-tag references (see the module docstring) of an index of dimension ``dim``."""

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.names: list[str] = []
        self._slot: dict[str, int] = {}
        self.centroids = np.zeros((0, self.dim), dtype=np.float32)
        self.spreads = np.zeros(0, dtype=np.float32)
        self.counts = np.zeros(0, dtype=np.int64)
        self.alerted: set[str] = set()  # tags already warned about (not persisted)
        self._full_logged = False

    def __len__(self) -> int:
        return len(self.names)

    def has(self, name: str) -> bool:
        return name in self._slot

    def clear(self) -> None:
        self.__init__(self.dim)

    def set(self, name: str, x: np.ndarray, count: int) -> bool:
        """Take ``name``'s reference on its rows ``x`` (n, dim); False when the table is full."""
        c, spread = summarize(x)
        slot = self._slot.get(name)
        if slot is None:
            if len(self.names) >= MAX_DRIFT_TAGS:
                if not self._full_logged:
                    log.warning("per-tag drift follows at most %d tags (util.bounds.MAX_DRIFT_TAGS); %r and "
                                "later tags have no reference", MAX_DRIFT_TAGS, name)
                    self._full_logged = True
                return False
            slot = self._slot[name] = len(self.names)
            self.names.append(name)
            if slot >= len(self.centroids):  # grown by doubling: one copy per doubling
                cap = max(16, 2 * len(self.centroids))
                self.centroids = np.concatenate([self.centroids, np.zeros((cap - len(self.centroids), self.dim),
                                                                          np.float32)])
                self.spreads = np.concatenate([self.spreads, np.zeros(cap - len(self.spreads), np.float32)])
                self.counts = np.concatenate([self.counts, np.zeros(cap - len(self.counts), np.int64)])
        self.centroids[slot], self.spreads[slot], self.counts[slot] = c, spread, int(count)
        return True

    def compare(self, name: str, x: np.ndarray, count: int) -> dict:
        """``name``'s recent rows ``x`` against its reference: one entry of ``drift(by_tag=True)``."""
        slot = self._slot[name]
        ref, ref_spread = self.centroids[slot].astype(np.float64), float(self.spreads[slot])
        c, spread = summarize(x)
        c = c.astype(np.float64)
        dist = float(np.linalg.norm(c - ref))
        norms = float(np.linalg.norm(c) * np.linalg.norm(ref))
        shift = dist / ref_spread if ref_spread > 0 else (0.0 if dist == 0 else float("inf"))
        ratio = spread / ref_spread if ref_spread > 0 else 1.0
        drifted = shift > TAG_DRIFT_SHIFT or not 1.0 / TAG_DRIFT_SPREAD <= ratio <= TAG_DRIFT_SPREAD
        return {"count": int(count), "reference_count": int(self.counts[slot]), "recent_rows": int(len(x)),
                "shift": shift, "distance": dist, "cosine_distance": 1.0 - float(c @ ref) / norms if norms else 0.0,
                "spread": spread, "reference_spread": ref_spread, "spread_ratio": ratio, "drifted": bool(drifted)}

    def alert(self, drifted: list[str]) -> list[str]:
        """The tags of ``drifted`` not warned about yet (logged once per crossing)."""
        new = [t for t in drifted if t not in self.alerted]
        self.alerted = set(drifted)
        if new:
            log.warning("drift: tag(s) %s drifted from their reference (shift > %.2f spreads or spread x%.1f); "
                        "drift(by_tag=True) has the figures, drift(reset=True) takes the data now as the reference",
                        ", ".join(repr(t) for t in new[:20]) + (f" and {len(new) - 20} more" if len(new) > 20 else ""),
                        TAG_DRIFT_SHIFT, TAG_DRIFT_SPREAD)
        return new

    # -- bytes and persistence ---------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """The references held (the arrays' spare capacity included)."""
        spare = len(self.centroids) - len(self.names)
        return tag_drift_bytes(len(self.names), self.dim, sum(len(n) for n in self.names)) \
            + spare * (4 * self.dim + 12)

    def memory_usage(self) -> dict:
        """``tag_drift``: the references, in ``anon``."""
        return {"anon": {"tag_drift": self.nbytes()}}

    def to_arrays(self) -> dict[str, np.ndarray]:
        n = len(self.names)
        return {"names": np.frombuffer(json.dumps(self.names).encode(), dtype=np.uint8),
                "centroids": self.centroids[:n], "spreads": self.spreads[:n], "counts": self.counts[:n],
                "dim": np.array([self.dim], dtype=np.int64)}

    def load_arrays(self, a: dict[str, np.ndarray]) -> None:
        """Load what :meth:`to_arrays` gave; ValueError when the arrays do not fit together."""
        names = json.loads(np.asarray(a["names"], dtype=np.uint8).tobytes().decode())
        if not isinstance(names, list) or not all(isinstance(t, str) for t in names) or len(set(names)) != len(names):
            raise ValueError("tag drift names are not a list of distinct str")
        n = len(names)
        if n > MAX_DRIFT_TAGS:
            raise ValueError(f"tag drift holds {n} tags, at most {MAX_DRIFT_TAGS}")
        cen = np.asarray(a["centroids"], dtype=np.float32)
        if int(a["dim"][0]) != self.dim or cen.shape != (n, self.dim) or len(a["spreads"]) != n \
                or len(a["counts"]) != n:
            raise ValueError(f"tag drift arrays {cen.shape}, {len(a['spreads'])} spreads, {len(a['counts'])} counts "
                             f"for {n} tags of dim {self.dim}")
        self.clear()
        self.names = list(names)
        self._slot = {t: i for i, t in enumerate(names)}
        self.centroids = cen.copy()
        self.spreads = np.asarray(a["spreads"], dtype=np.float32).copy()
        self.counts = np.asarray(a["counts"], dtype=np.int64).copy()
