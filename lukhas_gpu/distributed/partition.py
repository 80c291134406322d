"""Where a distributed ingest resumes: the partition rule, the input's identity, the checks.

**Partition.** The input is read in a deterministic order (Ray Data's ``preserve_order``), so its
rows have stable numbers ``r = 0, 1, ...``. Row ``r`` goes to shard ``r % shards``, as that
shard's row ``r // shards``: its global id is ``((r % shards) << 32) | (r // shards)``. Shard ``s``
of an input of ``n`` rows holds ``ceil((n - s) / shards)`` of them (:func:`shard_rows`), which
sizes its IVF before the first row arrives.

**Progress.** Each shard's store is the record of its own progress: it holds a prefix of its
rows, as many as its write-ahead log acknowledged (:mod:`.writers`). A resumed ingest asks every
shard how many it holds and sends only the rest; nothing else has to be written per batch.

**Identity.** ``shards.json`` keeps the input's identity (:func:`identity`): its row count and
schema, its files' names, sizes and mtimes (for a path input), the columns read, the encoder,
and a digest of its first rows. A resume with anything else is refused (:func:`check_same`),
and the last row each shard holds is compared with the input's row of that number (its
content), so a dataset whose order changed is refused too.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import pathlib

__all__ = ["PARTITION", "shard_rows", "identity", "check_same", "files_identity"]

#: The partition rule, as recorded in ``shards.json``.
PARTITION = "row % shards"


def shard_rows(total: int, shards: int) -> list[int]:
    """Rows of each shard for an input of ``total`` rows (row ``r`` -> shard ``r % shards``)."""
    return [max(0, (total - s + shards - 1) // shards) for s in range(shards)]


def files_identity(path, files) -> dict:
    """A path input's files: their count, bytes and a digest of (relative name, size, mtime)."""
    base = pathlib.Path(path)
    h = hashlib.blake2b(digest_size=16)
    total = 0
    for f in files:
        st = os.stat(f)
        rel = f.name if f == base else os.path.relpath(f, base)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        total += st.st_size
    return {"path": os.path.abspath(path), "files": len(files), "bytes": total, "digest": h.hexdigest()}


def identity(*, rows: int, schema: dict, files: dict | None, columns: dict, encode) -> dict:
    """The input's identity as ``shards.json`` keeps it (the head digest is added by the ingest
    from the first batch)."""
    name = None
    if encode is not None:
        fn = encode if isinstance(encode, type) or inspect.isroutine(encode) else type(encode)
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    return {"rows": int(rows), "schema": dict(schema), "files": files, "columns": dict(columns), "encode": name}


def check_same(root, recorded: dict, now: dict) -> None:
    """Raise ``ValueError`` naming what differs between the identity ``root`` records and the
    input given now (a path input's own path may change; its files may not)."""
    diffs = []
    for key in ("rows", "schema", "columns", "encode", "head"):
        if key in now and recorded.get(key) != now[key]:
            diffs.append(f"{key}: recorded {_short(recorded.get(key))}, now {_short(now[key])}")
    rf, nf = recorded.get("files"), now.get("files")
    if "files" in now and _files_key(rf) != _files_key(nf):
        diffs.append(f"files: recorded {_short(rf)}, now {_short(nf)} (their names, sizes or mtimes changed)")
    if diffs:
        raise ValueError(f"{root} holds an ingest of another input ({'; '.join(diffs)}); an ingest resumes only "
                         "with the input it began with: ingest this one into a new root")


def _files_key(files: dict | None):
    return None if files is None else tuple(files.get(k) for k in ("files", "bytes", "digest"))


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 160 else text[:157] + "..."
