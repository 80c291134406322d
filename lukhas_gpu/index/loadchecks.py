"""Every loaded structure held to the manifest's row count: arrays whose length or values index
rows (tombstones, tag lists, metadata columns, content offsets, the id map's key table, free
metadata, namespaces and validity windows, sparse and text arenas, the probe's sampled ids), each through the one helper
:func:`check_rows_within`, which names the file; and the generation's int8 rows as a writer
or a reader holds them (:func:`attach_vectors`), with the block CRCs they are checked against."""
from __future__ import annotations

import contextlib
import pathlib

import numpy as np

from ..store import layout
from ..vectors.store import VectorStore

__all__ = ["check_loaded", "check_rows_within", "expect_vector_crcs", "attach_vectors", "from_npz"]


def from_npz(gen, name: str, cls):
    """``cls.from_arrays`` of the generation's file ``name``; CorruptStoreError naming the file
    when its arrays do not fit together."""
    try:
        return cls.from_arrays(gen.npz(name))
    except (ValueError, KeyError) as e:
        raise layout.CorruptStoreError(gen.path / name, f"inconsistent arrays ({e})") from None


def check_rows_within(path, what: str, n_rows: int, *, length=None, values=None, length_at_most: bool = False) -> None:
    """The one bound on what a loaded file says about rows: ``length`` (how many rows an array
    covers) equal to ``n_rows`` (at most ``n_rows`` with ``length_at_most``), and every one of
    ``values`` (row numbers: a numpy array or a roaring bitmap) in ``0..n_rows - 1``.
    CorruptStoreError naming ``path`` and ``what`` otherwise."""
    if length is not None and (length > n_rows if length_at_most else length != n_rows):
        raise layout.CorruptStoreError(path, f"{what}: {length} rows, the manifest says {n_rows}")
    if values is not None and len(values):
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= n_rows:
            raise layout.CorruptStoreError(path, f"{what}: row {hi if hi >= n_rows else lo} is outside the {n_rows} "
                                          "rows of the manifest")


def check_loaded(parts, gen, rows: int, count: int) -> None:
    """CorruptStoreError naming the file of the first part of ``parts`` (just loaded from the
    generation ``gen``, a ``GenerationReader``) that covers or names rows outside ``rows``, or
    whose deletions do not leave the manifest's ``count`` live memories."""
    def within(name, what, **kw):
        check_rows_within(gen.path / name, what, rows, **kw)

    within(layout.VECTORS, "the int8 vectors", length=len(parts.vectors))
    within(layout.CONTENT_INDEX, "the content offsets", length=len(parts.contents))
    for col in ("timestamp", "importance_q", "flags"):
        within(layout.METADATA, f"the {col} column", length=len(getattr(parts.meta, col)))
    within(layout.TAGS, "the tag lists", length=len(parts.tags))
    within(layout.DOCMETA, "the free metadata", length=len(parts.docmeta))
    within(layout.NAMESPACES, "the namespace column", length=len(parts.namespaces))
    within(layout.VALIDITY, "the validity windows", length=len(parts.validity))
    if parts.idmap is not None:
        within(layout.IDMAP, "the id map's key table", length=len(parts.idmap))
    deleted = parts.tombstones.bitmap
    within(layout.TOMBSTONES, "the deletions", values=deleted)
    if rows - len(deleted) != count:
        raise layout.CorruptStoreError(gen.path / layout.TOMBSTONES, f"{len(deleted)} deletions leave "
                                                                     f"{rows - len(deleted)} live memories, the "
                                                                     f"manifest says {count}")
    for name, part in ((layout.SPARSE, parts.sparse), (layout.TEXT, parts.text)):
        if part is not None and gen.has(name):
            within(name, "the memories with a slot", length=len(part.arena.doc_slot.view()), length_at_most=True)
            within(name, "the slots' memories", values=part.arena.slot_doc.view())
    if gen.has(layout.PROBE) and parts.probe.memories.with_ids:
        within(layout.PROBE, "the sampled memories", values=parts.probe.memories.ids)


def expect_vector_crcs(vectors, gen, rows: int) -> None:
    """The block CRCs of a generation's int8 rows, or, for one written before them, the whole
    file's CRC-32 as one block."""
    source = str(gen.file(layout.VECTORS))
    with _naming_crcs(gen):
        if gen.has(layout.VECTOR_CRCS):
            a = gen.npz(layout.VECTOR_CRCS)
            vectors.expect_crcs(a["crcs"], int(a["block_rows"]), source)
        elif rows:
            vectors.expect_crcs(np.array([gen.files[layout.VECTORS]["crc32"]], np.uint32), rows, source)


@contextlib.contextmanager
def _naming_crcs(gen):
    """A block CRC file whose arrays do not fit the rows: CorruptStoreError naming it."""
    try:
        yield
    except (ValueError, KeyError, TypeError) as e:
        raise layout.CorruptStoreError(gen.path / layout.VECTOR_CRCS, f"inconsistent arrays ({e})") from None


def attach_vectors(root, gen, config, dim: int, rows: int, *, writable: bool, checksums, private: bool):
    """The generation's vectors: a writer's verified rows (the published file mapped copy-on-write,
    or, under ``vector_storage="mmap"``, a working copy), or the file mapped for a reader."""
    vec_file = gen.file(layout.VECTORS)
    if writable:
        # What a writer carries into its next checkpoint is verified first, so a checkpoint never
        # launders damaged bytes into a generation with fresh CRCs: the vectors (while they are
        # copied, when a copy is made), the content records here; the rows mapped keep their block
        # CRCs, checked again by the next checkpoint (VectorStore.rebase).
        if checksums is not True:
            layout.verify_crc(gen.file(layout.CONTENT), layout.crc32_file(gen.file(layout.CONTENT)),
                              gen.files[layout.CONTENT]["crc32"])
        work = pathlib.Path(root) / layout.VECTORS_WORK
        if config.vector_storage == "mmap":
            layout.copy_verified(vec_file, work, gen.files[layout.VECTORS]["crc32"])
            return VectorStore.attach(work, dim, rows, writable=True)
        if checksums is not True:
            layout.verify_crc(vec_file, layout.crc32_file(vec_file), gen.files[layout.VECTORS]["crc32"])
        work.unlink(missing_ok=True)  # the working copy an older writer kept
        vectors = VectorStore.attach(vec_file, dim, rows, writable=False, private=True)
        if gen.has(layout.VECTOR_CRCS):
            with _naming_crcs(gen):
                a = gen.npz(layout.VECTOR_CRCS)
                vectors.keep_crcs(a["crcs"], int(a["block_rows"]))
        return vectors
    vectors = VectorStore.attach(vec_file, dim, rows, writable=False, private=private)
    if checksums is not True:  # mapped unverified: each block checked when first read
        expect_vector_crcs(vectors, gen, rows)
    return vectors
