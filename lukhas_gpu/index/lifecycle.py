"""How an index grows: int8 calibration, training the IVF, retraining, the device mirror.

1. **Small** (fewer than ``train_at(config)`` rows): int8 rows with per-dimension scales,
   calibrated on the first ``CALIBRATION_ROWS``; every search is an exact scan.
2. **Trained**: the ``add`` that crosses the threshold fits the projection and trains an IVF with
   4-bit fast-scan PQ codes on a sample, then indexes every row (:func:`train`).
3. **Retrained** on demand or in the background (:func:`retrain`): built beside the live index,
   compared on the recall probe, swapped in only if not worse.

Functions over the facade (its ``parts``, ``config`` and lock); sizes come from
:mod:`lukhas_gpu.vectors.policy`.
"""
from __future__ import annotations

import concurrent.futures
import copy
import logging
import threading
import time

import numpy as np
import torch
from pyroaring import BitMap

from ..monitor.probe import DRIFT_WINDOW, DriftMonitor, recall_estimate
from ..util import runtime
from ..util.memtrim import trim
from ..vectors.ann import IVFPQIndex
from ..vectors.policy import (
    CALIBRATION_ROWS,
    FIT_SAMPLE,
    MIN_TRAIN_ROWS,
    auto_pq_m,
    coarse_for,
    planned_nlist,
    sample_index,
    train_rows,
    train_sample_size,
)
from . import candidates, ivflists, quality

log = logging.getLogger(__name__)

__all__ = ["calibrate", "observe", "train", "start_retrain", "retrain", "requantize"]


def _sample_rows(x: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= limit:
        return x
    return x[torch.from_numpy(sample_index(x.shape[0], limit, seed)).to(x.device)]


def calibrate(index, x: torch.Tensor) -> None:
    """Fit the int8 scales, refitting them on each add until ``CALIBRATION_ROWS`` arrived.

    Scales fitted once on a tiny first batch clip every later vector wherever that batch
    happened to be small (recall@10 0.65 after a one-vector first batch, measured). So the
    first rows are also kept as float32 (at most ``CALIBRATION_ROWS``) until enough have
    arrived; each add in between refits the scales on them plus the new batch and
    re-quantizes the stored ones from their floats (no double rounding).
    """
    parts, seed = index.parts, index.config.seed
    if parts.rows == 0:
        parts.encoder.fit_quantizer(_sample_rows(x, FIT_SAMPLE, seed))
        if x.shape[0] < CALIBRATION_ROWS:
            parts.calib = x.to("cpu", torch.float32).numpy().copy()
        return
    if parts.calib is None:
        return
    old = parts.calib
    new = x.to("cpu", torch.float32).numpy()
    sample = new if len(new) <= FIT_SAMPLE else new[sample_index(len(new), FIT_SAMPLE, seed)]
    parts.encoder.fit_quantizer(np.concatenate([old, sample]))
    parts.vectors[: len(old)] = parts.encoder.quantize(old).cpu().numpy()
    parts.mirror = None  # its codes were at the old scales: rebuilt on the next search
    total = len(old) + len(new)
    parts.calib = np.concatenate([old, new]) if total < CALIBRATION_ROWS else None


def observe(parts, x: torch.Tensor, codes: torch.Tensor, proj: torch.Tensor, ids: np.ndarray) -> None:
    """Feed an added batch to the probe's sample of originals and to the drift monitor."""
    enc = parts.encoder
    parts.probe.memories.offer(x, ids, transform=lambda r: enc.normalize(r).cpu().numpy())
    rows = parts.drift.sample_rows(len(ids), int(ids[0]))
    if len(rows) == 0:
        return
    r = torch.from_numpy(rows)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[r.to(t.device)]

    m = DriftMonitor.measure(enc.normalize(pick(x)).cpu().numpy(), enc.dequantize(pick(codes)).cpu().numpy(),
                             pick(proj).cpu().numpy(), parts.ann)
    parts.drift.record(m)


def _new_ann(dim_out: int, n: int, cfg) -> IVFPQIndex:
    nlist = planned_nlist(n, cfg)
    return IVFPQIndex(dim_out, nlist=nlist, pq_m=auto_pq_m(dim_out, cfg.pq_m), coarse=coarse_for(nlist, cfg),
                      seed=cfg.seed)


def _train_ann(ann: IVFPQIndex, sample: torch.Tensor, proj: np.ndarray, seed: int, gpu: bool = False) -> dict:
    """Train ``ann`` on (part of) a sample and return the drift measures that become its baseline;
    with ``gpu``, also give it its faiss-gpu copy (if faiss has GPUs) before anything is added.

    k-means fits its own training rows better than new ones (by 10-20% in residual energy at
    ~64 rows per list, measured), so the baseline is taken on rows of the sample that the
    training did not see whenever the sample has 1,024 of them to spare.
    """
    limit = train_sample_size(ann.nlist)
    order = np.random.default_rng(seed).permutation(len(proj))
    fit, held = order[:limit], order[limit:][:DRIFT_WINDOW]
    train_x = proj[np.sort(fit)]
    ann.train(train_x)
    if gpu:
        ann.to_gpu(train_x)
    del train_x
    rows = np.sort(held) if len(held) >= 1024 else np.sort(fit[:DRIFT_WINDOW])
    deq = sample[torch.from_numpy(rows).to(sample.device)].cpu().numpy()
    return DriftMonitor.measure(deq, deq, proj[rows], ann)


def _index_rows(ann: IVFPQIndex, encoder, codes: np.ndarray, ids: np.ndarray, scale=None) -> None:
    """Add stored rows to ``ann`` (``scale``: the int8 scales the codes were written at)."""
    if not len(ids):
        return
    if scale is None:
        x = encoder.dequantize(codes)
    else:
        x = torch.from_numpy(codes).to(encoder.device, torch.float32) * scale
    ann.add(encoder.project(x).cpu().numpy(), ids)


def train(index) -> None:
    """Fit the projection and train the IVF-PQ index on the vectors held, then index them."""
    parts = index.parts
    n = parts.rows
    if n < MIN_TRAIN_ROWS:
        raise ValueError(f"training needs at least {MIN_TRAIN_ROWS} vectors, the index holds {n}")
    with runtime.first_use("train") as use:  # FAISS's first k-means and lists: its buffers measured
        _train(index)
        use.held = sum(parts.ann.memory_usage("built").get("anon", {}).values())
    log.info("index trained: %d vectors, IVF%d,PQ%dx4fs (%s coarse) in %.1f s",
             n, parts.ann.nlist, parts.ann.pq_m, parts.ann.coarse, index.timings["train"])


def _train(index) -> None:
    parts, cfg = index.parts, index.config
    n = parts.rows
    t0 = time.perf_counter()
    enc = parts.encoder
    sample = enc.dequantize(parts.vectors[sample_index(n, train_rows(planned_nlist(n, cfg)), cfg.seed)])
    if enc.projects:
        enc.fit_projection(sample)
        parts.mirror = None  # a new projected space
    ann = _new_ann(enc.dim_out, n, cfg)
    proj = enc.project(sample).cpu().numpy()
    parts.drift.set_baseline(_train_ann(ann, sample, proj, cfg.seed, index.faiss_gpu_wanted), nlist=ann.nlist)
    del proj, sample
    for start in range(0, n, cfg.batch_size):
        ids = np.arange(start, min(n, start + cfg.batch_size), dtype=np.int64)
        ids = ids[~parts.tombstones.contains(ids)]
        _index_rows(ann, enc, parts.vectors[ids], ids)
    parts.ann = ann
    index.timings["train"] = time.perf_counter() - t0
    trim()  # training's temporaries (samples, k-means buffers) go back to the OS


def requantize(parts, old_scale: torch.Tensor, batch: int) -> None:
    """Re-express every stored int8 row at the encoder's (wider) scales."""
    ratio = (old_scale / parts.encoder.scale).to(torch.float32)
    n = parts.rows
    for a in range(0, n, batch):
        b = min(n, a + batch)
        block = torch.from_numpy(np.array(parts.vectors[a:b])).to(ratio.device, torch.float32)
        parts.vectors[a:b] = torch.round(block * ratio).clamp_(-127, 127).to(torch.int8).cpu().numpy()
    parts.mirror = None  # rebuilt from the requantized rows on the next search
    log.info("int8 scales widened on %d dimensions; %d rows requantized", int((ratio < 1).sum()), n)


def start_retrain(index, *, queries, tolerance: float, background: bool):
    """``MemoryIndex.retrain``: checks, then :func:`retrain` now or in a background thread (a
    ``concurrent.futures.Future`` of its report)."""
    from ..util.arrays import as_batch

    if index.parts.ann is None:
        raise ValueError("the index is not trained yet: there is nothing to retrain (train() trains it)")
    if not 0.0 <= float(tolerance) < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    if queries is not None:
        as_batch(queries, index.dim, "queries")  # fail now, not in the background
    if not background:
        return retrain(index, queries, float(tolerance))
    fut: concurrent.futures.Future = concurrent.futures.Future()

    def run():
        try:
            fut.set_result(retrain(index, queries, float(tolerance)))
        except BaseException as e:  # surfaced by fut.result()
            fut.set_exception(e)

    threading.Thread(target=run, name="lukhas-gpu-retrain", daemon=True).start()
    return fut


def retrain(index, queries, tolerance: float) -> dict:
    """Build beside the live index, compare on the probe, swap or discard (``MemoryIndex.retrain``)."""
    try:
        return _retrain(index, queries, tolerance)
    except BaseException:  # the build is gone: stop collecting the rows re-vectored meanwhile
        with index.lock:
            index.parts.replaced = None
        raise


def _retrain(index, queries, tolerance: float) -> dict:
    t0 = time.perf_counter()
    cfg, lock = index.config, index.lock
    n0, n_live, sample_codes, encoder, quant_base, originals = _sample_live(index)
    old_scale = encoder.scale.clone()
    sample = encoder.dequantize(sample_codes)
    del sample_codes
    rescale, clipped, quant_base = _refit_scales(encoder, originals, old_scale, cfg.quantile, quant_base)
    if encoder.projects:
        encoder.fit_projection(sample)
    ann = _new_ann(encoder.dim_out, n_live, cfg)
    proj = encoder.project(sample).cpu().numpy()
    baseline = _train_ann(ann, sample, proj, cfg.seed, index.faiss_gpu_wanted)
    del proj, sample

    def index_rows(start: int, stop: int) -> None:  # holds the lock for the copy only
        with lock:
            ids = np.arange(start, stop, dtype=np.int64)
            ids = ids[~index.parts.tombstones.contains(ids)]
            block = np.array(index.parts.vectors[ids]) if len(ids) else None
        if block is not None:  # stored codes are at the old scales until the swap
            _index_rows(ann, encoder, block, ids, scale=old_scale)

    for start in range(0, n0, cfg.batch_size):
        index_rows(start, min(n0, start + cfg.batch_size))
    with lock:  # catch up, compare on the probe, swap or discard
        parts = index.parts
        n1 = parts.rows
        for start in range(n0, n1, cfg.batch_size):
            index_rows(start, min(n1, start + cfg.batch_size))
        _reindex_moved(parts, ann, encoder, old_scale, n0, cfg.batch_size)
        out = _compare_and_swap(index, queries, tolerance, encoder, ann, old_scale)
        generation = None
        if out["accepted"]:
            parts.mirror = None  # new projection or scales: rebuilt on the next search
            if rescale:
                requantize(parts, old_scale, cfg.batch_size)
            parts.drift.set_baseline(baseline, nlist=ann.nlist, quant=quant_base)
            index.timings["train"] = time.perf_counter() - t0
            if index.path is not None and index.mode == "w":
                generation = index.checkpoint().name
        else:
            rescale = False
    trim()
    return {**out, "rescaled": bool(rescale), "clipped": clipped, "nlist": ann.nlist, "rows": n1,
            "seconds": time.perf_counter() - t0, "generation": generation}


def _sample_live(index) -> tuple:
    """Under the lock, a fresh sample of the live rows copied out, with what the build needs:
    ``(rows, live count, sample codes, a copy of the encoder, the drift baseline's
    quantization error, the probe's sampled originals or None)``."""
    cfg = index.config
    with index.lock:
        parts = index.parts
        n0 = parts.rows
        live_rows = np.flatnonzero(parts.tombstones.live_mask(n0))
        if len(live_rows) < MIN_TRAIN_ROWS:
            raise ValueError(f"retraining needs at least {MIN_TRAIN_ROWS} live memories, the index holds "
                             f"{len(live_rows)}")
        parts.replaced = BitMap()  # rows whose vectors change while the copy is built
        pick = sample_index(len(live_rows), train_rows(planned_nlist(len(live_rows), cfg)),
                            cfg.seed + 1 + parts.drift.batches)
        sample_codes = np.array(parts.vectors[live_rows[pick]])
        encoder = copy.deepcopy(parts.encoder)
        quant_base = parts.drift.baseline.get("quant")
        mem = parts.probe.memories
        originals = None
        if len(mem):
            ok = (mem.ids < parts.rows) & ~parts.tombstones.contains(mem.ids)
            originals = mem.vectors[ok].astype(np.float32)
    return n0, len(live_rows), sample_codes, encoder, quant_base, originals


def _reindex_moved(parts, ann, encoder, old_scale, n0: int, batch: int) -> None:
    """Under the lock, after the catch-up: rows deleted meanwhile keep their entries (searches
    exclude the tombstones); rows ``update(embeddings=)`` re-vectored during the build may have
    been copied before: indexed again in the new IVF."""
    moved = np.asarray(parts.replaced.to_array(), dtype=np.int64)
    parts.replaced = None
    moved = moved[(moved < n0) & ~parts.tombstones.contains(moved)]
    if not len(moved):
        return

    def at_old_scales(ids):  # the new IVF's space: stored codes at the old scales, new projection
        x = torch.from_numpy(np.array(parts.vectors[ids])).to(encoder.device, torch.float32) * old_scale
        return encoder.project(x).cpu().numpy()

    x_moved = at_old_scales(moved)
    ivflists.reindex(ann, moved, ann.assign(x_moved), x_moved, parts.tombstones, at_old_scales, batch)


def _refit_scales(encoder, originals, old_scale, quantile: float, quant_base):
    """int8 scales refitted on the sampled originals when they clip twice as often as the scales'
    quantile allows, and only ever widened (the stored rows are requantized from their codes,
    never clipped more): ``(rescaled, share clipped, quantization error)``."""
    clipped = 0.0
    if originals is not None and len(originals) >= 256:
        clipped = float((np.abs(originals) > 127.5 * old_scale.cpu().numpy()).mean())
    rescale = clipped > max(2 * (1.0 - quantile), 1e-5)
    if rescale:
        encoder.fit_quantizer(originals)
        encoder.scale.copy_(torch.maximum(encoder.scale, old_scale))
        codes_o = encoder.quantize(originals)
        quant_base = float((((originals - encoder.dequantize(codes_o).cpu().numpy()) ** 2).sum(1)
                            / np.maximum((originals ** 2).sum(1), 1e-30)).mean())
    return rescale, clipped, quant_base


def _compare_and_swap(index, queries, tolerance: float, encoder, ann, old_scale) -> dict:
    """Under the lock: the old and the new index on the same probe queries and exact neighbours;
    the new one stays in ``index.parts`` if its recall is at least the old one's less
    ``tolerance``. Returns ``accepted``, ``old``, ``new``, ``hits``, ``source``."""
    cfg, parts = index.config, index.parts
    probe = quality.setup(index, queries, 10, 20000)
    # compared at the same share of the store scanned: a restructure to more lists probes
    # proportionally more of them
    tuned = parts.tuned
    np_old = tuned.probing.nprobe if tuned is not None and tuned.probing is not None else cfg.nprobe
    rr = tuned.rerank if tuned is not None and tuned.probing is not None else cfg.rerank
    np_new = max(1, round(np_old * ann.nlist / parts.ann.nlist))
    old_found = quality.found(index, probe, 10, np_old, rr, resident=False)
    old_encoder, old_ann = parts.encoder, parts.ann
    new_scale = encoder.scale.clone()
    encoder.scale.copy_(old_scale)  # the stored codes are still at the old scales
    parts.encoder, parts.ann = encoder, ann
    try:
        new_found = quality.found(index, probe, 10, np_new, rr, resident=False)
        encoder.scale.copy_(new_scale)
    except BaseException:
        parts.encoder, parts.ann = old_encoder, old_ann
        raise
    hits = int(probe["exact_n"].sum())
    # paired: the same queries and exact neighbours; the int8 stage is the same for both
    accepted = new_found.sum() >= old_found.sum() - tolerance * hits
    if not accepted:
        parts.encoder, parts.ann = old_encoder, old_ann
    else:
        candidates.drop(parts, "retrained (a new projected space)")
    old, new = (recall_estimate(f, probe["exact_n"], probe["kept"], probe["true"]) for f in (old_found, new_found))
    log.log(logging.INFO if accepted else logging.WARNING,
            "retrain: probe recall %.3f -> %.3f on %d sampled neighbours: %s", old["recall"] or 0.0,
            new["recall"] or 0.0, hits, "new index kept" if accepted else "new index discarded")
    return {"accepted": bool(accepted), "old": old, "new": new, "hits": hits, "source": probe["source"]}
