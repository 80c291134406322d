"""lukhas_gpu: a compact vector memory index -- int8 vectors, IVF-PQ candidates, exact rerank.

Public API (see ``README.md``): :class:`MemoryIndex`, :class:`IndexConfig`,
:class:`SearchResult`, :class:`Memory`, :class:`Filter`,
:class:`Rank`, :class:`Encoder`; capacity planning: :func:`plan`, :func:`max_count`, :class:`Plan`.
"""
from .config import IndexConfig
from .vectors.encoder import Encoder
from .query.filters import Filter
from .index.facade import Memory, MemoryIndex, SearchResult
from .query.ranking import Rank
from .capacity.planner import Plan, max_count, plan  # noqa: E402  (the function shadows its module's name)

__version__ = "0.1.0"

__all__ = ["MemoryIndex", "IndexConfig", "SearchResult", "Memory", "Filter", "Rank", "Encoder", "plan",
           "max_count", "Plan", "__version__"]
