"""mem0: the store's filtered insert / search / update / get / delete round trip, collections,
and ``Memory.from_config`` with the provider registered, on the LLM-free path (``infer=False``):
no LLM is called (one that raises stands in) and nothing is downloaded."""
from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np
import pytest

from conftest import optional_import

os.environ.setdefault("MEM0_TELEMETRY", "False")  # before mem0 is imported: no telemetry traffic
os.environ.setdefault("MEM0_DIR", tempfile.mkdtemp(prefix="mem0-"))  # nothing written to the home directory
optional_import("mem0")

from lukhas_gpu.integrations.mem0 import LukhasMem0Store, register_mem0  # noqa: E402

DIM = 12


def _vec(text: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).tolist()


def test_store_round_trip_with_filters(tmp_path):
    store = LukhasMem0Store("memories", DIM, path=str(tmp_path / "m0"), index_config={"metadata_fields": {"n": "int"}})
    texts = [f"fact {i}" for i in range(20)]
    payloads = [{"data": t, "user_id": "alice" if i % 2 else "bob", "agent_id": f"a{i % 3}", "n": i,
                 "created_at": "2026-12-01T00:00:00", "hash": str(i)} for i, t in enumerate(texts)]
    ids = store.insert([_vec(t) for t in texts], payloads, [f"m{i}" for i in range(20)])
    assert ids == [f"m{i}" for i in range(20)]
    hits = store.search("fact 3", [_vec("fact 3")], top_k=20, filters={"user_id": "alice", "agent_id": "a0"})
    assert [h.id for h in hits][0] == "m3" and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert sorted(h.id for h in hits) == sorted(f"m{i}" for i in range(20) if i % 2 and i % 3 == 0)
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert hits[0].payload == payloads[3]
    either = {"OR": [{"user_id": "bob", "n": {"lt": 4}}, {"n": {"gte": 18}}]}
    assert sorted(r.id for r in store.list(filters=either)[0]) == ["m0", "m18", "m19", "m2"]
    assert len(store.list(filters={"user_id": ["alice", "carol"]}, top_k=3)[0]) == 3
    store.update("m3", vector=_vec("moved"), payload={**payloads[3], "data": "moved", "n": 99})
    assert store.get("m3").payload["data"] == "moved" and store.get("m3").payload["n"] == 99
    assert store.search("moved", [_vec("moved")], top_k=1)[0].id == "m3"
    store.delete("m4")
    assert store.get("m4") is None and store.col_info()["count"] == 19
    with pytest.raises(ValueError):
        store.delete("m4")
    assert [h.id for h in store.search("x", [_vec("x")], filters={"hash": "1"})] == ["m1"]  # never declared
    other = LukhasMem0Store("other", DIM, path=str(tmp_path / "m0"))
    assert sorted(other.list_cols()) == ["memories", "other"]
    other.delete_col()
    assert other.list_cols() == ["memories"]
    store.close()
    again = LukhasMem0Store("memories", DIM, path=str(tmp_path / "m0"))
    assert again.get("m3").payload["n"] == 99 and again.col_info()["count"] == 19
    again.reset()
    assert again.list()[0] == [] and again.col_info()["count"] == 0
    again.close()


def test_memory_from_config_llm_free(tmp_path):
    from mem0 import Memory
    from mem0.embeddings.base import EmbeddingBase
    from mem0.llms.base import LLMBase

    class HashEmbedder(EmbeddingBase):  # a deterministic fake embedding model
        def embed(self, text, memory_action=None):
            return _vec(text)

    class NoLLM(LLMBase):
        def generate_response(self, *a, **k):
            raise AssertionError("the LLM-free path called the LLM")

    register_mem0()
    register_mem0()  # idempotent
    memory = Memory.from_config({
        "vector_store": {"provider": "lukhas", "config": {"collection_name": "agent", "embedding_model_dims": DIM,
                                                          "path": str(tmp_path / "mem")}},
        "embedder": {"provider": "openai", "config": {"api_key": "unused", "embedding_dims": DIM}},
        "llm": {"provider": "openai", "config": {"api_key": "unused"}},
        "history_db_path": str(tmp_path / "history.db"),
    })
    assert isinstance(memory.vector_store, LukhasMem0Store)
    memory.embedding_model = HashEmbedder()  # no model download, no API
    memory.llm = NoLLM()
    added = memory.add([{"role": "user", "content": "I like green tea"}], user_id="alice", infer=False)
    memory.add([{"role": "user", "content": "I like black coffee"}], user_id="bob", infer=False)
    mid = added["results"][0]["id"]
    found = memory.search("I like green tea", filters={"user_id": "alice"}, top_k=5)["results"]
    assert [r["memory"] for r in found] == ["I like green tea"]
    assert found[0]["score"] == pytest.approx(1.0, abs=1e-2)  # int8 rows: ~0.5% at 2 memories
    memory.update(mid, "I like oolong tea")
    assert memory.get(mid)["memory"] == "I like oolong tea"
    assert [r["memory"] for r in memory.get_all(filters={"user_id": "bob"})["results"]] == ["I like black coffee"]
    memory.delete(mid)
    assert memory.get(mid) is None
    memory.vector_store.close()


def test_keyword_search_is_bm25_where_the_store_has_a_text_index():
    plain = LukhasMem0Store("kw0", DIM)
    plain.insert([_vec("a")], [{"data": "red apple", "user_id": "u"}], ["x"])
    assert plain.keyword_search("apple") is None  # mem0's answer: no keyword search
    store = LukhasMem0Store("kw1", DIM, index_config={"text_index": True})
    texts = ["red apple pie", "green apple", "blue sky", "apple apple apple"]
    store.insert([_vec(t) for t in texts], [{"data": t, "user_id": "alice" if i % 2 else "bob", "author": f"a{i}"}
                                            for i, t in enumerate(texts)], [f"m{i}" for i in range(4)])
    hits = store.keyword_search("apple", top_k=10)
    assert [h.id for h in hits][0] == "m3" and sorted(h.id for h in hits) == ["m0", "m1", "m3"]
    assert all(h.score > 0 for h in hits) and hits[0].payload["data"] == "apple apple apple"
    assert [h.id for h in store.keyword_search("apple", filters={"user_id": "alice"})] == ["m3", "m1"]
    assert [h.id for h in store.keyword_search("apple", filters={"author": "a0"})] == ["m0"]  # never declared
    assert store.keyword_search("nothing") == []
    store.delete_col()
    plain.delete_col()
