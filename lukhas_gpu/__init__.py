"""lukhas_gpu: a compact vector memory index -- int8 vectors, IVF-PQ candidates, exact rerank.

Public API (see ``README.md``): :class:`MemoryIndex`, :class:`IndexConfig`,
:class:`SearchResult`, :class:`Memory`, :class:`Filter`,
:class:`Rank`, :class:`Fusion` (hybrid search), :class:`Encoder`; capacity planning: :func:`plan`,
:func:`max_count`, :class:`Plan`.

The names are resolved on first use (PEP 562), so that ``import lukhas_gpu`` -- and a command
such as ``lukhas-gpu get`` -- does not pay for torch and FAISS until something needs them.
"""
from __future__ import annotations

import importlib

from .util import runtime as _runtime

_runtime.install()  # the first torch and FAISS imports measured (stats()["memory"]["anon"]["runtime_libraries"])

__version__ = "0.1.0"

__all__ = ["MemoryIndex", "IndexConfig", "SearchResult", "Memory", "Filter", "Rank", "Fusion", "Encoder", "plan",
           "max_count", "Plan", "__version__"]

#: Where each public name lives (its one owner).
_OWNERS = {
    "MemoryIndex": ".index", "SearchResult": ".index", "Memory": ".index",
    "IndexConfig": ".config",
    "Filter": ".query.filters", "Rank": ".query.ranking", "Fusion": ".query.hybrid",
    "Encoder": ".vectors.encoder",
    "plan": ".capacity.sizing", "max_count": ".capacity.sizing", "Plan": ".capacity.sizing",
}


def __getattr__(name: str):
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'lukhas_gpu' has no attribute {name!r}")
    value = getattr(importlib.import_module(owner, __name__), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
