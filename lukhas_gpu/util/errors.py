"""The store's errors, owned here so that every layer can name a damaged file: the components
(content records, int8 rows) check their own checksums when read. :mod:`lukhas_gpu.store.layout`
re-exports them; that is the name to import."""
from __future__ import annotations

__all__ = ["StoreError", "CorruptStoreError"]


class StoreError(RuntimeError):
    """A store cannot be used as asked (missing, wrong version, wrong mode)."""


class CorruptStoreError(StoreError):
    """A file of a store does not match its manifest (truncated, altered, missing)."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # pickled whole (it crosses process boundaries: Ray actors)
        return type(self), (self.path, self.problem)
