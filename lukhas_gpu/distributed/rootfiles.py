"""On-disk layout of a sharded root and the global ids of its memories.

A sharded root is a directory of ordinary stores::

    root/
      shards.json      format, version, shard count, dim, the id scheme, the state; the CRC-32
                       of its own content (like a generation's manifest)
      shard-00000/     an ordinary lukhas_gpu store (MemoryIndex.create / open)
      shard-00001/
      ...

Every shard is opened, verified, checkpointed and rolled back like any store; nothing in a shard
knows it is one. The root file is written once by the ingest that creates the root (state
``"ingesting"``, with the identity of its input under ``"ingest"``, which a resumed run must
match) and replaced atomically when the ingest ends (``"complete"``). The ingest sends input row
``r`` to shard ``r % shards`` as its row ``r // shards`` (``distributed.partition``).

**Global ids.** A memory's id in a sharded root is ``(shard << SHARD_SHIFT) | row``: a store's
row ids are below ``2**32`` (``util.bounds.MAX_ROWS``), so the low 32 bits are the row in its
shard and the bits above are the shard number (at most ``MAX_SHARDS``). Ids are stable: a row
never moves within its shard (compaction keeps row ids), and a root never changes its shard
count. ``-1`` (padding in a :class:`SearchResult`) stays ``-1``.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import zlib

import numpy as np

from ..store.layout import CorruptStoreError, fsync_dir

__all__ = ["ROOT_FILE", "ROOT_FORMAT", "ROOT_FORMAT_VERSION", "SHARD_SHIFT", "MAX_SHARDS", "ROW_MASK",
           "shard_dir", "shard_name", "global_ids", "split_ids", "write_root", "read_root",
           "is_sharded_root", "shard_dirs"]

ROOT_FILE = "shards.json"
ROOT_FORMAT = "lukhas_gpu-sharded"
ROOT_FORMAT_VERSION = 1
SHARD_SHIFT = 32
ROW_MASK = (1 << SHARD_SHIFT) - 1
#: A root holds at most this many shards (ids stay below 2**47: exact in float64 and JSON).
MAX_SHARDS = 1 << 15
_STATES = ("ingesting", "complete")
_CRC = "root_crc32"
_MAX_ROOT_BYTES = 1 << 20
_SHARD_RE = re.compile(r"shard-(\d{5})")


def shard_name(shard: int) -> str:
    if not (isinstance(shard, (int, np.integer)) and 0 <= int(shard) < MAX_SHARDS):
        raise ValueError(f"shard number {shard!r} is outside 0..{MAX_SHARDS - 1}")
    return f"shard-{int(shard):05d}"


def shard_dir(root, shard: int) -> pathlib.Path:
    return pathlib.Path(root) / shard_name(shard)


def global_ids(shard: int, rows) -> np.ndarray:
    """Rows of one shard -> global ids (int64, same shape; ``-1`` stays ``-1``)."""
    shard_name(shard)  # bounds
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.max() > ROW_MASK):
        raise ValueError(f"row id {int(rows.max())} does not fit the {SHARD_SHIFT}-bit row field")
    return np.where(rows >= 0, (np.int64(shard) << SHARD_SHIFT) | rows, np.int64(-1))


def split_ids(ids, shards: int) -> tuple[np.ndarray, np.ndarray]:
    """Global ids -> ``(shard, row)`` int64 arrays (flattened); raises ``KeyError`` naming the
    first id whose shard is not in ``0..shards-1`` (or that is negative)."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    shard = ids >> SHARD_SHIFT
    bad = (ids < 0) | (shard >= shards)
    if bad.any():
        raise KeyError(f"id {int(ids[np.argmax(bad)])} names no shard of this root ({shards} shards)")
    return shard, ids & ROW_MASK


def _content_crc(doc: dict) -> int:
    body = {k: v for k, v in doc.items() if k != _CRC}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def write_root(root, *, shards: int, dim: int, state: str = "ingesting", **extra) -> dict:
    """Write ``root/shards.json`` atomically (temp file, fsync, rename, fsync the directory).
    ``extra`` holds JSON values the ingest wants kept (the config preset, the partition rule)."""
    if not (isinstance(shards, int) and 1 <= shards <= MAX_SHARDS):
        raise ValueError(f"shards must be an int in 1..{MAX_SHARDS}, got {shards!r}")
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if state not in _STATES:
        raise ValueError(f"state must be one of {_STATES}, got {state!r}")
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    doc = {"format": ROOT_FORMAT, "version": ROOT_FORMAT_VERSION, "shards": shards, "dim": dim,
           "shard_shift": SHARD_SHIFT, "state": state, **extra}
    doc[_CRC] = _content_crc(doc)
    data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
    tmp = root / (ROOT_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / ROOT_FILE)
    fsync_dir(root)
    return doc


def is_sharded_root(path) -> bool:
    return (pathlib.Path(path) / ROOT_FILE).is_file()


def read_root(root) -> dict:
    """``root/shards.json``, checked: its CRC, the format and version, the bounds of its numbers,
    and a store directory for every shard. Raises :class:`CorruptStoreError` naming the problem,
    ``FileNotFoundError`` when ``root`` is no sharded root."""
    root = pathlib.Path(root)
    path = root / ROOT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a sharded root (no {ROOT_FILE})")
    if path.stat().st_size > _MAX_ROOT_BYTES:
        raise CorruptStoreError(path, f"{path.stat().st_size} bytes, over the {_MAX_ROOT_BYTES}-byte bound")
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptStoreError(path, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise CorruptStoreError(path, "not a JSON object")
    if doc.get(_CRC) != _content_crc(doc):
        raise CorruptStoreError(path, "its content does not match its CRC-32 (damaged)")
    if doc.get("format") != ROOT_FORMAT or doc.get("version") != ROOT_FORMAT_VERSION:
        raise CorruptStoreError(path, f"format {doc.get('format')!r} version {doc.get('version')!r}, "
                                      f"expected {ROOT_FORMAT!r} {ROOT_FORMAT_VERSION}")
    for key, hi in (("shards", MAX_SHARDS), ("dim", 1 << 16)):
        v = doc.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= hi):
            raise CorruptStoreError(path, f"{key} = {v!r} is outside 1..{hi}")
    if doc.get("shard_shift") != SHARD_SHIFT:
        raise CorruptStoreError(path, f"shard_shift {doc.get('shard_shift')!r}, expected {SHARD_SHIFT}")
    if doc.get("state") not in _STATES:
        raise CorruptStoreError(path, f"state {doc.get('state')!r} is not one of {_STATES}")
    return doc


def shard_dirs(root) -> list[pathlib.Path]:
    """The ``shard-NNNNN`` directories present under ``root``, in shard order."""
    root = pathlib.Path(root)
    return sorted(p for p in root.iterdir() if p.is_dir() and _SHARD_RE.fullmatch(p.name))
