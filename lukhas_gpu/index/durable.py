"""The index as a durable store: write a generation from the parts, rebuild the parts from one,
replay the write-ahead log, roll back, verify.

The facade's ``create``/``open``/``checkpoint``/``save``/``rollback``/``verify`` are thin calls
into here; file names come from :mod:`lukhas_gpu.store.layout`, bytes from each component's own
``to_arrays()``.
"""
from __future__ import annotations

import logging
import pathlib
import shutil

import numpy as np

from ..config import IndexConfig
from ..records.contents import ContentArena
from ..records.metadata import MetadataColumns
from ..records.tags import TagIndex
from ..records.tombstones import Tombstones
from ..store import layout
from ..store.persist import GenerationReader, write_generation
from ..util.device import faiss_module
from ..util.ids import as_ids
from ..vectors.store import VectorStore

log = logging.getLogger(__name__)

__all__ = ["OP_ADD", "OP_UPDATE", "OP_DELETE", "create", "open_store", "close", "write", "load", "replay_wal",
           "reset_wal", "apply_record", "rollback", "verify"]

#: Write-ahead log operations.
OP_ADD, OP_UPDATE, OP_DELETE = 1, 2, 3
#: Content records decoded at once by verify().
VERIFY_CHUNK = 65536


def create(index_cls, path, dim: int, config):
    """``MemoryIndex.create``: a new store at ``path``, open for writing (lock held)."""
    path = pathlib.Path(path)
    if (path / layout.CURRENT).exists():
        raise layout.StoreError(f"{path} already holds a store; use MemoryIndex.open({str(path)!r}, mode='w')")
    path.mkdir(parents=True, exist_ok=True)
    layout.acquire_lock(path)
    try:
        index = index_cls(dim, config)
        index.path, index.mode = path, "w"
        index.checkpoint()
    except BaseException:
        layout.release_lock(path)
        raise
    return index


def open_store(index_cls, path, mode: str, *, verify: bool):
    """``MemoryIndex.open``: the published generation (plus, for the writer, the log replayed)."""
    if mode not in ("r", "w"):
        raise ValueError(f"mode must be 'r' or 'w', got {mode!r}")
    path = pathlib.Path(path)
    layout.current_generation(path)  # a clear error before taking any lock
    if mode == "r":  # the generation plus the log, changing no file (see reader.py)
        from . import reader
        return reader.open_reader(index_cls, path, verify=verify)
    if mode == "w":
        layout.acquire_lock(path)
    try:
        gen_dir = layout.current_generation(path)  # read under the lock: no checkpoint races it
        index, _ = load(index_cls, path, gen_dir, writable=mode == "w", checksums=True if verify else "small")
        index.path, index.mode = path, mode
        if mode == "w":
            replay_wal(index)
    except BaseException:
        if mode == "w":
            layout.release_lock(path)
        raise
    return index


def close(index, *, checkpoint: bool) -> None:
    """``MemoryIndex.close``: a writer checkpoints what its log holds (``checkpoint``), then
    releases the log and the lock whatever happened; a reader just stops."""
    if index.mode == "w" and index.path is not None:
        try:
            if checkpoint and index._wal is not None and len(index._wal):
                index.checkpoint()
        finally:
            if index._wal is not None:
                index._wal.close()
                index._wal = None
            layout.release_lock(index.path)
    index.mode = None


def write(index, root) -> pathlib.Path:
    """Write every part of ``index`` as a new generation of the store at ``root`` and publish it."""
    parts = index.parts
    parts.vectors.flush()
    arena = parts.contents.to_arrays()
    raw = {layout.VECTORS: parts.vectors.array, layout.CONTENT: arena.pop("buffer")}
    npz = {layout.CONTENT_INDEX: arena, layout.METADATA: parts.meta.to_arrays(), layout.TAGS: parts.tags.to_arrays(),
           layout.ENCODER: parts.encoder_to_arrays(), layout.PROBE: parts.probe.to_arrays(),
           layout.DRIFT: parts.drift.to_arrays()}
    if parts.calib is not None:
        npz[layout.CALIBRATION] = {"rows": parts.calib}
    writers, ann = {}, None
    if parts.ann is not None:
        a = parts.ann
        writers[layout.ANN] = lambda path: faiss_module().write_index(a.index, path)
        ann = {"nlist": a.nlist, "pq_m": a.pq_m, "coarse": a.coarse}
    manifest = {"dim": index.dim, "rows": parts.rows, "count": parts.live, "config": index.config.to_dict(),
                "ann": ann}
    return write_generation(root, raw=raw, npz=npz, blobs={layout.TOMBSTONES: parts.tombstones.to_bytes()},
                            writers=writers, manifest=manifest)


def load(index_cls, root, gen_dir, *, writable: bool, checksums="small", private: bool = False):
    """Rebuild an index from ``gen_dir``: ``(index, manifest)``. Bulk arrays are memory-mapped.

    A writable index works on a copy of the vectors file (``root/vectors.work``), so appends
    never touch a published generation; a ``private`` one (a reader replaying the log) maps it
    copy-on-write and keeps its appends in its own memory.
    """
    gen = GenerationReader(gen_dir, checksums=checksums)
    manifest = gen.manifest
    config = IndexConfig.from_dict(manifest["config"])
    dim, rows = int(manifest["dim"]), int(manifest["rows"])
    vec_file = gen.file(layout.VECTORS)
    if vec_file.stat().st_size != rows * dim:
        raise layout.CorruptStoreError(vec_file, f"holds {vec_file.stat().st_size} bytes, expected {rows} x {dim}")
    if writable:
        work = pathlib.Path(root) / layout.VECTORS_WORK
        shutil.copyfile(vec_file, work)
        vectors = VectorStore.attach(work, dim, rows, writable=True, in_memory=config.vector_storage == "memory")
    else:
        vectors = VectorStore.attach(vec_file, dim, rows, writable=False, private=private)
    index = index_cls(dim, config, _vectors=vectors)
    parts = index.parts
    try:
        arena = gen.npz(layout.CONTENT_INDEX)
        arena["buffer"] = gen.raw(layout.CONTENT)
        parts.contents = ContentArena.from_arrays(arena, max_content_bytes=config.max_content_bytes)
        parts.meta = MetadataColumns.from_arrays(gen.npz(layout.METADATA))
        parts.tags = TagIndex.from_arrays(gen.npz(layout.TAGS))
    except ValueError as e:  # arrays that do not fit together: name the generation
        raise layout.CorruptStoreError(gen.path, f"inconsistent payload files ({e})") from None
    try:
        parts.tombstones = Tombstones.from_bytes(gen.bytes(layout.TOMBSTONES))
    except Exception as e:
        raise layout.CorruptStoreError(gen.path / layout.TOMBSTONES, f"unreadable ({e})") from None
    parts.encoder_arrays = gen.npz(layout.ENCODER)
    if gen.has(layout.CALIBRATION):
        parts.calib = gen.npz(layout.CALIBRATION)["rows"]
    try:  # stores written before the probe existed have neither file: they start empty
        if gen.has(layout.PROBE):
            parts.probe.load_arrays(gen.npz(layout.PROBE))
        if gen.has(layout.DRIFT):
            parts.drift.load_arrays(gen.npz(layout.DRIFT))
    except (KeyError, ValueError) as e:
        raise layout.CorruptStoreError(gen.path, f"inconsistent probe or drift files ({e})") from None
    if manifest.get("ann"):
        from ..vectors.ann import IVFPQIndex

        a = manifest["ann"]
        faiss_index = faiss_module().read_index(str(gen.file(layout.ANN)))
        parts.ann = IVFPQIndex.from_faiss(faiss_index, nlist=a["nlist"], pq_m=a["pq_m"], coarse=a["coarse"],
                                          seed=config.seed)
    for part, n in (("metadata", len(parts.meta)), ("content", len(parts.contents)), ("tags", len(parts.tags))):
        if n != rows:
            raise layout.CorruptStoreError(gen.path, f"{part} holds {n} rows, the vectors {rows}")
    return index, manifest


# -- the write-ahead log --------------------------------------------------------------------------
def reset_wal(index, base: int) -> None:
    """Start an empty log that follows generation ``base`` (after a checkpoint)."""
    from ..store.wal import WriteAheadLog

    if index._wal is None:
        wal_path = index.path / layout.WAL
        wal_path.unlink(missing_ok=True)  # only at create: nothing to keep
        index._wal = WriteAheadLog(wal_path, base=base, sync=index.config.wal_sync)
    else:
        index._wal.reset(base)


def replay_wal(index) -> None:
    """Apply the operations logged since the published generation, then keep logging.

    A torn tail (a crash mid-append: that call never returned) is cut, never replayed. A log
    that follows another generation (a crash between publishing a checkpoint and restarting
    the log: its records are in the checkpoint) is dropped.
    """
    from ..store.wal import WalReader, WriteAheadLog

    wal_path = index.path / layout.WAL
    base = layout.generation_number(layout.current_generation(index.path))
    applied = 0
    if wal_path.exists():
        with WalReader(wal_path) as reader:
            stale = reader.base != base
            if not stale:
                for rec in reader:
                    _apply(index, rec.op, rec.fields)
                    applied += 1
        if stale:
            log.warning("%s follows generation %s, the store is at %s: its records are in the checkpoint; "
                        "dropped", wal_path, reader.base, base)
            wal_path.unlink()
    index._wal = WriteAheadLog(wal_path, base=base, sync=index.config.wal_sync)
    if applied:
        log.info("replayed %d logged operations from %s", applied, wal_path)


def _apply(index, op: int, f: dict) -> None:
    apply_record(index, op, f)


def apply_record(index, op: int, f: dict) -> None:
    """Apply one logged operation through the write paths of :mod:`.writes` (validated again,
    never logged again): the writer's replay and a reader's (:mod:`.reader`) end in one state."""
    from . import writes

    if op == OP_ADD:
        writes.commit_add(index, writes.prepare_add(index, f["x"], f["contents"], f["tags"], f["ts"], f["imp"]))
    elif op == OP_UPDATE:
        rows = index.parts.tombstones.check(as_ids(f["ids"]), index.parts.rows)
        writes.apply_update(index, writes.prepare_update(index, rows, f["contents"], f["tags"], f["ts"], f["imp"]))
    elif op == OP_DELETE:
        writes.apply_delete(index, writes.prepare_delete(index, f["ids"]))
    else:
        raise layout.CorruptStoreError(index.path / layout.WAL, f"unknown operation {op}")


def rollback(path) -> pathlib.Path:
    """Publish the previous generation of the closed store at ``path`` again (and drop the
    write-ahead log, which belongs to the newer one)."""
    path = pathlib.Path(path)
    layout.acquire_lock(path)
    try:
        prev = layout.previous_generation(path)
        if prev is None:
            raise layout.StoreError(f"{path} has no previous generation to roll back to")
        layout.read_manifest(prev)
        layout.publish(path, prev.name)
        (path / layout.WAL).unlink(missing_ok=True)
        return prev
    finally:
        layout.release_lock(path)


def verify(index) -> dict:
    """Check the published generation (every file's size and CRC-32) and the parts' consistency
    (every live id has its vector, content, metadata and tags); see ``MemoryIndex.verify``."""
    parts = index.parts
    where = str(index.path) if index.path is not None else "<memory>"
    report = {"rows": parts.rows, "count": parts.live}
    if index.path is not None:
        gen = GenerationReader(layout.current_generation(index.path), checksums=True)
        report.update(generation=gen.manifest["generation"], files=len(gen.files))
    n = parts.rows
    for part, m in (("metadata", len(parts.meta)), ("content", len(parts.contents)), ("tags", len(parts.tags))):
        if m != n:
            raise layout.CorruptStoreError(where, f"{part} holds {m} rows, the vectors {n}")
    if parts.ann is not None and parts.ann.ntotal != parts.live:
        raise layout.CorruptStoreError(where, f"the ANN holds {parts.ann.ntotal} vectors, the index {parts.live} "
                                              "live memories")
    try:  # every record decodes
        for start in range(0, n, VERIFY_CHUNK):
            parts.contents.get(np.arange(start, min(n, start + VERIFY_CHUNK)))
    except Exception as e:
        place = f"{index.path}/{layout.CONTENT}" if index.path is not None else "<memory> contents"
        raise layout.CorruptStoreError(place, f"a content record does not decode ({type(e).__name__}: {e})") from None
    report["ok"] = True
    return report
