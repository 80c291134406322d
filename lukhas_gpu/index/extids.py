"""External ids, upsert and free metadata on the write paths (called from :mod:`.writes`).

An add names its memories with ``ids`` (when ``IndexConfig.external_ids`` is set) and may carry
one metadata dict per memory. Both are validated in the *prepare* step, logged as optional
fields of the add record (``ext``: the ids; ``meta``: compact JSON texts; records without them,
written before this existed, replay as before) and applied with the rest: an id that is already
live is an upsert, its old row deleted and the new one appended, in the one record, so the log
never holds half of it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..records.docmeta import validate_metadata
from . import ivflists

__all__ = ["NO_IDS", "Logged", "ExtAdd", "prepare_add", "upserted_rows", "append", "prepare_update_fields",
           "replace_vectors", "resolve"]

#: A replayed add that carries no ids (placeholder rows of a salvage): rows without an id.
NO_IDS = object()
#: Most ids resolved per call.
MAX_IDS = 10_000_000


class Logged(list):
    """Metadata as the log holds it (compact JSON texts, validated when they were logged)."""


@dataclasses.dataclass
class ExtAdd:
    """The external ids (encoded, and as given for the log) and metadata texts of an add."""

    keys: tuple | None
    raw_ids: object
    meta: list | None
    dicts: list | None = None  # the validated dicts themselves (the writer's; a replay has the texts)

    def log_fields(self) -> dict:
        out = {}
        if self.raw_ids is not None:
            out["ext"] = self.raw_ids
        if self.meta is not None:
            out["meta"] = list(self.meta)
        return out


def _id_list(index, ids, n: int | None, what: str = "ids"):
    """``(raw ids for the log, encoded keys)``, checked: the index's id kind, the count."""
    kind = index.config.external_ids
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (str, bytes, int, np.integer)):
        ids = [ids]
    if not hasattr(ids, "__len__"):
        raise TypeError(f"{what} must be a sequence of {kind} ids, got {type(ids).__name__}")
    if len(ids) > MAX_IDS:
        raise ValueError(f"{what}: {len(ids)} ids in one call; at most {MAX_IDS}")
    if n is not None and len(ids) != n:
        raise ValueError(f"{what} has {len(ids)} entries, expected {n} (one per memory)")
    keys = index.parts.idmap.encode(ids, what)
    if kind == "int":
        raw = np.asarray(keys[1]).view(np.int64).copy()
    else:
        raw = list(ids)
    return raw, keys


def prepare_add(index, n: int, ids, metadata) -> ExtAdd | None:
    """Validate the ids and metadata of an add of ``n`` memories (nothing changes)."""
    kind = index.config.external_ids
    required = ids is not NO_IDS
    ids = None if ids is NO_IDS else ids
    raw = keys = None
    if ids is not None:
        if kind is None:
            raise ValueError("this index assigns its own ids (IndexConfig.external_ids is None); "
                             "create it with external_ids='str' or 'int' to name memories")
        raw, keys = _id_list(index, ids, n)
        if (len(set(raw)) if kind == "str" else len(np.unique(raw))) != n:
            raise ValueError("ids repeat within the batch; each id may appear once per add")
    elif kind is not None and required:
        raise ValueError(f"ids= is required: this index names its memories (IndexConfig.external_ids={kind!r})")
    dicts = None
    if isinstance(metadata, Logged):
        meta = list(metadata)
        if len(meta) != n:
            raise ValueError(f"a logged add holds {len(meta)} metadata entries for {n} memories")
    else:
        meta = validate_metadata(metadata, n, index.parts.docmeta.fields) if metadata is not None else None
        dicts = list(metadata) if metadata is not None else None
    if keys is None and meta is None:
        return None
    return ExtAdd(keys, raw, meta, dicts)


def upserted_rows(index, ext: ExtAdd | None) -> np.ndarray:
    """Live rows of ids the add names again (deleted before it appends: an upsert)."""
    if ext is None or ext.keys is None:
        return np.zeros(0, np.int64)
    rows = index.parts.idmap.find(ext.keys, index.parts.tombstones.bitmap)
    return np.unique(rows[rows >= 0])


def append(index, ext: ExtAdd | None, n: int) -> None:
    """The new rows' ids and metadata (every row gets an entry: rows stay aligned)."""
    parts = index.parts
    if parts.idmap is not None:
        if ext is not None and ext.keys is not None:
            parts.idmap.append(ext.keys)
        else:
            parts.idmap.append_none(n)
    parts.docmeta.append((ext.dicts if ext.dicts is not None else ext.meta) if ext is not None else None, n)


def prepare_update_fields(index, n: int, embeddings, metadata):
    """``(float batch or None, metadata texts or None)`` of an update of ``n`` rows."""
    x = None
    if embeddings is not None:
        from ..util.arrays import as_batch, check_nonzero

        x, _ = as_batch(embeddings, index.dim, "embeddings")
        if x.shape[0] != n:
            raise ValueError(f"embeddings has {x.shape[0]} rows, expected {n} (one per id)")
        if index.config.metric == "cosine":
            check_nonzero(x, "embeddings")
    if isinstance(metadata, Logged):
        meta = list(metadata)
    else:
        meta = validate_metadata(metadata, n, index.parts.docmeta.fields) if metadata is not None else None
    return x, meta


def replace_vectors(index, rows: np.ndarray, x) -> None:
    """New vectors for live ``rows``, in place: the int8 rows and the IVF entries (the lists of
    the old ones re-encoded without them, the new ones added under the same ids; see
    ``ivflists.replace``), the calibration floats, the recall probe's sampled originals; the
    device mirror is rebuilt on use."""
    import torch

    parts = index.parts
    codes, proj = index.encoder(x)
    sample = parts.probe.memories
    if len(sample) and sample.with_ids:
        hit = np.flatnonzero(np.isin(sample.ids, rows))
        if len(hit):
            where = {int(r): i for i, r in enumerate(rows.tolist())}
            idx = torch.tensor([where[int(r)] for r in sample.ids[hit]])
            sample.vectors[hit] = index.encoder.normalize(x[idx]).cpu().numpy().astype(np.float16)
    ivflists.replace(index, rows, codes.cpu().numpy(), proj.cpu().numpy())
    for st in parts.stages():  # the old nodes superseded, the rows found at their new vectors
        st.replace(proj.cpu().numpy(), rows)
    if parts.calib is not None:
        inside = rows < len(parts.calib)
        parts.calib[rows[inside]] = x[torch.from_numpy(np.flatnonzero(inside))].to("cpu", torch.float32).numpy()
    parts.mirror = None


def resolve(index, ids, what: str = "ids") -> np.ndarray:
    """The live rows of external ids (ValueError naming the first unknown or deleted one)."""
    _, keys = _id_list(index, ids, None, what)
    rows = index.parts.idmap.find(keys, index.parts.tombstones.bitmap)
    if (rows < 0).any():
        bad = int(np.flatnonzero(rows < 0)[0])
        raise ValueError(f"unknown id {_nth(ids, bad)!r} "
                         "(never added, or deleted)")
    return rows


def _nth(ids, i: int):
    if isinstance(ids, (str, bytes, int, np.integer)):
        return ids
    return ids[i].item() if isinstance(ids, np.ndarray) else list(ids)[i]
