"""lukhas_gpu: a compact vector memory index -- int8 vectors, IVF-PQ candidates, exact rerank.

Public API (see ``README.md``): :class:`MemoryIndex`, :class:`IndexConfig`,
:class:`SearchResult`, :class:`Encoder`.
"""
from .config import IndexConfig
from .encode import Encoder
from .memory import MemoryIndex, SearchResult

__version__ = "0.1.0"

__all__ = ["MemoryIndex", "IndexConfig", "SearchResult", "Encoder", "__version__"]
