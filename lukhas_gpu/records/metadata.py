"""Packed per-memory metadata columns: timestamp, importance, flags.

Per memory: timestamp float64 epoch seconds (8 B), importance as uint16 fixed point (2 B,
resolution 1/32768, so ``get`` returns the stored value within 1.6e-5 of what was given), flags
uint8 (1 B). With the content arena's record offset (8 B) and the tag lists' start and count
(5 B), a memory's metadata is 24 B.
"""
from __future__ import annotations

import datetime as _dt
import time

import numpy as np

from .columns import GrowableArray

__all__ = ["MetadataColumns", "to_epoch_seconds", "DEFAULT_IMPORTANCE", "FLAG_DELETED", "IMPORTANCE_SCALE"]

DEFAULT_IMPORTANCE = 0.5
FLAG_DELETED = 1
#: Importance is stored as ``round(importance * IMPORTANCE_SCALE)`` in a uint16: resolution
#: 3.1e-5, and binary fractions (0.5, 0.25, 0.125...) come back exactly.
IMPORTANCE_SCALE = 32768.0
_IMP_SCALE = IMPORTANCE_SCALE


def to_epoch_seconds(value, name: str = "timestamp") -> float:
    """One timestamp (epoch seconds int/float, ``datetime``, ``numpy.datetime64``) -> float seconds."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError(f"{name} is NaT")
        return float(value.astype("datetime64[us]").astype(np.int64)) / 1e6
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be epoch seconds, a datetime or a numpy datetime64, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def _timestamps(values, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, time.time(), dtype=np.float64)
    a = np.asarray(values)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"timestamps has {len(a) if a.ndim == 1 else a.shape} entries, expected {n} (one per memory)")
    if np.issubdtype(a.dtype, np.datetime64):
        if np.isnat(a).any():
            raise ValueError(f"timestamps contain NaT (first at index {int(np.flatnonzero(np.isnat(a))[0])})")
        return a.astype("datetime64[us]").astype(np.int64).astype(np.float64) / 1e6
    if a.dtype == object:
        return np.array([to_epoch_seconds(v, f"timestamps[{i}]") for i, v in enumerate(a)], dtype=np.float64)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"timestamps must be epoch seconds or datetime64, got dtype {a.dtype}")
    out = a.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        raise ValueError(f"timestamps must be finite (first bad at index {int(np.flatnonzero(bad)[0])})")
    return out


def _importance(values, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, DEFAULT_IMPORTANCE, dtype=np.float64)
    a = np.asarray(values)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"importance has {len(a) if a.ndim == 1 else a.shape} entries, expected {n} (one per memory)")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"importance must be floats in [0, 1], got dtype {a.dtype}")
    a = a.astype(np.float64)
    bad = ~(np.isfinite(a) & (a >= 0.0) & (a <= 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"importance must be in [0, 1]; importance[{i}] = {a[i]!r}")
    return a


class MetadataColumns:
    """Timestamp (float64 s), importance (uint16 fixed point) and flags (uint8), one row per memory."""

    def __init__(self):
        self.timestamp = GrowableArray(np.float64)
        self.importance_q = GrowableArray(np.uint16)
        self.flags = GrowableArray(np.uint8)

    def __len__(self) -> int:
        return len(self.timestamp)

    @staticmethod
    def validate(n: int, timestamps=None, importance=None) -> tuple[np.ndarray, np.ndarray]:
        """Check and convert one batch; raises before anything is stored."""
        return _timestamps(timestamps, n), _importance(importance, n)

    @staticmethod
    def quantize_importance(imp: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(imp, dtype=np.float64) * _IMP_SCALE).astype(np.uint16)

    def append(self, ts: np.ndarray, imp: np.ndarray) -> None:
        self.timestamp.append(ts)
        self.importance_q.append(self.quantize_importance(imp))
        self.flags.append(np.zeros(len(ts), dtype=np.uint8))

    def importance(self, rows=slice(None)) -> np.ndarray:
        return self.importance_q[rows].astype(np.float32) / np.float32(_IMP_SCALE)

    def min_importance_q(self, value: float) -> int:
        """Smallest stored code whose decoded importance is >= ``value``."""
        q = int(np.ceil(value * _IMP_SCALE - 1e-9))
        return max(0, min(q, int(_IMP_SCALE) + 1))

    def mark_deleted(self, rows: np.ndarray) -> None:
        self.flags[rows] = self.flags[rows] | FLAG_DELETED

    def truncate(self, n: int) -> None:
        for col in (self.timestamp, self.importance_q, self.flags):
            col.truncate(n)

    def nbytes(self) -> int:
        return self.timestamp.nbytes() + self.importance_q.nbytes() + self.flags.nbytes()

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"timestamp": self.timestamp.view().copy(), "importance_q": self.importance_q.view().copy(),
                "flags": self.flags.view().copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "MetadataColumns":
        m = cls()
        m.timestamp.append(arrays["timestamp"])
        m.importance_q.append(arrays["importance_q"])
        m.flags.append(arrays["flags"])
        return m
