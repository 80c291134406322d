"""Namespaces and validity windows on the facade: a mixin :class:`~.facade.MemoryIndex` inherits
(``get`` and ``update`` with their scope arguments, ``namespaces``, ``drop_namespace``,
``purge_expired``). The rule that keeps a search inside its namespace and its time is
``query.filters.allowed_rows``; the columns are :mod:`lukhas_gpu.records.scopes`, wired by
:mod:`.scope_parts`.
"""
from __future__ import annotations

import time

import numpy as np

from ..records.metadata import to_epoch_seconds
from ..records.scopes import check_namespace
from . import extids
from .locking import locked
from .results import Memory

__all__ = ["ScopesMixin"]


class ScopesMixin:
    """``get``, ``update``, ``namespaces``, ``drop_namespace``, ``purge_expired``."""

    @locked
    def get(self, ids, *, namespace: str | None = None) -> list[Memory]:
        """The memories with these ids, in the order given (expired ones too, until purged).

        Raises
        ------
        ValueError
            An id that was never assigned or has been deleted, or (with ``namespace``) one that
            belongs to another namespace.
        """
        rows = self._check_ids(ids)
        if namespace is not None:
            namespace = check_namespace(namespace)
            for i, name in enumerate(self.parts.namespaces.of_rows(rows)):
                if name != namespace:
                    raise ValueError(f"id {extids._nth(ids, i)!r} is not in namespace {namespace!r}")
        return self._memories_at(rows)

    @locked
    def update(self, ids, *, contents=None, tags=None, timestamps=None, importance=None, embeddings=None,
               metadata=None, valid_from=None, valid_to=None) -> None:
        """Change the content, tags, timestamp, importance, metadata dict, vector or validity
        window of existing memories (``valid_to=now`` supersedes a fact: searches no longer see
        it, ``as_of`` an earlier time still does).

        Each argument, when given, has one entry per id (a window side may be one number for
        all). The whole call is validated first and applied only if everything is valid.
        """
        from . import durable, writes
        self._require_writable()
        change = writes.prepare_update(self, self._check_ids(ids), contents, tags, timestamps, importance,
                                       embeddings, metadata, valid_from=valid_from, valid_to=valid_to)
        if self.state.wal is not None:
            self.state.wal.append(durable.OP_UPDATE, change.log_fields())
        writes.apply_update(self, change)

    @locked
    def namespaces(self) -> dict:
        """``{name: live memories}`` of every namespace holding one (``""`` is the default)."""
        p = self.parts
        return p.namespaces.counts(p.tombstones.live_mask(p.rows))

    @locked
    def drop_namespace(self, name: str) -> int:
        """Delete every memory of namespace ``name`` (logged as one delete); returns how many."""
        name = check_namespace(name)
        rows = self.parts.namespaces.rows(name)
        if rows is None:
            rows = np.flatnonzero(self.parts.tombstones.live_mask(self.parts.rows))
        else:
            rows = np.asarray((rows - self.parts.tombstones.bitmap).to_array(), np.int64)
        return self._delete_rows(rows)

    @locked
    def purge_expired(self, now=None) -> int:
        """Delete every memory whose validity window ended at or before ``now`` (default: the
        clock), logged as one delete; returns how many."""
        t = to_epoch_seconds(time.time() if now is None else now, "now")
        rows = self.parts.validity.expired(t) - self.parts.tombstones.bitmap
        return self._delete_rows(np.asarray(rows.to_array(), np.int64))

    def expired_count(self, now: float | None = None) -> int:
        """Live memories past their window (``stats()["expired"]``: not yet purged)."""
        t = time.time() if now is None else float(now)
        return len(self.parts.validity.expired(t) - self.parts.tombstones.bitmap)

    def _delete_rows(self, rows: np.ndarray) -> int:
        from . import durable, writes
        self._require_writable()
        if len(rows) == 0:
            return 0
        rows = writes.prepare_delete(self, rows)
        if self.state.wal is not None:
            self.state.wal.append(durable.OP_DELETE, {"ids": rows})
        writes.apply_delete(self, rows)
        return len(rows)
