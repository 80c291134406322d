"""Namespaces and validity windows in the model test (``model_store.py``): how the model reads a
call's scope arguments, which keys ``drop_namespace`` / ``purge_expired`` remove, and the driver's
ops for them (a mixin of ``model_store.Run``)."""
from __future__ import annotations

import time

import numpy as np

from model_consts import NAMESPACES, T0


def in_window(m, t: float) -> bool:
    """Whether memory ``m`` (a ``model_store.Mem``) is valid at ``t``."""
    return m.vf <= t < m.vt


def valid_keys(model, t: float | None = None) -> list:
    """The keys a search sees at ``t`` (default now: the test's windows lie far from the clock)."""
    t = time.time() if t is None else t
    return [k for k in model.keys() if in_window(model.mems[k], t)]


def one(call: dict, name: str, i: int, default):
    """A scope argument of memory ``i``: absent, one value for all, or one per memory."""
    v = call.get(name)
    return default if v is None else v[i] if isinstance(v, (list, tuple, np.ndarray)) else v


def deleted_keys(model, call: dict) -> list:
    """The keys a delete, ``drop_namespace`` or ``purge_expired`` call removes."""
    if call["name"] == "drop_namespace":
        return [k for k in model.keys() if model.mems[k].ns == call["namespace"]]
    if call["name"] == "purge_expired":
        t = time.time() if call.get("now") is None else call["now"]
        return [k for k in model.keys() if model.mems[k].vt <= t]
    return list(call["ids"])


def scope_call(rng) -> dict:
    """A ``purge_expired`` (now) or a ``drop_namespace`` call (in a crash's calls)."""
    return {"name": "purge_expired"} if rng.random() < 0.5 else {"name": "drop_namespace", "namespace": "n2"}


class ScopeOps:
    """``op_drop`` and ``op_purge`` of the driver."""

    def op_drop(self, op, rng):
        self.call({"name": "drop_namespace", "namespace": str(rng.choice([*NAMESPACES[1:], "zz"]))})

    def op_purge(self, op, rng):
        self.call({"name": "purge_expired", "now": None if rng.random() < 0.6 else float(T0 + rng.integers(900, 2100))})
