"""Packed per-memory metadata columns: timestamp, importance, flags.

Per memory: timestamp float64 epoch seconds (8 B), importance as uint16 fixed point (2 B,
resolution 1/32768, so ``get`` returns the stored value within 1.6e-5 of what was given), flags
uint8 (1 B). With the content arena's record offset (8 B) and the tag lists' start and count
(5 B), a memory's metadata is 24 B.
"""
from __future__ import annotations

import numpy as np

from ..util.memory import NPZ_MEMBER_BYTES
from .columns import GrowableArray
from .validate import DEFAULT_IMPORTANCE, IMPORTANCE_SCALE, to_epoch_seconds, validate_importance, validate_timestamps

__all__ = ["MetadataColumns", "planned_bytes", "to_epoch_seconds", "DEFAULT_IMPORTANCE", "IMPORTANCE_SCALE"]


class MetadataColumns:
    """Timestamp (float64 s), importance (uint16 fixed point) and flags (uint8), one row per memory.

    The flags byte is reserved (written as 0, saved and loaded): deletions are the index's
    tombstone bitmap, not a flag.
    """

    def __init__(self):
        self.timestamp = GrowableArray(np.float64)
        self.importance_q = GrowableArray(np.uint16)
        self.flags = GrowableArray(np.uint8)

    def __len__(self) -> int:
        return len(self.timestamp)

    @staticmethod
    def validate(n: int, timestamps=None, importance=None) -> tuple[np.ndarray, np.ndarray]:
        """Check and convert one batch; raises before anything is stored (see
        :func:`~lukhas_gpu.records.validate.validate_timestamps` and
        :func:`~lukhas_gpu.records.validate.validate_importance`)."""
        return validate_timestamps(timestamps, n), validate_importance(importance, n)

    @staticmethod
    def quantize_importance(imp: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(imp, dtype=np.float64) * IMPORTANCE_SCALE).astype(np.uint16)

    def append(self, ts: np.ndarray, imp: np.ndarray) -> None:
        self.timestamp.append(ts)
        self.importance_q.append(self.quantize_importance(imp))
        self.flags.append(np.zeros(len(ts), dtype=np.uint8))

    def importance(self, rows=slice(None)) -> np.ndarray:
        return self.importance_q[rows].astype(np.float32) / np.float32(IMPORTANCE_SCALE)

    def min_importance_q(self, value: float) -> int:
        """Smallest stored code whose decoded importance is >= ``value``."""
        q = int(np.ceil(value * IMPORTANCE_SCALE - 1e-9))
        return max(0, min(q, int(IMPORTANCE_SCALE) + 1))

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self._columns())

    def _columns(self) -> tuple[GrowableArray, ...]:
        return self.timestamp, self.importance_q, self.flags

    def memory_usage(self) -> dict:
        """``metadata`` (the rows written, 11 B each) in ``anon``; the columns' unwritten
        capacity in ``reserved`` (see :mod:`lukhas_gpu.util.memory` for the contract)."""
        return {"anon": {"metadata": self.nbytes()},
                "reserved": {"metadata": sum(c.slack_bytes() for c in self._columns())}}

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


def planned_bytes(count: int) -> dict:
    """The bytes of :class:`MetadataColumns` holding ``count`` rows (11 B each: timestamp,
    importance, flags), as its ``memory_usage()`` names them, plus ``disk`` (three arrays)."""
    return {"anon": {"metadata": 11 * count}, "disk": {"metadata": 11 * count + 3 * NPZ_MEMBER_BYTES}}
