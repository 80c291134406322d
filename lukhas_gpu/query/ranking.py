"""Memory-aware ranking: the retrieval score of the Generative Agents paper.

``score = similarity * cos(q, m) + recency * 0.5 ** (age / half_life) + importance * imp(m)``

with ``age = max(now - timestamp, 0)``. The components are not min-max normalised per query (as
the paper does): cosine is already in [-1, 1] and the two others in [0, 1], so weights keep one
meaning across queries and the score can be bounded, which is what makes the exact top-k cheap
to find (see ``MemoryIndex.search``).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import time

import numpy as np

from ..util.bounds import MAX_RANK_WEIGHT

__all__ = ["Rank", "DEFAULT_HALF_LIFE"]

#: One day, in seconds.
DEFAULT_HALF_LIFE = 86400.0


def _seconds(value, name: str) -> float:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, np.timedelta64):
        return float(value / np.timedelta64(1, "us")) / 1e6
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"Rank.{name} must be seconds or a timedelta, got {type(value).__name__}")
    return float(value)


@dataclasses.dataclass(frozen=True, init=False)
class Rank:
    """Weights of the fused retrieval score.

    Parameters
    ----------
    similarity, recency, importance : float in [0, MAX_RANK_WEIGHT]
        Weights of cosine similarity, exponential recency decay and stored importance (at most
        ``util.bounds.MAX_RANK_WEIGHT``, so float32 scores stay finite: only their ratios order).
    half_life : seconds or timedelta, default one day
        Age at which the recency term halves.
    now : epoch seconds, datetime or datetime64, optional
        The reference time; default the time of the search.
    """

    similarity: float
    recency: float
    importance: float
    half_life: float
    now: float | None

    def __init__(self, similarity: float = 1.0, recency: float = 0.0, importance: float = 0.0, *,
                 half_life=DEFAULT_HALF_LIFE, now=None):
        from ..records.metadata import to_epoch_seconds

        for name, v in (("similarity", similarity), ("recency", recency), ("importance", importance)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise TypeError(f"Rank.{name} must be a finite number, got {v!r}")
            if not 0 <= v <= MAX_RANK_WEIGHT:
                raise ValueError(f"Rank.{name} must be >= 0 and <= {MAX_RANK_WEIGHT:g} (lukhas_gpu.util.bounds."
                                 f"MAX_RANK_WEIGHT; scale the weights down, only their ratios order), got {v}")
        if similarity == recency == importance == 0:
            raise ValueError("Rank needs at least one positive weight")
        hl = _seconds(half_life, "half_life")
        if not hl > 0 or not np.isfinite(hl):
            raise ValueError(f"Rank.half_life must be positive, got {half_life!r}")
        set_ = object.__setattr__
        set_(self, "similarity", float(similarity))
        set_(self, "recency", float(recency))
        set_(self, "importance", float(importance))
        set_(self, "half_life", hl)
        set_(self, "now", None if now is None else to_epoch_seconds(now, "Rank.now"))

    @property
    def is_plain(self) -> bool:
        """Similarity only: the ordinary search, scores scaled by ``similarity``."""
        return self.recency == 0 and self.importance == 0

    def reference_time(self) -> float:
        return time.time() if self.now is None else self.now

    def prior(self, timestamps: np.ndarray, importance: np.ndarray, now: float) -> np.ndarray:
        """The query-independent part of the score, per memory: float32."""
        out = np.zeros(len(timestamps), dtype=np.float32)
        if self.recency:
            age = np.maximum(now - np.asarray(timestamps, dtype=np.float64), 0.0)
            with np.errstate(over="ignore"):  # age / half_life past float64: inf, decayed to exactly 0
                out += (self.recency * np.exp2(-age / self.half_life)).astype(np.float32)
        if self.importance:
            out += np.float32(self.importance) * np.asarray(importance, dtype=np.float32)
        return out

    def score(self, similarity: np.ndarray, prior: np.ndarray) -> np.ndarray:
        return np.float32(self.similarity) * similarity + prior
