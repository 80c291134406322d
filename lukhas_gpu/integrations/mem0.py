"""mem0: :class:`LukhasMem0Store`, mem0's ``VectorStoreBase`` on a :class:`~lukhas_gpu.MemoryIndex`
(extra ``[mem0]``), and :func:`register_mem0` so that
``Memory.from_config({"vector_store": {"provider": "lukhas", "config": {...}}})`` uses it,
without changing mem0.

A memory's payload is kept exactly (its ``data`` text as the memory's content, compressed, the
rest as free metadata); ``user_id``, ``agent_id``, ``run_id``, ``actor_id`` and ``role`` are
declared str fields, so mem0's ``filters`` are column scans. Filters: ``{"user_id": "alice"}``
(equality), a list (any of), ``{"key": {"gte": 3}}`` (``eq ne gt gte lt lte in nin``) on
any payload key (declared fields are column scans, others a scan of the stored metadata),
``AND`` / ``OR`` / ``NOT`` lists; anything else raises ``ValueError``. Scores
are cosine similarities clipped at 0 (higher is more similar).

Sessions are namespaces too: a memory goes to ``"user:<user_id>"`` (else ``"agent:<agent_id>"``,
else ``"run:<run_id>"``, else the default ``""``), and a search, keyword search or listing whose
filters name a ``user_id`` keeps to that user's namespace before any other condition (the
conditions still apply: an ``agent_id`` or ``run_id`` narrows within it).

``keyword_search`` (mem0's BM25 path) is served by the store's text index where the collection
has one (``index_config={"text_index": True}``); without one it returns None, mem0's answer for
a store without keyword search.

Collections are sub-directories of ``path`` (one durable store each) or, without ``path``,
indexes held by this process.
"""
from __future__ import annotations

import pathlib
import shutil
import sys
import types
from typing import Any, Dict, List, Optional

from mem0.vector_stores.base import VectorStoreBase
from pydantic import BaseModel, ConfigDict, Field

from ..query.filters import Filter
from ..store import layout
from .common import IndexHolder, as_matrix, new_ids

__all__ = ["LukhasMem0Store", "LukhasMem0Config", "register_mem0", "OutputData", "PROVIDER"]

PROVIDER = "lukhas"
#: mem0's session fields, declared on every collection.
SESSION_FIELDS = {"user_id": "str", "agent_id": "str", "run_id": "str", "actor_id": "str", "role": "str"}
_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
#: The session fields that name a memory's namespace, first present wins, and their prefixes.
NAMESPACE_KEYS = (("user_id", "user:"), ("agent_id", "agent:"), ("run_id", "run:"))
#: In-memory collections of this process, by name.
_MEMORY: dict = {}


class OutputData(BaseModel):
    """One result, as mem0's stores return them."""

    id: Optional[str]
    score: Optional[float]
    payload: Optional[Dict]


class LukhasMem0Config(BaseModel):
    """The ``vector_store.config`` of provider ``"lukhas"``."""

    collection_name: str = Field("mem0", description="Collection (a sub-directory of path)")
    embedding_model_dims: int = Field(1536, description="Dimension of the embeddings")
    path: Optional[str] = Field(None, description="Directory of the collections (None: in memory)")
    index_config: Optional[Dict[str, Any]] = Field(None, description="IndexConfig fields (metadata_fields, ...)")
    model_config = ConfigDict(extra="forbid")


def _condition(key: str, value) -> dict:
    if isinstance(value, list):
        return {key: {"$in": value}}
    if isinstance(value, dict):
        out = {}
        for op, x in value.items():
            if op not in _OPS:
                raise ValueError(f"mem0 filter on {key!r}: operator {op!r} is not supported (one of {_OPS})")
            out["$" + op] = x
        return {key: out}
    return {key: value}


def namespace_of(payload: dict | None) -> str:
    """The namespace of a memory with this payload (its session, see the module docstring)."""
    for key, prefix in NAMESPACE_KEYS:
        v = (payload or {}).get(key)
        if isinstance(v, str) and v:
            return prefix + v
    return ""


def filter_namespace(filters: dict | None) -> str | None:
    """The namespace a search with these filters keeps to: the user's, when they name one user."""
    v = (filters or {}).get("user_id")
    return "user:" + v if isinstance(v, str) and v else None


def to_meta(filters: dict) -> dict | None:
    """mem0 filters as the dict of :mod:`lukhas_gpu.query.metafilter` (None: no constraint)."""
    parts = []
    for key, value in filters.items():
        if value is None:
            continue
        if key in ("AND", "OR", "$and", "$or"):
            subs = [m for m in (to_meta(v) for v in value) if m]
            if subs:
                parts.append({"$and" if key in ("AND", "$and") else "$or": subs})
        elif key in ("NOT", "$not"):
            subs = [m for m in (to_meta(v) for v in (value if isinstance(value, list) else [value])) if m]
            if subs:
                parts.append({"$not": {"$and": subs}})
        else:
            parts.append(_condition(key, value))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


class LukhasMem0Store(VectorStoreBase):
    """mem0's vector store interface on lukhas_gpu (see the module docstring).

    Parameters
    ----------
    collection_name : str
    embedding_model_dims : int
    path : str, optional
        Directory of the collections; None keeps them in this process's memory.
    index_config : dict, optional
        ``IndexConfig`` fields; ``metadata_fields`` are added to the session fields.
    """

    def __init__(self, collection_name: str = "mem0", embedding_model_dims: int = 1536, path: str | None = None,
                 index_config: dict | None = None, **config: Any):
        self.collection_name = str(collection_name)
        self.embedding_model_dims = int(embedding_model_dims)
        self.root = pathlib.Path(path) if path is not None else None
        self.config = {**(index_config or {}), **config}
        self._holder: IndexHolder | None = None
        self.create_col(self.collection_name, self.embedding_model_dims)

    # -- collections ------------------------------------------------------------------------------
    def _fields(self) -> dict:
        return {**SESSION_FIELDS, **dict(self.config.get("metadata_fields") or {})}

    def create_col(self, name, vector_size=None, distance="cosine"):
        """Open (or create) collection ``name`` and make it the current one."""
        if distance not in (None, "cosine"):
            raise ValueError(f"distance {distance!r}: this store scores by cosine similarity")
        if "/" in str(name) or str(name) in ("", ".", ".."):
            raise ValueError(f"collection name {name!r} is not a plain name")
        dims = int(vector_size) if vector_size is not None else self.embedding_model_dims
        cfg = {k: v for k, v in self.config.items() if k != "metadata_fields"}
        if self.root is None:
            holder = _MEMORY.get(name)
            if holder is None:
                holder = _MEMORY[name] = IndexHolder(None, dim=dims, metadata_fields=self._fields(), **cfg)
        else:
            holder = IndexHolder(self.root / str(name), dim=dims, metadata_fields=self._fields(), **cfg)
        if self._holder is not None and self._holder is not holder:
            self._holder.close()
        self._holder, self.collection_name, self.embedding_model_dims = holder, str(name), dims
        return self

    def list_cols(self) -> List[str]:
        if self.root is None:
            return sorted(_MEMORY)
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / layout.CURRENT).exists())

    def delete_col(self) -> None:
        """Drop the current collection (its store directory is removed)."""
        if self._holder is not None:
            self._holder.close()
        if self.root is None:
            _MEMORY.pop(self.collection_name, None)
        else:
            shutil.rmtree(self.root / self.collection_name, ignore_errors=True)
        self._holder = None

    def col_info(self) -> Dict:
        n = len(self._holder) if self._holder is not None else 0
        return {"name": self.collection_name, "count": n, "dimension": self.embedding_model_dims,
                "distance": "cosine", "path": str(self.root / self.collection_name) if self.root else None}

    def reset(self) -> None:
        self.delete_col()
        self.create_col(self.collection_name, self.embedding_model_dims)

    def close(self) -> None:
        if self._holder is not None and self.root is not None:
            self._holder.close()

    # -- memories ---------------------------------------------------------------------------------
    @property
    def _index(self):
        if self._holder is None:
            raise ValueError(f"collection {self.collection_name!r} was deleted; call create_col first")
        return self._holder.ensure(self.embedding_model_dims)

    @staticmethod
    def _split(payload: dict | None):
        meta = dict(payload or {})
        data = meta.pop("data") if isinstance(meta.get("data"), str) else None
        return data, meta

    @staticmethod
    def _out(m, score=None) -> OutputData:
        payload = dict(m.metadata or {})
        if m.content is not None:
            payload["data"] = m.content
        return OutputData(id=m.external_id, score=score, payload=payload)

    def insert(self, vectors, payloads=None, ids=None):
        """Store vectors with their payloads (an id already stored is replaced)."""
        x = as_matrix(vectors, "vectors")
        n = len(x)
        payloads = payloads if payloads is not None else [{} for _ in range(n)]
        if len(payloads) != n:
            raise ValueError(f"{len(payloads)} payloads for {n} vectors")
        ids = new_ids(ids, n)
        keep = list({i: j for j, i in enumerate(ids)}.values())
        split = [self._split(payloads[j]) for j in keep]
        self._index.add(x[keep], contents=[d for d, _ in split], ids=[ids[j] for j in keep],
                        metadata=[m for _, m in split], namespace=[namespace_of(m) for _, m in split])
        return ids

    def _where(self, filters) -> Filter | None:
        if not filters:
            return None
        meta = to_meta(filters)
        ns = filter_namespace(filters)
        return Filter(meta=meta, namespace=ns) if meta or ns is not None else None

    def search(self, query, vectors, top_k=5, filters=None) -> List[OutputData]:
        """The ``top_k`` memories most similar to ``vectors`` (one query) that match ``filters``."""
        q = as_matrix(vectors, "vectors")
        if len(q) != 1:
            raise ValueError(f"search takes one query vector, got {len(q)}")
        hits = self._holder.search(q, top_k, self._where(filters))[0] if self._holder is not None else []
        return [self._out(m, max(0.0, s)) for m, s in hits]

    def keyword_search(self, query: str, top_k: int = 5, filters: dict = None):
        """BM25 over the memories' ``data`` texts that match ``filters`` (mem0's keyword search),
        where the collection has a text index (``index_config={"text_index": True}``); None
        otherwise (mem0's answer for a store without keyword search). Scores are BM25 scores."""
        if self._holder is None:
            return None
        ix = self._holder.index
        if not (ix.config if ix is not None else self._holder.config).text_index:
            return None
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if ix is None or len(ix) == 0:
            return []
        res = ix.search_text([query], min(top_k, len(ix)), where=self._where(filters))
        ids, scores = res.ids[0], res.scores[0]
        live = ids >= 0
        mems = ix.memories_at(ids[live]) if live.any() else []
        return [self._out(m, float(s)) for m, s in zip(mems, scores[live].tolist())]

    def delete(self, vector_id):
        """Delete a memory (unknown ids raise ValueError, as mem0's stores do)."""
        self._index.delete([str(vector_id)])

    def update(self, vector_id, vector=None, payload=None):
        """Replace the vector and / or the payload of a memory."""
        vid = str(vector_id)
        kw: dict = {}
        if vector is not None:
            kw["embeddings"] = as_matrix(vector, "vector")
        if payload is not None:
            data, meta = self._split(payload)
            kw["metadata"], kw["contents"] = [meta], [data]
            old = self._index.get([vid])[0]
            if namespace_of(meta) != old.namespace:  # another session: re-added there (one logged upsert)
                x = kw.get("embeddings")
                x = self._index.vectors_at([old.id]) if x is None else x
                self._index.add(x, contents=[data], ids=[vid], metadata=[meta], namespace=namespace_of(meta),
                                timestamps=[old.timestamp], importance=[old.importance])
                return
        if kw:
            self._index.update([vid], **kw)
        elif not self._index.contains([vid])[0]:
            raise ValueError(f"unknown id {vid!r}")

    def get(self, vector_id) -> OutputData | None:
        """The memory (score None), or None for an unknown id."""
        vid = str(vector_id)
        if self._holder is None or not self._holder.live([vid]):
            return None
        return self._out(self._index.get([vid])[0])

    def list(self, filters=None, top_k=None) -> List[List[OutputData]]:
        """Memories that match ``filters`` (at most ``top_k``), in insertion order, as ``[results]``."""
        if self._holder is None or len(self._holder) == 0:
            return [[]]
        ix = self._index
        rows = ix.select(self._where(filters), limit=None if top_k is None else int(top_k))
        ids = [k for k in ix.external_ids_of(rows) if k is not None]
        return [[self._out(m) for m in ix.get(ids)]] if ids else [[]]


def register_mem0() -> None:
    """Register provider ``"lukhas"`` with mem0's vector store factory and config registry, so
    ``Memory.from_config({"vector_store": {"provider": "lukhas", "config": {...}}})`` works.
    Idempotent."""
    from mem0.utils.factory import VectorStoreFactory
    from mem0.vector_stores.configs import VectorStoreConfig

    VectorStoreFactory.provider_to_class[PROVIDER] = f"{__name__}.LukhasMem0Store"
    configs = VectorStoreConfig.__private_attributes__["_provider_configs"].default
    configs[PROVIDER] = "LukhasMem0Config"
    # mem0 imports mem0.configs.vector_stores.<provider> for the config class: a module of ours
    name = f"mem0.configs.vector_stores.{PROVIDER}"
    if name not in sys.modules:
        module = types.ModuleType(name, "lukhas_gpu's mem0 config (registered by register_mem0)")
        module.LukhasMem0Config = LukhasMem0Config
        sys.modules[name] = module
