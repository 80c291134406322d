"""Namespaces and validity windows wired into the write paths, the log, the store and ``verify``
(one function per seam, called from :mod:`.writes`, :mod:`.durable` and :mod:`.verification`;
the components are :mod:`lukhas_gpu.records.scopes`).

The write-ahead log carries them as optional fields of the add and update records: ``ns`` (the
batch's distinct names, JSON) and ``ns_of`` (uint32, each memory's index into them) on an add;
``valid_from`` / ``valid_to`` (float64, one per memory) on both. Records without them (older logs)
replay as before: the default namespace ``""``, always valid. ``drop_namespace`` and
``purge_expired`` log ordinary deletes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..records.scopes import Namespaces, Validity
from ..store import layout
from . import loadchecks

__all__ = ["Scope", "prepare_add", "from_fields", "append", "prepare_update", "persist", "load"]


@dataclasses.dataclass
class Scope:
    """The namespace and validity windows of an add (each None for the default)."""

    names: tuple | None = None  # (distinct names, uint32 index per memory)
    windows: tuple | None = None  # (valid_from or None, valid_to or None), float64 (n,)

    def subset(self, keep: np.ndarray) -> "Scope":
        """The scope of the memories at positions ``keep`` (a deduped add's new ones)."""
        names = None if self.names is None else (self.names[0], np.asarray(self.names[1])[keep])
        windows = None if self.windows is None else tuple(None if a is None else np.asarray(a)[keep]
                                                           for a in self.windows)
        return Scope(names, windows)

    def log_fields(self) -> dict:
        out = {}
        if self.names is not None:
            out["ns"], out["ns_of"] = list(self.names[0]), np.asarray(self.names[1], np.uint32)
        out.update(window_fields(self.windows))
        return out


def window_fields(windows) -> dict:
    out = {}
    if windows is not None:
        for name, a in zip(("valid_from", "valid_to"), windows):
            if a is not None:
                out[name] = np.asarray(a, np.float64)
    return out


def prepare_add(parts, n: int, namespace, valid_from, valid_to) -> Scope | None:
    """``add(..., namespace=, valid_from=, valid_to=)`` checked (nothing changes)."""
    names = parts.namespaces.prepare(namespace, n)
    windows = Validity.validate(n, valid_from, valid_to)
    return None if names is None and windows is None else Scope(names, windows)


def from_fields(f: dict, n: int) -> dict:
    """The scope arguments of a logged add or update record (older records: none)."""
    out = {"valid_from": f.get("valid_from"), "valid_to": f.get("valid_to")}
    if f.get("ns") is not None:
        names, idx = list(f["ns"]), np.asarray(f["ns_of"], np.int64)
        if len(idx) != n or (len(idx) and (idx.min() < 0 or idx.max() >= len(names))):
            raise ValueError(f"a logged add names {len(names)} namespaces for {len(idx)} of {n} memories")
        out["namespace"] = [names[i] for i in idx.tolist()]
    return out


def append(parts, scope: Scope | None, n: int) -> None:
    """Every new row gets an entry in both columns (rows stay aligned)."""
    parts.namespaces.append(scope.names if scope is not None else None, n)
    parts.validity.append(scope.windows if scope is not None else None, n)


def prepare_update(parts, rows: np.ndarray, valid_from, valid_to):
    """``update(ids, valid_from=, valid_to=)`` checked against the rows' present windows: the
    ``(valid_from, valid_to)`` pair (None for a side not changed), or None."""
    if valid_from is None and valid_to is None:
        return None
    return Validity.validate(len(rows), valid_from, valid_to, current=parts.validity.window(rows))


# -- the store ------------------------------------------------------------------------------------
def persist(parts) -> dict:
    """npz file contents, for :func:`.durable.write`: only what differs from the default."""
    out = {}
    ns, va = parts.namespaces.to_arrays(), parts.validity.to_arrays()
    if ns is not None:
        out[layout.NAMESPACES] = ns
    if va is not None:
        out[layout.VALIDITY] = va
    return out


def load(parts, gen, rows: int) -> None:
    """Restore both from a generation; a generation without their files: every row in ``""``,
    always valid. CorruptStoreError naming the file for arrays that do not fit together (their
    lengths are held to the manifest by ``loadchecks``)."""
    for name, cls, attr in ((layout.NAMESPACES, Namespaces, "namespaces"), (layout.VALIDITY, Validity, "validity")):
        setattr(parts, attr, loadchecks.from_npz(gen, name, cls) if gen.has(name) else cls(rows))

