"""The encoder: a torch module fitted on a sample, then applied to batches on CPU or CUDA.

Two outputs per vector:

* ``quantize``: the (normalised) vector at full dimension as int8 with per-dimension scales --
  the rerank / exact-scan representation (``D`` bytes). ``dequantize`` inverts it.
* ``project``: the vector projected to ``dim_out`` dimensions (uncentred PCA, i.e. the top
  eigenvectors of the second-moment matrix, which preserves inner products best) and
  renormalised -- the space the ANN codes live in.
* ``encode_resident``: the projected vector as int8 (``dim_out`` bytes) with per-dimension scales
  of its own -- what a GPU-resident store scans exactly (see :mod:`lukhas_gpu.resident`). Without
  a projection (``dim_out == D``) it is ``quantize`` itself.

The quantizer is fitted from the first batch the index sees; the projection from the IVF training
sample. Both are plain buffers, so ``state_dict`` round-trips the encoder.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .policy import dim_out_for

log = logging.getLogger(__name__)

__all__ = ["Encoder"]

_TINY = float(np.finfo(np.float32).tiny)
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's eps


class Encoder(torch.nn.Module):
    """Normalise, project D -> d and quantize to int8, in bounded-memory chunks.

    Parameters
    ----------
    dim : int
        Input dimension D.
    dim_out : int, optional
        Projected dimension d (``None``: ``policy.dim_out_for(D)``, at most ``util.bounds.MAX_DIM_OUT``).
        ``d == D`` means no projection.
    metric : {"cosine", "ip"}
        ``cosine`` L2-normalises inputs (and the projected vectors).
    quantile : float
        Fraction of ``|x_j|`` in the fitting sample that the int8 scale of dimension j covers.
    batch_size : int
        Rows per chunk; bounds temporary memory for any input size.
    """

    def __init__(self, dim: int, *, dim_out: int | None = None, metric: str = "cosine",
                 quantile: float = 0.9999, batch_size: int = 65536):
        super().__init__()
        d = dim_out_for(dim) if dim_out is None else int(dim_out)
        if not 0 < d <= dim:
            raise ValueError(f"dim_out must be in [1, {dim}], got {d}")
        self.dim, self.dim_out, self.metric = int(dim), d, metric
        self.quantile, self.batch_size = float(quantile), int(batch_size)
        self.register_buffer("scale", torch.ones(dim, dtype=torch.float32))
        self.register_buffer("components", torch.eye(d, dim, dtype=torch.float32) if d < dim else torch.empty(0, dim))
        self.register_buffer("fitted", torch.zeros(2, dtype=torch.bool))  # (quantizer, projection)
        # int8 scales of the projected space (zeros until fitted; unused without a projection)
        self.register_buffer("proj_scale", torch.zeros(d if d < dim else 0, dtype=torch.float32))
        self._np_views = None  # (buffers, their numpy views, addresses): query_forms_np's

    # -- state --------------------------------------------------------------------------------
    @property
    def projects(self) -> bool:
        return self.dim_out < self.dim

    @property
    def quantizer_fitted(self) -> bool:
        return bool(self.fitted[0])

    @property
    def projection_fitted(self) -> bool:
        return bool(self.fitted[1]) or not self.projects

    @property
    def resident_fitted(self) -> bool:
        """Whether :meth:`encode_resident` can run (the projected space's int8 scales exist)."""
        if not self.projects:
            return self.quantizer_fitted
        return self.projection_fitted and bool((self.proj_scale > 0).all())

    @property
    def resident_scale(self) -> torch.Tensor:
        return self.proj_scale if self.projects else self.scale

    @property
    def device(self) -> torch.device:
        return self.scale.device

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def memory_usage(self) -> dict:
        """``encoder`` (its buffers) on the GPU when the encoder is on CUDA, else in ``anon``."""
        return {"gpu" if self.device.type == "cuda" else "anon": {"encoder": self.nbytes()}}

    # -- fitting ------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, sample, *, projection: bool = True) -> "Encoder":
        """Fit the int8 scales (and, if ``projection`` and d < D, the PCA) on ``sample`` (n, D)."""
        self.fit_quantizer(sample)
        if projection and self.projects:
            self.fit_projection(sample)
        return self

    @torch.no_grad()
    def fit_quantizer(self, sample) -> None:
        self.scale.copy_(self._int8_scale(self.normalize(sample)).to(self.scale))
        self.fitted[0] = True

    def _int8_scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-dimension int8 step covering ``quantile`` of ``|x|`` (widened for tiny samples)."""
        a = x.abs()
        if a.shape[0] > 1 and self.quantile < 1.0:
            # kthvalue, not quantile(): torch.quantile refuses inputs above 16M elements
            kth = max(1, min(a.shape[0], int(np.ceil(self.quantile * a.shape[0]))))
            s = a.kthvalue(kth, dim=0).values
        else:
            s = a.max(dim=0).values
        # a small first batch under-estimates the range: widen it, bounded by the unit norm
        if a.shape[0] < 1000:
            s = s * (1.0 + 1.0 / np.sqrt(a.shape[0]))
            if self.metric == "cosine":
                s = s.clamp(max=1.0)
        s = torch.where(s > 0, s, torch.full_like(s, 1e-6))
        return s / 127.0

    @torch.no_grad()
    def fit_projection(self, sample) -> None:
        if not self.projects:
            return
        x = self.normalize(sample).to(torch.float64)
        if x.shape[0] < self.dim_out:
            raise ValueError(f"projection to {self.dim_out} dims needs at least {self.dim_out} sample rows, "
                             f"got {x.shape[0]}")
        cov = x.T @ x / x.shape[0]  # uncentred: keeps inner products, not distances to the mean
        evals, evecs = torch.linalg.eigh(cov)
        top = evecs[:, torch.argsort(evals, descending=True)[: self.dim_out]]
        self.components.copy_(top.T.to(torch.float32))
        self.fitted[1] = True
        self.fit_resident(sample)
        kept = float(evals.sort(descending=True).values[: self.dim_out].sum() / evals.sum())
        log.info("projection %d -> %d keeps %.1f%% of the energy", self.dim, self.dim_out, 100 * kept)

    @torch.no_grad()
    def fit_resident(self, sample) -> None:
        """Fit the projected space's int8 scales on ``sample`` (n, D) (a no-op without a projection)."""
        if self.projects and self.projection_fitted:
            y = torch.cat([self._project_chunk(self._normalize_chunk(c)) for c in self._chunks(sample)])
            self.proj_scale.copy_(self._int8_scale(y).to(self.proj_scale))

    # -- transforms ---------------------------------------------------------------------------
    def _chunks(self, x):
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        if t.ndim == 1:
            t = t.unsqueeze(0)
        for i in range(0, t.shape[0], self.batch_size):
            yield t[i: i + self.batch_size].to(self.device, torch.float32, non_blocking=True)

    def _normalize_chunk(self, x: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            # divide by the largest component first: the norm of finite float32 rows such as
            # 1e20 would overflow to inf and turn the row into zeros
            x = x / x.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            x = torch.nn.functional.normalize(x, dim=1)
        return x

    @torch.no_grad()
    def normalize(self, x) -> torch.Tensor:
        """(n, D) -> (n, D) float32 on the encoder's device, unit-norm for ``cosine``."""
        return torch.cat([self._normalize_chunk(c) for c in self._chunks(x)])

    def normalized_queries(self, q: torch.Tensor) -> np.ndarray:
        """:meth:`normalize` of queries as float32 numpy (the probe's sample of them): numpy's
        twin of the rule on the CPU (:meth:`_numpy_turn`), else torch's."""
        if self._numpy_turn(q):  # a tensor, or numpy rows
            return self._normalize_np(np.asarray(q.numpy() if isinstance(q, torch.Tensor) else q, dtype=np.float32))
        return self.normalize(q).cpu().numpy()

    def _numpy_turn(self, x) -> bool:
        """Queries on the CPU for a CPU encoder: their forms are numpy's, whatever their count.
        One query through torch pays ~15 dispatches of 5-20 us (numpy: ~15 us in all); a batch
        through torch opens an OpenMP region whose threads then spin beside FAISS's own (two
        OpenMP runtimes on the cores): Debian 50k, 1,000 queries a call, batched QPS against
        hnswlib's in 4 alternating pairs of runs 1.97-2.38x with numpy's forms, 1.71-2.26x with
        torch's (2026-12-07)."""
        cpu = not isinstance(x, torch.Tensor) or (x.device.type == "cpu" and not x.requires_grad
                                                   and x.dtype != torch.bfloat16)  # numpy has no bfloat16
        return cpu and self.device.type == "cpu"

    def _quantize_chunk(self, xn: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return torch.round(xn / (self.scale if scale is None else scale)).clamp_(-127, 127).to(torch.int8)

    def _project_chunk(self, xn: torch.Tensor) -> torch.Tensor:
        if not self.projects:
            return xn
        y = xn @ self.components.T
        return torch.nn.functional.normalize(y, dim=1) if self.metric == "cosine" else y

    @torch.no_grad()
    def quantize(self, x) -> torch.Tensor:
        """(n, D) float -> (n, D) int8 codes (full dimension), on the encoder's device."""
        self._need_quantizer()
        return torch.cat([self._quantize_chunk(self._normalize_chunk(c)) for c in self._chunks(x)])

    @torch.no_grad()
    def dequantize(self, codes) -> torch.Tensor:
        """(n, D) int8 -> (n, D) float32: ``codes * scale``."""
        c = codes if isinstance(codes, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(codes))
        return c.to(self.device, torch.float32) * self.scale

    @torch.no_grad()
    def project(self, x) -> torch.Tensor:
        """(n, D) float -> (n, d) float32 in the ANN space."""
        if self.projects and not self.projection_fitted:
            raise RuntimeError("the projection is not fitted yet (call fit or fit_projection)")
        return torch.cat([self._project_chunk(self._normalize_chunk(c)) for c in self._chunks(x)])

    @torch.no_grad()
    def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) -> (int8 codes (n, D), projected float32 (n, d)) in one pass over the input."""
        self._need_quantizer()
        codes, proj = [], []
        for c in self._chunks(x):
            xn = self._normalize_chunk(c)
            codes.append(self._quantize_chunk(xn))
            proj.append(self._project_chunk(xn))
        return torch.cat(codes), torch.cat(proj)

    @torch.no_grad()
    def encode_resident(self, x) -> torch.Tensor:
        """(n, D) float -> (n, dim_out) int8: projected, then quantized with the projected scales.

        The GPU-resident representation (``quantize`` itself when there is no projection). One
        pass per chunk: normalise, one GEMM, round; inputs already on the device stay there.
        """
        self._need_resident()
        out = []
        for c in self._chunks(x):
            xn = self._normalize_chunk(c)
            out.append(self._quantize_chunk(self._project_chunk(xn), self.resident_scale))
        return torch.cat(out)

    @torch.no_grad()
    def resident_from(self, codes: torch.Tensor, proj: torch.Tensor | None = None) -> torch.Tensor:
        """Resident codes of rows already encoded: ``codes`` (n, D) int8 as stored, or their
        projection ``proj`` (n, dim_out) float when it is at hand (as in ``add``)."""
        self._need_resident()
        if not self.projects:
            return codes.to(self.device)
        y = proj.to(self.device) if proj is not None else self.project(self.dequantize(codes))
        return self._quantize_chunk(y, self.proj_scale)

    def resident_query_weights(self, q: torch.Tensor) -> torch.Tensor:
        """Queries in the resident space folded with its scales: ``qr @ resident.T`` ~ ``q . x``."""
        qn = self._normalize_chunk(q.to(self.device, torch.float32))
        return self._project_chunk(qn) * self.resident_scale

    def _normalize_np(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_normalize_chunk` in numpy (float32 in, float32 out): the same rule, tested equal."""
        if self.metric != "cosine":
            return x
        return self._normalize_np_l2(x / np.maximum(np.abs(x).max(axis=1, keepdims=True), np.float32(_TINY)))

    @torch.no_grad()
    def query_forms(self, q: torch.Tensor, *, project: bool = True) -> tuple[torch.Tensor, np.ndarray | None]:
        """A query batch's weights (:meth:`query_weights`) and, with ``project``, its projection
        (:meth:`project`, float32 numpy): one normalisation for both. A CPU encoder computes them
        in numpy (:meth:`_numpy_turn`), a device encoder through torch."""
        if not self._numpy_turn(q):
            return self.query_weights(q), self.project(q).cpu().numpy() if project else None
        qw, qp = self.query_forms_np(np.asarray(q.numpy(), dtype=np.float32), project=project)
        return torch.from_numpy(qw), qp

    def query_forms_np(self, x: np.ndarray, *, project: bool = True,
                       normalized: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`query_forms` of float32 numpy rows on a CPU encoder, both forms numpy (the
        lean route's; the same numbers); ``normalized``: :meth:`normalized_queries` of ``x``
        when the caller has it."""
        scale, components, fitted = self._numpy_views()
        if project and self.projects and not fitted[1]:
            raise RuntimeError("the projection is not fitted yet (call fit or fit_projection)")
        xn = self._normalize_np(x) if normalized is None else normalized
        qw = xn * scale
        if not project:
            return qw, None
        if not self.projects:
            return qw, xn
        y = xn @ components
        return qw, self._normalize_np_l2(y) if self.metric == "cosine" else y

    def host_query_forms(self, x: np.ndarray, *, project: bool = True) -> tuple[np.ndarray, np.ndarray,
                                                                                np.ndarray | None]:
        """``(normalized, weights, projected)`` of float32 (n, D) numpy rows on a CPU encoder
        (:meth:`normalized_queries` and :meth:`query_forms_np` without their dispatch)."""
        xn = self._normalize_np(x)
        return (xn, *self.query_forms_np(x, project=project, normalized=xn))

    def _numpy_views(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """numpy views of the scales, the projection's transpose and the fitted flags (their memory:
        a fit's in-place copy shows), rebuilt when a buffer is replaced or copied (``to``, a deep
        copy: another address): no tensor-to-numpy conversion per query."""
        s, c, f = self.scale, self.components, self.fitted
        at = (s.data_ptr(), c.data_ptr(), f.data_ptr())
        hit = self._np_views
        if hit is None or hit[0] is not s or hit[1] is not c or hit[2] is not f or hit[6] != at:
            hit = self._np_views = (s, c, f, s.numpy(), c.numpy().T, f.numpy(), at)
        return hit[3], hit[4], hit[5]

    @staticmethod
    def _normalize_np_l2(y: np.ndarray) -> np.ndarray:
        """``torch.nn.functional.normalize(y, dim=1)`` in numpy."""
        return y / np.maximum(np.sqrt(np.einsum("ij,ij->i", y, y))[:, None], np.float32(_NORM_EPS))

    def query_weights(self, q: torch.Tensor) -> torch.Tensor:
        """Queries folded with the scales, so ``q_w @ codes.T == q_n @ dequantize(codes).T``."""
        return self._normalize_chunk(q.to(self.device, torch.float32)) * self.scale

    def _need_quantizer(self) -> None:
        if not self.quantizer_fitted:
            raise RuntimeError("the int8 quantizer is not fitted yet (call fit)")

    def _need_resident(self) -> None:
        self._need_quantizer()
        if not self.resident_fitted:
            raise RuntimeError("the projection or its int8 scales are not fitted yet (call fit)")

    # -- persistence (no pickle: plain arrays) ---------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"scale": self.scale.cpu().numpy(), "components": self.components.cpu().numpy(),
                "fitted": self.fitted.cpu().numpy(), "proj_scale": self.proj_scale.cpu().numpy(),
                "shape": np.array([self.dim, self.dim_out], dtype=np.int64)}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> "Encoder":
        shape = tuple(int(v) for v in arrays["shape"])
        if shape != (self.dim, self.dim_out):
            raise ValueError(f"encoder arrays are for dims {shape}, this encoder is {(self.dim, self.dim_out)}")
        for name in ("scale", "components", "fitted"):
            getattr(self, name).copy_(torch.from_numpy(np.asarray(arrays[name])))
        # stores written before the resident mode have no projected scales: refitted when needed
        if "proj_scale" in arrays and np.asarray(arrays["proj_scale"]).shape == tuple(self.proj_scale.shape):
            self.proj_scale.copy_(torch.from_numpy(np.asarray(arrays["proj_scale"])))
        else:
            self.proj_scale.zero_()
        return self
