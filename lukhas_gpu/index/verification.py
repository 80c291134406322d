"""``MemoryIndex.verify``: the generation the store is at (every file's size and CRC-32), its
write-ahead log (damage anywhere but a torn tail, damaged last records kept aside and not yet
salvaged) and the parts' consistency (every live id has its vector, content, metadata and tags)."""
from __future__ import annotations

import pathlib

import numpy as np

from ..store import layout, lineage
from ..store.persist import GenerationReader
from . import candidates, ivflists, links_parts, sparse_parts

__all__ = ["verify"]

#: Content records decoded at once by verify().
VERIFY_CHUNK = 65536


def _verify_log(wal_path: pathlib.Path, follows: bool) -> int:
    """The log's valid records; CorruptStoreError if it is damaged anywhere but a torn tail (a
    writer's record in flight looks like one): a damaged header, a bad record with valid ones
    after it, a last record within the file failing its CRC, or a damaged last record kept beside
    the log and not yet salvaged. A log the store is not at (``follows`` false: one its generation
    absorbed, see :func:`lineage.resolve`) counts no record."""
    from ..store.wal import WalReader, check_tail, damaged_tails

    for name in damaged_tails(wal_path):
        raise layout.CorruptStoreError(name, "holds the bytes of a damaged write-ahead log record (an acknowledged "
                                             "record that failed its CRC, not applied); lukhas-gpu verify --salvage "
                                             "STORE reports it")
    if not follows or not wal_path.exists():
        return 0
    try:
        with WalReader(wal_path, decode=False) as reader:
            n = sum(1 for _ in reader)
    except ValueError as e:  # not a log at all: bad header
        raise layout.CorruptStoreError(wal_path, str(e).removeprefix(f"{wal_path}: ")) from None
    if reader.torn:
        check_tail(reader)
    return n


def verify(index) -> dict:
    """Check the published generation (every file's size and CRC-32) and the parts' consistency
    (every live id has its vector, content, metadata and tags); see ``MemoryIndex.verify``."""
    parts = index.parts
    where = str(index.path) if index.path is not None else "<memory>"
    report = {"rows": parts.rows, "count": parts.live}
    if index.path is not None:  # the generation the store is at (a reader's and a writer's alike)
        head = lineage.resolve(index.path)
        gen = GenerationReader(index.path / layout.generation_name(head.number), checksums=True)
        prev = layout.ancestry(index.path, head.number, 2)
        report.update(generation=gen.manifest["generation"], files=len(gen.files), log=head.log,
                      rollback_to=layout.generation_name(prev[1]) if len(prev) > 1 else None)
        report["wal_records"] = _verify_log(index.path / layout.WAL, head.log_follows)
    n = parts.rows
    for part, m in (("metadata", len(parts.meta)), ("content", len(parts.contents)), ("tags", len(parts.tags)),
                    ("free metadata", len(parts.docmeta)), ("id map", len(parts.idmap) if parts.idmap else n),
                    ("namespace column", len(parts.namespaces)), ("validity windows", len(parts.validity))):
        if m != n:
            raise layout.CorruptStoreError(where, f"{part} holds {m} rows, the vectors {n}")
    wrong = ivflists.check(parts) or candidates.check(parts)  # every live row has one entry; others dead
    if wrong is not None:
        raise layout.CorruptStoreError(where, wrong)
    try:
        sparse_parts.verify(parts, n, parts.tombstones.array() if parts.tombstones else np.zeros(0, np.int64))
        links_parts.verify(parts, n)  # the hash column covers every row; links name rows within
    except ValueError as e:
        raise layout.CorruptStoreError(where, str(e)) from None
    try:  # every record decodes
        for start in range(0, n, VERIFY_CHUNK):
            parts.contents.get(np.arange(start, min(n, start + VERIFY_CHUNK)))  # each record's CRC too
    except layout.CorruptStoreError:
        raise
    except Exception as e:
        place = f"{index.path}/{layout.CONTENT}" if index.path is not None else "<memory> contents"
        raise layout.CorruptStoreError(place, f"a content record does not decode ({type(e).__name__}: {e})") from None
    report["ok"] = True
    return report
