"""``MemoryIndex.stats()``: one documented schema.

=====================  ===========================================================================
key                    value
=====================  ===========================================================================
``count``              live memories
``rows``               rows ever added (ids are row numbers; deleted rows keep theirs)
``deleted``            tombstoned rows
``ann_dead``           deleted rows' entries still in the IVF lists (searches exclude them;
                       ``compact()`` or ``policy.ANN_DEAD_FRACTION`` re-encodes their lists); 0
                       before training
``dim``, ``dim_out``   input and projected dimensions
``phase``              ``"exact"`` (int8 scans, before training) or ``"ivfpq"``
``nlist``, ``pq_m``,   the IVF's lists, PQ sub-quantizers and coarse quantizer (None before
``coarse``             training); ``nprobe``/``rerank`` are in ``config``
``backend``            ``"cpu"`` or ``"cuda"``
``vector_storage``     ``"memory"`` or ``"mmap"`` (the int8 rows)
``gpu_resident``       whether the device mirror is built
``memory``             where the bytes are (:func:`.accounting.breakdown`): ``anon``, ``mapped``,
                       ``disk``, ``gpu`` -- each ``{component: bytes}`` -- their totals
                       ``anon_bytes`` ... ``gpu_bytes``, ``per_memory`` (each total per live
                       memory), ``reserved`` (capacity allocated, never written, not resident),
                       ``ann_state``, and ``logical`` (each data structure's own size, whatever
                       its place: what ``compact()`` and the soak tests follow). On the
                       process's first index to use the vector path, ``anon`` has
                       ``runtime_libraries``: the RssAnon this process's first import and use of
                       torch and FAISS added, measured when it happened (:mod:`..util.runtime`;
                       it replaced ``runtime``, a 7 / 12 MB constant)
``bytes_per_memory``   ``(anon_bytes + mapped_bytes) / count``: RAM per memory, page cache included
``process``            the process as the kernel sees it: ``rss_anon`` (``RssAnon``, bytes; None
                       off Linux). The index's own ``anon_bytes`` is what it holds; the rest of
                       ``rss_anon`` is the interpreter, libraries, and whatever else the process
                       keeps.
``content``            ``raw_bytes`` and ``stored_bytes`` of the contents (compression)
``tag_vocabulary``     distinct tags
``namespaces``         namespaces holding a live memory (1: the default ``""`` alone)
``expired``            live memories past their validity window, not yet purged (``purge_expired``)
``links``              ``stored`` links (main + log), ``kinds`` interned, ``bytes`` in RAM
``dedup``              ``mode``, ``threshold``, ``last_add_merged`` (memories the last add merged)
``train_seconds``      the last training's wall time (None before training)
``tuning``             ``target_recall`` (the config's), and the tuner's choice (None before a
                       run): ``kind``, ``nprobe``, ``rerank``, ``probing``, the estimated
                       ``recall`` with its ``ci``, ``met``, ``source``, ``expected_qps``,
                       ``count`` and ``nlist`` at the run
``monitoring``         ``tag_references`` (tags with a per-tag drift reference:
                       ``drift(by_tag=True)``), ``trials`` (reports kept by ``trials()``) and
                       ``last_trial`` (its ``decision``, ``changes`` and ``time``; None before one)
``capabilities``       torch / FAISS versions, CUDA device, FAISS GPUs, threads
``config``             the :class:`~lukhas_gpu.IndexConfig` as a dict
=====================  ===========================================================================
"""
from __future__ import annotations

import time

from ..util.device import capabilities
from ..util.memtrim import rss_anon
from .accounting import breakdown, logical_bytes

__all__ = ["index_stats", "index_anon"]


def index_stats(index) -> dict:
    """The stats of a :class:`~lukhas_gpu.MemoryIndex` (the schema is this module's docstring)."""
    parts = index.parts
    n = parts.live
    ann = parts.ann
    memory = breakdown(index)
    memory["logical"] = logical_bytes(index)[0]
    return {
        "count": n,
        "rows": parts.rows,
        "deleted": len(parts.tombstones),
        "ann_dead": ann.ntotal - n if ann is not None else 0,
        "dim": index.dim,
        "dim_out": parts.dim_out,
        "phase": "ivfpq" if ann is not None else "exact",
        "nlist": ann.nlist if ann is not None else None,
        "pq_m": ann.pq_m if ann is not None else None,
        "coarse": ann.coarse if ann is not None else None,
        "backend": index.backend,
        "vector_storage": parts.vectors.storage,
        "gpu_resident": parts.mirror is not None,
        "memory": memory,
        "bytes_per_memory": (memory["anon_bytes"] + memory["mapped_bytes"]) / n if n else 0.0,
        "process": {"rss_anon": rss_anon()},
        "content": {"raw_bytes": parts.contents.raw_bytes, "stored_bytes": parts.contents.stored_bytes},
        "tag_vocabulary": parts.tags.vocab_size,
        "namespaces": len(parts.namespaces.counts(parts.tombstones.live_mask(parts.rows))),
        "expired": len(parts.validity.expired(time.time()) - parts.tombstones.bitmap),
        "links": {"stored": len(parts.links), "kinds": len(parts.links.kinds), "bytes": parts.links.nbytes()},
        "dedup": {"mode": index.config.dedup, "threshold": index.config.dedup_threshold,
                  "last_add_merged": index.state.last_add.merged if index.state.last_add is not None else 0},
        "train_seconds": index.timings.get("train"),
        "tuning": {"target_recall": index.config.target_recall,
                   "chosen": parts.tuned.report() if parts.tuned is not None else None},
        "monitoring": {"tag_references": len(parts.tagdrift), "trials": len(parts.trials),
                       "last_trial": ({k: parts.trials[-1].get(k) for k in ("decision", "changes", "time")}
                                      if parts.trials else None)},
        "capabilities": capabilities(),
        "config": index.config.to_dict(),
    }


def index_anon(index) -> int:
    """The index's anonymous bytes as ``stats()`` counts them, the libraries' runtime left out
    (0 when they cannot be read: a closed index, whose tuning run stops at its next step anyway)."""
    try:
        mem = index.stats()["memory"]
    except Exception:  # a tuning run must not fail for its measurement
        return 0
    return mem["anon_bytes"] - mem["anon"].get("runtime_libraries", 0)
