"""Does the store know how well it answers? The recall probe against measured recall, and drift.

Two parts:

* ``probe``: the real set (MiniLM over WordNet glosses) in the production preset; the 2,000
  example-sentence queries are searched (which fills the index's query sample), then
  ``quality()`` estimates recall@10 at several ``nprobe`` and is compared with the recall
  measured against exact float32 search, for both probe sources (sampled queries, and the
  sampled memories themselves).
* ``drift``: an index trained on one distribution receives batches of the same distribution,
  then of a shifted one; the drift score per batch, whether a retrain is recommended, then
  ``retrain()`` and the recall on the shifted queries before and after (measured and probed).
  Scenarios: ``real-pos`` (trained on the noun glosses, then verb / adjective / adverb glosses
  arrive), ``synthetic-spread`` (the synthetic model, then the same clusters twice as wide) and
  ``synthetic-rotated`` (then vectors of a new region: the model's vectors under a random
  rotation).

Usage::

    python -m benchmarks.bench_monitor [--part probe|drift|all] [--threads 2]
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from benchmarks.common import machine, markdown_table, recall_at, set_threads, today, write_results
from benchmarks.datasets import exact_knn, wordnet_minilm

NOUNS = 82_115  # glosses of data.noun come first in the real set


def probe_part() -> list[dict]:
    import lukhas_gpu

    ds = wordnet_minilm()
    gt = ds.ground_truth(10)
    rows = []
    for source in ("queries", "memories"):
        cfg = lukhas_gpu.IndexConfig.preset("production")
        if source == "memories":
            cfg = cfg.replace(probe_queries=0)
        index = lukhas_gpu.MemoryIndex(ds.d, cfg)
        index.add(ds.xb)
        for nprobe in (8, 16, 32, 64, 128):
            measured = recall_at(index.search(ds.xq, 10, nprobe=nprobe).ids, gt, 10)
            q = index.quality(nprobe=nprobe)
            rows.append({"source": q["source"], "nprobe": nprobe, "measured": measured, "estimate": q["recall"],
                         "error": q["recall"] - measured, "ci_low": q["ci"][0], "ci_high": q["ci"][1],
                         "ann_recall": q["ann_recall"], "int8_recall": q["int8_recall"], "hits": q["hits"],
                         "queries": q["queries"], "seconds": q["seconds"]})
            print(rows[-1], flush=True)
    return rows


def _scenario(name: str, x_train, x_same, x_shift, q_shift, cfg) -> dict:
    import lukhas_gpu

    index = lukhas_gpu.MemoryIndex(x_train.shape[1], cfg)
    index.add(x_train)
    scores_same, scores_shift = [], []
    for s in range(0, len(x_same), 2000):
        index.add(x_same[s: s + 2000])
        scores_same.append(index.drift()["score"])
    flagged_at = None
    for i, s in enumerate(range(0, len(x_shift), 2000)):
        index.add(x_shift[s: s + 2000])
        d = index.drift()
        scores_shift.append(d["score"])
        if flagged_at is None and d["retrain_recommended"]:
            flagged_at = i + 1
    d = index.drift()
    all_x = np.concatenate([x_train, x_same, x_shift])
    gt = exact_knn(all_x, q_shift, 10)
    before = recall_at(index.search(q_shift, 10).ids, gt, 10)
    probe_before = index.quality(q_shift)["recall"]
    t0 = time.perf_counter()
    rep = index.retrain(queries=q_shift)
    secs = time.perf_counter() - t0
    after = recall_at(index.search(q_shift, 10).ids, gt, 10)
    probe_after = index.quality(q_shift)["recall"]
    return {"scenario": name, "trained_on": len(x_train), "same_batches": len(scores_same),
            "max_score_same": max((v for v in scores_same if v is not None), default=None),
            "shift_batches": len(scores_shift), "score_shift": d["score"], "worst": d["worst"],
            "flagged_after_batches": flagged_at, "ratios": d["ratios"],
            "recall_before": before, "recall_after": after, "probe_before": probe_before, "probe_after": probe_after,
            "accepted": rep["accepted"], "rescaled": rep["rescaled"], "retrain_s": secs,
            "score_after_retrain": index.drift()["score"]}


def drift_part() -> list[dict]:
    import lukhas_gpu
    from lukhas_gpu.tools.synthetic import builtin_model

    cfg = lukhas_gpu.IndexConfig.preset("production")
    out = []
    ds = wordnet_minilm()
    rng = np.random.default_rng(0)
    nouns = ds.xb[rng.permutation(NOUNS)]
    others = ds.xb[NOUNS:][rng.permutation(len(ds.xb) - NOUNS)]
    out.append(_scenario("real-pos", nouns[:70_000], nouns[70_000:], others[1000:], others[:1000], cfg))
    print(out[-1], flush=True)
    model = builtin_model()
    x = model.sample(100_000, seed=1)
    wide = model.sample(40_000, seed=2, spread=2.0)
    qw = model.sample(1000, seed=3, spread=2.0)
    out.append(_scenario("synthetic-spread", x[:80_000], x[80_000:], wide, qw, cfg))
    print(out[-1], flush=True)
    # a new region of the space: the same model's vectors under a fixed random rotation (new
    # topics the lists were never fitted to)
    rot = np.linalg.qr(np.random.default_rng(7).standard_normal((model.dim, model.dim)))[0].astype(np.float32)
    moved = model.sample(40_000, seed=4) @ rot
    qm = model.sample(1000, seed=5) @ rot
    out.append(_scenario("synthetic-rotated", x[:80_000], x[80_000:], moved, qm, cfg))
    print(out[-1], flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("probe", "drift", "all"), default="all")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    set_threads(args.threads)
    payload = {"machine": machine(), "date": today(), "threads": args.threads}
    tables = []
    if args.part in ("probe", "all"):
        payload["probe"] = probe_part()
        tables.append("### Recall probe vs measured recall@10 (real set, production)\n\n" + markdown_table(
            payload["probe"], ["source", "nprobe", "measured", "estimate", "error", "ci_low", "ci_high",
                               "ann_recall", "int8_recall", "hits", "queries", "seconds"]))
    if args.part in ("drift", "all"):
        payload["drift"] = drift_part()
        tables.append("### Drift and retrain\n\n" + markdown_table(
            payload["drift"], ["scenario", "trained_on", "max_score_same", "score_shift", "worst",
                               "flagged_after_batches", "recall_before", "probe_before", "accepted", "rescaled",
                               "recall_after", "probe_after", "retrain_s", "score_after_retrain"]))
    path = write_results(f"monitor_{args.part}", payload, "\n\n".join(tables))
    print("\n\n".join(tables))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
