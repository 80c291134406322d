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

The size formulas are shared with :mod:`lukhas_gpu.plan`, which predicts the same components for
a configuration before anything is built.
"""
from __future__ import annotations

import os
import pathlib
import sys

import numpy as np
from pyroaring import BitMap

__all__ = ["breakdown", "logical_bytes", "PLACES", "aligned_capacity", "fastscan_list_bytes", "fastscan_resident",
           "hnsw_graph_bytes", "summarize"]

#: Where a component lives. ``anon`` bounds how many memories fit on a node.
PLACES = ("anon", "mapped", "disk", "gpu")
PAGE = 4096
#: A transparent huge page (numpy advises them for arrays of ``HUGE_FROM`` bytes and more).
HUGE_PAGE = 2 << 20
HUGE_FROM = 4 << 20
#: Vectors per block of a fast-scan inverted list (FAISS's ``bbs``).
FASTSCAN_BBS = 32
#: Per inverted list: a ``std::vector`` of ids and an ``AlignedTable`` of codes (24 B each) and
#: the allocator's header of each of their buffers (16 B each).
LIST_OVERHEAD = 24 + 24 + 16 + 16
#: Neighbours per node on the base level of FAISS's ``IndexHNSWFlat`` is ``2 * M``.
HNSW_M = 32
#: Per tag in the vocabulary: its name (a ``str``), the dict entry and list slot that intern it,
#: its ``BitMap`` object and the roaring bitmap struct behind it (measured on CPython 3.11).
TAG_OBJECT_BYTES = 260
#: CPython's small-object allocator: objects up to 512 B live in 16 KiB pools.
SMALL_OBJECT_MAX = 512
POOL_BITS = 14
#: Per roaring container, beyond its values: its slot in the bitmap (key, type, pointer), the
#: container struct and the allocator headers of both buffers.
ROARING_CONTAINER_BYTES = 11 + 16 + 32


# -- size formulas (shared with plan.py) ---------------------------------------------------------
def aligned_capacity(nbytes):
    """FAISS ``AlignedTable::round_capacity``: 0, or the smallest power of two >= max(n, 256).

    Works elementwise on an int array (returns int64).
    """
    n = np.asarray(nbytes, dtype=np.int64)
    cap = np.where(n > 0, 256, 0).astype(np.int64)
    big = n > 256
    if big.any():
        cap[big] = np.left_shift(1, np.ceil(np.log2(n[big].astype(np.float64))).astype(np.int64))
        cap[big] = np.where(cap[big] < n[big], 2 * cap[big], cap[big])  # float rounding guard
    return cap if cap.ndim else int(cap)


def fastscan_list_bytes(sizes, pq_m: int, bbs: int = FASTSCAN_BBS):
    """Code bytes of fast-scan lists holding ``sizes`` vectors: whole blocks of ``bbs`` vectors,
    ``bbs * M2 / 2`` bytes each (``M2`` is ``pq_m`` rounded up to even)."""
    m2 = pq_m + (pq_m & 1)
    sizes = np.asarray(sizes, dtype=np.int64)
    return -(-sizes // bbs) * (bbs * m2 // 2)


def fastscan_resident(code_bytes, state: str):
    """Resident bytes of fast-scan list buffers holding ``code_bytes`` each (see the module
    docstring): the capacity for lists grown by ``add`` (``state="built"``), the codes plus at
    most a page for lists read from disk (``"opened"``)."""
    cap = aligned_capacity(code_bytes)
    if state == "built":
        return cap
    if state == "opened":
        return np.minimum(cap, np.asarray(code_bytes, dtype=np.int64) + PAGE)
    raise ValueError(f"state must be 'built' or 'opened', got {state!r}")


def hnsw_graph_bytes(n_nodes: int, m: int = HNSW_M) -> int:
    """Expected bytes of an HNSW graph over ``n_nodes``: neighbour slots (int32; ``2m`` on the base
    level, ``m`` per upper level, a node reaching level ``l`` with probability ``m**-l``), the
    level of each node (int32) and its offset into the slots (int64)."""
    slots = 2 * m + m / (m - 1)
    return int(round(n_nodes * (4 * slots + 4 + 8) + 8))


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


# -- the breakdown of a live index ---------------------------------------------------------------
def logical_bytes(index) -> tuple[dict, int]:
    """The logical sizes of the index's data structures (``stats()["bytes"]``) and how many of
    them are memory-mapped (the int8 vectors under ``vector_storage="mmap"``)."""
    vec_bytes = index.parts.vectors.nbytes()
    content = index.parts.contents.nbytes()
    tag_bytes = index.parts.tags.nbytes()
    components = {"vectors_int8": vec_bytes, "encoder": index.parts.encoder_nbytes(),
                  "tombstones": index.parts.tombstones.nbytes(),
                  "content_records": content["records"], "content_offsets": content["starts"],
                  "content_dictionaries": content["dictionaries"], "content_samples": content["samples"],
                  "metadata": index.parts.meta.nbytes(),
                  **{f"tags_{k}": int(v) for k, v in tag_bytes.items() if k != "garbage"}}
    if index.parts.ann is not None:
        components.update({f"ann_{k}": v for k, v in index.parts.ann.nbytes().items()})
    return components, vec_bytes if index.parts.vectors.storage == "mmap" else 0


def breakdown(index) -> dict:
    """Bytes per component of ``index`` (a :class:`~lukhas_gpu.MemoryIndex`) and where they live.

    Returns
    -------
    dict
        ``"anon"``, ``"mapped"``, ``"disk"``, ``"gpu"``: each a dict of component name to bytes;
        ``anon_bytes``, ``mapped_bytes``, ``disk_bytes``, ``gpu_bytes`` (their totals);
        ``per_memory`` (each total over the live count); ``reserved`` (capacity allocated but
        never written, hence not resident: not in the totals); ``ann_state`` (``"built"`` or
        ``"opened"``: how the IVF lists were allocated; None before training).
    """
    n = len(index)
    places: dict[str, dict[str, int]] = {p: {} for p in PLACES}
    reserved: dict[str, int] = {}
    anon, mapped, gpu = places["anon"], places["mapped"], places["gpu"]

    vec = index.parts.vectors
    vec_bytes = vec.nbytes()
    if vec.storage == "mmap":
        mapped["vectors_int8"] = vec_bytes
    else:
        anon["vectors_int8"] = vec_bytes
        cap = vec.capacity * vec.dim * vec.dtype.itemsize
        slack = huge_page_slack(vec_bytes, cap)
        if slack:
            anon["vectors_slack"] = slack
        reserved["vectors_int8"] = cap - vec_bytes

    enc = index.parts.encoder_nbytes()
    (gpu if index.backend == "cuda" and index.parts.encoder_built else anon)["encoder"] = enc
    if index.parts.calib is not None:
        anon["calibration"] = int(index.parts.calib.nbytes)
    anon["tombstones"] = index.parts.tombstones.nbytes()

    _content(index.parts.contents, anon, mapped, reserved)
    meta = index.parts.meta
    anon["metadata"] = meta.nbytes()
    reserved["metadata"] = sum(_slack(c) for c in (meta.timestamp, meta.importance_q, meta.flags))
    _tags(index.parts.tags, anon, reserved)

    ann_state = None
    if index.parts.ann is not None:
        ann_state = _ann_state(index)
        _ann(index.parts.ann, ann_state, anon, gpu)
    pools = python_pools(_small_objects(index))
    if pools:
        anon["python_pools"] = pools
    probe = index.parts.probe
    if probe is not None:
        anon["probe"] = int(probe.nbytes())
    drift = index.parts.drift
    if drift is not None:
        anon["drift_monitor"] = _array_bytes(drift)
    res = index.parts.mirror
    if res is not None:  # the whole allocation: CUDA memory is held whether written or not
        (gpu if res.device.type == "cuda" else anon)["resident_vectors"] = res.nbytes()
    _cuda_tensors(index, gpu)
    _disk(index, places["disk"])

    out = summarize(places, n)
    out["reserved"] = {k: int(v) for k, v in reserved.items() if v}
    out["ann_state"] = ann_state
    return out


def _small_objects(index) -> list:
    """The small Python objects the index keeps, one per tag or retraining sample: tag names and
    ids, bitmap objects, the recent contents kept for retraining."""
    tags = index.parts.tags
    ids = [v for v in tags._ids.values() if v > 256]  # smaller ints are the interpreter's own
    return [*tags._names, *ids, *tags._bitmaps, *index.parts.contents._recent]


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


def _slack(col) -> int:
    return (col.capacity - len(col)) * col.dtype.itemsize


def _content(arena, anon: dict, mapped: dict, reserved: dict) -> None:
    nb = arena.nbytes()
    buf = arena._buf
    (mapped if isinstance(buf._data, np.memmap) else anon)["content_records"] = nb["records"]
    if not isinstance(buf._data, np.memmap):
        reserved["content_records"] = _slack(buf)
    anon["content_offsets"] = nb["starts"]
    reserved["content_offsets"] = _slack(arena._starts)
    anon["content_dictionaries"] = nb["dictionaries"]
    # the recent contents kept for retraining are bytes objects (33 B of header each)
    anon["content_samples"] = nb["samples"] + 33 * len(arena._recent)
    # zstd contexts: the compressor (with its digested dictionary) and one decompressor per
    # dictionary generation used so far
    ctx = _zstd_size(getattr(arena._compress, "__self__", None))
    ctx += sum(_zstd_size(getattr(d, "__self__", None)) for d in arena._decompress.values())
    if ctx:
        anon["content_zstd_contexts"] = ctx


def _zstd_size(obj) -> int:
    try:
        return int(obj.memory_size()) if obj is not None else 0
    except Exception:  # a context not created yet
        return 0


def _tags(tags, anon: dict, reserved: dict) -> None:
    nb = tags.nbytes()
    anon["tags_flat"] = 4 * len(tags._flat)  # live entries and garbage both hold memory
    anon["tags_start"] = nb["start"]
    anon["tags_count"] = nb["count"]
    anon["tags_bitmaps"] = sum(bitmap_bytes(bm) for bm in tags._bitmaps)
    anon["tags_vocab"] = nb["vocab"] + TAG_OBJECT_BYTES * tags.vocab_size
    reserved["tags"] = sum(_slack(c) for c in (tags._flat, tags._start, tags._count))


def bitmap_bytes(bm) -> int:
    """In-memory bytes of a roaring bitmap: its containers' values plus a fixed cost each."""
    st = bm.get_statistics()
    values = st["n_bytes_array_containers"] + st["n_bytes_run_containers"] + st["n_bytes_bitset_containers"]
    return int(values + ROARING_CONTAINER_BYTES * st["n_containers"])


def _ann_state(index) -> str:
    """``"opened"`` when the IVF was read from the store and has not grown since, else ``"built"``."""
    ann = index.parts.ann
    if not bool(getattr(ann.index, "own_fields", False)):
        return "built"  # constructed in this process (FAISS read_index owns its quantizer)
    if index.path is None:
        return "opened"
    from ..store import layout as storage

    try:
        manifest = storage.read_manifest(storage.current_generation(index.path))
    except (storage.StoreError, OSError):
        return "opened"
    return "opened" if int(manifest.get("count", -1)) == ann.ntotal else "built"


def _ann(ann, state: str, anon: dict, gpu: dict) -> None:
    nb = ann.nbytes()
    sizes = ann.list_sizes()
    codes = fastscan_list_bytes(sizes, ann.pq_m, int(ann.index.bbs))
    anon["ann_codes"] = nb["codes"]
    anon["ann_codes_slack"] = int(fastscan_resident(codes, state).sum()) - nb["codes"]
    anon["ann_ids"] = nb["ids"]
    anon["ann_centroids"] = nb["centroids"]
    overhead = LIST_OVERHEAD * ann.nlist
    if ann.coarse == "hnsw":
        anon["ann_coarse_graph"] = nb["coarse_graph"]
        overhead += 12 * ann.nlist + 8  # levels (int32) and offsets (int64) per node
    anon["ann_overhead"] = overhead
    clus = getattr(ann, "_clustering_index", None)
    if clus is not None and clus.ntotal:  # the flat index k-means assigned with keeps the centroids
        anon["ann_clustering_index"] = int(clus.ntotal) * int(clus.d) * 4
    if ann.gpu_index is not None:  # pragma: no cover - needs faiss-gpu
        gpu["ann"] = nb["codes"] + nb["ids"] // 2 + nb["centroids"]  # 32-bit ids on the GPU


def _array_bytes(obj, depth: int = 3) -> int:
    """Bytes of the numpy arrays an object holds (in its attributes and dicts, a few levels down)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if depth == 0:
        return 0
    if isinstance(obj, dict):
        items = list(obj.values())
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).values())
    elif hasattr(obj, "__slots__"):
        items = [getattr(obj, k, None) for k in obj.__slots__]
    else:
        return 0
    return sum(_array_bytes(v, depth - 1) for v in items)


def _cuda_tensors(index, gpu: dict) -> None:
    """CUDA tensors the index or its parts hold besides the encoder's buffers (none without torch)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    seen = {id(b) for b in index.parts.encoder.buffers()} if index.parts.encoder_built else set()
    total = 0
    for obj in (index, index.parts, index.parts.vectors):
        for v in vars(obj).values():
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


#: Files of a generation and the component each one holds.
GENERATION_FILES = {"vectors.i8": "vectors_int8", "ann.faiss": "ann", "content.bin": "content_records",
                    "content.npz": "content_index", "metadata.npz": "metadata", "tags.npz": "tags",
                    "deleted.roaring": "tombstones", "encoder.npz": "encoder",
                    "calibration.npz": "calibration", "probe.npz": "probe", "drift.npz": "drift_monitor",
                    "manifest.json": "manifest"}


def _disk(index, disk: dict) -> None:
    vec = index.parts.vectors
    if getattr(vec, "_owns_file", False) and vec._path:
        disk["vectors_spill"] = _disk_usage(vec._path)  # sparse: only the rows written
    if index.path is None:
        return
    from ..store import layout as storage

    root = pathlib.Path(index.path)
    try:
        gen = storage.current_generation(root)
    except storage.StoreError:
        return
    for p in gen.iterdir():
        name = GENERATION_FILES.get(p.name, "generation_other")
        disk[name] = disk.get(name, 0) + _disk_usage(p)
    prev = storage.previous_generation(root)
    if prev is not None:
        disk["previous_generation"] = _dir_usage(prev)
    for name, part in (("vectors.work", "vectors_work"), (storage.WAL, "wal")):
        if (root / name).exists():
            disk[part] = _disk_usage(root / name)
    other = sum(_disk_usage(p) for p in root.iterdir() if p.is_file() and p.name not in ("vectors.work", storage.WAL))
    if other:
        disk["store_other"] = other
