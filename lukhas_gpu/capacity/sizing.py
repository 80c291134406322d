"""Capacity planning: the bytes an index will hold, per component and place, before it is built.

:func:`plan` predicts what :meth:`MemoryIndex.stats` will report (anonymous RAM, memory-mapped,
disk and GPU bytes) for ``count`` memories under a config, with the size formulas of
:mod:`lukhas_gpu.accounting`; :func:`max_count` inverts it ("how many memories fit in 16 GB").

What it has to assume, and says so in its arguments:

* the IVF lists' sizes, which set the fast-scan block padding and FAISS's power-of-two list
  capacities: a gamma distribution with the given ``list_imbalance`` (FAISS's imbalance factor,
  ``1 + CV**2``; 1.2-1.4 on sentence embeddings), drawn once with a fixed seed;
* how well contents compress (``content_ratio``, stored / raw bytes, records included: 0.72 on
  real short texts; :func:`measure_content_ratio` measures it on a sample of yours);
* how tags spread: ``tags_per_memory`` uses over a ``tag_vocabulary``, popularity Zipf-distributed
  with exponent ``tag_skew``.

Examples
--------
>>> import lukhas_gpu
>>> cfg = lukhas_gpu.IndexConfig.preset("advanced", capacity=1_000_000)
>>> p = lukhas_gpu.plan(1_000_000, 384, avg_content_bytes=100, tags_per_memory=2, config=cfg, backend="cpu")
>>> (p.nlist, p.pq_m, p.dim_out)
(2048, 96, 384)
>>> "vectors_int8" in p.memory["mapped"]  # "advanced" memory-maps the int8 vectors
True
"""
from __future__ import annotations

import dataclasses
import math
import re
from decimal import Decimal, InvalidOperation

import numpy as np

from ..config import IndexConfig, as_config
from ..records.contenthash import planned_bytes as hashes_planned
from ..records.contents import planned_bytes as content_bytes
from ..records.metadata import planned_bytes as metadata_bytes
from ..records.scopes import planned_bytes as scope_bytes
from ..sparse.sparse_vectors import planned_bytes as sparse_bytes
from ..util.bounds import MAX_DRIFT_TAGS, MAX_NAMESPACES, MAX_ROWS
from ..util.checks import check_int, check_real
from ..util.memory import DRIFT_HISTORY_BYTES, NPZ_MEMBER_BYTES, TAG_MIN_COUNT, planned_bitmap_bytes, tag_drift_bytes
from ..util.runtime import planned as planned_runtime
from ..vectors.graph import planned_stage
from ..vectors.policy import (
    CALIBRATION_ROWS,
    MIN_TRAIN_ROWS,
    TWO_LEVEL_FROM,
    auto_pq_m,
    coarse_for,
    dim_out_for,
    encoder_bytes,
    nlist_at,
    train_at,
    vector_capacity,
)
from ..vectors.store import planned_bytes as vector_bytes
from .accounting import (
    LIST_OVERHEAD,
    PAGE,
    PLACES,
    RUNTIME_COMPONENT,
    TAG_OBJECT_BYTES,
    fastscan_list_bytes,
    fastscan_resident,
    hnsw_graph_bytes,
    summarize,
)

__all__ = ["Plan", "plan", "max_count", "measure_content_ratio", "parse_size", "parse_count"]

STATES = ("built", "opened", "checkpointed")
#: CPython small-object pools kept by the vocabulary's objects (see accounting.python_pools):
#: per distinct tag when the names come from the caller's batches (measured with batches of
#: 50,000 memories and 1000 tags), and in all for a store just opened.
PINNED_POOL_BYTES_PER_TAG = 4_900
PINNED_POOL_BYTES_OPENED = 330_000
#: ... but no more than the pools one batch's temporaries span (a guess: ~16 MiB for 50,000
#: memories with a text and a tag list each); past it, names share their pools.
PINNED_POOL_BYTES_MAX = 16 << 20
#: Average UTF-8 bytes of a tag name (only the vocabulary's size depends on it).
TAG_NAME_BYTES = 12
MANIFEST_BYTES = 3000


@dataclasses.dataclass(frozen=True)
class Plan:
    """Predicted bytes of an index, per component and place (see :func:`plan`).

    Attributes
    ----------
    count, dim : int
        Memories and input dimension planned for.
    dim_out, nlist, pq_m, coarse :
        The projected dimension, IVF lists, PQ sub-quantizers and coarse quantizer the index
        would choose (``nlist``, ``pq_m`` and ``coarse`` are None while it would still be in its
        exact phase, below the training count).
    state : {"built", "opened", "checkpointed"}
    backend : {"cpu", "cuda"}
    memory : dict
        ``{"anon": {...}, "mapped": {...}, "disk": {...}, "gpu": {...}}``: component -> bytes,
        named as in ``MemoryIndex.stats()["memory"]``.
    anon_bytes, mapped_bytes, disk_bytes, gpu_bytes : int
        Totals per place.
    per_memory : dict
        Each total over ``count``.
    """

    count: int
    dim: int
    dim_out: int
    nlist: int | None
    pq_m: int | None
    coarse: str | None
    state: str
    backend: str
    memory: dict
    anon_bytes: int
    mapped_bytes: int
    disk_bytes: int
    gpu_bytes: int
    per_memory: dict

    def to_dict(self) -> dict:
        """Plain, JSON-ready copy (nested dicts copied)."""
        out = dataclasses.asdict(self)
        out["memory"] = {k: dict(v) for k, v in self.memory.items()}
        out["per_memory"] = dict(self.per_memory)
        return out


# -- inputs --------------------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value, name: str = "size") -> int:
    """Bytes from an int or a string such as ``"16G"``, ``"512 MiB"``, ``"1.5T"`` (binary units).

    >>> parse_size("16G"), parse_size("512 MiB"), parse_size(4096), parse_size("1.5k")
    (17179869184, 536870912, 4096, 1536)
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a string like '16G', got bool")
    if isinstance(value, (int, np.integer)):
        v = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", value)
        if not m:
            raise ValueError(f"{name} must look like '16G', '512MiB' or '4096', got {value!r}")
        v = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    else:
        raise TypeError(f"{name} must be an int or a string like '16G', got {type(value).__name__}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def parse_count(value, name: str = "count", lo: int = 0, hi: int | None = None) -> int:
    """A whole number from an int or a string such as ``"1000000"``, ``"1_000_000"``,
    ``"1,000,000"`` or ``"1e9"``, checked against ``lo`` and ``hi``.

    >>> parse_count("1e9"), parse_count("2.5e6"), parse_count("1_000")
    (1000000000, 2500000, 1000)
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a string like '1e9', got bool")
    if isinstance(value, (int, np.integer)):
        v = int(value)
    elif isinstance(value, str) and len(value) <= 64:
        text = value.strip().replace("_", "").replace(",", "")
        try:
            d = Decimal(text) if re.fullmatch(r"[+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]{1,2})?", text) else None
        except InvalidOperation:
            d = None
        if d is None or d != d.to_integral_value():
            raise ValueError(f"{name} must be a whole number like 1000000, 1_000_000 or 1e9, got {value!r}")
        v = int(d)
    else:
        raise TypeError(f"{name} must be an int or a string like '1e9', got {type(value).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi:,}, got {value!r}")
    return v


def _backend(backend, config: IndexConfig) -> str:
    if backend is None:
        from ..util.device import resolve_backend

        return resolve_backend(config.backend)
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"backend must be 'cpu', 'cuda' or None (as this process would choose), got {backend!r}")
    return backend


# -- the model -----------------------------------------------------------------------------------
def list_sizes(count: int, nlist: int, imbalance: float, seed: int = 0) -> np.ndarray:
    """``nlist`` list sizes summing to ``count``, gamma-distributed with imbalance factor
    ``imbalance`` (``nlist * sum(s**2) / count**2`` in expectation). Deterministic."""
    if count == 0:
        return np.zeros(nlist, dtype=np.int64)
    cv2 = max(imbalance - 1.0, 1e-6)
    w = np.random.default_rng(seed).gamma(1.0 / cv2, cv2, size=nlist)
    raw = w / w.sum() * count
    sizes = np.floor(raw).astype(np.int64)
    short = count - int(sizes.sum())
    if short:  # largest remainders get the rest
        sizes[np.argsort(raw - sizes)[::-1][:short]] += 1
    return sizes


def _tag_counts(uses: float, vocabulary: int, skew: float) -> np.ndarray:
    """Expected rows per tag (Zipf popularity), for the tags that occur at all."""
    if uses <= 0:
        return np.zeros(0)
    ranks = np.arange(1, vocabulary + 1, dtype=np.float64)
    p = ranks ** -skew
    c = uses * p / p.sum()
    return c


def plan(count: int, dim: int, avg_content_bytes: float = 0, tags_per_memory: float = 0.0,
         config: IndexConfig | str | None = None, *, content_ratio: float = 0.72, tag_vocabulary: int = 1000,
         state: str = "built", tag_skew: float = 1.0, list_imbalance: float = 1.35, runtime: bool = True,
         backend: str | None = None, faiss_gpu: bool | None = None, avg_id_bytes: float = 36,
         avg_metadata_bytes: float = 0, sparse_nnz: float = 0.0, sparse_value_bytes: int = 4,
         sparse_vocabulary: int = 30522, namespaces: int = 1, windows: float = 0.0) -> Plan:
    """Predict the bytes ``count`` memories take under ``config``, per component and place.

    Parameters
    ----------
    count : int
        Memories (>= 0).
    dim : int
        Input embedding dimension.
    avg_content_bytes : float, default 0
        Mean UTF-8 bytes of a memory's content (0: no contents; each memory still has a 2-byte
        empty record).
    tags_per_memory : float, default 0
        Mean tags per memory.
    config : IndexConfig or str, optional
        A config or a preset name (``"production"``, ``"advanced"``, ``"ultra"``); default
        ``IndexConfig()``. Its ``capacity`` sizes the IVF as ``MemoryIndex.train`` would.
    content_ratio : float, default 0.72
        Stored / raw content bytes, records' headers included (0.72 measured on real short
        texts; see :func:`measure_content_ratio` to measure yours).
    tag_vocabulary : int, default 1000
        Distinct tags.
    state : {"built", "opened"}, default "built"
        ``"built"``: an index built by ``add`` in this process (IVF lists grown to power-of-two
        capacities, vectors where ``config.vector_storage`` puts them). ``"opened"``: a store
        opened read-only (lists read at their sizes; int8 vectors and content records
        memory-mapped). ``"checkpointed"``: a durable writer after a checkpoint (as ``"built"``,
        but its int8 vectors and content records are the published files mapped copy-on-write;
        the memories written since the checkpoint are anonymous and not counted).
    tag_skew : float, default 1.0
        Zipf exponent of tag popularity (0: all tags equally common).
    list_imbalance : float, default 1.35
        Imbalance factor of the IVF lists (>= 1).
    backend : {"cpu", "cuda"}, optional
        Default: what this process would choose for ``config.backend``.
    faiss_gpu : bool, optional
        Whether FAISS clones the IVF to the GPU (cuda backend only); default: detected.
    avg_id_bytes : float, default 36
        Mean UTF-8 bytes of an external id (``config.external_ids="str"``; a canonical UUID or a
        str of at most 16 bytes costs 21 B, a longer one 21 B plus its bytes).
    avg_metadata_bytes : float, default 0
        Mean bytes of a memory's free metadata record (:mod:`lukhas_gpu.records.docmeta`'s
        encoding, declared fields excluded: ``{"source": "email", "turn": 17}`` is 11 B); each
        memory then also has a 4-byte offset. Declared fields cost their columns (and the
        offset and a 1-byte record of the free part, which may be empty).
    sparse_nnz : float, default 0
        Mean non-zeros of each memory's sparse vector (``add(..., sparse=)``; 0: none).
    sparse_value_bytes : {4, 2}, default 4
        float32 or float16 sparse values.
    sparse_vocabulary : int, default 30522
        Distinct terms of the sparse vectors (30,522: BERT's vocabulary, SPLADE's).
    namespaces : int, default 1
        Distinct namespaces the memories are spread over (1: all in the default ``""``, which
        costs nothing; more: a 4-byte column per memory, the names, and the cached row bitmaps
        of up to ``records.scopes.CACHED_NAMESPACES`` of them).
    windows : float in [0, 1], default 0
        Share of memories given a validity window (``valid_from`` / ``valid_to``; any: two
        float64 columns over every memory and a bitmap of those with one).
    runtime : bool, default True
        Count what a fresh process's first import and use of torch and FAISS leaves resident
        (``anon["runtime_libraries"]``, as ``stats()`` of the process's first index reports it):
        each window's figure (imports, first encode, search, training, background tuning run
        under a ``target_recall``) measured in this process when it has one
        (:func:`lukhas_gpu.util.runtime.planned`), else ``util.runtime.DEFAULT_BYTES``'s
        (measured, the machine named there). False for an index built in a process that has
        already used the vector path.

    Returns
    -------
    Plan

    Raises
    ------
    TypeError, ValueError
        A count, dimension or ratio of the wrong type or out of range, an unknown preset,
        state or backend.
    """
    count = check_int("count", count, 0)
    dim = check_int("dim", dim, 1)
    avg = check_real("avg_content_bytes", avg_content_bytes, 0.0)
    tpm = check_real("tags_per_memory", tags_per_memory, 0.0, 255.0)
    ratio = check_real("content_ratio", content_ratio, 0.0, 2.0, lo_open=True)
    vocab = check_int("tag_vocabulary", tag_vocabulary, 1)
    skew = check_real("tag_skew", tag_skew, 0.0)
    imbalance = check_real("list_imbalance", list_imbalance, 1.0)
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    cfg = as_config(config)
    be = _backend(backend, cfg)
    dim_out = dim_out_for(dim, cfg)
    opened = state == "opened"
    rows_mapped = opened or state == "checkpointed" or cfg.vector_storage == "mmap"
    plan_state, state = state, "built" if state == "checkpointed" else state  # all but the rows: as built
    id_avg = check_real("avg_id_bytes", avg_id_bytes, 0.0)
    meta_avg = check_real("avg_metadata_bytes", avg_metadata_bytes, 0.0)
    nnz = check_real("sparse_nnz", sparse_nnz, 0.0, 65536.0)
    n_ns = check_int("namespaces", namespaces, 1)
    if n_ns > MAX_NAMESPACES:
        raise ValueError(f"namespaces must be at most {MAX_NAMESPACES:,} (lukhas_gpu.util.bounds.MAX_NAMESPACES), "
                         f"got {n_ns:,}")
    windowed = check_real("windows", windows, 0.0, 1.0)

    # each component's bytes, in the order stats() lists them; the sum is the plan
    total: dict[str, dict] = {"anon": {}, "mapped": {}, "disk": {}, "gpu": {}}
    _add(total, vector_bytes(count, dim, capacity_rows=vector_capacity(count, cfg),
                             mapped=rows_mapped))
    _add(total, _encoder_and_probe_bytes(count, dim, dim_out, cfg, be))
    _add(total, content_bytes(count, avg, ratio, opened=opened, records_mapped=plan_state == "checkpointed"))
    _add(total, _document_bytes(count, cfg, id_avg, meta_avg))
    _add(total, metadata_bytes(count))
    _add(total, _tag_bytes(count, tpm, vocab, skew, state, has_contents=avg > 0, dim=dim))
    _add(total, scope_bytes(count, n_ns, windowed))
    if runtime and count and state == "built":  # an opened store pays it at its first search
        trained = _trained(count, cfg)  # a trained index under a recall target is tuned in the background
        total["anon"][RUNTIME_COMPONENT] = planned_runtime(
            trained, trained and cfg.target_recall is not None and cfg.auto_tune)
    nlist = pq_m = coarse = None
    if _trained(count, cfg):
        ann, nlist, pq_m, coarse = _ann_bytes(count, dim_out, cfg, imbalance, state, be, faiss_gpu)
        _add(total, ann)
        # the largest candidate stage the tuner may add within config.ann_ram_budget (index/candidates)
        kind, nbytes = planned_stage(count, dim_out, cfg.ann_ram_budget, sum(ann["anon"].values()), nlist)
        if kind is not None:
            _add(total, {"anon": {f"stage_{kind}": nbytes}, "disk": {"candidate_stage": nbytes}})
    if nnz and count:
        if sparse_value_bytes not in (2, 4):
            raise ValueError(f"sparse_value_bytes must be 4 (float32) or 2 (float16), got {sparse_value_bytes!r}")
        _add(total, sparse_bytes(count, nnz, sparse_value_bytes, opened=opened,
                                 vocabulary=check_int("sparse_vocabulary", sparse_vocabulary, 1)))
    total["disk"]["manifest"] = MANIFEST_BYTES
    total["disk"] = {k: _blocks(v) for k, v in total["disk"].items()}

    s = summarize(total, count)
    return Plan(count=count, dim=dim, dim_out=dim_out, nlist=nlist, pq_m=pq_m, coarse=coarse, state=plan_state,
                backend=be, memory={place: s[place] for place in PLACES}, anon_bytes=s["anon_bytes"],
                mapped_bytes=s["mapped_bytes"], disk_bytes=s["disk_bytes"], gpu_bytes=s["gpu_bytes"],
                per_memory=s["per_memory"])


def _add(total: dict, part: dict) -> None:
    """A component's ``{place: {name: bytes}}`` into the plan's."""
    for place, items in part.items():
        total[place].update(items)


def _trained(count: int, cfg: IndexConfig) -> bool:
    return count >= train_at(cfg) and count >= MIN_TRAIN_ROWS


def _encoder_and_probe_bytes(count: int, dim: int, dim_out: int, cfg: IndexConfig, be: str) -> dict:
    """The encoder, the device mirror, the calibration rows, the recall probe and the tombstones."""
    anon: dict = {}
    gpu: dict = {}
    disk: dict = {}
    enc = encoder_bytes(dim, dim_out)
    (gpu if be == "cuda" else anon)["encoder"] = enc
    disk["encoder"] = enc + 5 * NPZ_MEMBER_BYTES
    if cfg.resident_on(be) and count and (dim_out == dim or count >= train_at(cfg)):
        # built at the first search once the projection exists, sized to the count (or the
        # capacity if larger); later adds double it
        (gpu if be == "cuda" else anon)["resident_vectors"] = max(count, cfg.capacity or 0) * (dim_out + 1)
    if 0 < count < CALIBRATION_ROWS:
        anon["calibration"] = 4 * count * dim
        disk["calibration"] = 4 * count * dim + NPZ_MEMBER_BYTES
    probe = min(count, cfg.probe_size) * (2 * dim + 8) + cfg.probe_queries * 2 * dim
    anon["probe"] = probe
    disk["probe"] = probe + 5 * NPZ_MEMBER_BYTES
    anon["tombstones"] = 0
    disk["tombstones"] = 8
    anon["content_hashes"] = hashes_planned(count, cfg.dedup == "exact")
    disk["content_hashes"] = 8 * count + NPZ_MEMBER_BYTES
    return {"anon": anon, "gpu": gpu, "disk": disk}


def _document_bytes(count: int, cfg: IndexConfig, id_avg: float, meta_avg: float) -> dict:
    """External ids, free metadata and declared fields (``records.keytable`` / ``docmeta``)."""
    anon: dict = {}
    disk: dict = {}
    if cfg.external_ids:
        ids = count * (21 + (id_avg if cfg.external_ids == "str" and 16 < id_avg != 36 else 0))
        anon["external_ids"] = disk["external_ids"] = ids
    field_bytes = {"str": 4, "int": 8.125, "float": 8.125, "bool": 1}
    fields = count * sum(field_bytes[t] for t in cfg.fields.values())
    if meta_avg > 0 or fields:
        anon["metadata_records"] = count * (4 + max(meta_avg, 1))  # an offset; an empty free part is 1 B
        if fields:
            anon["metadata_fields"] = fields
        disk["doc_metadata"] = anon["metadata_records"] + fields + 8 * NPZ_MEMBER_BYTES
    return {"anon": anon, "disk": disk}


def _tag_bytes(count: int, tpm: float, vocab: int, skew: float, state: str, *, has_contents: bool,
               dim: int) -> dict:
    """The tag lists, bitmaps and vocabulary, the Python pools their names pin, and the per-tag
    drift references of the tags expected to reach ``TAG_MIN_COUNT`` memories."""
    uses = tpm * count
    counts = _tag_counts(uses, vocab, skew)
    distinct = float(-np.expm1(-counts).sum()) if len(counts) else 0.0  # tags seen at least once
    anon = {"tags_flat": 4 * uses, "tags_start": 4 * count, "tags_count": count,
            "tags_bitmaps": planned_bitmap_bytes(counts, count),
            "tags_vocab": distinct * (TAG_NAME_BYTES + TAG_OBJECT_BYTES)}
    if state == "built" and distinct:
        anon["python_pools"] = min(PINNED_POOL_BYTES_PER_TAG * distinct, PINNED_POOL_BYTES_MAX)
    elif state == "opened" and (distinct or has_contents):
        anon["python_pools"] = PINNED_POOL_BYTES_OPENED
    disk = {"tags": 4 * uses + 5 * count + distinct * (TAG_NAME_BYTES + 8) + 5 * NPZ_MEMBER_BYTES}
    refs = min(int((counts >= TAG_MIN_COUNT).sum()) if len(counts) else 0, MAX_DRIFT_TAGS)
    if refs:
        anon["tag_drift"] = tag_drift_bytes(refs, dim, refs * TAG_NAME_BYTES)
        disk["tag_drift"] = refs * (4 * dim + 12 + TAG_NAME_BYTES) + 5 * NPZ_MEMBER_BYTES
    return {"anon": anon, "disk": disk}


def _ann_bytes(count: int, dim_out: int, cfg: IndexConfig, imbalance: float, state: str, be: str,
               faiss_gpu: bool | None) -> tuple[dict, int, int, str]:
    """The IVF-PQ index and the drift monitor once trained: ``(bytes, nlist, pq_m, coarse)``."""
    nlist = nlist_at(count, cfg)  # trained at train_at rows, restructured as it grows (auto_tune)
    pq_m = auto_pq_m(dim_out, cfg.pq_m)
    coarse = coarse_for(nlist, cfg)
    codes = fastscan_list_bytes(list_sizes(count, nlist, imbalance), pq_m)
    centroids = 4 * nlist * dim_out + 4 * 16 * dim_out
    graph = hnsw_graph_bytes(nlist) if coarse == "hnsw" else 0
    anon = {"ann_codes": int(codes.sum()), "ann_codes_slack": int(fastscan_resident(codes, state).sum() - codes.sum()),
            "ann_ids": 8 * count, "ann_centroids": centroids}
    if graph:
        anon["ann_coarse_graph"] = graph - nlist * 12 - 8  # neighbour slots only, as stats
    anon["ann_overhead"] = LIST_OVERHEAD * nlist + (nlist * 12 + 8 if graph else 0)
    if state == "built" and coarse == "hnsw" and nlist < TWO_LEVEL_FROM:
        anon["ann_clustering_index"] = 4 * nlist * dim_out
    anon["drift_monitor"] = 2 * 8 * nlist + DRIFT_HISTORY_BYTES
    disk = {"ann": int(codes.sum()) + 8 * count + centroids + graph + 16 * nlist + 1024,
            "drift_monitor": 3 * 8 * nlist + DRIFT_HISTORY_BYTES + 6 * NPZ_MEMBER_BYTES}
    gpu = {}
    if be == "cuda" and (faiss_gpu if faiss_gpu is not None else _faiss_gpus() > 0):
        gpu["ann"] = int(codes.sum()) + 4 * count + centroids
    return {"anon": anon, "disk": disk, "gpu": gpu}, nlist, pq_m, coarse


def _blocks(nbytes: float) -> int:
    """A file's allocated bytes: whole 4 KiB blocks."""
    return -(-int(math.ceil(nbytes)) // PAGE) * PAGE


def _faiss_gpus() -> int:
    from ..util.device import faiss_gpus

    return faiss_gpus()


# -- inverse --------------------------------------------------------------------------------------
#: The most memories an index holds (``util.bounds.MAX_ROWS``).
MAX_COUNT = MAX_ROWS


def max_count(ram_bytes=None, gpu_bytes=None, *, include_mapped: bool = False, **kwargs) -> int:
    """The most memories whose :func:`plan` fits the given budget.

    Parameters
    ----------
    ram_bytes : int or str, optional
        Anonymous RAM budget, e.g. ``16 * 2**30`` or ``"16G"``.
    gpu_bytes : int or str, optional
        GPU memory budget.
    include_mapped : bool, default False
        Count memory-mapped bytes against ``ram_bytes`` too (for a node that must keep the
        vectors and contents in its page cache rather than page them in from disk).
    **kwargs
        The other arguments of :func:`plan` (``dim`` is required).

    Returns
    -------
    int
        ``c`` such that ``plan(c)`` fits and ``plan(c + 1)`` does not (0 if not even an empty
        index fits; ``MAX_COUNT`` if everything does).

    Examples
    --------
    >>> from lukhas_gpu import max_count, plan
    >>> c = max_count("1G", dim=384, config="advanced")
    >>> plan(c, 384, config="advanced").anon_bytes <= 2**30 < plan(c + 1, 384, config="advanced").anon_bytes
    True
    """
    if ram_bytes is None and gpu_bytes is None:
        raise ValueError("give ram_bytes, gpu_bytes or both")
    if "count" in kwargs:
        raise TypeError("max_count() finds the count; do not pass one")
    if "dim" not in kwargs:
        raise TypeError("max_count() needs dim=")
    ram = parse_size(ram_bytes, "ram_bytes") if ram_bytes is not None else None
    gpu = parse_size(gpu_bytes, "gpu_bytes") if gpu_bytes is not None else None
    kwargs["config"] = as_config(kwargs.get("config"))  # load a preset once

    def fits(c: int) -> bool:
        p = plan(c, **kwargs)
        used = p.anon_bytes + (p.mapped_bytes if include_mapped else 0)
        return (ram is None or used <= ram) and (gpu is None or p.gpu_bytes <= gpu)

    if not fits(0):
        return 0
    lo, hi = 0, 1024
    while fits(hi):  # invariant: fits(lo), not fits(hi)
        lo = hi
        if hi == MAX_COUNT:
            return MAX_COUNT
        hi = min(2 * hi, MAX_COUNT)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# -- measuring the inputs --------------------------------------------------------------------------
def measure_content_ratio(samples, *, level: int = 3) -> float:
    """Stored / raw bytes of ``samples`` (str or bytes) in a content arena: the ``content_ratio``
    to plan with. A few thousand contents like yours are enough (a dictionary is trained on them
    as the index would)."""
    from ..records.contents import ContentArena

    if isinstance(samples, (str, bytes)):
        raise TypeError("samples must be a sequence of str/bytes, got a single one; wrap it in a list")
    arena = ContentArena(level=level)
    arena.append(list(samples))
    if not arena.raw_bytes:
        raise ValueError("samples hold no content bytes")
    return arena.stored_bytes / arena.raw_bytes

