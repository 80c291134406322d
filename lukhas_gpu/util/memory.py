"""How much memory the building blocks really hold: numpy buffers, roaring bitmaps, zstd contexts.

Facts about allocators and libraries that several components need for their ``memory_usage()``
(and :mod:`lukhas_gpu.capacity` for its predictions), owned here so that each is stated once.

``memory_usage()`` contract (every component of the index has one)::

    {"anon": {name: bytes}, "mapped": {name: bytes}, "gpu": {name: bytes}, "reserved": {name: bytes}}

``anon`` is anonymous resident RAM, ``mapped`` file-backed pages (page cache, reclaimable),
``gpu`` device memory, ``reserved`` capacity allocated but never written (not resident, not in
any total). Places with nothing may be omitted.
"""
from __future__ import annotations

import pathlib

__all__ = ["PAGE", "HUGE_PAGE", "HUGE_FROM", "ROARING_CONTAINER_BYTES", "NPZ_MEMBER_BYTES", "huge_page_slack",
           "bitmap_bytes", "planned_bitmap_bytes", "ROARING_CHUNK", "ARRAY_CONTAINER_MAX", "zstd_context_bytes",
           "DRIFT_HISTORY", "DRIFT_HISTORY_COLUMNS", "DRIFT_HISTORY_BYTES", "TAG_MIN_COUNT", "tag_drift_bytes"]

PAGE = 4096
#: Bytes of an ``np.savez`` member besides its data (zip headers and the .npy header): what a
#: component's planned disk bytes add per array it saves.
NPZ_MEMBER_BYTES = 250
#: A transparent huge page (numpy advises them for arrays of ``HUGE_FROM`` bytes and more).
HUGE_PAGE = 2 << 20
HUGE_FROM = 4 << 20
#: Per roaring container, beyond its values: its slot in the bitmap (key, type, pointer), the
#: container struct and the allocator headers of both buffers.
ROARING_CONTAINER_BYTES = 11 + 16 + 32
#: Rows per roaring container.
ROARING_CHUNK = 65536
#: Roaring container values: 2 B each in an array container, 8 KiB for a bitset (> 4096 values).
ARRAY_CONTAINER_MAX = 4096
#: The drift monitor's per-batch history (``drift()["history"]``): rows kept, float64 columns
#: (rows, quant, coarse, pq, imbalance, score), bytes at most (the planner's estimate).
DRIFT_HISTORY = 256
DRIFT_HISTORY_COLUMNS = 6
DRIFT_HISTORY_BYTES = DRIFT_HISTORY * DRIFT_HISTORY_COLUMNS * 8
#: Live memories a tag needs before it has a per-tag drift reference (``monitor.tagdrift``): the
#: rule, and how many references the planner expects.
TAG_MIN_COUNT = 256


def tag_drift_bytes(tags: int, dim: int, name_bytes: int) -> int:
    """Per-tag drift references of ``tags`` tags: a float32 centroid of ``dim``, a float32 spread,
    an int64 count, the name (``name_bytes`` in all) and its str object and dict slot."""
    return int(tags * (4 * dim + 4 + 8 + 56 + 100) + name_bytes)


def huge_page_slack(used: int, reserved: int) -> int:
    """Untouched capacity after ``used`` bytes of a numpy buffer of ``reserved`` bytes that huge
    pages make resident (half a huge page on average, never more than the slack)."""
    if used <= 0 or reserved < HUGE_FROM or not _numpy_huge_pages():
        return 0
    return int(min(max(reserved - used, 0), HUGE_PAGE // 2))


def _numpy_huge_pages() -> bool:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    try:
        advised = bool(multiarray._get_madvise_hugepage())
    except AttributeError:
        return False
    return advised and _thp_mode() in ("always", "madvise")


def _thp_mode() -> str:
    try:
        text = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    start, stop = text.find("["), text.find("]")
    return text[start + 1: stop] if 0 <= start < stop else "never"


def bitmap_bytes(bm) -> int:
    """In-memory bytes of a roaring bitmap: its containers' values plus a fixed cost each."""
    st = bm.get_statistics()
    values = st["n_bytes_array_containers"] + st["n_bytes_run_containers"] + st["n_bytes_bitset_containers"]
    return int(values + ROARING_CONTAINER_BYTES * st["n_containers"])


def zstd_context_bytes(obj) -> int:
    """``memory_size()`` of a zstd compressor or decompressor (0 for ``None`` or a context not
    created yet)."""
    try:
        return int(obj.memory_size()) if obj is not None else 0
    except Exception:  # a context not created yet
        return 0


def planned_bitmap_bytes(counts, rows: int) -> float:
    """Expected in-memory bytes of roaring bitmaps holding ``counts`` rows each, spread uniformly
    over ``rows``: containers (one per 65,536 rows touched) with 2 B per value, or 8 KiB bitsets
    past 4096 values, plus a fixed cost per container (what :func:`bitmap_bytes` measures)."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.float64)
    if len(counts) == 0 or rows == 0:
        return 0.0
    chunks = max(1, -(-rows // ROARING_CHUNK))
    containers = chunks * -np.expm1(-counts / chunks)  # expected chunks with at least one row
    per = counts / np.maximum(containers, 1e-12)
    values = np.where(per > ARRAY_CONTAINER_MAX, 8192.0, 2.0 * per) * containers
    return float((values + ROARING_CONTAINER_BYTES * containers).sum())
