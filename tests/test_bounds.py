"""Every caller-controlled bound has one owner (``lukhas_gpu.util.bounds``), is checked before
anything is allocated or written, and a bad value gets a clear 4xx / ValueError / TypeError that
names it (defects 7 and 10)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, MemoryIndex, Rank
from lukhas_gpu.util import bounds

from conftest import optional_import

DIM = 16


def _vecs(n, dim=DIM, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# -- one owner per fact ----------------------------------------------------------------------------
def test_every_copy_of_a_bound_is_the_owners():
    from lukhas_gpu.capacity import sizing
    from lukhas_gpu.index import writes
    from lukhas_gpu.records import taglists, tags
    from lukhas_gpu.serve import models, options
    from lukhas_gpu.store import layout
    from lukhas_gpu.util import checks
    from lukhas_gpu.vectors import policy

    assert bounds.MAX_ROWS == 2**32 - 1  # uint32 row numbers; 0xFFFFFFFF is "no row"
    for mod in (writes, taglists, tags, layout):
        assert mod.MAX_ROWS is bounds.MAX_ROWS, mod.__name__
    assert sizing.MAX_COUNT is bounds.MAX_ROWS
    assert layout.MAX_DIM is bounds.MAX_DIM and policy.MAX_DIM_OUT is bounds.MAX_DIM_OUT
    assert checks.MAX_K is bounds.MAX_K and models.MAX_REQUEST_IDS is bounds.MAX_REQUEST_IDS
    assert options.MAX_BATCH is bounds.MAX_SERVE_BATCH and options.MAX_BODY_MB is bounds.MAX_BODY_MB
    assert policy.dim_out_for(4096) == bounds.MAX_DIM_OUT and policy.dim_out_for(64) == 64


def test_a_filters_tag_lists_are_bounded():
    from lukhas_gpu import Filter
    from lukhas_gpu.serve import wire

    Filter(tags_any=["t"] * bounds.MAX_FILTER_TAGS)
    with pytest.raises(ValueError, match="Filter.tags_any holds 4,097 tags, at most 4,096"):
        Filter(tags_any=["t"] * (bounds.MAX_FILTER_TAGS + 1))
    with pytest.raises(ValueError, match="where.tags_none holds 4097 tags, at most 4096"):
        wire.parse_where({"tags_none": ["t"] * (bounds.MAX_FILTER_TAGS + 1)})


def test_copied_facts_have_one_owner():
    from lukhas_gpu import config
    from lukhas_gpu.capacity import accounting, sizing
    from lukhas_gpu.distributed import aggregate, rootfiles, stages
    from lukhas_gpu.ingest import sources
    from lukhas_gpu.monitor import probe
    from lukhas_gpu.store import layout, wal
    from lukhas_gpu.util import device, memory

    assert config.BACKENDS is device.BACKENDS
    assert aggregate._PLACES is accounting.PLACES
    assert stages.PARQUET_SUFFIXES is sources.PARQUET_SUFFIXES
    assert probe.DRIFT_HISTORY is memory.DRIFT_HISTORY
    assert sizing.DRIFT_HISTORY_BYTES == memory.DRIFT_HISTORY * memory.DRIFT_HISTORY_COLUMNS * 8
    assert wal.fsync_dir is layout.fsync_dir and not hasattr(wal, "_fsync_dir")
    # a store's format and a sharded root's are two facts with two names
    assert layout.STORE_FORMAT != rootfiles.ROOT_FORMAT
    assert not hasattr(layout, "FORMAT") and not hasattr(rootfiles, "FORMAT")


def test_the_row_limit_admits_exactly_max_rows(monkeypatch):
    from lukhas_gpu.index import writes

    ix = MemoryIndex(DIM)
    ix.add(_vecs(3))
    monkeypatch.setattr(writes, "MAX_ROWS", 5)
    ix.add(_vecs(2, seed=1))  # 5 rows: the limit itself
    with pytest.raises(ValueError, match="at most 5 memories"):
        ix.add(_vecs(1, seed=2))
    assert len(ix) == 5


# -- defect 7: a dim the format cannot hold is refused before anything is written ------------------
@pytest.mark.parametrize("dim", [bounds.MAX_DIM + 1, 70_000, 2**40])
def test_a_dim_beyond_the_format_is_refused_first(tmp_path, dim):
    with pytest.raises(ValueError, match=r"at most 65,536.*MAX_DIM"):
        MemoryIndex(dim)  # 2**40 tried to allocate 1 TiB
    store = tmp_path / "s"
    with pytest.raises(ValueError, match="MAX_DIM"):
        MemoryIndex.create(store, dim)
    assert not store.exists()


def test_cli_ingest_of_a_too_wide_jsonl_writes_nothing(tmp_path, capsys):
    from lukhas_gpu.cli.main import main

    src = tmp_path / "wide.jsonl"
    src.write_text("".join(json.dumps({"embedding": [0.5] * 70_000, "content": f"m{i}"}) + "\n" for i in range(2)))
    store = tmp_path / "store"
    assert main(["ingest", str(store), str(src)]) == 1
    assert "70000" in capsys.readouterr().err and not store.exists()


@pytest.mark.parametrize("flags, match", [(["--dim", "70000"], r"--dim must be a positive int, at most 65,536"),
                                          (["--batch-size", str(2**40)], r"--batch-size must be <= 262,144")])
def test_cli_ingest_flags_are_bounded(tmp_path, capsys, flags, match):
    import re

    from lukhas_gpu.cli.main import main

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"embedding": [0.5] * 4}) + "\n")
    assert main(["ingest", str(tmp_path / "store"), str(src), *flags]) == 1
    assert re.search(match, capsys.readouterr().err) and not (tmp_path / "store").exists()


def test_ray_ingest_checks_dim_before_starting():
    from lukhas_gpu.distributed.ingestion import ingest

    with pytest.raises(ValueError, match="dim must be an int in 1..65,536"):
        ingest(None, "unused", shards=1, dim=70_000)


# -- defect 10: clear errors ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_index():
    ix = MemoryIndex(DIM, IndexConfig(text_index=True))
    ix.add(_vecs(20), contents=[f"hello {i}" for i in range(20)], timestamps=1.7e9 + np.arange(20),
           importance=np.linspace(0, 1, 20))
    return ix


def test_a_bool_is_not_k(text_index):
    q = _vecs(1)[0]
    for call in (lambda: text_index.search(q, True), lambda: text_index.search_text("hello", k=True),
                 lambda: text_index.search(q, k=np.bool_(True), text="hello")):
        with pytest.raises(TypeError, match="k must be an int, got bool"):
            call()
    with pytest.raises(ValueError, match="nprobe must be a positive int, got True"):
        text_index.search(q, 3, nprobe=True)
    with pytest.raises(ValueError, match="nprobe=2,097,152 exceeds the limit"):
        text_index.search(q, 3, nprobe=2 * bounds.MAX_NPROBE)


def test_rank_weights_are_bounded_and_scores_stay_finite(text_index):
    with pytest.raises(ValueError, match="Rank.recency must be >= 0 and <= 1e\\+06.*MAX_RANK_WEIGHT"):
        Rank(recency=1e308, importance=1e308)
    w = bounds.MAX_RANK_WEIGHT
    r = text_index.search(_vecs(1)[0], 5, rank=Rank(w, w, w, now=1.7e9 + 20))
    assert (r.ids >= 0).all() and np.isfinite(r.scores).all()


def test_a_deeply_nested_jsonl_line_is_named(tmp_path, capsys):
    from lukhas_gpu.cli.main import main
    from lukhas_gpu.ingest.input_errors import InvalidRecord
    from lukhas_gpu.ingest.sources import loads

    deep = b'{"embedding": [1.0, 2.0], "metadata": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(InvalidRecord, match=r"nested 100002 levels deep; at most 64"):
        loads(deep)
    assert loads(b'{"content": "[[[[" , "tags": ["a"]}')["content"] == "[[[["  # brackets in strings
    src = tmp_path / "deep.jsonl"
    src.write_bytes(b'{"embedding": [1.0, 2.0], "content": "ok"}\n' + deep + b"\n")
    assert main(["ingest", str(tmp_path / "store"), str(src)]) == 1
    err = capsys.readouterr().err
    assert "line 2" in err and "nested" in err and "Traceback" not in err


def test_library_ids_beyond_int64_are_named(text_index):
    for call in (text_index.get, text_index.contains, text_index.delete):
        with pytest.raises(ValueError, match=f"ids: {2**70} is outside int64"):
            call([1, 2**70])
        with pytest.raises(ValueError, match=f"ids: {2**63} is outside int64"):
            call(np.array([2**63], np.uint64))  # would wrap to a negative id
    assert len(text_index) == 20


def test_the_wire_refuses_bools_and_ids_beyond_int64():
    optional_import("pydantic")
    from pydantic import ValidationError

    from lukhas_gpu.serve.http_errors import _validation_message
    from lukhas_gpu.serve.models import IdsRequest, SearchParams

    assert SearchParams.model_validate({"k": 7}).k == 7 and SearchParams.model_validate({"k": "7"}).k == 7
    for bad in ({"k": True}, {"nprobe": False}, {"rerank": True}):
        with pytest.raises(ValidationError, match="boolean"):
            SearchParams.model_validate(bad)
    with pytest.raises(ValidationError) as info:
        IdsRequest.model_validate_json(json.dumps({"ids": [1, 2**70]}))
    assert str(2**70) in _validation_message(info.value)
    with pytest.raises(ValidationError):
        IdsRequest.model_validate({"ids": [True]})


def test_the_server_answers_4xx_naming_an_id_beyond_int64(tmp_path):
    optional_import("fastapi")
    optional_import("httpx")
    from fastapi.testclient import TestClient

    from lukhas_gpu.serve.app import create_app
    from lukhas_gpu.serve.options import ServeOptions

    with MemoryIndex.create(tmp_path / "s", DIM) as ix:
        ix.add(_vecs(4))
    app = create_app(ServeOptions(store=str(tmp_path / "s"), mode="w", refresh_s=0.0))
    huge = 2**70
    with TestClient(app) as c:
        for r in (c.get(f"/v1/memories/{huge}"), c.delete(f"/v1/memories/{huge}"),
                  c.post("/v1/memories/lookup", json={"ids": [0, huge]}),
                  c.post("/v1/memories/delete", json={"ids": [huge]})):
            assert r.status_code == 422 and str(huge) in r.text, (r.status_code, r.text)
        r = c.post("/v1/search", json={"vectors": _vecs(1).tolist(), "k": True})
        assert r.status_code == 422 and "boolean" in r.text, r.text
        assert c.get("/v1/memories/1").status_code == 200
        assert c.get("/v1/memories/99").status_code == 404
