"""The facade: :class:`MemoryIndex` wires the components; :class:`SearchResult` and :class:`Memory`."""
from .facade import MemoryIndex
from .results import Memory, SearchResult

__all__ = ["MemoryIndex", "SearchResult", "Memory"]
