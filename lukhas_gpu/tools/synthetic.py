"""A deterministic generator of embedding-like vectors, fitted to a real set.

Real sentence embeddings are neither isotropic nor uniform: they sit in clusters of very
different sizes, and within a cluster the variance decays over a few hundred directions. Both
matter for an ANN index (list imbalance, PQ error, probe counts), so a benchmark on Gaussian
noise says little. :class:`SyntheticModel` keeps what matters and nothing else:

* ``K`` cluster centres and their weights (k-means on the real set);
* the spectrum and eigenvectors of the within-cluster residuals (shared), and a per-cluster
  residual scale.

A vector is ``normalize(centre_c + s_c * V diag(sqrt(lambda)) z)`` with ``c ~ weights`` and
``z ~ N(0, I)``. Rows are generated in fixed-size blocks, each from its own seed, so any slice
of a 10M set is reproducible without generating what precedes it.

The package ships a model fitted to MiniLM-L6 embeddings of the WordNet glosses
(``lukhas_gpu/data/minilm_wordnet.npz``), used by ``lukhas-gpu bench``.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

__all__ = ["SyntheticModel", "builtin_model", "BLOCK"]

BLOCK = 65536
_BUILTIN = pathlib.Path(__file__).with_name("data") / "minilm_wordnet.npz"


@dataclasses.dataclass
class SyntheticModel:
    centers: np.ndarray  # (K, D) float32
    weights: np.ndarray  # (K,) float64, sums to 1
    scales: np.ndarray  # (K,) float32, residual rms of each cluster relative to the global one
    basis: np.ndarray  # (D, r) float32, eigenvectors of the residual covariance
    sqrt_eig: np.ndarray  # (r,) float32
    source: str = ""
    #: Queries are drawn with residuals this much wider than the database's: real queries (other
    #: sentences than the stored ones) sit farther from their neighbours. 1.5 matches the mean
    #: top-1 similarity of WordNet example sentences to the glosses (0.61 synthetic, 0.58 real).
    query_spread: float = 1.5

    @property
    def dim(self) -> int:
        return int(self.centers.shape[1])

    # -- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, x: np.ndarray, *, n_clusters: int = 4096, rank: int | None = None,
            seed: int = 0, source: str = "") -> "SyntheticModel":
        """Fit to real vectors ``x`` (n, D), assumed unit-norm embeddings."""
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        km = faiss.Kmeans(d, n_clusters, niter=20, seed=seed, spherical=True, verbose=False,
                          max_points_per_centroid=max(256, n // n_clusters + 1))
        km.train(x)
        _, assign = km.index.search(x, 1)
        assign = assign.ravel()
        counts = np.bincount(assign, minlength=n_clusters).astype(np.float64)
        resid = x - km.centroids[assign]
        cov = (resid.T.astype(np.float64) @ resid) / n
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][: rank or d]
        evals = np.clip(evals[order], 0, None)
        rms_all = np.sqrt((resid ** 2).sum(1).mean())
        rms_c = np.sqrt(np.bincount(assign, weights=(resid ** 2).sum(1), minlength=n_clusters) / np.maximum(counts, 1))
        scales = np.where(counts > 0, rms_c / rms_all, 1.0)
        return cls(km.centroids.astype(np.float32), counts / counts.sum(), scales.astype(np.float32),
                   evecs[:, order].astype(np.float32), np.sqrt(evals).astype(np.float32), source)

    # -- sampling ------------------------------------------------------------------------------
    def block(self, b: int, seed: int = 0, rows: int = BLOCK, spread: float = 1.0) -> np.ndarray:
        """Block ``b`` of the stream with this seed: ``(rows, D)`` float32, unit-norm."""
        rng = np.random.default_rng([seed, b])
        c = rng.choice(len(self.weights), size=rows, p=self.weights)
        z = rng.standard_normal((rows, len(self.sqrt_eig)), dtype=np.float32)
        x = self.centers[c] + (spread * self.scales[c, None]) * ((z * self.sqrt_eig) @ self.basis.T)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def sample(self, n: int, seed: int = 0, start: int = 0, spread: float = 1.0) -> np.ndarray:
        """Rows ``[start, start + n)`` of the stream with this seed, ``(n, D)`` float32."""
        out = np.empty((n, self.dim), dtype=np.float32)
        pos = 0
        while pos < n:
            row = start + pos
            b, off = divmod(row, BLOCK)
            take = min(n - pos, BLOCK - off)
            out[pos: pos + take] = self.block(b, seed, spread=spread)[off: off + take]
            pos += take
        return out

    def iter_batches(self, n: int, batch: int = BLOCK, seed: int = 0):
        for start in range(0, n, batch):
            yield self.sample(min(batch, n - start), seed=seed, start=start)

    def queries(self, nq: int, seed: int = 1) -> np.ndarray:
        """Queries from the same model with another seed (never rows of the database stream)."""
        return self.sample(nq, seed=1_000_003 + seed, spread=self.query_spread)

    # -- persistence (no pickle) -----------------------------------------------------------------
    def save(self, path) -> None:
        # centres as int8 with per-dimension scales: 1.5 MB instead of 6 MB, error far below
        # the residual spread
        cscale = np.abs(self.centers).max(axis=0) / 127.0 + 1e-12
        np.savez_compressed(path, centers_i8=np.round(self.centers / cscale).astype(np.int8),
                            centers_scale=cscale.astype(np.float32), weights=self.weights,
                            scales=self.scales, basis=self.basis.astype(np.float16),
                            sqrt_eig=self.sqrt_eig, source=np.array(self.source),
                            query_spread=np.array(self.query_spread))

    @classmethod
    def load(cls, path) -> "SyntheticModel":
        with np.load(path, allow_pickle=False) as z:
            centers = z["centers_i8"].astype(np.float32) * z["centers_scale"]
            return cls(centers, z["weights"].astype(np.float64), z["scales"].astype(np.float32),
                       z["basis"].astype(np.float32), z["sqrt_eig"].astype(np.float32), str(z["source"]),
                       float(z["query_spread"]))


def builtin_model() -> SyntheticModel:
    """The model fitted to MiniLM-L6 / WordNet glosses (384-d) that ships with the package."""
    if not _BUILTIN.exists():
        raise FileNotFoundError(f"{_BUILTIN.name} is missing from the package data; "
                                "rebuild it with `python -m benchmarks.fit_synthetic`")
    return SyntheticModel.load(_BUILTIN)
