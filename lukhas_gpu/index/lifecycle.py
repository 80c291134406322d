"""How an index grows: int8 calibration, training the IVF, retraining, the device mirror.

1. **Small** (fewer than ``train_at(config)`` rows): int8 rows with per-dimension scales,
   calibrated on the first ``CALIBRATION_ROWS``; every search is an exact scan.
2. **Trained**: the ``add`` that crosses the threshold fits the projection and trains an IVF with
   4-bit fast-scan PQ codes on a sample, then indexes every row (:func:`train`).
3. **Retrained** on demand or in the background (:func:`retrain`): built beside the live index,
   compared on the recall probe, swapped in only if not worse. A trial (``MemoryIndex.trial``,
   :mod:`.trials`) is the same build from another config, judged on recall and QPS.

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
    dim_out_for,
    planned_nlist,
    sample_index,
    train_rows,
    train_sample_size,
)
from . import candidates, driftwatch, ivflists, quality

log = logging.getLogger(__name__)

__all__ = ["calibrate", "observe", "train", "start_retrain", "retrain", "requantize", "interleaved", "judge"]


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
    # the IVF; a trial of another candidate structure beside it is index/stagetrial.py's
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
    driftwatch.reset_all(parts)  # the data the index is trained on: every tag's reference
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


def retrain(index, queries, tolerance: float, *, config=None, qps_tolerance: float | None = None,
            record=None) -> dict:
    """Build beside the live index, compare on the probe, swap or discard (``MemoryIndex.retrain``).

    ``config``: the candidate's (a trial's; default the index's own); ``qps_tolerance``: also
    measure both sides' QPS on the probe's queries and keep the candidate only if it is at
    least ``(1 - qps_tolerance)`` times the live one's; ``record(report)`` is called under the
    lock once decided, before a kept candidate is checkpointed (the trials' reports go with it).
    A kept candidate's config becomes the index's (saved by that checkpoint).
    """
    try:
        return _retrain(index, queries, tolerance, config, qps_tolerance, record)
    except BaseException:  # the build is gone: stop collecting the rows re-vectored meanwhile
        with index.lock:
            index.parts.replaced = None
        raise


def _retrain(index, queries, tolerance: float, config, qps_tolerance, record) -> dict:
    t0 = time.perf_counter()
    cfg, lock = config or index.config, index.lock
    n0, n_live, sample_codes, encoder, quant_base, originals = _sample_live(index, cfg)
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
        out = _compare_and_swap(index, queries, tolerance, encoder, ann, old_scale, cfg, qps_tolerance)
        out.update(rescaled=bool(rescale and out["accepted"]), clipped=clipped, nlist=ann.nlist, rows=n1,
                   generation=None)
        if out["accepted"]:
            _promote(index, cfg, config is not None, out["candidate"]["params"]["nprobe"])
            parts.mirror = None  # new projection or scales: rebuilt on the next search
            if rescale:
                requantize(parts, old_scale, cfg.batch_size)
            parts.drift.set_baseline(baseline, nlist=ann.nlist, quant=quant_base)
            driftwatch.reset_all(parts)  # the data the new index is built on
            index.timings["train"] = time.perf_counter() - t0
        out["seconds"] = time.perf_counter() - t0
        if record is not None:
            record(out)
        if out["accepted"] and index.path is not None and index.mode == "w":
            out["generation"] = index.checkpoint().name  # durable: a crash before it finds the old index
    trim()
    return out


def _promote(index, cfg, trial: bool, nprobe: int) -> None:
    """A kept trial's config becomes the index's, with the nprobe it was measured at (its share
    of the lists); its tuned table was for the old index."""
    if not trial:
        return
    cfg = cfg.replace(nprobe=int(nprobe))
    index.config = index.parts.config = cfg
    index.parts.dim_out = index.parts.encoder.dim_out
    index.parts.tuned = None


def _sample_live(index, cfg) -> tuple:
    """Under the lock, a fresh sample of the live rows copied out, with what the build needs:
    ``(rows, live count, sample codes, a copy of the encoder (another ``dim_out``: a new one
    with the same int8 scales), the drift baseline's quantization error, the probe's sampled
    originals or None)``."""
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
        encoder = _candidate_encoder(parts, dim_out_for(index.dim, cfg))
        quant_base = parts.drift.baseline.get("quant")
        mem = parts.probe.memories
        originals = None
        if len(mem):
            ok = (mem.ids < parts.rows) & ~parts.tombstones.contains(mem.ids)
            originals = mem.vectors[ok].astype(np.float32)
    return n0, len(live_rows), sample_codes, encoder, quant_base, originals


def _candidate_encoder(parts, dim_out: int):
    """A copy of the live encoder, or one projecting to ``dim_out`` with its int8 scales."""
    old = parts.encoder
    if dim_out == old.dim_out:
        return copy.deepcopy(old)
    from ..vectors.encoder import Encoder

    enc = Encoder(old.dim, dim_out=dim_out, metric=old.metric, quantile=old.quantile,
                  batch_size=old.batch_size).to(old.device)
    enc.scale.copy_(old.scale)
    enc.fitted[0] = old.fitted[0]
    return enc


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


def _compare_and_swap(index, queries, tolerance: float, encoder, ann, old_scale, cfg, qps_tolerance) -> dict:
    """Under the lock: the live and the candidate index on the same probe queries and exact
    neighbours; the candidate stays in ``index.parts`` if its recall is at least the live one's
    less ``tolerance`` (and, with ``qps_tolerance``, its QPS at least ``1 - qps_tolerance`` times
    the live one's). Returns ``accepted``, ``old``, ``new``, ``hits``, ``source``, ``reason``,
    ``live`` and ``candidate`` (recall with interval, QPS, bytes, params)."""
    parts = index.parts
    probe = quality.setup(index, queries, 10, 20000)
    # compared at the same share of the store scanned: a restructure to more lists probes
    # proportionally more of them (a trial may name its nprobe)
    tuned = parts.tuned
    np_old = tuned.probing.nprobe if tuned is not None and tuned.probing is not None else index.config.nprobe
    rr = tuned.rerank if tuned is not None and tuned.probing is not None else index.config.rerank
    np_new = cfg.nprobe if cfg.nprobe != index.config.nprobe else max(1, round(np_old * ann.nlist / parts.ann.nlist))
    rr_new = cfg.rerank if cfg.rerank != index.config.rerank else rr
    live, cand = (parts.encoder, parts.ann), (encoder, ann)
    new_scale = encoder.scale.clone()
    encoder.scale.copy_(old_scale)  # the stored codes are still at the old scales

    def run(side, nprobe: int, rerank: int):
        parts.encoder, parts.ann = side
        t = time.perf_counter()
        return quality.found(index, probe, 10, nprobe, rerank, resident=False), time.perf_counter() - t

    try:
        old_found, new_found, t_old, t_new = interleaved(lambda: run(live, np_old, rr),
                                                         lambda: run(cand, np_new, rr_new), qps_tolerance is not None)
    finally:
        parts.encoder, parts.ann = live
        encoder.scale.copy_(new_scale)
    accepted, reason, old, new, qps = judge(probe, old_found, new_found, t_old, t_new, tolerance, qps_tolerance)
    hits, nq = int(probe["exact_n"].sum()), len(probe["q"])
    sides = {name: {"recall": est["recall"], "ci": est["ci"], "qps": q, "bytes": _bytes(*side),
                    "params": {**_params(*side), "nprobe": int(npr), "rerank": int(rrk)}}
             for name, est, q, side, npr, rrk in (("live", old, qps[0], live, np_old, rr),
                                                  ("candidate", new, qps[1], cand, np_new, rr_new))}
    if accepted:
        parts.encoder, parts.ann = cand
        candidates.drop(parts, "retrained (a new projected space)")
    log.log(logging.INFO if accepted else logging.WARNING, "%s: %s: %s", "retrain" if qps_tolerance is None else
            "trial", reason, "new index kept" if accepted else "new index discarded")
    return {"accepted": accepted, "old": old, "new": new, "hits": hits, "source": probe["source"], "queries": nq,
            "reason": reason, **sides}


def interleaved(run_old, run_new, timed: bool) -> tuple:
    """``(old found, new found, old seconds, new seconds)`` of two sides' probe searches (each
    ``run_*()`` -> ``(found, seconds)``): one run each, then (``timed``) the fastest of interleaved
    runs, :data:`QPS_REPEATS` or more (noise only adds time)."""
    (old_found, t_old), (new_found, t_new) = run_old(), run_new()
    spent, rounds = t_old + t_new, 1
    while timed and (rounds < QPS_REPEATS or spent < 2 * QPS_SECONDS) and rounds < QPS_MAX_ROUNDS:
        (_, a), (_, b) = run_old(), run_new()
        t_old, t_new, spent, rounds = min(t_old, a), min(t_new, b), spent + a + b, rounds + 1
    return old_found, new_found, t_old, t_new


def judge(probe: dict, old_found, new_found, t_old: float, t_new: float, tolerance: float, qps_tolerance) -> tuple:
    """The rule of a retrain and a trial on paired measurements (the same queries and exact
    neighbours): ``(accepted, reason, old estimate, new estimate, (old QPS, new QPS))``."""
    hits, nq = int(probe["exact_n"].sum()), len(probe["q"])
    old, new = (recall_estimate(f, probe["exact_n"], probe["kept"], probe["true"]) for f in (old_found, new_found))
    qps = (nq / max(t_old, 1e-9), nq / max(t_new, 1e-9))
    recall_ok = new_found.sum() >= old_found.sum() - tolerance * hits
    qps_ok = qps_tolerance is None or qps[1] >= (1.0 - qps_tolerance) * qps[0]
    reason = (f"probe recall {old['recall'] or 0.0:.4f} -> {new['recall'] or 0.0:.4f} on {hits} neighbours "
              f"({'within' if recall_ok else 'past'} the tolerance {tolerance:g})")
    if qps_tolerance is not None:
        reason += (f"; QPS {qps[0]:.0f} -> {qps[1]:.0f} "
                   f"({'within' if qps_ok else 'past'} the tolerance {qps_tolerance:g})")
    return bool(recall_ok and qps_ok), reason, old, new, qps


#: Timed runs of each side's probe searches in a trial (the fastest counts: the others met noise):
#: at least QPS_REPEATS, more until each side ran QPS_SECONDS in all, at most QPS_MAX_ROUNDS.
QPS_REPEATS, QPS_SECONDS, QPS_MAX_ROUNDS = 3, 0.5, 50


def _params(encoder, ann) -> dict:
    return {"structure": type(ann).__name__, "nlist": int(ann.nlist), "pq_m": int(ann.pq_m),
            "coarse": ann.coarse, "dim_out": int(encoder.dim_out)}


def _bytes(encoder, ann) -> int:
    """The ANN's bytes (every place) plus the encoder's."""
    usage = ann.memory_usage("built")
    return int(sum(sum(v.values()) for v in usage.values() if isinstance(v, dict)) + encoder.nbytes())
