"""LlamaIndex: the store behind ``VectorStoreIndex`` (from_documents, filtered retrieval,
delete_ref_doc), in LlamaIndex's own style, on the real index; no LLM, no network."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import optional_import

optional_import("llama_index.core")

from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import BaseEmbedding  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from lukhas_gpu.integrations.llama_index import LukhasVectorStore  # noqa: E402

DIM = 16


class HashEmbedding(BaseEmbedding):
    """A deterministic fake embedding model (a seeded vector per text), like LangChain's."""

    def _vec(self, text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(DIM).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._vec(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._vec(query)


def _docs():
    return [Document(text=f"note {i}", id_=f"doc{i}",
                     metadata={"year": 2000 + i, "topic": "cats" if i % 3 == 0 else "dogs", "tags": [f"t{i % 2}"],
                               "timestamp": 1000.0 + i, "extra": {"n": [i, i / 4]},
                               **({"author": "ann"} if i % 2 == 0 and i != 4 else {})},
                     excluded_embed_metadata_keys=["year", "topic", "tags", "timestamp", "extra", "author"])
            for i in range(12)]


@pytest.fixture
def store(tmp_path):
    s = LukhasVectorStore(DIM, path=tmp_path / "li", metadata_fields={"year": "int", "topic": "str"})
    yield s
    s.close()


def _index(store):
    return VectorStoreIndex.from_documents(_docs(), storage_context=StorageContext.from_defaults(vector_store=store),
                                           embed_model=HashEmbedding(), transformations=[])


def test_from_documents_filtered_retrieval_and_delete_ref_doc(store):
    index = _index(store)
    retriever = index.as_retriever(similarity_top_k=3)
    hit = retriever.retrieve("note 4")
    assert hit[0].node.get_content() == "note 4" and hit[0].score == pytest.approx(1.0, abs=1e-3)
    assert hit[0].node.metadata["extra"] == {"n": [4, 1.0]} and hit[0].node.ref_doc_id == "doc4"
    filters = MetadataFilters(filters=[MetadataFilter(key="topic", value="cats"),
                                       MetadataFilter(key="year", value=2005, operator=FilterOperator.GT)])
    got = index.as_retriever(similarity_top_k=12, filters=filters).retrieve("note 9")
    assert sorted(n.node.ref_doc_id for n in got) == ["doc6", "doc9"]
    either = MetadataFilters(filters=[MetadataFilter(key="year", value=[2001, 2002], operator=FilterOperator.IN),
                                      MetadataFilters(filters=[MetadataFilter(key="topic", value="cats")],
                                                      condition=FilterCondition.NOT)],
                             condition=FilterCondition.OR)
    got = index.as_retriever(similarity_top_k=12, filters=either).retrieve("x")
    assert sorted(n.node.ref_doc_id for n in got) == sorted(f"doc{i}" for i in range(12) if i % 3 or i in (1, 2))
    tagged = MetadataFilters(filters=[MetadataFilter(key="tags", value=["t1"], operator=FilterOperator.ANY),
                                      MetadataFilter(key="timestamp", value=1005.0, operator=FilterOperator.GTE)])
    got = index.as_retriever(similarity_top_k=12, filters=tagged).retrieve("x")
    assert sorted(n.node.ref_doc_id for n in got) == ["doc11", "doc5", "doc7", "doc9"]
    index.delete_ref_doc("doc4")
    assert all(n.node.ref_doc_id != "doc4" for n in index.as_retriever(similarity_top_k=12).retrieve("note 4"))
    extra = MetadataFilters(filters=[MetadataFilter(key="extra", value="x")])
    assert index.as_retriever(filters=extra).retrieve("x") == []  # a dict equals no str
    # keys never declared (author, timestamp) filter like declared ones, under OR and NOT too
    undeclared = MetadataFilters(filters=[MetadataFilter(key="author", value="ann"),
                                          MetadataFilter(key="timestamp", value=1008.0, operator=FilterOperator.LT),
                                          MetadataFilters(filters=[MetadataFilter(key="year", value=2006)],
                                                          condition=FilterCondition.NOT)],
                                 condition=FilterCondition.AND)
    got = index.as_retriever(similarity_top_k=12, filters=undeclared).retrieve("x")
    assert sorted(n.node.ref_doc_id for n in got) == ["doc0", "doc2"]
    assert store.client.last_plan.metadata == "columns+records"
    nin = MetadataFilters(filters=[MetadataFilter(key="author", value=["ann"], operator=FilterOperator.NIN),
                                   MetadataFilter(key="timestamp", value=1003.0, operator=FilterOperator.GTE)],
                          condition=FilterCondition.OR)
    got = index.as_retriever(similarity_top_k=12, filters=nin).retrieve("x")
    assert sorted(n.node.ref_doc_id for n in got) == sorted(f"doc{i}" for i in range(12)
                                                           if (i % 2 or i >= 3) and i != 4)
    with pytest.raises(ValueError, match="not supported"):
        index.as_retriever(filters=MetadataFilters(
            filters=[MetadataFilter(key="topic", value="ca", operator=FilterOperator.TEXT_MATCH)])).retrieve("x")


def test_nodes_api_upsert_and_reopen(store, tmp_path):
    emb = HashEmbedding()
    nodes = [TextNode(text=f"n{i}", id_=f"n{i}", metadata={"year": i}, embedding=emb.get_text_embedding(f"n{i}"))
             for i in range(6)]
    assert store.add(nodes) == [f"n{i}" for i in range(6)]
    store.add([TextNode(text="new", id_="n2", metadata={"year": 99}, embedding=emb.get_text_embedding("new"))])
    got = store.get_nodes(node_ids=["n2", "n5", "missing"])
    assert [(n.node_id, n.get_content(), n.metadata["year"]) for n in got] == [("n2", "new", 99), ("n5", "n5", 5)]
    late = MetadataFilters(filters=[MetadataFilter(key="year", value=4, operator=FilterOperator.GTE)])
    assert sorted(n.node_id for n in store.get_nodes(filters=late)) == ["n2", "n4", "n5"]
    res = store.query(VectorStoreQuery(query_embedding=emb.get_text_embedding("n3"), similarity_top_k=2))
    assert res.ids[0] == "n3" and res.similarities[0] == pytest.approx(1.0, abs=1e-3)
    store.delete_nodes(node_ids=["n0", "n5"], filters=late)  # both: only n5
    assert sorted(n.node_id for n in store.get_nodes()) == ["n0", "n1", "n2", "n3", "n4"]
    store.close()
    again = LukhasVectorStore(DIM, path=tmp_path / "li")
    assert sorted(n.node_id for n in again.get_nodes()) == ["n0", "n1", "n2", "n3", "n4"]
    again.clear()
    assert again.get_nodes() == []
    again.close()
