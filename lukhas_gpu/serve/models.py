"""The JSON schemas of the API (pydantic), served as OpenAPI at ``/openapi.json`` and ``/docs``.

Flat models (filters and rankings are JSON objects checked by :mod:`.wire`), so each schema is
self-contained. Bounds here are the server's: a request is refused before anything is allocated
for it.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..util.bounds import (
    MAX_ID,
    MAX_K,
    MAX_LINK_DEPTH,
    MAX_NAMESPACE_BYTES,
    MAX_NPROBE,
    MAX_REQUEST_IDS,
    MAX_REQUEST_RESULTS,
    MAX_REQUEST_VECTORS,
    MAX_RERANK,
    MIN_ID,
)

__all__ = ["SearchParams", "SearchRequest", "SearchResponse", "AddRequest", "AddResponse", "IdsRequest",
           "LookupRequest", "NamespaceRequest", "PurgeRequest", "NamespacesResponse",
           "MemoryOut", "MemoriesResponse", "DeleteResponse", "ErrorResponse", "MAX_REQUEST_VECTORS",
           "MAX_REQUEST_RESULTS", "MAX_REQUEST_IDS", "WireInt", "WireId"]


def _not_bool(v):
    if isinstance(v, bool):  # JSON true is not the int 1 (pydantic's lax mode would take it)
        raise ValueError(f"expected an integer, got the boolean {str(v).lower()}")  # noqa: TRY004 -- pydantic reports ValueError
    return v


def _not_bool_real(v):
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got the boolean {str(v).lower()}")  # noqa: TRY004 -- pydantic reports ValueError
    return v


#: An int on the wire: a JSON integer (or its decimal string in a query), never a boolean.
WireInt = Annotated[int, BeforeValidator(_not_bool)]
#: A memory id on the wire: an int64.
WireId = Annotated[int, BeforeValidator(_not_bool), Field(ge=MIN_ID, le=MAX_ID)]


_WHERE = ("A filter: any of tags_all, tags_any, tags_none (a tag or a list of tags), since, until (epoch "
          "seconds or ISO-8601, inclusive), min_importance (0..1), meta (conditions on metadata keys: "
          "{\"author\": \"ann\", \"year\": {\"$gte\": 2020}}), namespace, as_of; all must hold.")
_RANK = ("A memory-aware ranking: similarity, recency, importance (weights >= 0), half_life (seconds), now "
         "(epoch seconds or ISO-8601); score = similarity*cos + recency*0.5**(age/half_life) + importance*imp.")


class SearchParams(BaseModel):
    """Everything of a search but its vectors (also the query string of a binary search)."""

    model_config = ConfigDict(extra="forbid")
    k: WireInt = Field(10, ge=1, le=MAX_K, description="results per query")
    where: Optional[dict[str, Any]] = Field(None, description=_WHERE)
    rank: Optional[dict[str, Any]] = Field(None, description=_RANK)
    nprobe: Optional[WireInt] = Field(None, ge=1, le=MAX_NPROBE, description="IVF lists visited (default: the store's)")
    rerank: Optional[WireInt] = Field(None, ge=1, le=MAX_RERANK, description="candidates re-scored per result")
    target_recall: Optional[float] = Field(None, gt=0.0, le=1.0,
                                           description="tune the search to this recall@k (where the library "
                                                       "supports it; 422 otherwise)")
    diversity: Annotated[float, BeforeValidator(_not_bool_real)] = Field(
        0.0, ge=0.0, le=1.0, description="maximal marginal relevance: 0 off, up to 1 (most diverse)")
    with_content: bool = Field(False, description="return the memories' contents too")
    follow_links: WireInt = Field(0, ge=0, le=MAX_LINK_DEPTH, description="hops along out-links whose memories are "
                                  "appended to each query's results (marked in linked_from)")
    namespace: Optional[str] = Field(None, max_length=MAX_NAMESPACE_BYTES,
                                     description="only memories of this namespace (\"\" the default; null: any)")
    as_of: Optional[Union[float, str]] = Field(None, description="the memories valid at this time (epoch seconds "
                                                                 "or ISO-8601; default now)")


class SearchRequest(SearchParams):
    vectors: Optional[list[list[float]]] = Field(None, description="(nq, dim) query vectors; a flat list is one "
                                                 "query (this or vectors_b64)", max_length=MAX_REQUEST_VECTORS)
    vectors_b64: Optional[str] = Field(None, description="the compact form of vectors: base64 of little-endian "
                                       "float32, row after row (nq from its length): no JSON numbers to parse")


class SearchResponse(BaseModel):
    ids: list[list[int]] = Field(..., description="(nq, k) ids, -1 where fewer than k memories match")
    scores: list[list[Optional[float]]] = Field(..., description="(nq, k) scores, descending; null where padded")
    contents: Optional[list[list[Any]]] = Field(None, description="with_content: str, {\"base64\": ...} or null")
    time: float = Field(..., description="seconds spent in the server")


class AddRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vectors: list[list[float]] = Field(..., max_length=MAX_REQUEST_VECTORS, description="(n, dim) embeddings")
    contents: Optional[list[Union[str, dict[str, str], None]]] = Field(
        None, description="one per vector: text, {\"base64\": ...} for bytes, or null")
    tags: Optional[list[list[str]]] = Field(None, description="one list of tags per vector")
    timestamps: Optional[list[Union[float, str]]] = Field(None, description="epoch seconds or ISO-8601 (default now)")
    importance: Optional[Union[list[float], float]] = Field(None, description="in [0, 1] (default 0.5)")
    namespace: Optional[Union[str, list[str]]] = Field(None, description="one for all or one per vector (default \"\")")
    valid_from: Optional[Union[list[float], float]] = Field(None, description="validity window start, epoch seconds")
    valid_to: Optional[Union[list[float], float]] = Field(None, description="validity window end (exclusive)")
    dedup: Optional[str] = Field(None, description="off, exact or near (default: the store's config)")


class AddResponse(BaseModel):
    ids: list[int] = Field(..., description="the new memories' ids, returned once the write-ahead log holds them")
    merged: int = Field(0, description="memories merged into existing ones (dedup): their ids are the targets'")
    time: float


class IdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[WireId] = Field(..., min_length=1, max_length=MAX_REQUEST_IDS)


class LookupRequest(IdsRequest):
    namespace: Optional[str] = Field(None, max_length=MAX_NAMESPACE_BYTES,
                                     description="every id must be in this namespace (404 otherwise)")


class NamespaceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    namespace: str = Field(..., max_length=MAX_NAMESPACE_BYTES, description="a namespace (\"\" the default)")


class PurgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: Optional[Union[float, str]] = Field(None, description="delete what ended at or before this time "
                                                               "(epoch seconds or ISO-8601; default the clock)")


class NamespacesResponse(BaseModel):
    namespaces: dict[str, int] = Field(..., description="live memories of every namespace holding one")
    time: float


class MemoryOut(BaseModel):
    id: int
    content: Union[str, dict[str, str], None]
    tags: list[str]
    timestamp: float
    importance: float
    namespace: str = ""
    valid_from: Optional[float] = Field(None, description="null: always valid since")
    valid_to: Optional[float] = Field(None, description="null: valid without end")


class MemoriesResponse(BaseModel):
    memories: list[MemoryOut]
    time: float


class DeleteResponse(BaseModel):
    deleted: int
    time: float


class TrialRequest(BaseModel):
    """``MemoryIndex.trial``: the candidate's config changes and the rule (probe queries: the recorded ones)."""
    model_config = ConfigDict(extra="forbid")
    nlist: Optional[int] = Field(None, ge=1)
    pq_m: Optional[int] = Field(None, ge=1)
    dim_out: Optional[int] = Field(None, ge=1)
    coarse: Optional[str] = None
    nprobe: Optional[int] = Field(None, ge=1)
    rerank: Optional[int] = Field(None, ge=1)
    structure: Optional[str] = Field(None, description='another candidate structure, alone: "graph", "rabitq", '
                                                       '"ivf-spill", "ivf" or "exact"')
    recall_tolerance: float = Field(0.01, ge=0, le=1)
    qps_tolerance: Optional[float] = Field(0.2, ge=0, le=1)


class ErrorResponse(BaseModel):
    status: dict[str, str] = Field(..., description='{"error": "what is wrong"}')
    time: float
