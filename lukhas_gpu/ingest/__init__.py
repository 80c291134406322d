"""Ingest: readers of input files (:mod:`.sources`, :mod:`.parquet`), the one ingest loop
(:mod:`.pipeline`, with resume state per input in :mod:`.resume`) and the migration from the old
naive store (:mod:`.migrate`, with its parity check in :mod:`.parity`).

Nothing here imports torch or the index at import time; they come with the first batch added.
"""
from .errors import MigrationError, MissingExtra
from .migrate import MigrationReport, migrate_jsonl, migrate_npz, write_naive_jsonl
from .pipeline import DEFAULT_BATCH_SIZE, Pipeline, Progress
from .resume import PROGRESS_FILE
from .sources import open_source

__all__ = ["migrate_jsonl", "migrate_npz", "write_naive_jsonl", "MigrationError", "MigrationReport", "MissingExtra",
           "Pipeline", "Progress", "open_source", "DEFAULT_BATCH_SIZE", "PROGRESS_FILE"]
