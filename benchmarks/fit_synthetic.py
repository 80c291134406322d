"""Fit the built-in synthetic model to the real MiniLM / WordNet set and check the fit.

Writes ``lukhas_gpu/data/minilm_wordnet.npz`` and prints, for the real set and a synthetic set
of the same size, the statistics an ANN index is sensitive to: recall@10 of a reference
IVF-PQ configuration, the IVF list imbalance, and the spectrum's head.

    python -m benchmarks.fit_synthetic
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np

from benchmarks import common
from benchmarks.datasets import exact_knn, wordnet_minilm
from lukhas_gpu.tools.synthetic import SyntheticModel

OUT = pathlib.Path(__file__).resolve().parents[1] / "lukhas_gpu" / "data" / "minilm_wordnet.npz"


def profile(xb: np.ndarray, xq: np.ndarray) -> dict:
    import faiss

    gt = exact_knn(xb, xq, 10)
    q = faiss.IndexFlatIP(xb.shape[1])
    index = faiss.IndexIVFPQFastScan(q, xb.shape[1], 1024, 96, 4, faiss.METRIC_INNER_PRODUCT)
    index.train(xb[np.random.default_rng(0).choice(len(xb), 65536, replace=False)])
    index.add(xb)
    out = {}
    for nprobe in (16, 64):
        index.nprobe = nprobe
        _, ids = index.search(xq, 10)
        out[f"ivfpq recall@10 nprobe={nprobe}"] = common.recall_at(ids, gt, 10)
    sizes = np.array([index.invlists.list_size(i) for i in range(1024)])
    out["list imbalance"] = float((sizes ** 2).sum() * len(sizes) / sizes.sum() ** 2)
    ev = np.linalg.eigvalsh(np.cov(xb[:50000].T))[::-1]
    out["top-10 eigenvalue share"] = float(ev[:10].sum() / ev.sum())
    out["top-100 eigenvalue share"] = float(ev[:100].sum() / ev.sum())
    out["mean top-1 score"] = float((xq @ xb[gt[:, 0]].T).diagonal().mean())
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--clusters", type=int, default=4096)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    common.set_threads(2)
    ds = wordnet_minilm()
    model = SyntheticModel.fit(ds.xb, n_clusters=args.clusters, source="all-MiniLM-L6-v2 over WordNet 3.0 glosses")
    model.save(args.out)
    model = SyntheticModel.load(args.out)
    print(f"wrote {args.out} ({pathlib.Path(args.out).stat().st_size / 1e3:.0f} kB)")
    real = profile(ds.xb, ds.xq)
    syn = profile(model.sample(len(ds.xb)), model.queries(len(ds.xq)))
    rows = [{"statistic": k, "real": real[k], "synthetic": syn[k]} for k in real]
    print(common.markdown_table(rows))


if __name__ == "__main__":
    main()
