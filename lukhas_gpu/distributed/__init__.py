"""Scale-out on Ray (the ``ray`` extra): distributed batch ingestion into shard stores and search
over them.

* :mod:`.rootfiles` -- a sharded root on disk (``shards.json`` + ``shard-NNNNN/`` stores) and the
  global ids (shard number in the bits above the 32-bit row id); imports no Ray.
* :mod:`.sharded` -- :class:`ShardedIndex`: every shard searched (threads, or one Ray actor per
  shard: :mod:`.fanout`, :mod:`.shard`), top-k merged exactly (:mod:`.merge`), hybrid lists
  merged then fused (:mod:`.fusion_merge`), stats and recall aggregated (:mod:`.aggregate`).
* :mod:`.ray_serve` -- :func:`serve_deployment`: a Ray Serve application, one replica per shard group
  (each with the server's batcher) behind an ingress that merges.
* :func:`ingest` (:mod:`.ingestion`, with :mod:`.stages`, :mod:`.writers`, :mod:`.partition` and
  :mod:`.report`) -- an input (a ``ray.data.Dataset``, Parquet or JSONL) into a sharded root, one
  writer actor per shard, resumable; returns an :class:`IngestReport`.

Importing this package imports no Ray; the names below are resolved on first use (PEP 562).
"""
from __future__ import annotations

import importlib

#: Where each public name lives (its one owner).
_EXPORTS = {
    "ShardedIndex": ".sharded",
    "serve_deployment": ".ray_serve",
}
# -- distributed ingest (ingestion.py, report.py) ---------------------------------------------------
_EXPORTS.update({"ingest": ".ingestion", "IngestReport": ".report"})
# ---------------------------------------------------------------------------------------------------

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    owner = _EXPORTS.get(name)
    if owner is None:
        raise AttributeError(f"module 'lukhas_gpu.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(owner, __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
