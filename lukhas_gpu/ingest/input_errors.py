"""The errors of the ingest package: a bad input record, a missing optional dependency."""
from __future__ import annotations

__all__ = ["MigrationError", "InvalidRecord", "MissingExtra"]


class MigrationError(ValueError):
    """A bad input record (or a batch the index rejected).

    Attributes
    ----------
    path : str
        The file holding the bad record.
    line : int or None
        Its 1-based line number, or 0-based row number for a Parquet input (``None`` when the
        problem is not one record's, e.g. counts).
    report : MigrationReport or None
        What was imported before the error (set by :mod:`~lukhas_gpu.ingest.migrate`): the
        batches before the bad record's batch stay in the index, nothing of that batch was added.
    in_batch : int
        Valid records of the failing batch read before the bad one.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, report=None,
                 in_batch: int = 0):
        super().__init__(message)
        self.path = path
        self.line = line
        self.report = report
        self.in_batch = in_batch


class InvalidRecord(ValueError):
    """One record's problem; the reader that found it adds the file and line (or row)."""


class MissingExtra(ImportError):
    """An optional dependency is missing; the message gives the ``pip install`` that adds it."""
