"""The shard writer: one shard's store open for writing, in its own process (a Ray actor).

:class:`ShardWriter` is a plain class (the ingest wraps it with ``ray.remote``), so this module
imports no Ray. The driver calls, in order: :meth:`~ShardWriter.open`, :meth:`~ShardWriter.write`
for each batch of the shard's rows (Ray runs one caller's calls to an actor in the order they
were made), then :meth:`~ShardWriter.finish` (or :meth:`~ShardWriter.abort`).

**The shard is the record of its own progress.** Each ``write`` names the shard row its first
memory is meant for; the store's row count (every acknowledged add is in its write-ahead log,
replayed on open) says which of them it already holds, and those are dropped, never added twice.
A batch that would leave a gap is refused. A killed writer loses at most the add it was in (a
torn log tail is cut on the next open), which the next ingest sends again.

While it writes, the store's background tuning is held off (``auto_tune``: a batch job's build);
its own config is restored before every checkpoint, so the shard tunes itself on its first
searches.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import time

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["ShardWriter", "actor_name", "NAMESPACE", "table_arrays"]

#: The Ray namespace of the writer actors: one name per shard of a root, so two ingests into the
#: same root on one cluster cannot run at once.
NAMESPACE = "lukhas_gpu"


def actor_name(root, shard: int) -> str:
    """The writer actor's name for ``shard`` of ``root`` (in :data:`NAMESPACE`)."""
    key = hashlib.blake2b(os.fspath(pathlib.Path(root).resolve()).encode("utf-8", "surrogateescape"),
                          digest_size=8).hexdigest()
    return f"lukhas-gpu-ingest-{key}-{int(shard):05d}"


def table_arrays(table):
    """A prepared table (:mod:`.stages`) -> ``(x (n, dim) float32, contents or None, tags or None,
    timestamps float64, importance float64)``, what :meth:`MemoryIndex.add` takes."""
    n = table.num_rows
    names = table.column_names
    emb = table.column("embedding").combine_chunks()
    # a writable copy: torch warns on (and must not write through) Arrow's read-only buffers
    x = np.array(emb.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, emb.type.list_size)
    contents = table.column("content").to_pylist() if "content" in names else None
    tags = [t or [] for t in table.column("tags").to_pylist()] if "tags" in names else None
    ts = table.column("timestamp").to_numpy(zero_copy_only=False).astype(np.float64)
    imp = table.column("importance").to_numpy(zero_copy_only=False).astype(np.float64)
    return x, contents, tags, ts, imp


class ShardWriter:
    """Writes one shard's store.

    Parameters
    ----------
    path : path
        The shard's directory (``layout.shard_dir(root, shard)``).
    shard : int
    dim : int
    config : dict
        The shard's :class:`~lukhas_gpu.IndexConfig` as a dict (its ``capacity`` set to the
        shard's row count, so the IVF is trained once, at its final size).
    threads : int
        Torch and FAISS threads of this process (its CPU reservation).
    """

    def __init__(self, path, shard: int, dim: int, config: dict, threads: int = 1):
        from ..config import IndexConfig
        from ..util.device import faiss_module

        self.path, self.shard, self.dim = pathlib.Path(path), int(shard), int(dim)
        self.config = IndexConfig.from_dict(config)
        self.index = None
        self.rows = self.found = self.written = 0
        self.seconds = {"write": 0.0, "train": 0.0, "checkpoint": 0.0, "open": 0.0}
        import torch

        torch.set_num_threads(max(1, int(threads)))
        faiss_module().omp_set_num_threads(max(1, int(threads)))

    def open(self, lock_wait: float = 30.0) -> dict:
        """Open the shard's store (create it when the directory holds none), waiting up to
        ``lock_wait`` seconds for the writer lock of a killed run's process to go.

        Returns ``rows`` (held already), ``nlist`` (None: not trained), ``last_content`` (the
        digest of the last row's content, None without one).
        """
        from ..index import MemoryIndex
        from ..store import layout as storage
        from .stages import content_digest

        t0 = time.perf_counter()
        if not (self.path / storage.CURRENT).exists():
            self.index = MemoryIndex.create(self.path, self.dim, self.config)
        else:
            deadline = time.monotonic() + lock_wait
            while self.index is None:
                try:
                    self.index = MemoryIndex.open(self.path, mode="w")
                except storage.StoreLockedError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        if self.index.dim != self.dim:
            raise ValueError(f"{self.path} holds a store of dimension {self.index.dim}, the ingest writes {self.dim}")
        # a batch job: no background tuning between the adds (it would compete with them and be
        # cancelled at the end); the store's own config is back before anything is checkpointed,
        # and the first searches tune the shard
        self.own = self.index.config
        self.index.config = self.own.replace(auto_tune=False)
        st = self.index.stats()
        self.rows = self.found = int(st["rows"])
        self.seconds["open"] = time.perf_counter() - t0
        self.seconds["train"] = float(self.index.timings.get("train", 0.0))  # a replayed log may train
        last = None
        if self.rows and self.index.contains([self.rows - 1])[0]:
            last = content_digest(self.index.contents([self.rows - 1])[0])
        return {"rows": self.rows, "nlist": st["nlist"], "last_content": last}

    def write(self, first: int, table) -> int:
        """Add the prepared rows meant for shard rows ``first...``; rows the shard holds already
        are dropped. Returns the memories added."""
        n = table.num_rows
        if first > self.rows:
            raise RuntimeError(f"shard {self.shard}: rows from {first} on arrived, the shard holds {self.rows}; rows "
                               f"{self.rows}..{first - 1} would be missing")
        skip = self.rows - first
        if skip >= n:
            return 0
        if skip:
            table = table.slice(skip)
        x, contents, tags, ts, imp = table_arrays(table)
        missing = np.isnan(ts)
        if missing.any():
            ts = np.where(missing, time.time(), ts)
        trained = self.index.timings.get("train")
        t0 = time.perf_counter()
        # dedup off: a shard's row count is its resume record (one row per input row)
        ids = self.index.add(x, contents=contents, tags=tags, timestamps=ts, importance=imp, dedup="off")
        spent = time.perf_counter() - t0
        if self.index.timings.get("train") is not trained:  # this add crossed the threshold
            self.seconds["train"] += self.index.timings["train"]
            spent -= self.index.timings["train"]
        self.seconds["write"] += spent
        self.rows += len(ids)
        self.written += len(ids)
        return len(ids)

    def finish(self, checkpoint: bool = True) -> dict:
        """Checkpoint (unless told the store is published already) and close the store; returns
        the shard's figures."""
        t0 = time.perf_counter()
        self.index.config = self.own
        if checkpoint:
            self.index.checkpoint()
        self.seconds["checkpoint"] = time.perf_counter() - t0
        st = self.index.stats()
        self.index.close(checkpoint=False)
        self.index = None
        mem = st["memory"]
        return {"shard": self.shard, "rows": int(st["rows"]), "count": int(st["count"]), "found": self.found,
                "written": self.written, "nlist": st["nlist"], "phase": st["phase"],
                "bytes_per_memory": float(st["bytes_per_memory"] or 0.0), "ram_bytes": int(mem["anon_bytes"] +
                                                                                         mem["mapped_bytes"]),
                "disk_bytes": int(mem["disk_bytes"]), "rss_anon": st["process"]["rss_anon"],
                "seconds": dict(self.seconds)}

    def abort(self, checkpoint: bool = True) -> None:
        """Close after a failed ingest: the rows added so far are published (``checkpoint``) or
        left in the log; never raises."""
        if self.index is None:
            return
        self.index.config = self.own
        try:
            self.index.close(checkpoint=checkpoint)
        except Exception as e:  # the log keeps every acknowledged add: the next open replays it
            log.warning("shard %d: closing after a failed ingest: %s", self.shard, e)
        self.index = None
