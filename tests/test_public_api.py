"""The public surface of ``lukhas_gpu``: exactly these names, all importable."""
from __future__ import annotations

import importlib.metadata

import lukhas_gpu

PUBLIC = ["MemoryIndex", "IndexConfig", "SearchResult", "Memory", "Filter", "Rank", "Fusion", "Encoder", "plan",
          "max_count", "Plan", "__version__"]


def test_all_is_pinned():
    assert lukhas_gpu.__all__ == PUBLIC


def test_public_names_resolve():
    from lukhas_gpu.config import IndexConfig
    from lukhas_gpu.index.facade import MemoryIndex, SearchResult
    from lukhas_gpu.vectors.encoder import Encoder

    assert lukhas_gpu.MemoryIndex is MemoryIndex
    assert lukhas_gpu.IndexConfig is IndexConfig
    assert lukhas_gpu.SearchResult is SearchResult
    assert lukhas_gpu.Encoder is Encoder


def test_star_import_gives_exactly_the_public_names():
    ns: dict = {}
    exec("from lukhas_gpu import *", ns)
    assert sorted(k for k in ns if k != "__builtins__") == sorted(PUBLIC)


def test_version_matches_package_metadata():
    assert isinstance(lukhas_gpu.__version__, str)
    assert lukhas_gpu.__version__ == importlib.metadata.version("lukhas-gpu")
