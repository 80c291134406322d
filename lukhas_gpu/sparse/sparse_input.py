"""Sparse input checked and packed: a ``scipy.sparse`` matrix (any format; CSR is used as is) or
a sequence of ``(indices, values)`` pairs, one per memory.

The rules (each broken one is a ``TypeError`` / ``ValueError`` naming the row and the problem):
indices are integers in ``[0, 2**32 - 1)`` (stored uint32), unique within a row (a scipy matrix's
duplicates are summed, as scipy does); values are float16, float32 or float64, finite and
non-negative (SPLADE weights and term frequencies are; the pruned top-k relies on it); explicit
zeros are dropped. float16 values are kept as float16 (half the bytes), anything else becomes
float32. At most :data:`MAX_ROW_NNZ` non-zeros per row.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["PackedSparse", "pack_sparse", "SparseInputError", "MAX_ROW_NNZ", "MAX_TERM"]

#: Non-zeros one sparse vector may hold (a SPLADE document has ~100-300; a long text's term counts
#: a few thousand).
MAX_ROW_NNZ = 1 << 16
#: Indices are uint32; the largest value is reserved.
MAX_TERM = (1 << 32) - 2


class SparseInputError(ValueError):
    """A sparse vector breaks a rule; ``row`` is its row in the batch (None if not one row's)."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message)
        self.row = row


@dataclasses.dataclass
class PackedSparse:
    """Validated CSR rows: ``indptr`` (n + 1,) int64, ``indices`` uint32 (sorted within a row),
    ``values`` float32 or float16 (positive, finite)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def n(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[i], self.indptr[i + 1]
        return self.indices[a:b], self.values[a:b]

    def log_fields(self, prefix: str) -> dict:
        return {f"{prefix}_indptr": self.indptr, f"{prefix}_indices": self.indices, f"{prefix}_values": self.values}

    @classmethod
    def from_fields(cls, fields: dict, prefix: str, n: int) -> "PackedSparse | None":
        """The packed rows logged by :meth:`log_fields` (checked again), or None if absent."""
        if f"{prefix}_indptr" not in fields:
            return None
        return _checked(np.asarray(fields[f"{prefix}_indptr"]), np.asarray(fields[f"{prefix}_indices"]),
                        np.asarray(fields[f"{prefix}_values"]), n, prefix)


def pack_sparse(s, n: int, name: str = "sparse") -> PackedSparse:
    """Check ``s`` (``n`` rows) and pack it; see the module docstring for the rules."""
    if hasattr(s, "tocsr") and hasattr(s, "shape"):  # scipy.sparse, without importing scipy
        if len(s.shape) != 2 or s.shape[0] != n:
            raise ValueError(f"{name} has shape {tuple(s.shape)}, expected ({n}, vocabulary): one row per memory")
        csr = s.tocsr()
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()  # also sorts the indices
        return _checked(np.asarray(csr.indptr), np.asarray(csr.indices), np.asarray(csr.data), n, name)
    if isinstance(s, (str, bytes, dict)) or not hasattr(s, "__len__"):
        raise TypeError(f"{name} must be a scipy.sparse matrix or a sequence of (indices, values) pairs, "
                        f"got {type(s).__name__}")
    if n == 1 and isinstance(s, tuple) and len(s) == 2 and np.ndim(s[0]) == 1 and np.ndim(s[1]) == 1 \
            and len(s[0]) == len(s[1]) and not isinstance(s[0], tuple):
        s = [s]  # one memory's (indices, values)
    if len(s) != n:
        raise ValueError(f"{name} has {len(s)} rows, expected {n} (one (indices, values) pair per memory)")
    counts = np.zeros(n + 1, np.int64)
    idx_parts, val_parts = [], []
    half = True
    for i, pair in enumerate(s):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"{name}[{i}] must be an (indices, values) pair, got {type(pair).__name__}")
        idx, val = np.asarray(pair[0]), np.asarray(pair[1])
        if idx.ndim != 1 or val.ndim != 1 or len(idx) != len(val):
            raise ValueError(f"{name}[{i}]: indices {idx.shape} and values {val.shape} must be 1-D of one length")
        if len(idx) > MAX_ROW_NNZ:
            raise ValueError(f"{name}[{i}] has {len(idx):,} non-zeros; at most {MAX_ROW_NNZ:,} per vector")
        if len(idx) and idx.dtype.kind not in "iu":
            raise TypeError(f"{name}[{i}]: indices must be integers, got {idx.dtype}")
        if len(val) and val.dtype.kind != "f":
            raise TypeError(f"{name}[{i}]: values must be float16/32/64, got {val.dtype}")
        half &= val.dtype == np.float16 or not len(val)
        order = np.argsort(idx, kind="stable")
        idx_parts.append(idx[order].astype(np.int64))
        val_parts.append(val[order])
        counts[i + 1] = len(idx)
    indptr = np.cumsum(counts)
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    dtype = np.float16 if half and any(len(v) for v in val_parts) else np.float32
    values = np.concatenate([v.astype(dtype) if v.dtype != np.float16 or dtype == np.float16 else v.astype(np.float32)
                             for v in val_parts]) if val_parts else np.zeros(0, np.float32)
    return _checked(indptr, indices, values, n, name)


def _checked(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, n: int, name: str) -> PackedSparse:
    if indptr.ndim != 1 or len(indptr) != n + 1 or indptr.dtype.kind not in "iu":
        raise ValueError(f"{name}: indptr must be {n + 1} integers, got {indptr.dtype} {indptr.shape}")
    indptr = indptr.astype(np.int64)
    nnz = len(indices)
    if indptr[0] != 0 or indptr[-1] != nnz or len(values) != nnz or (np.diff(indptr) < 0).any():
        raise ValueError(f"{name}: indptr does not describe {nnz} non-zeros")
    lens = np.diff(indptr)
    if n and lens.max(initial=0) > MAX_ROW_NNZ:
        i = int(np.argmax(lens))
        raise SparseInputError(f"{name}[{i}] has {int(lens[i]):,} non-zeros; at most {MAX_ROW_NNZ:,} per vector")
    if nnz and indices.dtype.kind not in "iu":
        raise TypeError(f"{name}: indices must be integers, got {indices.dtype}")
    if nnz and values.dtype.kind != "f":
        raise TypeError(f"{name}: values must be float16/32/64, got {values.dtype}")
    idx = indices.astype(np.int64, copy=False)

    def row_of(bad: np.ndarray) -> int:
        return int(np.searchsorted(indptr, np.flatnonzero(bad)[0], side="right") - 1)

    if nnz and (idx.min() < 0 or idx.max() > MAX_TERM):
        out = (idx < 0) | (idx > MAX_TERM)
        r = row_of(out)
        raise SparseInputError(f"{name}[{r}]: index {int(idx[out][0])} is outside [0, {MAX_TERM}] (uint32)", r)
    if nnz:
        row_start = np.zeros(nnz, bool)
        row_start[indptr[:-1][lens > 0]] = True
        step = np.diff(idx)
        bad = (step <= 0) & ~row_start[1:]
        if bad.any():
            row = int(np.searchsorted(indptr, np.flatnonzero(bad)[0] + 1, side="right") - 1)
            raise SparseInputError(f"{name}[{row}]: indices must be unique within a vector (and sorted for CSR "
                                   "input)", row)
    dtype = np.float16 if values.dtype == np.float16 else np.float32
    with np.errstate(over="ignore", invalid="ignore"):
        vals = values.astype(dtype, copy=False)
    if nnz and not np.isfinite(vals).all():
        r = row_of(~np.isfinite(vals))
        raise SparseInputError(f"{name}[{r}]: values must be finite (NaN, inf, or too large for "
                               f"{np.dtype(dtype).name})", r)
    if nnz and (vals < 0).any():
        r = row_of(vals < 0)
        raise SparseInputError(f"{name}[{r}]: values must be >= 0 (non-negative weights, as SPLADE's and term "
                               "frequencies)", r)
    keep = vals != 0
    if not keep.all():  # explicit zeros dropped
        rows = np.repeat(np.arange(n), lens)
        lens = np.bincount(rows[keep], minlength=n)
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        idx, vals = idx[keep], vals[keep]
    return PackedSparse(indptr, idx.astype(np.uint32), np.ascontiguousarray(vals))
