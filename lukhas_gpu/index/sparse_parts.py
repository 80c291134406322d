"""The sparse vectors and the BM25 text index of an index, wired into the write paths, the store
and ``verify``: one function per seam, called from :mod:`.writes` and :mod:`.durable`.

* ``parts.sparse`` (:class:`~lukhas_gpu.sparse.SparseVectors`) exists once any memory was added
  with a sparse vector; memories without one simply have none.
* ``parts.text`` (:class:`~lukhas_gpu.sparse.TextIndex`) exists with ``config.text_index``; every
  memory has a text slot (bytes and ``None`` contents are empty texts), re-tokenized when its
  content is updated.

The write-ahead log carries the sparse vectors as three optional fields of an add record
(``sparse_indptr``, ``sparse_indices``, ``sparse_values``); term counts are derived again from
the logged contents, so records without these fields (older logs) replay as before.
"""
from __future__ import annotations

import numpy as np

from ..sparse import BM25Params, PackedSparse, SparseVectors, TextIndex, Tokenizer, pack_sparse
from ..store import layout

__all__ = ["make_text", "prepare", "from_fields", "apply_add", "apply_update", "apply_delete", "persist", "load",
           "verify", "LOG_PREFIX"]

LOG_PREFIX = "sparse"


def make_text(config) -> TextIndex | None:
    if not config.text_index:
        return None
    return TextIndex(BM25Params(float(config.bm25_k1), float(config.bm25_b), config.bm25_variant),
                     Tokenizer(config.text_stopwords, config.text_stemmer))


def prepare(sparse, n: int) -> PackedSparse | None:
    """``add(..., sparse=)`` validated (nothing changes)."""
    if isinstance(sparse, PackedSparse):  # a replayed record, checked by from_fields
        if sparse.n != n:
            raise ValueError(f"the logged sparse vectors have {sparse.n} rows, the batch {n}")
        return sparse
    return None if sparse is None else pack_sparse(sparse, n)


def from_fields(fields: dict, n: int) -> PackedSparse | None:
    """The sparse vectors of a logged add record, or None (a record without them)."""
    return PackedSparse.from_fields(fields, LOG_PREFIX, n)


def apply_add(parts, ids: np.ndarray, packed: PackedSparse | None, raw_contents) -> None:
    if packed is not None:
        if parts.sparse is None:
            parts.sparse = SparseVectors()
        parts.sparse.append(ids, packed)
    if parts.text is not None:
        parts.text.set_texts(ids, raw_contents if raw_contents is not None else [None] * len(ids))


def apply_update(parts, rows: np.ndarray, raw_contents) -> None:
    if parts.text is not None and raw_contents is not None:
        parts.text.set_texts(rows, raw_contents)


def apply_delete(parts, rows: np.ndarray) -> None:
    if parts.sparse is not None:
        parts.sparse.delete(rows)
    if parts.text is not None:
        parts.text.delete(rows)


# -- the store ------------------------------------------------------------------------------------
_FILES = ((layout.SPARSE, layout.SPARSE_INDICES, layout.SPARSE_VALUES),
          (layout.TEXT, layout.TEXT_INDICES, layout.TEXT_VALUES))


def persist(parts) -> tuple[dict, dict]:
    """``(raw, npz)`` file contents of the sparse parts, for :func:`.durable.write`."""
    raw, npz = {}, {}
    for (meta, ind, val), arrays in zip(_FILES, (parts.sparse.to_arrays() if parts.sparse is not None else None,
                                                  parts.text.to_arrays() if parts.text is not None else None)):
        if arrays is None:
            continue
        raw[ind] = arrays.pop("indices")
        values = arrays.pop("values")
        raw[val] = values
        arrays["value_dtype"] = np.array(values.dtype.str)
        npz[meta] = arrays
    return raw, npz


def load(parts, gen) -> None:
    """Restore the sparse parts from a generation (``GenerationReader``); the bulk arrays are
    memory-mapped. ValueError for files that do not fit together."""
    for i, (meta, ind, val) in enumerate(_FILES):
        if not gen.has(meta):
            continue
        arrays = gen.npz(meta)
        dtype = np.dtype(str(arrays.pop("value_dtype")))
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"{meta}: value dtype {dtype} is neither float32 nor float16")
        for name, file, dt in (("indices", ind, np.uint32), ("values", val, dtype)):
            if gen.file(file).stat().st_size % np.dtype(dt).itemsize:
                raise ValueError(f"{file} is not a whole number of {np.dtype(dt).name} values")
            arrays[name] = gen.raw(file, dt)
        try:
            if i == 0:
                parts.sparse = SparseVectors.from_arrays(arrays)
            elif parts.text is not None:
                parts.text.load_arrays(arrays)
        except (ValueError, KeyError) as e:  # arrays that do not fit together: the file named
            raise layout.CorruptStoreError(gen.path / meta, f"inconsistent arrays ({e})") from None


def verify(parts, rows: int, deleted: np.ndarray) -> None:
    """Every live slot belongs to a live memory, and every deleted memory has no live slot
    (ValueError naming the part otherwise)."""
    for name, arena in (("sparse", parts.sparse.arena if parts.sparse is not None else None),
                        ("text", parts.text.arena if parts.text is not None else None)):
        if arena is None:
            continue
        ds = arena.doc_slot.view()
        if len(ds) > rows:
            raise ValueError(f"the {name} index names {len(ds)} memories, the index holds {rows}")
        live = np.flatnonzero(arena.dead.view() == 0)
        docs = arena.slot_doc.view()[live].astype(np.int64)
        if len(np.unique(docs)) != len(docs) or (len(docs) and not np.array_equal(
                ds[docs].astype(np.int64), live)):
            raise ValueError(f"the {name} index's slots and memories disagree")
        if len(deleted) and len(docs) and np.isin(docs, deleted).any():
            raise ValueError(f"the {name} index holds a vector of a deleted memory")
