"""Index configuration: one keyword-only dataclass, presets in ``configs/*.toml``.

Every field documents its default and its trade-off. A preset file maps one-to-one onto the
fields (unknown keys are an error), so ``IndexConfig.preset("production")`` is the same object as
``IndexConfig(**tomllib.load(open("configs/production.toml")))``.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from .util.device import BACKENDS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["IndexConfig", "as_config", "preset_names", "PRESET_DIR"]

#: Presets: the repository's ``configs/`` is installed as ``lukhas_gpu/configs`` so that a wheel
#: finds them; a source checkout reads ``configs/`` directly; ``LUKHAS_GPU_CONFIGS`` points elsewhere.
_HERE = pathlib.Path(__file__).resolve().parent
PRESET_DIR = _HERE / "configs" if (_HERE / "configs").is_dir() else _HERE.parent / "configs"

_METRICS = ("cosine", "ip")
_VECTOR_STORAGE = ("memory", "mmap")
#: Types a declared metadata field may have (``metadata_fields``).
METADATA_FIELD_TYPES = ("str", "int", "float", "bool")
#: ``IndexConfig.dedup`` and ``add(dedup=)``.
DEDUP_MODES = ("off", "exact", "near")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """How a :class:`~lukhas_gpu.MemoryIndex` stores and searches vectors.

    Parameters
    ----------
    metric : {"cosine", "ip"}, default "cosine"
        ``cosine`` L2-normalises every vector before it is stored or searched (scores are cosine
        similarities); ``ip`` keeps raw inner products (for embeddings whose norm carries meaning).
    dim_out : int or None, default None
        Dimension of the projected space the ANN codes live in. ``None`` keeps the input dimension
        up to 512 and projects larger inputs to 512 (PCA fitted at training time). Smaller is
        faster and smaller in RAM; recall is restored by the full-dimension int8 rerank. A value
        above the input dimension means no projection.
    train_threshold : int, default 32768
        Below this many stored vectors the index answers by an exact int8 scan, with no training
        asked of the user; when an ``add`` crosses it the IVF-PQ index is trained on the vectors
        held. Higher keeps exact answers longer at the cost of scan time per query.
    nlist : int or None, default None
        IVF lists. ``None`` chooses by size at training time (about ``1.5 * sqrt(n)``, see
        ``vectors.ann.LISTS_PER_SQRT``; a power of two between 256 and 16384) -- by ``capacity``
        when it is set. More lists: fewer rows a probe, more probes for a recall, slower training
        and assignment.
    capacity : int or None, default None
        The number of memories the index is expected to hold (a batch job knows it). It sizes
        ``nlist`` and delays training until the sample that many lists need has arrived, so an index
        fed in batches is trained as well as one given everything at once.
        ``None``: size by the count at the time of training.
    nprobe : int, default 128
        Lists visited per query. The probe count, not the quantizer, bounds recall on real
        embeddings: raising it buys recall for linear cost in scan time.
    pq_m : int or None, default None
        Sub-quantizers of the 4-bit fast-scan PQ (``pq_m / 2`` bytes per vector). ``None`` takes
        ``dim_out / 4`` capped at 128 (64 B codes); a value that does not divide ``dim_out`` is
        lowered to the nearest divisor.
    rerank : int, default 10
        Candidates fetched from the ANN per result (``k * rerank``) and re-scored with the int8
        vectors. Higher restores more recall lost to PQ, at the cost of random reads of int8 rows.
    quantile : float, default 0.9999
        The per-dimension int8 scale covers this quantile of ``|x|`` in the fitting sample; the
        rest is clipped. 1.0 never clips but wastes resolution on outliers.
    coarse : {"auto", "flat", "hnsw"}, default "auto"
        Coarse quantizer of the IVF. ``hnsw`` assigns in ``O(log nlist)`` (fast ingest at large
        ``nlist``) at a small recall cost; ``auto`` uses it from 4096 lists up.
    vector_storage : {"memory", "mmap"}, default "memory"
        Where the int8 rerank vectors live: anonymous RAM, or a file-backed memory map in
        ``spill_dir`` (page cache, reclaimable by the OS: the RAM per memory then drops to the ANN
        codes, at the cost of page faults on a cold rerank).
    spill_dir : str or None, default None
        Directory for ``vector_storage="mmap"``; ``None`` uses the system temporary directory.
    max_content_bytes : int, default 65536
        Largest content accepted per memory (encoded bytes); a batch holding a larger one is
        rejected whole.
    zstd_level : int, default 3
        zstd level of the content arena. Higher compresses short texts a little better and
        ingests slower; each record is compressed on its own with a trained dictionary.
    filter_exact_max : int, default 16384
        A filtered search whose filter leaves at most this many memories scans them exactly
        (every result satisfies the filter, recall is that of the int8 vectors); above it, the
        IVF searches with an id selector and more probes. Higher: exact answers for wider
        filters, at the cost of scan time.
    rank_oversample : int, default 4
        With a memory-aware :class:`~lukhas_gpu.Rank`, candidates fetched by similarity per
        result, before the bound on recency and importance adds the memories that could still
        outrank them.
    wal_sync : {"always", "group", "none"}, default "always"
        For a store open for writing: ``always`` fsyncs the write-ahead log before every
        ``add``/``update``/``delete`` returns (an acknowledged memory survives a power cut);
        ``group`` fsyncs at most every 50 ms (a process crash loses nothing, a power cut up to
        50 ms of writes) for much higher small-batch write rates; ``none`` leaves it to the OS.
    external_ids : {None, "str", "int"}, default None
        ``None``: ids are the row numbers the index assigns. ``"str"`` / ``"int"``: every ``add``
        names its memories (``ids=``, str of at most 1024 UTF-8 bytes or int64) and ``get``,
        ``delete``, ``update``, ``contains`` take those ids; adding an id that exists replaces
        that memory (upsert). A canonical 36-char UUID costs 21 B per memory.
    metadata_fields : dict of name -> {"str", "int", "float", "bool"}, optional
        Fields of the free metadata dicts kept in packed columns that ``Filter(meta=...)`` can
        test (equality, ``$in``, ranges, ``$exists``) as fast column scans (a filter on any other
        key scans the stored metadata records); a value of a declared field must have its type.
        Stored as ``((name, type), ...)``; :attr:`fields` gives the dict.
    backend : {"auto", "cpu", "cuda"}, default "auto"
        Where the torch kernels run; ``LUKHAS_GPU_BACKEND`` overrides it. ``auto`` takes CUDA when
        torch sees a GPU and falls back to CPU with one log line.
    gpu_resident : {"auto", "on", "off"}, default "auto"
        Keep the projected int8 codes of every memory on the torch device (``dim_out`` bytes plus
        a 1-byte tombstone each, reported under ``stats()["memory"]["gpu"]``) and answer searches
        by an exact scan there: no IVF approximation, filters of any width scanned exactly, no
        copy of vectors per query. ``auto``: on with the CUDA backend; if the device runs out of
        memory the mirror is dropped with a warning and searches go back to the IVF candidates,
        reranked on the device. ``on`` with the CPU backend keeps a second copy in RAM (it exists
        to test the path without a GPU).
    batch_size : int, default 65536
        Rows per chunk in encoding and exact scans; bounds the temporary memory of every call.
    threads : int or None, default None
        Threads for FAISS and torch on CPU; ``None`` leaves the libraries' defaults.
    seed : int, default 1234
        Seed of every sampling and clustering step, so builds are reproducible.
    probe_size : int, default 2048
        Original vectors (float16) kept as a uniform reservoir sample of everything added: the
        ground truth of :meth:`~lukhas_gpu.MemoryIndex.quality` and the sample a
        :meth:`~lukhas_gpu.MemoryIndex.retrain` refits the projection on. ``2 * dim + 8`` bytes
        each (1.5 MB at 384 dims); 0 turns the probe off.
    probe_queries : int, default 1024
        Recent search queries (float16) kept as a reservoir sample: the queries
        :meth:`~lukhas_gpu.MemoryIndex.quality` replays, so its estimate follows the real query
        distribution. ``2 * dim`` bytes each; 0 keeps none (the probe then queries with the
        stored sample itself).
    drift_threshold : float, default 1.5
        :meth:`~lukhas_gpu.MemoryIndex.drift` recommends a retrain (and logs a warning) when the
        recent batches' quantization error or list imbalance exceeds this multiple of its value
        at training time.
    target_recall : float or None, default None (0.95 in ``production``, 0.98 in ``advanced``)
        The recall@10 the index holds by itself: searches that pass neither ``nprobe`` nor
        ``rerank`` use the cheapest parameters the tuner measured to reach it
        (:meth:`~lukhas_gpu.MemoryIndex.tune`); None searches with ``nprobe`` and ``rerank``.
    auto_tune : bool, default True
        With a ``target_recall``, retune in a background thread after training, when the index
        has doubled, after a retrain and when twice as many queries have been seen; and retrain
        with more lists when the index has outgrown its own (see :mod:`lukhas_gpu.index.tuning`).
    ann_ram_budget : int, default 200
        Anonymous bytes per memory the ANN structures may hold together: the IVF-PQ (about 67 B
        a memory at 1M, 384-d) and the candidate stage the tuner may add beside it (an HNSW
        graph, about 332 B at 384-d with M=16, or IVF-RaBitQ, about 66 B; see
        :mod:`lukhas_gpu.index.candidates`). The tuner never builds a stage that would exceed
        it: with the other parts' ~45 B this keeps a default store within 250 B per memory.
    text_index : bool, default False
        Tokenize every memory's content (``str``) on add and keep its term frequencies, so that
        :meth:`~lukhas_gpu.MemoryIndex.search_text` ranks by BM25 and ``search(..., text=...)``
        fuses it with the dense similarity. Costs the term counts (~8 B per distinct term of a
        memory, twice: the arena and the posting lists) and tokenizing on add.
    bm25_k1, bm25_b : float, default 1.5, 0.75
        BM25's term-frequency saturation and length normalisation (applied at query time, from
        the live statistics).
    bm25_variant : {"lucene", "robertson", "atire"}, default "lucene"
        The IDF / term-frequency definitions (see :mod:`lukhas_gpu.sparse.text`).
    text_stopwords : {"en", None}, default None
        Drop English stopwords when tokenizing (contents and queries).
    text_stemmer : str or None, default None
        Stem terms with this Snowball language (``"english"``; needs PyStemmer).
    dedup : {"off", "exact", "near"}, default "off" ("exact" in ``production``)
        Deduplication on ``add`` (``add(dedup=)`` overrides it per call): ``exact`` merges a memory
        whose content bytes equal a live memory's (a 64-bit content hash per memory, 8 B);
        ``near`` merges one whose vector's cosine to its nearest live memory (the index's own
        search, confirmed on the int8 rows) is at least ``dedup_threshold``. A duplicate gets the
        existing id back and merges into it (newest timestamp, highest importance, union of
        tags). Adds naming ``ids=`` are upserts and skip dedup. ``near`` costs a k=1 search per
        memory added.
    dedup_threshold : float, default 0.97
        The cosine at or above which ``near`` merges.
    dedup_merge : {"merge", "replace"}, default "merge"
        ``merge`` keeps the existing memory's content; ``replace`` takes the duplicate's.
    """

    metric: str = "cosine"
    dim_out: int | None = None
    train_threshold: int = 32768
    nlist: int | None = None
    capacity: int | None = None
    nprobe: int = 128
    pq_m: int | None = None
    rerank: int = 10
    quantile: float = 0.9999
    coarse: str = "auto"
    vector_storage: str = "memory"
    spill_dir: str | None = None
    max_content_bytes: int = 65536
    zstd_level: int = 3
    filter_exact_max: int = 16384
    rank_oversample: int = 4
    wal_sync: str = "always"
    backend: str = "auto"
    gpu_resident: str = "auto"
    batch_size: int = 65536
    threads: int | None = None
    seed: int = 1234
    probe_size: int = 2048
    probe_queries: int = 1024
    drift_threshold: float = 1.5
    target_recall: float | None = None
    auto_tune: bool = True
    ann_ram_budget: int = 200
    external_ids: str | None = None
    metadata_fields: Any = None
    text_index: bool = False
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    bm25_variant: str = "lucene"
    text_stopwords: str | None = None
    text_stemmer: str | None = None
    dedup: str = "off"
    dedup_threshold: float = 0.97
    dedup_merge: str = "merge"

    def __post_init__(self) -> None:
        _choice("metric", self.metric, _METRICS)
        _choice("coarse", self.coarse, ("auto", "flat", "hnsw"))
        _choice("vector_storage", self.vector_storage, _VECTOR_STORAGE)
        _choice("backend", self.backend, BACKENDS)
        _choice("gpu_resident", self.gpu_resident, ("auto", "on", "off"))
        _choice("wal_sync", self.wal_sync, ("always", "group", "none"))
        if self.external_ids is not None:
            _choice("external_ids", self.external_ids, ("str", "int"))
        object.__setattr__(self, "metadata_fields", _fields(self.metadata_fields))
        for name in ("train_threshold", "nprobe", "rerank", "batch_size", "max_content_bytes",
                     "filter_exact_max", "rank_oversample", "ann_ram_budget"):
            _positive(name, getattr(self, name))
        for name in ("dim_out", "nlist", "capacity", "pq_m", "threads"):
            _positive(name, getattr(self, name), optional=True)
        for name in ("probe_size", "probe_queries"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        if not isinstance(self.drift_threshold, (int, float)) or isinstance(self.drift_threshold, bool) \
                or not self.drift_threshold > 1.0:
            raise ValueError(f"drift_threshold must be a number > 1, got {self.drift_threshold!r}")
        if self.target_recall is not None and (isinstance(self.target_recall, bool)
                                               or not isinstance(self.target_recall, (int, float))
                                               or not 0.0 < float(self.target_recall) < 1.0):
            raise ValueError(f"target_recall must be None or a number in (0, 1), got {self.target_recall!r}")
        if not isinstance(self.auto_tune, bool):
            raise ValueError(f"auto_tune must be a bool, got {self.auto_tune!r}")
        if self.train_threshold < 1024:
            raise ValueError(f"train_threshold must be >= 1024 (IVF-PQ needs a training sample), "
                             f"got {self.train_threshold}")
        if not isinstance(self.zstd_level, int) or not 1 <= self.zstd_level <= 22:
            raise ValueError(f"zstd_level must be an int in [1, 22], got {self.zstd_level!r}")
        self._check_text()
        _choice("dedup", self.dedup, DEDUP_MODES)
        _choice("dedup_merge", self.dedup_merge, ("merge", "replace"))
        if isinstance(self.dedup_threshold, bool) or not isinstance(self.dedup_threshold, (int, float)) \
                or not 0.0 < float(self.dedup_threshold) <= 1.0:
            raise ValueError(f"dedup_threshold must be a number in (0, 1], got {self.dedup_threshold!r}")
        if not (0.5 < float(self.quantile) <= 1.0):
            raise ValueError(f"quantile must be in (0.5, 1], got {self.quantile!r}")

    def _check_text(self) -> None:
        """The text index's options: ``text_index``, the BM25 variant and parameters, stopwords, stemmer."""
        if not isinstance(self.text_index, bool):
            raise ValueError(f"text_index must be a bool, got {self.text_index!r}")
        _choice("bm25_variant", self.bm25_variant, ("lucene", "robertson", "atire"))
        _choice("text_stopwords", self.text_stopwords, (None, "en"))
        for name, hi in (("bm25_k1", float("inf")), ("bm25_b", 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= hi or v != v:
                raise ValueError(f"{name} must be a number in [0, {hi}], got {v!r}")
        if self.text_stemmer is not None and not isinstance(self.text_stemmer, str):
            raise ValueError(f"text_stemmer must be a Snowball language name or None, got {self.text_stemmer!r}")

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "IndexConfig":
        """Load ``configs/<name>.toml``; keyword arguments override its fields."""
        path = _preset_dir() / f"{name}.toml"
        if not path.exists():
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
        return cls.from_toml(path, **overrides)

    @classmethod
    def from_toml(cls, path: str | os.PathLike, **overrides: Any) -> "IndexConfig":
        with open(path, "rb") as f:
            data = tomllib.load(f)
        return cls.from_dict({**data, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    @property
    def fields(self) -> dict[str, str]:
        """The declared metadata fields, ``{name: type}``."""
        return dict(self.metadata_fields or ())

    def resident_on(self, backend: str) -> bool:
        """Whether ``gpu_resident`` keeps the codes on the device for this (resolved) backend."""
        return self.gpu_resident == "on" or (self.gpu_resident == "auto" and backend == "cuda")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "IndexConfig":
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _positive(name: str, value: Any, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int{' or None' if optional else ''}, got {value!r}")


def _fields(fields) -> tuple | None:
    """``metadata_fields`` (a dict, or pairs as a manifest stores them) as ``((name, type), ...)``."""
    if fields is None:
        return None
    try:
        pairs = list(fields.items()) if isinstance(fields, dict) else [tuple(p) for p in fields]
    except TypeError:
        raise ValueError(f"metadata_fields must be a dict of name -> type, got {fields!r}") from None
    if len(pairs) > 256 or len({p[0] for p in pairs if p}) != len(pairs):
        raise ValueError(f"metadata_fields: at most 256 fields, each named once, got {len(pairs)}")
    for p in pairs:
        if len(p) != 2 or not isinstance(p[0], str) or not p[0] or len(p[0]) > 256:
            raise ValueError(f"metadata_fields: field names must be non-empty str (<= 256 chars), got {p!r}")
        if p[1] not in METADATA_FIELD_TYPES:
            raise ValueError(f"metadata_fields[{p[0]!r}] must be one of {METADATA_FIELD_TYPES}, got {p[1]!r}")
    return tuple((str(a), str(b)) for a, b in pairs)


def _preset_dir() -> pathlib.Path:
    env = os.environ.get("LUKHAS_GPU_CONFIGS")
    return pathlib.Path(env) if env else PRESET_DIR


def as_config(config) -> IndexConfig:
    """``config`` as an :class:`IndexConfig`: itself, the preset it names, or the defaults for None
    (the facade's and the planners' one rule)."""
    if config is None:
        return IndexConfig()
    if isinstance(config, str):
        return IndexConfig.preset(config)
    if not isinstance(config, IndexConfig):
        raise TypeError(f"config must be an IndexConfig or a preset name, got {type(config).__name__}")
    return config


def preset_names() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.toml"))
