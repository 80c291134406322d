"""GPU-resident vectors: the store's int8 search codes held on the device and scanned exactly.

A GPU inference server that keeps a store of a few million memories can hold all of its
projected int8 codes on the GPU (512 B per memory at ``dim_out = 512``: 1M memories take 0.5 GB)
and answer every query by an exact int8 scan there, with no IVF approximation and no copy of the
vectors per query. :class:`DeviceMirror` is that mirror: an ``(capacity, dim_out)`` int8 tensor
on the device, grown geometrically like :class:`~lukhas_gpu.vectors.store.VectorStore`, plus a boolean
tombstone per row, so deletes never touch the host. The host store stays the source of truth
(durable, memory-mapped, what checkpoints write); the mirror is rebuilt from it whenever the codes
change meaning (scales widened, projection refitted, store reopened).

It is device-agnostic: on the CPU backend (``gpu_resident="on"``) it is a second copy in RAM,
which exists so that the resident path is tested where no GPU is.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["DeviceMirror"]

_GROWTH = 2.0
_MIN_CAPACITY = 4096


class DeviceMirror:
    """Append-only ``(n, dim)`` int8 rows and their tombstones on one torch device."""

    def __init__(self, dim: int, device: torch.device | str, capacity: int = 0):
        self.dim = int(dim)
        self.device = torch.device(device)
        self._n = 0
        cap = max(int(capacity), 1)
        self._rows = torch.empty((cap, self.dim), dtype=torch.int8, device=self.device)
        self._dead = torch.zeros(cap, dtype=torch.bool, device=self.device)
        self.any_dead = False

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return int(self._rows.shape[0])

    @property
    def rows(self) -> torch.Tensor:
        """A view of the rows written, ``(n, dim)`` int8 on the device."""
        return self._rows[: self._n]

    @property
    def dead(self) -> torch.Tensor | None:
        """``(n,)`` bool tombstones, or ``None`` while nothing is deleted (scans skip the mask)."""
        return self._dead[: self._n] if self.any_dead else None

    def reserve(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        rows = torch.empty((capacity, self.dim), dtype=torch.int8, device=self.device)
        dead = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        rows[: self._n] = self._rows[: self._n]
        dead[: self._n] = self._dead[: self._n]
        self._rows, self._dead = rows, dead

    def append(self, codes: torch.Tensor) -> None:
        """Append ``(m, dim)`` int8 codes (any device; moved here)."""
        if codes.ndim != 2 or codes.shape[1] != self.dim or codes.dtype != torch.int8:
            raise ValueError(f"resident codes must be (m, {self.dim}) int8, got {tuple(codes.shape)} {codes.dtype}")
        stop = self._n + codes.shape[0]
        if stop > self.capacity:
            self.reserve(max(stop, int(self.capacity * _GROWTH), _MIN_CAPACITY))
        self._rows[self._n: stop] = codes.to(self.device, non_blocking=True)
        self._n = stop

    def delete(self, rows: np.ndarray) -> None:
        """Mark row numbers (< ``len(self)``) dead."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows):
            self._dead[torch.from_numpy(rows).to(self.device)] = True
            self.any_dead = True

    def nbytes(self) -> int:
        """Bytes allocated on the device (capacity, not only the rows written: a CUDA allocation
        is resident whether written or not)."""
        return self.capacity * (self.dim + 1)

    def memory_usage(self) -> dict:
        """``resident_vectors``: the whole allocation (device memory is held whether written or
        not), under ``gpu`` on CUDA, else ``anon``."""
        return {"gpu" if self.device.type == "cuda" else "anon": {"resident_vectors": self.nbytes()}}
