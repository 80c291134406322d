"""The components one index is made of, held in one place with public names.

:class:`IndexParts` is what the facade wires and what the query executor, the recall probe,
persistence and accounting are handed: each component owns its state and exposes its own
``to_arrays()``/``from_arrays()`` (or bytes) and ``memory_usage()``; nobody reaches into another's
privates. One id per memory: the row number, shared by every component.

The encoder (a torch module) is built on first use from the arrays it was saved with, so that
opening a store to read contents, tags or statistics never imports torch.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np

from ..config import IndexConfig
from ..monitor.probe import DriftMonitor, Probe
from ..monitor.tagdrift import TagDrift
from ..records.contenthash import ContentHashes
from ..records.contents import ContentArena
from ..records.docmeta import DocMetadata
from ..records.idmap import IdMap
from ..records.links import Links
from ..records.metadata import MetadataColumns
from ..records.scopes import Namespaces, Validity
from ..records.tags import TagIndex
from ..records.tombstones import Tombstones
from ..vectors.policy import dim_out_for, encoder_bytes
from ..vectors.store import VectorStore
from .sparse_parts import make_text

__all__ = ["IndexParts", "IndexState"]

#: Whether an index of this process has used the vector path (see ``runtime_owner``).
_runtime_paid = False


@dataclasses.dataclass
class IndexState:
    """What the facade keeps between calls beside its components (``MemoryIndex.state``): the
    store's log, lock and reader cursor, and the background tuner's bookkeeping. Declared here
    once; the module that owns each field writes it, and nothing adds attributes to the facade.
    It survives a reader's reload (which swaps ``parts``)."""

    #: The write-ahead log of a store open for writing (:mod:`.durable`).
    wal: Any = None
    #: The writer's lock on the store (``store.layout.acquire_lock``).
    store_lock: Any = None
    #: A reader's cursor in the store (:class:`.reader.Cursor`).
    reader: Any = None
    #: The background tuning run, if one was started (:mod:`.tuning`).
    tuning_job: threading.Thread | None = None
    #: Asks that run to stop at its next step.
    tuning_cancel: bool = False
    #: ``time.monotonic()`` before which a failed run is not retried.
    tuning_retry_at: float = 0.0
    #: Tuning runs started so far: a run keeps its choice only if no run started after it.
    tuning_runs: int = 0
    #: The live count of the last restructure: not tried again before the index doubles.
    restructure_tried_at: int = 0
    #: What the last ``add`` did (:class:`.dedup.AddResult`: ids, merged count, which into which).
    last_add: Any = None
    #: Held while a search (under the index's shared lock) checks for and starts a background run.
    start_lock: Any = dataclasses.field(default_factory=threading.Lock)


class IndexParts:
    """The components of one index.

    Attributes
    ----------
    vectors : VectorStore
        ``(rows, dim)`` int8 rows (rerank and exact scans).
    tombstones : Tombstones
        Deleted rows.
    contents : ContentArena
    tags : TagIndex
    meta : MetadataColumns
        Timestamps and importance.
    idmap : IdMap or None
        The external id of every row (``config.external_ids``), else None.
    docmeta : DocMetadata
        Free metadata dicts and the declared fields' columns.
    namespaces : Namespaces
        Each row's namespace (a name table and a uint32 column, from the first name but ``""``).
    validity : Validity
        Each row's validity window (two float64 columns, from the first window given).
    hashes : ContentHashes
        The content hash of every row (exact dedup).
    links : Links
        Typed, weighted links between memories.
    ann : IVFPQIndex or None
        The IVF-PQ index once trained.
    mirror : DeviceMirror or None
        The device mirror of the search codes (``gpu_resident``), built on first use.
    probe : Probe
        Sampled originals and queries of the recall probe.
    drift : DriftMonitor
    sparse : SparseVectors or None
        The memories' sparse vectors (once any was added).
    text : TextIndex or None
        BM25 term counts and statistics (``config.text_index``).
    calib : (m, dim) float32 or None
        The first rows, kept while the int8 scales calibrate.
    stage : GraphStage or RaBitQStage or None
        The candidate stage the tuner chose beside the IVF (:mod:`lukhas_gpu.index.candidates`).
    tuned : Tuned or None
        The search parameters the tuner chose for ``config.target_recall`` and the table it
        measured (:mod:`lukhas_gpu.index.tuning`).
    encoder : Encoder
        Built on first access (imports torch) from ``encoder_arrays`` when a store was opened.
    """

    def __init__(self, dim: int, config: IndexConfig, *, vectors: VectorStore | None = None):
        self.dim, self.config = int(dim), config
        self.dim_out = dim_out_for(self.dim, config)
        self.vectors = vectors if vectors is not None else VectorStore(
            dim, storage=config.vector_storage, spill_dir=config.spill_dir)
        if vectors is None and config.capacity:
            self.vectors.reserve(config.capacity)  # untouched capacity is not resident
        self.tombstones = Tombstones()
        self.contents = ContentArena(level=config.zstd_level, max_content_bytes=config.max_content_bytes)
        self.tags = TagIndex()
        self.meta = MetadataColumns()
        self.idmap = IdMap(config.external_ids) if config.external_ids else None
        self.docmeta = DocMetadata(config.fields)
        self.namespaces = Namespaces()
        self.validity = Validity()
        self.hashes = ContentHashes()  # one uint64 per row: exact dedup (records/contenthash.py)
        self.links = Links()  # links between memories (records/links.py)
        self.ann = None
        self.mirror = None
        self.mirror_wanted = False  # set by the facade once the backend is known
        self.replaced = None  # while a retrain builds: the rows update(embeddings=) re-vectored (a BitMap)
        self.probe = Probe(dim, size=config.probe_size, queries=config.probe_queries, seed=config.seed)
        self.drift = DriftMonitor(config.drift_threshold, seed=config.seed)
        self.tagdrift = TagDrift(dim)  # per-tag drift references (index.driftwatch)
        self.trials: list[dict] = []  # the last trials' reports, newest last (index.trials)
        self.sparse = None  # SparseVectors, from the first add with sparse vectors
        self.text = make_text(config)  # TextIndex with config.text_index
        self.calib: np.ndarray | None = None
        self.stage = None  # the tuner's candidate stage (vectors.graph), if it chose one
        self.building: list = []  # stages a tuning run builds and measures (adds and updates reach them)
        self.tuned = None  # the tuner's choice (index.tuning.Tuned), once it has run
        self.absorbed_writes = 0  # the write count its generation absorbed (index.writecount)
        self.encoder_arrays: dict | None = None  # what a store saved, until the encoder is built
        self._encoder = None
        self._encoder_lock = threading.Lock()  # built once when concurrent searches ask together
        self._device = None
        #: One-time builds a search may start under the index's shared lock (the device mirror).
        self.build_lock = threading.RLock()
        #: The first index of the process to use the vector path is charged the libraries'
        #: first-use memory (``stats()["memory"]["anon"]["runtime_libraries"]``, measured by
        #: ``util.runtime``); later ones are not.
        self.runtime_owner = False

    # -- the encoder, built lazily ----------------------------------------------------------------
    def bind_device(self, device) -> None:
        """The torch device (or its name) the encoder and the mirror live on."""
        self._device = device

    @property
    def encoder_built(self) -> bool:
        return self._encoder is not None

    @property
    def encoder(self):
        if self._encoder is not None:
            return self._encoder
        with self._encoder_lock:  # a search may be the first to ask, beside others (shared lock)
            if self._encoder is None:
                self._build_encoder()
        return self._encoder

    def _build_encoder(self) -> None:
        from ..vectors.encoder import Encoder

        cfg = self.config
        enc = Encoder(self.dim, dim_out=self.dim_out, metric=cfg.metric, quantile=cfg.quantile,
                      batch_size=cfg.batch_size)
        if self.encoder_arrays is not None:
            enc.load_arrays(self.encoder_arrays)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self._encoder = enc.to(self._device or "cpu")
        self.encoder_arrays = None
        global _runtime_paid
        if not _runtime_paid:
            _runtime_paid = self.runtime_owner = True

    @encoder.setter
    def encoder(self, enc) -> None:
        self._encoder, self.encoder_arrays = enc, None

    def encoder_to_arrays(self) -> dict:
        if self._encoder is None and self.encoder_arrays is not None:
            return dict(self.encoder_arrays)  # a store opened and not searched: saved as it was read
        return self.encoder.to_arrays()

    def encoder_nbytes(self) -> int:
        if self._encoder is not None:
            return int(self._encoder.nbytes())
        return encoder_bytes(self.dim, self.dim_out)  # what building it will take

    def stages(self) -> list:
        """The candidate stages writes must reach: the one in service and those being built."""
        return ([self.stage] if self.stage is not None else []) + self.building

    # -- counts ---------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.vectors)

    @property
    def live(self) -> int:
        return len(self.vectors) - len(self.tombstones)

    def components(self) -> dict:
        """``{name: component}`` of the built components (for accounting and checks)."""
        out = {"vectors": self.vectors, "tombstones": self.tombstones, "contents": self.contents,
               "tags": self.tags, "meta": self.meta, "docmeta": self.docmeta, "probe": self.probe,
               "drift": self.drift, "tag_drift": self.tagdrift, "hashes": self.hashes, "links": self.links}
        if self.idmap is not None:
            out["idmap"] = self.idmap
        if self.namespaces.used:
            out["namespaces"] = self.namespaces
        if self.validity.start is not None:
            out["validity"] = self.validity
        if self._encoder is not None:
            out["encoder"] = self._encoder
        if self.ann is not None:
            out["ann"] = self.ann
        if self.mirror is not None:
            out["mirror"] = self.mirror
        if self.stage is not None:
            out["stage"] = self.stage
        if self.sparse is not None:
            out["sparse"] = self.sparse
        if self.text is not None:
            out["text"] = self.text
        return out
