"""LlamaIndex: :class:`LukhasVectorStore`, a ``BasePydanticVectorStore`` on a
:class:`~lukhas_gpu.MemoryIndex` (extra ``[llama-index]``).

Nodes are stored under their ``node_id`` (adding one again replaces it), with their text as the
memory's content and LlamaIndex's node dict (``node_to_metadata_dict``) as its free metadata.
``ref_doc_id``, ``doc_id`` and ``document_id`` are declared str fields, so ``delete(ref_doc_id)``
and ``doc_ids=`` queries are column scans. A node's metadata ``tags`` (list of str),
``timestamp`` (epoch seconds) and ``importance`` (in [0, 1]) also become the memory's tags,
timestamp and importance.

``MetadataFilters`` map onto :class:`~lukhas_gpu.Filter`: ``==, !=, >, >=, <, <=, in, nin,
is_empty`` on any top-level metadata key, with AND / OR / NOT nesting: declared fields
(``metadata_fields={"year": "int"}``) are column scans, other keys (``author``) a scan of the
stored metadata records (slower; declare the keys filtered often). ``tags`` with ``any`` /
``all`` / ``contains``, ``timestamp`` with ``>=`` / ``<=`` and ``importance`` with ``>=`` at the
top level of an AND use the memory's own tags and columns (other conditions on ``timestamp`` or
``importance`` read the node's metadata). Anything else (``text_match``, a tag
condition under OR) raises ``ValueError``.
"""
from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Sequence

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from ..query import filters
from ..query.filters import Filter
from .common import IndexHolder, as_matrix

__all__ = ["LukhasVectorStore", "to_filter"]

#: Fields every store declares (LlamaIndex's document references).
REF_FIELDS = {"ref_doc_id": "str", "doc_id": "str", "document_id": "str"}
_OPS = {FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
        FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in", FilterOperator.NIN: "$nin"}
#: Conditions the memory's own tags and columns answer (other conditions on these keys, a strict
#: ``timestamp < t`` say, read the node's metadata records like any undeclared key).
_COLUMN_OPS = {("tags", op) for op in (FilterOperator.ANY, FilterOperator.IN, FilterOperator.ALL,
                                       FilterOperator.CONTAINS, FilterOperator.EQ, FilterOperator.NIN)} | {
    ("timestamp", FilterOperator.GTE), ("timestamp", FilterOperator.LTE), ("importance", FilterOperator.GTE)}


def _condition(f: MetadataFilter, fields: dict) -> dict:
    if f.key == "tags" and "tags" not in fields:
        raise ValueError(f"filter on 'tags': operator {f.operator.value!r} is not supported (any, all, contains, "
                         "==, in, nin at the top level of an AND: the memory's tags)")
    if f.operator == FilterOperator.IS_EMPTY:
        return {f.key: {"$exists": False}}
    op = _OPS.get(f.operator)
    if op is None:
        raise ValueError(f"filter on {f.key!r}: operator {f.operator.value!r} is not supported")
    value = f.value
    if fields.get(f.key) == "float" and isinstance(value, int) and op not in ("$in", "$nin"):
        value = float(value)
    return {f.key: {op: value}}


def _tree(filters: MetadataFilters, fields: dict) -> dict:
    parts = [_tree(f, fields) if isinstance(f, MetadataFilters) else _condition(f, fields) for f in filters.filters]
    if not parts:
        raise ValueError("empty MetadataFilters")
    cond = filters.condition or FilterCondition.AND
    if cond == FilterCondition.NOT:
        return {"$not": {"$and": parts}}
    return {"$or" if cond == FilterCondition.OR else "$and": parts}


def to_filter(filters: Optional[MetadataFilters], fields: dict, doc_ids=None) -> Optional[Filter]:
    """A :class:`~lukhas_gpu.Filter` for LlamaIndex filters (see the module docstring)."""
    kw: dict = {}
    meta: list = []
    if doc_ids:
        meta.append({"ref_doc_id": {"$in": list(doc_ids)}})
    if filters is not None and filters.filters:
        rest = []
        top_and = (filters.condition or FilterCondition.AND) == FilterCondition.AND
        for f in filters.filters:
            if top_and and isinstance(f, MetadataFilter) and f.key not in fields and (f.key, f.operator) in _COLUMN_OPS:
                _special(f, kw)
            else:
                rest.append(f)
        if rest:
            meta.append(_tree(MetadataFilters(filters=rest, condition=filters.condition), fields))
    if meta:
        kw["meta"] = meta[0] if len(meta) == 1 else {"$and": meta}
    return Filter(**kw) if kw else None


def _special(f: MetadataFilter, kw: dict) -> None:
    op, v = f.operator, f.value
    if f.key == "tags" and op in (FilterOperator.ANY, FilterOperator.IN):
        kw["tags_any"] = list(kw.get("tags_any", ())) + list(v if isinstance(v, list) else [v])
    elif f.key == "tags" and op in (FilterOperator.ALL, FilterOperator.CONTAINS, FilterOperator.EQ):
        kw["tags_all"] = list(kw.get("tags_all", ())) + list(v if isinstance(v, list) else [v])
    elif f.key == "tags" and op == FilterOperator.NIN:
        kw["tags_none"] = list(kw.get("tags_none", ())) + list(v)
    elif f.key == "timestamp" and op == FilterOperator.GTE:
        kw["since"] = max(float(v), kw.get("since", float("-inf")))
    elif f.key == "timestamp" and op == FilterOperator.LTE:
        kw["until"] = min(float(v), kw.get("until", float("inf")))
    else:  # importance >= v
        kw["min_importance"] = float(v)


class LukhasVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store on a lukhas_gpu index.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    path : str or Path, optional
        A durable store directory (opened if it holds one); None keeps it in memory.
    **config
        ``IndexConfig`` fields; ``metadata_fields`` are added to the reference fields;
        ``namespace="alice"`` keeps this store to one namespace of the index.
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    _holder: IndexHolder = PrivateAttr()
    _fields: dict = PrivateAttr()

    def __init__(self, dim: int, path=None, **config: Any):
        super().__init__()
        fields = {**REF_FIELDS, **dict(config.pop("metadata_fields", None) or {})}
        self._holder = IndexHolder(path, dim=dim, metadata_fields=fields, **config)
        self._fields = self._holder.index.config.fields

    @classmethod
    def class_name(cls) -> str:
        return "LukhasVectorStore"

    @property
    def client(self):
        """The :class:`~lukhas_gpu.MemoryIndex`."""
        return self._holder.index

    def close(self) -> None:
        self._holder.close()

    # -- writes ---------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> List[str]:
        """Store nodes (each needs its embedding); a node id already stored is replaced.
        ``valid_from=`` / ``valid_to=`` (epoch seconds, one for all or one per node): the window
        queries see the nodes in (``MemoryIndex.add``); ``query(..., as_of=t)`` asks for another time."""
        if not nodes:
            return []
        last = {n.node_id: j for j, n in enumerate(nodes)}  # a repeated id: its last node wins
        keep = list(last.values())
        windows = {w: [kwargs[w][j] for j in keep] if isinstance(kwargs.get(w), (list, tuple)) else kwargs.get(w)
                   for w in ("valid_from", "valid_to")}
        nodes = [nodes[j] for j in keep]
        x = as_matrix([n.get_embedding() for n in nodes], "node embeddings")
        metas, tags, ts, imp = [], [], [], []
        for n in nodes:
            meta = node_to_metadata_dict(n, remove_text=True, flat_metadata=False)
            metas.append(meta)
            t = n.metadata.get("tags")
            tags.append([s for s in t if isinstance(s, str)] if isinstance(t, list) else [])
            ts.append(n.metadata.get("timestamp"))
            imp.append(n.metadata.get("importance"))
        timestamps = [float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None for t in ts]
        importance = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 else 0.5
                      for v in imp]
        kw = {}
        if all(t is not None for t in timestamps):
            kw["timestamps"] = timestamps
        self._holder.add(x, contents=[n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
                         tags=tags, importance=importance, ids=list(last), metadata=metas, **windows, **kw)
        return [n.node_id for n in nodes]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> List[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    def _ids_where(self, flt: Filter | None) -> list:
        ix = self._holder.index
        return [k for k in ix.external_ids_of(ix.select(self._holder.scoped(flt))) if k is not None]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id``."""
        ids = self._ids_where(Filter(meta={"ref_doc_id": str(ref_doc_id)}))
        if ids:
            self._holder.index.delete(ids)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id)

    def delete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                     **delete_kwargs: Any) -> None:
        """Delete nodes by id and / or filters (both: the nodes that match both)."""
        ids = self._select(node_ids, filters)
        if ids:
            self._holder.index.delete(ids)

    async def adelete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                            **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters)

    def clear(self) -> None:
        ids = self._holder.all_ids()
        if ids:
            self._holder.index.delete(ids)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    # -- reads ----------------------------------------------------------------------------------
    def _select(self, node_ids, filters) -> list:
        ids = self._holder.live(node_ids) if node_ids is not None else None
        if filters is not None:
            where = set(self._ids_where(to_filter(filters, self._fields)))
            ids = [i for i in ids if i in where] if ids is not None else sorted(where)
        return ids if ids is not None else self._holder.all_ids()

    @staticmethod
    def _node(m) -> BaseNode:
        node = metadata_dict_to_node(m.metadata, text=m.content)
        node.embedding = None
        return node

    def get_nodes(self, node_ids: Optional[List[str]] = None,
                  filters: Optional[MetadataFilters] = None) -> List[BaseNode]:
        ids = self._select(node_ids, filters)
        return [self._node(m) for m in self._holder.index.get(ids)] if ids else []

    async def aget_nodes(self, node_ids: Optional[List[str]] = None,
                         filters: Optional[MetadataFilters] = None) -> List[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top ``similarity_top_k`` nodes for ``query_embedding`` (cosine similarities)."""
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise ValueError(f"query mode {query.mode.value!r} is not supported (dense vectors only)")
        if query.query_embedding is None:
            raise ValueError("the query needs a query_embedding")
        if query.node_ids:
            raise ValueError("node_ids restrictions are not supported; filter on metadata instead")
        flt = to_filter(query.filters, self._fields, query.doc_ids)
        if kwargs.get("as_of") is not None:  # the nodes valid at as_of (default: now)
            flt = filters.scoped(flt, None, kwargs["as_of"])
        hits = self._holder.search([query.query_embedding], query.similarity_top_k, flt)[0]
        return VectorStoreQueryResult(nodes=[self._node(m) for m, _ in hits], similarities=[s for _, s in hits],
                                      ids=[m.external_id for m, _ in hits])

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)
