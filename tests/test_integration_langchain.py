"""LangChain's own standard suite, unmodified, against the real index (in memory and durable),
plus filters, relevance scores and reopening a durable store."""
from __future__ import annotations

import pytest

from conftest import optional_import

optional_import("langchain_core")
langchain_tests = optional_import("langchain_tests.integration_tests")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402

from lukhas_gpu.integrations.langchain import LukhasVectorStore  # noqa: E402


class TestLukhasStandard(langchain_tests.VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path):
        store = LukhasVectorStore(self.get_embeddings(), path=tmp_path / "lc")
        try:
            yield store
        finally:
            store.close()


class TestLukhasStandardInMemory(langchain_tests.VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self):
        yield LukhasVectorStore(self.get_embeddings())


def test_filters_scores_and_reopen(tmp_path):
    emb = DeterministicFakeEmbedding(size=16)
    texts = [f"text {i}" for i in range(40)]
    metas = [{"source": "news" if i % 2 else "blog", "year": 2000 + i, "tags": [i, str(i)], "nested": {"a": i / 2}}
             for i in range(40)]
    store = LukhasVectorStore.from_texts(texts, emb, metas, ids=[f"d{i}" for i in range(40)], path=tmp_path / "s",
                                         metadata_fields={"source": "str", "year": "int"})
    hits = store.similarity_search_with_relevance_scores("text 3", k=40,
                                                         filter={"source": "news", "year": {"$lt": 2020}})
    assert sorted(d.id for d, _ in hits) == sorted(f"d{i}" for i in range(1, 20, 2))
    assert hits[0][0].id == "d3" and hits[0][1] == pytest.approx(1.0, abs=1e-3)
    assert all(0.0 <= s <= 1.0 for _, s in hits) and [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    raw = store.similarity_search_with_score("text 3", k=3)
    assert raw[0][1] == pytest.approx(1.0, abs=1e-3) and all(-1.0 <= s <= 1.0 for _, s in raw)
    assert store.similarity_search("x", k=40, filter={"tags": 1}) == []  # a list equals no scalar
    plain = LukhasVectorStore.from_texts(texts, emb, metas, ids=[f"d{i}" for i in range(40)])  # nothing declared
    for flt in ({"source": "news", "year": {"$lt": 2020}}, {"$or": [{"year": {"$gte": 2035}}, {"source": "blog"}]}):
        want = sorted(d.id for d, _ in store.similarity_search_with_score("text 3", k=40, filter=flt))
        assert sorted(d.id for d, _ in plain.similarity_search_with_score("text 3", k=40, filter=flt)) == want
    assert plain.index.last_plan.metadata == "records"
    store.add_documents([Document(page_content="replaced", metadata={"source": "blog", "year": 1}, id="d5")])
    store.close()
    again = LukhasVectorStore(emb, path=tmp_path / "s")
    docs = again.get_by_ids(["d5", "d7", "zzz"])
    assert [d.page_content for d in docs] == ["replaced", "text 7"] and docs[1].metadata == metas[7]
    assert again.similarity_search("text 9", k=1, filter={"year": {"$in": [2009, 1]}})[0].id == "d9"
    again.delete(None)
    assert again.similarity_search("text 9", k=1) == []
    again.close()


def test_max_marginal_relevance_search_is_the_index_mmr():
    """fetch_k candidates, lambda_mult = 1 - diversity: near-duplicate texts give way; the by-vector
    and async variants agree; lambda_mult 1 is the plain top-k."""
    import asyncio

    emb = DeterministicFakeEmbedding(size=16)
    texts = [f"text {i}" for i in range(30)]
    store = LukhasVectorStore.from_texts(texts + ["text 3"] * 3, emb, [{"i": i} for i in range(33)],
                                         ids=[f"d{i}" for i in range(33)])
    plain = [d.id for d in store.similarity_search("text 3", k=4)]
    assert sorted(plain) == ["d3", "d30", "d31", "d32"]  # the copies fill the top 4
    got = store.max_marginal_relevance_search("text 3", k=4, fetch_k=20, lambda_mult=0.5)
    assert got[0].page_content == "text 3" and sum(d.page_content == "text 3" for d in got) == 1
    vec = emb.embed_query("text 3")
    assert [d.id for d in store.max_marginal_relevance_search_by_vector(vec, k=4, fetch_k=20, lambda_mult=0.5)] == \
        [d.id for d in got]
    assert [d.id for d in asyncio.run(store.amax_marginal_relevance_search("text 3", k=4, fetch_k=20))] == \
        [d.id for d in got]
    assert sorted(d.id for d in store.max_marginal_relevance_search("text 3", k=4, lambda_mult=1.0)) == sorted(plain)
    assert all(d.metadata["i"] % 2 == 0 for d in store.max_marginal_relevance_search(
        "text 3", k=4, filter={"i": {"$in": list(range(0, 33, 2))}}))
    with pytest.raises(ValueError, match="lambda_mult"):
        store.max_marginal_relevance_search("x", lambda_mult=1.5)


def test_delete_reports_unknown_ids_and_a_wrong_embedding_dim_is_named(tmp_path):
    """delete: True when every id was stored, False when some were not (no exception: LangChain's
    standard suite); a store reopened with an embedding of another dimension fails at the first
    search or add with both dimensions named."""
    import asyncio

    emb = DeterministicFakeEmbedding(size=16)
    store = LukhasVectorStore.from_texts(["a", "b", "c"], emb, ids=["x", "y", "z"], path=tmp_path / "s")
    assert store.delete(["nope"]) is False
    assert store.delete(["x", "nope"]) is False and store.get_by_ids(["x"]) == []  # the known one goes
    assert store.delete(["y", "y"]) is True and asyncio.run(store.adelete(["y"])) is False
    assert store.delete([]) is True
    with pytest.raises(TypeError, match="list of str"):
        store.delete("z")
    store.close()
    again = LukhasVectorStore(DeterministicFakeEmbedding(size=128), path=tmp_path / "s")
    for call in (lambda: again.similarity_search("a"), lambda: again.max_marginal_relevance_search("a"),
                 lambda: again.add_texts(["d"])):
        with pytest.raises(ValueError, match=r"dimension 128.*holds dimension 16"):
            call()
    assert [d.id for d in again.get_by_ids(["z"])] == ["z"]  # nothing changed
    again.close()
