"""Where the bytes of an index live: anonymous RAM, memory-mapped files, disk, GPU.

:func:`breakdown` is ``MemoryIndex.stats()["memory"]``. Every component is counted as it is
really held, not as its logical size (``stats()["bytes"]``), where the two differ by more than
noise:

* **FAISS fast-scan lists.** Each inverted list keeps its codes in blocks of 32 vectors
  (``32 * M2 / 2`` bytes a block) in an ``AlignedTable``, whose capacity is rounded up to a power
  of two of at least 256 bytes (``round_capacity``). A list grown by ``add`` reallocates at each
  power of two and the freed buffers are reused by its neighbours in the heap, so its whole
  capacity ends up resident. A list read back by ``read_index`` is allocated once at that
  capacity but only its codes are written: the untouched tail stays non-resident except for
  the page it shares with the next allocation (``min(capacity, codes + 4096)`` on average over
  the chunk's alignment). Ids are one ``int64`` per vector either way. Against the RssAnon growth
  of FAISS alone (IVF1024 / IVF4096, PQ96, 100k and 1M vectors): within 2% in both states.
* **Growable columns** (metadata, tag lists, content offsets and records) reserve capacity by
  doubling in private anonymous maps: only the pages written are resident, so they count their
  used bytes; their capacity is reported under ``reserved``.
* **The int8 vectors** in anonymous RAM come from numpy, which advises transparent huge pages for
  buffers of 4 MiB and more: the untouched capacity after the last row becomes resident 2 MiB at
  a time (half of one huge page on average). Memory-mapped vectors (``vector_storage="mmap"``, or
  a store opened read-only) and the content records of an opened store are file-backed pages:
  page cache, reclaimable, counted as ``mapped``.
* **Disk**: the published generation's files, the previous generation (kept for ``rollback``),
  the writer's working copy of the vectors, the write-ahead log and the spill file of
  memory-mapped vectors, as allocated blocks (what ``du`` reports).
* **CPython's small-object pools**: the few Python objects kept per tag and per retraining
  sample pin the 16 KiB pools they were allocated in (see :func:`python_pools`).
* **GPU**: the encoder's buffers and any other CUDA tensor the index holds, and a FAISS GPU
  clone of the IVF when there is one.

What is not counted: allocator fragmentation that outlives the index or cannot be traced to it
(freed heap chunks interleaved with live ones, the 1 MiB arenas around pinned pools, BLAS and
thread buffers). After ingestion in batches of 50,000 memories it was ~10 MB at 100k memories
and ~30 MB at 1M (``benchmarks/bench_accounting.py``).

Each component reports its own bytes (``memory_usage()``, the contract in
:mod:`lukhas_gpu.util.memory`); :func:`breakdown` merges them from ``index.parts`` and adds what
no single component holds: the CPython pools, the store's files on disk, the IVF's list state.
The size formulas (owned by the components' modules, re-exported here) are shared with
:mod:`lukhas_gpu.capacity.sizing`, which predicts the same components for a configuration
before anything is built.
"""
from __future__ import annotations

import os
import pathlib
import sys

from pyroaring import BitMap

from ..records.tags import TAG_OBJECT_BYTES
from ..store import layout
from ..util import runtime
from ..util.memory import HUGE_FROM, HUGE_PAGE, PAGE, ROARING_CONTAINER_BYTES, bitmap_bytes, huge_page_slack
from ..vectors.ann import (
    FASTSCAN_BBS,
    HNSW_M,
    LIST_OVERHEAD,
    aligned_capacity,
    fastscan_list_bytes,
    fastscan_resident,
    hnsw_graph_bytes,
)

# The size formulas and constants are owned by the modules that hold the structures; they are
# re-exported here for lukhas_gpu.capacity.sizing, which predicts the same components.
__all__ = ["breakdown", "logical_bytes", "python_pools", "summarize", "PLACES", "RUNTIME_COMPONENT", "PAGE",
           "HUGE_PAGE", "HUGE_FROM",
           "FASTSCAN_BBS", "LIST_OVERHEAD", "HNSW_M", "TAG_OBJECT_BYTES", "ROARING_CONTAINER_BYTES",
           "aligned_capacity", "fastscan_list_bytes", "fastscan_resident", "hnsw_graph_bytes", "huge_page_slack",
           "bitmap_bytes"]

#: Where a component lives. ``anon`` bounds how many memories fit on a node.
PLACES = ("anon", "mapped", "disk", "gpu")
#: CPython's small-object allocator: objects up to 512 B live in 16 KiB pools.
SMALL_OBJECT_MAX = 512
POOL_BITS = 14


def summarize(components: dict, count: int) -> dict:
    """``{place: {name: bytes}}`` with the totals per place and per memory added.

    Returns ``{"anon": {...}, "mapped": {...}, "disk": {...}, "gpu": {...}, "anon_bytes": ..,
    "mapped_bytes": .., "disk_bytes": .., "gpu_bytes": .., "per_memory": {place: bytes / count}}``.
    """
    out: dict = {place: {k: int(v) for k, v in components.get(place, {}).items()} for place in PLACES}
    for place in PLACES:
        out[f"{place}_bytes"] = sum(out[place].values())
    out["per_memory"] = {place: out[f"{place}_bytes"] / count if count else 0.0 for place in PLACES}
    return out


#: ``anon["runtime_libraries"]``: the RssAnon this process's first import and use of torch and
#: FAISS added (``util.runtime``: measured when it happens, once per process), counted by the
#: first index of the process to use the vector path (``IndexParts.runtime_owner``) and by
#: ``plan()``. It replaces ``anon["runtime"]``, a constant (7 / 12 MB) that counted the first
#: use's BLAS and OpenMP buffers but not the ~140 MB of the libraries' import.
RUNTIME_COMPONENT = "runtime_libraries"


# -- the breakdown of a live index ---------------------------------------------------------------
def logical_bytes(index) -> tuple[dict, int]:
    """The logical sizes of the index's data structures (``stats()["memory"]["logical"]``) and how many of
    them are memory-mapped (the int8 vectors under ``vector_storage="mmap"``)."""
    parts = index.parts
    vec_bytes = parts.vectors.nbytes()
    content = parts.contents.nbytes()
    tag_bytes = parts.tags.nbytes()
    components = {"vectors_int8": vec_bytes, "encoder": parts.encoder_nbytes(),
                  "tombstones": parts.tombstones.nbytes(),
                  "content_records": content["records"], "content_offsets": content["starts"] + content["crcs"],
                  "content_dictionaries": content["dictionaries"], "content_samples": content["samples"],
                  "metadata": parts.meta.nbytes(),
                  **{f"tags_{k}": int(v) for k, v in tag_bytes.items() if k != "garbage"}}
    components.update(parts.docmeta.nbytes())
    if parts.idmap is not None:
        components["external_ids"] = parts.idmap.nbytes()
    if parts.ann is not None:
        components.update({f"ann_{k}": v for k, v in parts.ann.nbytes().items()})
    # the rows mapped from a file (all of an mmap store; a reader's published rows, not its replayed tail)
    return components, int(parts.vectors.memory_usage().get("mapped", {}).get("vectors_int8", 0))


def _merge(usage: dict, places: dict, reserved: dict) -> None:
    """Add one component's ``memory_usage()`` into the breakdown's places and reservations."""
    for place, parts in usage.items():
        target = reserved if place == "reserved" else places[place]
        for name, v in parts.items():
            target[name] = target.get(name, 0) + int(v)


def breakdown(index) -> dict:
    """Bytes per component of ``index`` (a :class:`~lukhas_gpu.MemoryIndex`) and where they live.

    Reads the components from ``index.parts`` (public attributes ``vectors``, ``tombstones``,
    ``contents``, ``tags``, ``meta``, ``encoder``, ``ann``, ``mirror``, ``probe``, ``drift``,
    ``calib``) and ``index.path``; each component reports its own ``memory_usage()``.

    Returns
    -------
    dict
        ``"anon"``, ``"mapped"``, ``"disk"``, ``"gpu"``: each a dict of component name to bytes;
        ``anon_bytes``, ``mapped_bytes``, ``disk_bytes``, ``gpu_bytes`` (their totals);
        ``per_memory`` (each total over the live count); ``reserved`` (capacity allocated but
        never written, hence not resident: not in the totals); ``ann_state`` (``"built"`` or
        ``"opened"``: how the IVF lists were allocated; None before training).
    """
    parts = index.parts
    n = len(index)
    places: dict[str, dict[str, int]] = {p: {} for p in PLACES}
    reserved: dict[str, int] = {}
    anon = places["anon"]

    def add(usage: dict) -> None:
        _merge(usage, places, reserved)

    add(parts.vectors.memory_usage())
    if parts.encoder_built:
        add(parts.encoder.memory_usage())
    else:  # a store opened and not searched: the arrays the encoder will be built from
        anon["encoder"] = parts.encoder_nbytes()
    if parts.calib is not None:
        anon["calibration"] = int(parts.calib.nbytes)
    add(parts.tombstones.memory_usage())
    add(parts.contents.memory_usage())
    add(parts.meta.memory_usage())
    add(parts.tags.memory_usage())
    add(parts.docmeta.memory_usage())
    if parts.idmap is not None:
        add(parts.idmap.memory_usage())
    for part in (parts.namespaces, parts.validity):  # nothing until used (a store without them is as before)
        if part.nbytes():
            add(part.memory_usage())

    ann_state = None
    if parts.ann is not None:
        ann_state = _ann_state(parts.ann, index.path)
        add(parts.ann.memory_usage(ann_state))
    if parts.runtime_owner:
        anon[RUNTIME_COMPONENT] = runtime.total()
    pools = python_pools(_small_objects(index))
    if pools:
        anon["python_pools"] = pools
    for part in (parts.probe, parts.drift, parts.mirror, getattr(parts, "sparse", None), getattr(parts, "text", None),
                 parts.hashes, parts.links, getattr(parts, "stage", None)):
        if part is not None:
            add(part.memory_usage())
    _cuda_tensors(parts, places["gpu"])
    _disk(index, places["disk"])

    out = summarize(places, n)
    out["reserved"] = {k: int(v) for k, v in reserved.items() if v}
    out["ann_state"] = ann_state
    return out


def _small_objects(index) -> list:
    """The small Python objects the index keeps, one per tag or retraining sample: tag names and
    ids, bitmap objects, the recent contents kept for retraining."""
    parts = index.parts
    return [*parts.tags.small_objects(), *parts.contents.small_objects()]


def python_pools(objects) -> int:
    """Bytes of CPython small-object pools (16 KiB) kept alive by ``objects``, beyond the objects'
    own bytes.

    Objects of 512 B and less live in pools that are given back only when empty. Objects kept
    from a caller's batch (the first sighting of each tag name, the last contents) are scattered
    over pools full of that batch's temporaries, and each keeps its pool -- and the rest of its
    1 MiB arena -- resident: measured ~6 MB for 1000 tag names interned from batches of 50,000
    memories, of which this counts the pools (~70%). Objects allocated together (a store read
    from disk) share a few pools and cost about their own size. 0 off CPython.
    """
    if sys.implementation.name != "cpython":
        return 0
    pools, own = set(), 0
    for o in objects:
        size = sys.getsizeof(o) if not isinstance(o, BitMap) else object.__sizeof__(o)
        if size <= SMALL_OBJECT_MAX:
            pools.add(id(o) >> POOL_BITS)
            own += size
    return max(0, (len(pools) << POOL_BITS) - own)


def _ann_state(ann, path) -> str:
    """``"opened"`` when the IVF was read from the store and has not grown since, else ``"built"``."""
    if not ann.opened:
        return "built"  # constructed in this process (FAISS read_index owns its quantizer)
    if path is None:
        return "opened"
    try:
        manifest = layout.read_manifest(layout.current_generation(path))
    except (layout.StoreError, OSError):
        return "opened"
    return "opened" if int(manifest.get("count", -1)) == ann.ntotal else "built"


def _cuda_tensors(parts, gpu: dict) -> None:
    """CUDA tensors the index holds among its parts besides the encoder's buffers (the
    components report their own device memory; none without torch loaded)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    seen = {id(b) for b in parts.encoder.buffers()} if parts.encoder_built else set()
    total = 0
    for v in vars(parts).values():
        if isinstance(v, torch.Tensor) and v.is_cuda and id(v) not in seen:
            seen.add(id(v))
            total += v.numel() * v.element_size()
    if total:
        gpu["tensors"] = total


def _disk_usage(path) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    blocks = getattr(st, "st_blocks", None)
    return int(blocks * 512) if blocks is not None else st.st_size


def _dir_usage(path: pathlib.Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(_disk_usage(os.path.join(root, f)) for f in files)
    return total


def _disk(index, disk: dict) -> None:
    spill = index.parts.vectors.spill_path
    if spill:
        disk["vectors_spill"] = _disk_usage(spill)  # sparse: only the rows written
    if index.path is None:
        return
    root = pathlib.Path(index.path)
    try:
        gen = layout.current_generation(root)
    except layout.StoreError:
        return
    for p in gen.iterdir():
        name = layout.GENERATION_FILES.get(p.name, "generation_other")
        disk[name] = disk.get(name, 0) + _disk_usage(p)
    prev = layout.previous_generation(root)
    if prev is not None:
        disk["previous_generation"] = _dir_usage(prev)
    for name, part in ((layout.VECTORS_WORK, "vectors_work"), (layout.WAL, "wal")):
        if (root / name).exists():
            disk[part] = _disk_usage(root / name)
    other = sum(_disk_usage(p) for p in root.iterdir()
                if p.is_file() and p.name not in (layout.VECTORS_WORK, layout.WAL))
    if other:
        disk["store_other"] = other
