"""Writing a :class:`MemoryIndex` as a store generation and reading it back (see storage.py)."""
from __future__ import annotations

import datetime as _dt
import logging
import pathlib
import shutil

import numpy as np
from pyroaring import BitMap

from . import layout as storage
from ..util.device import faiss_module

log = logging.getLogger(__name__)

__all__ = ["write_generation", "load_generation"]


def write_generation(index, root) -> pathlib.Path:
    """Write every part of ``index`` as a new generation of the store at ``root`` and publish it."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gen = storage.Generation(root, storage.next_generation_number(root))
    index._vectors.flush()
    gen.save_raw("vectors.i8", index._vectors.array)
    arena = index._contents.to_arrays()
    gen.save_raw("content.bin", arena.pop("buffer"))
    gen.save_npz("content.npz", arena)
    gen.save_npz("metadata.npz", index._meta.to_arrays())
    gen.save_npz("tags.npz", index._tags.to_arrays())
    gen.save_bytes("deleted.roaring", index._deleted.serialize())
    gen.save_npz("encoder.npz", index.encoder.to_arrays())
    if index._calib is not None:
        gen.save_npz("calibration.npz", {"rows": index._calib})
    gen.save_npz("probe.npz", index._probe.to_arrays())
    gen.save_npz("drift.npz", index._drift.to_arrays())
    ann = None
    if index._ann is not None:
        faiss_module().write_index(index._ann.index, str(gen.path("ann.faiss")))
        gen.added("ann.faiss")
        ann = {"nlist": index._ann.nlist, "pq_m": index._ann.pq_m, "coarse": index._ann.coarse}
    manifest = {"dim": index.dim, "rows": len(index._vectors), "count": len(index),
                "config": index.config.to_dict(), "ann": ann,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = gen.publish(manifest)
    storage.prune(root, keep=2)
    return path


def load_generation(index_cls, root, gen_dir, *, writable: bool, checksums="small"):
    """Rebuild an index from ``gen_dir``; bulk arrays are memory-mapped.

    A writable index works on a copy of the vectors file (``root/vectors.work``), so appends
    never touch a published generation.
    """
    from ..vectors.ann import IVFPQIndex
    from ..config import IndexConfig
    from ..records.metadata import MetadataColumns
    from ..records.contents import ContentArena
    from ..records.tags import TagIndex
    from ..vectors.store import VectorStore

    gen_dir = pathlib.Path(gen_dir)
    manifest = storage.read_manifest(gen_dir)
    storage.check_files(gen_dir, manifest, checksums=checksums)
    config = IndexConfig.from_dict(manifest["config"])
    dim, rows = int(manifest["dim"]), int(manifest["rows"])
    index = index_cls(dim, config)
    vec_file = gen_dir / "vectors.i8"
    if vec_file.stat().st_size != rows * dim:
        raise storage.CorruptStoreError(vec_file, f"holds {vec_file.stat().st_size} bytes, expected {rows} x {dim}")
    if writable:
        work = pathlib.Path(root) / "vectors.work"
        shutil.copyfile(vec_file, work)
        index._vectors.close()
        index._vectors = VectorStore.attach(work, dim, rows, writable=True,
                                            in_memory=config.vector_storage == "memory")
    else:
        index._vectors.close()
        index._vectors = VectorStore.attach(vec_file, dim, rows, writable=False)
    try:
        arena = storage.load_npz(gen_dir, "content.npz")
        buf_path = gen_dir / "content.bin"
        arena["buffer"] = (np.memmap(buf_path, dtype=np.uint8, mode="r") if buf_path.stat().st_size
                           else np.zeros(0, dtype=np.uint8))
        index._contents = ContentArena.from_arrays(arena, max_content_bytes=config.max_content_bytes)
        index._meta = MetadataColumns.from_arrays(storage.load_npz(gen_dir, "metadata.npz"))
        index._tags = TagIndex.from_arrays(storage.load_npz(gen_dir, "tags.npz"))
    except ValueError as e:  # arrays that do not fit together: name the generation
        raise storage.CorruptStoreError(gen_dir, f"inconsistent payload files ({e})") from None
    try:
        index._deleted = BitMap.deserialize((gen_dir / "deleted.roaring").read_bytes())
    except Exception as e:
        raise storage.CorruptStoreError(gen_dir / "deleted.roaring", f"unreadable ({e})") from None
    index.encoder.load_arrays(storage.load_npz(gen_dir, "encoder.npz"))
    if (gen_dir / "calibration.npz").exists():
        index._calib = storage.load_npz(gen_dir, "calibration.npz")["rows"]
    try:  # stores written before the probe existed have neither file: they start empty
        if (gen_dir / "probe.npz").exists():
            index._probe.load_arrays(storage.load_npz(gen_dir, "probe.npz"))
        if (gen_dir / "drift.npz").exists():
            index._drift.load_arrays(storage.load_npz(gen_dir, "drift.npz"))
    except (KeyError, ValueError) as e:
        raise storage.CorruptStoreError(gen_dir, f"inconsistent probe or drift files ({e})") from None
    if manifest.get("ann"):
        faiss_index = faiss_module().read_index(str(gen_dir / "ann.faiss"))
        a = manifest["ann"]
        index._ann = IVFPQIndex.from_faiss(faiss_index, nlist=a["nlist"], pq_m=a["pq_m"], coarse=a["coarse"],
                                           seed=config.seed)
    for part, n in (("metadata", len(index._meta)), ("content", len(index._contents)), ("tags", len(index._tags))):
        if n != rows:
            raise storage.CorruptStoreError(gen_dir, f"{part} holds {n} rows, the vectors {rows}")
    return index, manifest
