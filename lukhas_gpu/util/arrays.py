"""Validation and conversion of arrays at the public boundary.

Arrays in: ``(n, d)`` float (numpy or torch, CPU or CUDA); a 1-D vector is a batch of one. Arrays
out follow the input's kind and device (:class:`ArrayKind`).
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

_FLOAT_NP = (np.float16, np.float32, np.float64)
_FLOAT_TORCH = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class ArrayKind:
    """What the caller passed: ``numpy`` or ``torch`` (with its device), and whether 1-D."""

    is_torch: bool
    device: torch.device | None
    single: bool

    def out(self, a):
        """``a`` (a numpy array or torch tensor) in the caller's kind and device, unwrapped for a
        1-D input."""
        if self.is_torch:
            t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            t = t.to(self.device)
        else:
            t = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
        return t[0] if self.single else t


def as_batch(x, dim: int | None, name: str = "embeddings") -> tuple[torch.Tensor, ArrayKind]:
    """Validate ``x`` and return it as a 2-D float torch tensor (on its own device).

    Raises
    ------
    TypeError
        ``x`` is not a numpy array / torch tensor / nested list of floats, or has a non-float dtype.
    ValueError
        Wrong rank or dimension, an empty batch, NaN or infinity.
    """
    if isinstance(x, torch.Tensor):
        if x.dtype not in _FLOAT_TORCH:
            raise TypeError(f"{name} must have a floating dtype, got torch {x.dtype}")
        t, is_torch, device = x.detach(), True, x.device
    else:
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
        if x.dtype not in _FLOAT_NP:
            raise TypeError(f"{name} must have a floating dtype (float16/32/64), got {x.dtype}")
        a = np.ascontiguousarray(x)
        if not a.flags.writeable:  # a read-only view (a request body, a mapped file): torch wants to own a copy
            a = a.copy()
        t, is_torch, device = torch.from_numpy(a), False, None
    if t.ndim == 1:
        t, single = t.unsqueeze(0), True
    elif t.ndim == 2:
        single = False
    else:
        raise ValueError(f"{name} must be 1-D (one vector) or 2-D (n, d), got shape {tuple(t.shape)}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{name} have dimension {t.shape[1]}, expected {dim}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(t.shape)})")
    if t.shape[1] == 0:
        raise ValueError(f"{name} have dimension 0")
    cpu = t.device.type == "cpu" and t.dtype != torch.bfloat16  # numpy checks: no torch dispatch per call
    finite = torch.isfinite(t).all(dim=1) if not cpu or not np.isfinite(t.numpy()).all() else None
    if finite is not None and not bool(finite.all()):
        bad = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"{name} contain NaN or infinity (first at row {bad})")
    if t.dtype == torch.float64 and not (cpu and np.abs(t.numpy()).max() <= np.finfo(np.float32).max):
        big = (t.abs() > torch.finfo(torch.float32).max).any(dim=1)
        if bool(big.any()):
            bad = int(torch.nonzero(big)[0, 0])
            raise ValueError(f"{name} contain values beyond the float32 range (first at row {bad})")
    return t, ArrayKind(is_torch, device, single)


def check_nonzero(t: torch.Tensor, name: str) -> None:
    """Cosine similarity is undefined for a zero vector: reject it rather than store zeros."""
    if t.device.type == "cpu" and t.dtype != torch.bfloat16 and not t.requires_grad and t.numpy().any(axis=1).all():
        return  # numpy: no torch dispatch for the common case
    zero = (t == 0).all(dim=1)
    if bool(zero.any()):
        bad = int(torch.nonzero(zero)[0, 0])
        raise ValueError(f"{name} contain an all-zero vector (row {bad}), which has no direction "
                         "for metric='cosine'")


def tensor_view(a: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` of a contiguous copy-free view that also takes read-only arrays (a
    store opened read-only maps its rows read-only); the tensors made here are only ever read."""
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)
