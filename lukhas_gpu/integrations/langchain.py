"""LangChain: :class:`LukhasVectorStore`, a ``langchain_core.vectorstores.VectorStore`` on a
:class:`~lukhas_gpu.MemoryIndex` (extra ``[langchain]``).

Documents keep their ``id`` (a UUID4 is made for those without one; adding an id again replaces
that document: an upsert), their ``page_content`` (the memory's content) and their ``metadata``
(round-tripped exactly). ``filter`` takes the dict form of :mod:`lukhas_gpu.query.metafilter`
(``{"source": "news", "year": {"$gte": 2020}}``) on any top-level metadata key: fields declared
with ``metadata_fields={"source": "str", "year": "int"}`` are column scans, others a scan of the
stored metadata records. Scores of ``similarity_search_with_score``
are cosine similarities in [-1, 1]; relevance scores map them to [0, 1] (``(s + 1) / 2``).
``max_marginal_relevance_search`` (and ``_by_vector``) re-chooses the ``fetch_k`` most similar
by the index's MMR (``search(diversity=)``'s rule, ``lambda_mult`` = 1 - diversity).
``delete(ids)`` returns True when every id named a stored document (all deleted), False when some
named none (those are ignored, the others deleted; LangChain's contract: no exception for missing
ids). An embedding whose dimension is not the store's is refused at the first add or search with a
ValueError naming both dimensions (the adapter does not embed at construction, so it cannot tell
earlier without a model call).

Examples
--------
>>> from langchain_core.embeddings import DeterministicFakeEmbedding
>>> store = LukhasVectorStore(DeterministicFakeEmbedding(size=32), metadata_fields={"source": "str"})
>>> ids = store.add_texts(["hello", "world"], metadatas=[{"source": "a"}, {"source": "b"}])
>>> [d.page_content for d in store.similarity_search("hello", k=1, filter={"source": "a"})]
['hello']
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ..query import filters
from ..query.filters import Filter
from .common import IndexHolder, as_matrix, new_ids

__all__ = ["LukhasVectorStore"]


class LukhasVectorStore(VectorStore):
    """A LangChain vector store on a lukhas_gpu index.

    Parameters
    ----------
    embedding : Embeddings
        The model that embeds texts and queries.
    path : str or Path, optional
        A durable store directory (opened if it holds one, else created at the first add);
        None keeps the index in memory.
    **config
        ``IndexConfig`` fields, e.g. ``metadata_fields={"source": "str"}`` to filter on
        ``source``, ``metric``, ``wal_sync``; ``namespace="alice"`` keeps this store to one
        namespace of the index (adds go there, searches and lookups see only it).
    """

    def __init__(self, embedding: Embeddings, path=None, **config: Any):
        self._embedding = embedding
        self._holder = IndexHolder(path, **config)

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def index(self):
        """The :class:`~lukhas_gpu.MemoryIndex` (None until the first add of a new store)."""
        return self._holder.index

    def close(self) -> None:
        """Checkpoint and release a durable store."""
        self._holder.close()

    # -- writes ---------------------------------------------------------------------------------
    def _add(self, texts: list[str], vectors, metadatas, ids, valid_from=None, valid_to=None) -> list[str]:
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise ValueError(f"metadatas has {len(metadatas)} entries for {n} texts")
        ids = new_ids(ids, n)
        if n == 0:
            return []
        metas = [dict(m) if m is not None else {} for m in metadatas] if metadatas is not None else [{}] * n
        keep = list({i: j for j, i in enumerate(ids)}.values())  # a repeated id: its last document wins
        x = as_matrix(vectors)
        self._check_dim(x.shape[1])
        if len(keep) < n:
            x, texts, metas = x[keep], [texts[j] for j in keep], [metas[j] for j in keep]
            valid_from, valid_to = (_pick(w, keep) for w in (valid_from, valid_to))
        self._holder.add(x, contents=list(texts), ids=[ids[j] for j in keep], metadata=metas, valid_from=valid_from,
                         valid_to=valid_to)
        return ids

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        """Embed and store ``texts``; an id already stored is replaced. Returns the ids.
        ``valid_from=`` / ``valid_to=`` (epoch seconds, one for all or one per text): the window
        searches see each memory in (``MemoryIndex.add``); searches take ``as_of=``."""
        texts = list(texts)
        vectors = self._embedding.embed_documents(texts) if texts else []
        return self._add(texts, vectors, metadatas, ids, kwargs.get("valid_from"), kwargs.get("valid_to"))

    async def aadd_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                         ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        vectors = await self._embedding.aembed_documents(texts) if texts else []
        return await asyncio.to_thread(self._add, texts, vectors, metadatas, ids, kwargs.get("valid_from"),
                                       kwargs.get("valid_to"))

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete these ids; every document when ``ids`` is None. True when every id named a stored
        document, False when some did not (those are ignored, the others are deleted)."""
        if ids is not None and isinstance(ids, (str, bytes)):
            raise TypeError(f"ids must be a list of str, got {type(ids).__name__}")
        live = self._holder.all_ids() if ids is None else self._holder.live(ids)
        if live:
            self._holder.index.delete(live)
        return ids is None or len(live) == len({str(i) for i in ids})

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        return await asyncio.to_thread(self.delete, ids, **kwargs)

    def _check_dim(self, dim: int) -> None:
        """ValueError when the embedding's vectors do not have the store's dimension."""
        index = self._holder.index
        if index is not None and dim != index.dim:
            where = f"the store at {self._holder.path}" if self._holder.path is not None else "this store"
            raise ValueError(f"the embedding gives vectors of dimension {dim}; {where} holds dimension "
                             f"{index.dim} (open it with the embedding model it was built with)")

    # -- reads ----------------------------------------------------------------------------------
    @staticmethod
    def _doc(m) -> Document:
        return Document(id=m.external_id, page_content=m.content if m.content is not None else "",
                        metadata=m.metadata if m.metadata is not None else {})

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents among ``ids`` (unknown ones are skipped), in the order given."""
        live = self._holder.live(ids)
        return [self._doc(m) for m in self._holder.index.get(live)] if live else []

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await asyncio.to_thread(self.get_by_ids, ids)

    def _where(self, filter, as_of=None) -> Filter | None:
        if filter is not None and not isinstance(filter, (dict, Filter)):
            raise TypeError(f"filter must be a dict (or a lukhas_gpu.Filter), got {type(filter).__name__}")
        where = Filter(meta=filter) if isinstance(filter, dict) and filter else filter or None
        return where if as_of is None else filters.scoped(where, None, as_of)  # the memories valid at as_of

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        """``(document, cosine similarity)`` pairs, best first."""
        self._check_dim(len(embedding))
        hits = self._holder.search([embedding], k, self._where(filter, kwargs.get("as_of")))[0]
        return [(self._doc(m), s) for m, s in hits]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter, **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                            **kwargs: Any) -> list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query)
        return await asyncio.to_thread(self.similarity_search_with_score_by_vector, vector, k, filter)

    async def asimilarity_search(self, query: str, k: int = 4, filter: dict | None = None,
                                 **kwargs: Any) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, filter)]

    async def asimilarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                           **kwargs: Any) -> list[Document]:
        pairs = await asyncio.to_thread(self.similarity_search_with_score_by_vector, embedding, k, filter)
        return [d for d, _ in pairs]

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        """``k`` documents chosen by maximal marginal relevance among the ``fetch_k`` most similar
        (``lambda_mult``: 1 relevance only, 0 diversity only): the rule of
        ``MemoryIndex.search(..., diversity=1 - lambda_mult)`` (:mod:`lukhas_gpu.query.mmr`)."""
        self._check_dim(len(embedding))
        hits = self._holder.mmr_search([embedding], k, fetch_k, lambda_mult, self._where(filter))
        return [self._doc(m) for m, _ in hits]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        """:meth:`max_marginal_relevance_search_by_vector` of the query's embedding."""
        return self.max_marginal_relevance_search_by_vector(self._embedding.embed_query(query), k, fetch_k,
                                                            lambda_mult, filter)

    async def amax_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                       lambda_mult: float = 0.5, filter: dict | None = None,
                                                       **kwargs: Any) -> list[Document]:
        return await asyncio.to_thread(self.max_marginal_relevance_search_by_vector, embedding, k, fetch_k,
                                       lambda_mult, filter)

    async def amax_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                             lambda_mult: float = 0.5, filter: dict | None = None,
                                             **kwargs: Any) -> list[Document]:
        vector = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Cosine similarity in [-1, 1] to a relevance in [0, 1]."""
        return lambda s: min(1.0, max(0.0, (s + 1.0) / 2.0))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, path=None, **config: Any) -> "LukhasVectorStore":
        store = cls(embedding, path=path, **config)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                          ids: list[str] | None = None, path=None, **config: Any) -> "LukhasVectorStore":
        store = await asyncio.to_thread(cls, embedding, path, **config)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store


def _pick(v, keep: list):
    """A per-text argument kept to the texts stored (a scalar stays as it is)."""
    return [v[j] for j in keep] if isinstance(v, (list, tuple, np.ndarray)) else v
