"""lukhas_gpu: a compact vector memory index -- int8 vectors, IVF-PQ candidates, exact rerank.

Public API (see ``README.md``): :class:`MemoryIndex`, :class:`IndexConfig`,
:class:`SearchResult`, :class:`Memory`, :class:`Filter`,
:class:`Rank`, :class:`Encoder`.
"""
from .config import IndexConfig
from .encode import Encoder
from .filters import Filter
from .memory import Memory, MemoryIndex, SearchResult
from .scoring import Rank

__version__ = "0.1.0"

__all__ = ["MemoryIndex", "IndexConfig", "SearchResult", "Memory", "Filter", "Rank", "Encoder", "__version__"]
