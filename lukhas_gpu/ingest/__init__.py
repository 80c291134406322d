"""Ingest: readers of input files (:mod:`.sources`, :mod:`.npy_rows`, :mod:`.parquet`), the storage
rules they apply (:mod:`.rules`, from ``records/`` and ``util/arrays``), the one ingest loop
(:mod:`.pipeline`, with resume state per input in :mod:`.resume`) and the migration from the old
naive store (:mod:`.migrate`, with its parity check in :mod:`.parity`).

The names below load on first use (PEP 562), so that ``lukhas-gpu --help`` reads
:data:`~.pipeline.DEFAULT_BATCH_SIZE` and :data:`~.resume.PROGRESS_FILE` without loading the
readers; nothing here imports torch or the index before a batch is added.
"""
from __future__ import annotations

import importlib

__all__ = ["migrate_jsonl", "migrate_npz", "write_naive_jsonl", "MigrationError", "MigrationReport", "MissingExtra",
           "Pipeline", "Progress", "open_source", "DEFAULT_BATCH_SIZE", "PROGRESS_FILE"]

_OWNERS = {"migrate_jsonl": "migrate", "migrate_npz": "migrate", "write_naive_jsonl": "migrate",
           "MigrationReport": "migrate", "MigrationError": "input_errors", "MissingExtra": "input_errors",
           "Pipeline": "pipeline", "Progress": "pipeline", "DEFAULT_BATCH_SIZE": "pipeline", "open_source": "sources",
           "PROGRESS_FILE": "resume"}


def __getattr__(name: str):
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{owner}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
