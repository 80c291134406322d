"""The ``migrate`` subcommand and Parquet input of ``ingest``, in-process, small data."""
import json
import sys

import numpy as np
import pytest

from lukhas_gpu import MemoryIndex, cli
from lukhas_gpu.ingest.migrate import write_naive_jsonl
from lukhas_gpu.ingest.resume import progress_of

from conftest import optional_import

# the data and helpers of the store commands' tests (N memories of DIM, added BATCH at a time)
from test_cli_store import BATCH, DIM, N, _all_contents, _data, _interrupt_then_resume, _interrupting_add, _json_lines


def _count(store, capsys):
    capsys.readouterr()
    assert cli.main(["stats", str(store), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["count"]


def _check_memories(store, x, contents, tags, ts, imp, capsys, ids=(0, 7, 150, 299)):
    """get returns the input's payloads, and each input vector finds its own memory first."""
    capsys.readouterr()
    assert cli.main(["get", str(store), *map(str, ids), "--json"]) == 0
    for g in _json_lines(capsys.readouterr().out):
        i = g["id"]
        assert g["content"] == (contents[i].decode() if isinstance(contents[i], bytes) else contents[i])
        assert g["tags"] == tags[i]
        assert g["timestamp"] == pytest.approx(ts[i])
        assert g["importance"] == pytest.approx(imp[i], abs=0.01)
    ix = MemoryIndex.open(store, mode="r")
    try:
        assert np.asarray(ix.search(x, 1).ids)[:, 0].tolist() == list(range(len(x)))
    finally:
        ix.close()


# -- migrate -------------------------------------------------------------------------------------
@pytest.fixture()
def naive(tmp_path):
    x, contents, tags, ts, imp = _data()
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, x, contents=contents, tags=tags, timestamps=ts, importance=imp,
                      ids=[f"m-{i}" for i in range(N)])
    return {"src": src, "store": tmp_path / "store", "x": x, "contents": contents, "tags": tags, "ts": ts,
            "imp": imp}


def _migrate(d, *extra):
    return cli.main(["migrate", str(d["src"]), str(d["store"]), "--batch-size", str(BATCH), *extra])


def test_migrate_jsonl_json_report_then_rollback_undoes_it(naive, capsys):
    assert _migrate(naive, "--json") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["records"] == rep["imported"] == rep["count"] == N and rep["skipped"] == 0
    assert not rep["dry_run"] and rep["rate"] > 0 and rep["seconds"] >= 0
    assert rep["parity"]["count_match"] and rep["parity"]["queries"] == 200 and rep["parity"]["k"] == 10
    assert rep["parity"]["top10_overlap"] >= 0.9
    assert rep["generation"] != rep["rollback_to"]
    _check_memories(naive["store"], naive["x"], naive["contents"], naive["tags"], naive["ts"], naive["imp"], capsys)

    # the migration is one generation: rolling back returns the (new, empty) store to before it
    assert cli.main(["rollback", str(naive["store"])]) == 0
    assert rep["rollback_to"] in capsys.readouterr().out
    assert _count(naive["store"], capsys) == 0


def test_migrate_text_summary_and_id_map(naive, capsys, tmp_path):
    id_map = tmp_path / "ids.jsonl"
    assert _migrate(naive, "--id-map", str(id_map), "--parity-queries", "50") == 0
    out = capsys.readouterr().out
    assert f"migrated {N} of {N} records" in out and "rec/s" in out and f"holds {N} memories" in out
    assert "parity: top-10 overlap" in out and "over 50 queries" in out and f"grew by exactly {N}" in out
    assert f"lukhas-gpu rollback {naive['store']}" in out
    assert _json_lines(id_map.read_text())[:3] == [{"old": f"m-{i}", "new": i} for i in range(3)]


def test_migrate_into_an_existing_store_appends_and_rolls_back_to_it(naive, capsys, tmp_path):
    assert _migrate(naive) == 0
    capsys.readouterr()
    other = tmp_path / "more.jsonl"
    x2, *_ = _data(n=40, seed=1)
    write_naive_jsonl(other, x2, contents=[f"more {i}" for i in range(40)])
    assert cli.main(["migrate", str(other), str(naive["store"]), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["imported"] == 40 and rep["count"] == N + 40 and rep["parity"]["count_match"]
    assert cli.main(["rollback", str(naive["store"])]) == 0
    assert _count(naive["store"], capsys) == N


def test_migrate_npz_with_payloads(tmp_path, capsys):
    x, contents, tags, ts, imp = _data()
    payloads = tmp_path / "payloads.jsonl"
    write_naive_jsonl(payloads, None, contents=contents, tags=tags, timestamps=ts, importance=imp)
    np.savez_compressed(tmp_path / "emb.npz", emb=x)
    store = tmp_path / "store"
    assert cli.main(["migrate", str(payloads), str(store), "--vectors", str(tmp_path / "emb.npz"), "--npz-key", "emb",
                     "--batch-size", "64", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["imported"] == rep["count"] == N and rep["vectors"].endswith("emb.npz")
    assert rep["parity"]["top10_overlap"] >= 0.9
    _check_memories(store, x, contents, tags, ts, imp, capsys)


def test_migrate_dry_run_stores_nothing(naive, capsys):
    assert _migrate(naive, "--dry-run", "--json") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["dry_run"] and rep["records"] == N and rep["imported"] == 0 and rep["parity"] is None
    assert not naive["store"].exists()  # a new store is not even created
    assert _migrate(naive, "--dry-run") == 0
    assert "dry run: nothing stored" in capsys.readouterr().out

    # into an existing store: it is left as it was
    assert _migrate(naive) == 0
    capsys.readouterr()
    current = (naive["store"] / "CURRENT").read_text()
    assert _migrate(naive, "--dry-run", "--json") == 0
    assert json.loads(capsys.readouterr().out)["count"] == N
    assert (naive["store"] / "CURRENT").read_text() == current and _count(naive["store"], capsys) == N


def _corrupt_line(path, index, how):
    lines = path.read_text().splitlines(keepends=True)
    obj = json.loads(lines[index])
    if how == "dimension":
        obj["embedding"] = obj["embedding"][:-1]
    else:
        obj["embedding"][2] = float("nan")
    lines[index] = json.dumps(obj) + "\n"
    path.write_text("".join(lines))


@pytest.mark.parametrize("how,message", [("dimension", "dimension 15"), ("nan", "NaN")])
def test_migrate_bad_record_exits_1_with_its_line(naive, capsys, how, message):
    _corrupt_line(naive["src"], 174, how)  # line 175, in the 4th batch
    assert _migrate(naive) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("lukhas-gpu migrate: error: ") and captured.err.count("\n") == 1
    assert "old.jsonl, line 175" in captured.err and message in captured.err and "Traceback" not in captured.err
    assert f"the {3 * BATCH} records before its batch are stored" in captured.err
    assert "lukhas-gpu rollback" in captured.err and captured.out == ""
    assert _all_contents(naive["store"]) == naive["contents"][:3 * BATCH]  # checkpointed: readers see them
    assert cli.main(["rollback", str(naive["store"])]) == 0
    assert _count(naive["store"], capsys) == 0


def test_migrate_bad_first_batch_stores_nothing(naive, capsys):
    _corrupt_line(naive["src"], 9, "nan")
    assert _migrate(naive, "--dry-run") == 1  # a dry run finds it too
    assert "old.jsonl, line 10" in capsys.readouterr().err
    assert _migrate(naive) == 1
    err = capsys.readouterr().err
    assert "old.jsonl, line 10" in err and "rollback" not in err
    assert _count(naive["store"], capsys) == 0


def test_migrate_interrupted_keeps_what_it_stored_as_one_generation(naive, capsys, monkeypatch):
    assert _migrate(naive) == 0
    monkeypatch.setattr(MemoryIndex, "add", _interrupting_add(2))
    assert _migrate(naive) == 130
    err = capsys.readouterr().err
    assert f"interrupted after storing {2 * BATCH} records" in err and "lukhas-gpu rollback" in err
    assert _count(naive["store"], capsys) == N + 2 * BATCH
    assert cli.main(["rollback", str(naive["store"])]) == 0
    assert _count(naive["store"], capsys) == N


@pytest.mark.parametrize("argv,message", [
    (["migrate", "{tmp}/e.npy", "{tmp}/store"], "--vectors"),
    (["migrate", "{tmp}/missing.jsonl", "{tmp}/store"], "missing.jsonl"),
    (["migrate", "{tmp}/old.jsonl", "{tmp}/store", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["migrate", "{tmp}/old.jsonl", "{tmp}/store", "--vectors", "{tmp}/e.npy"], "count mismatch"),
])
def test_migrate_errors_are_one_line_on_stderr(naive, tmp_path, capsys, argv, message):
    np.save(tmp_path / "e.npy", np.zeros((2, DIM), dtype=np.float32))
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1 and captured.out == ""


def test_migrate_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["migrate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lukhas-gpu migrate") and "SOURCE STORE" in out
    assert "--dry-run" in out and "--vectors" in out and "lukhas-gpu rollback STORE" in out


# -- ingest of Parquet ---------------------------------------------------------------------------
def _parquet(path, x, contents=None, tags=None, ts=None, imp=None, *, fixed=False, column="embedding",
             timestamp_type=False, binary=False, row_group_size=70, embeddings=None):
    """A Parquet file of the memories; ``embeddings`` (a list of lists / None) overrides ``x``."""
    pa = optional_import("pyarrow")
    pq = optional_import("pyarrow.parquet")
    if embeddings is not None:
        emb = pa.array(embeddings, type=pa.list_(pa.float32()))
    elif fixed:
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    else:
        emb = pa.array(list(x.astype(np.float64)), type=pa.list_(pa.float64()))
    cols = {"id": pa.array(np.arange(len(emb))), column: emb}
    if contents is not None:
        cols["content"] = pa.array([c.encode() for c in contents]) if binary else pa.array(contents)
    if tags is not None:
        cols["tags"] = pa.array(tags, type=pa.list_(pa.string()))
    if ts is not None:
        if timestamp_type:
            cols["timestamp"] = pa.array((np.asarray(ts) * 1e6).astype(np.int64), type=pa.timestamp("us", tz="UTC"))
        else:
            cols["timestamp"] = pa.array(ts, type=pa.float64())
    if imp is not None:
        cols["importance"] = pa.array(imp, type=pa.float32())
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


@pytest.fixture()
def pdata(tmp_path):
    x, contents, tags, ts, imp = _data()
    return {"src": _parquet(tmp_path / "in.parquet", x, contents, tags, ts, imp), "store": tmp_path / "store",
            "x": x, "contents": contents, "tags": tags, "ts": ts, "imp": imp}


@pytest.mark.parametrize("layout", ["list-float64", "fixed-timestamp-binary", "named-column"])
def test_ingest_parquet_end_to_end(tmp_path, capsys, layout):
    x, contents, tags, ts, imp = _data()
    src = tmp_path / "in.parquet"
    extra = []
    if layout == "list-float64":
        _parquet(src, x, contents, tags, ts, imp)
    elif layout == "fixed-timestamp-binary":
        _parquet(src, x, contents, tags, ts, imp, fixed=True, timestamp_type=True, binary=True)
    else:
        _parquet(src, x, contents, tags, ts, imp, column="vec")
        extra = ["--embedding-column", "vec"]
    store = tmp_path / "store"
    assert cli.main(["ingest", str(store), str(src), "--batch-size", "64", "--json", *extra]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == summary["ingested"] == summary["count"] == N
    _check_memories(store, x, contents, tags, ts, imp, capsys)
    ix = MemoryIndex.open(store, mode="r")
    assert ix.dim == DIM and ix.config.capacity == N
    ix.close()

    # search through the command line finds the ingested vectors
    q = tmp_path / "q.npy"
    np.save(q, x[:20])
    assert cli.main(["search", str(store), "--query-file", str(q), "-k", "3", "--json"]) == 0
    assert [r["ids"][0] for r in _json_lines(capsys.readouterr().out)] == list(range(20))


def test_ingest_parquet_without_optional_columns(tmp_path, capsys):
    x, *_ = _data(n=40)
    src = _parquet(tmp_path / "bare.parquet", x)
    assert cli.main(["ingest", str(tmp_path / "store"), str(src), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 40
    ix = MemoryIndex.open(tmp_path / "store", mode="r")
    try:
        m = ix.get([3])[0]
        assert m.content is None and m.tags == [] and m.importance == pytest.approx(0.5, abs=0.01)
    finally:
        ix.close()


def test_ingest_parquet_resumes_after_an_interrupt(pdata, capsys, monkeypatch):
    # on resume rows 0..99 are skipped: row group 0 (rows 0..69) is not read, 30 rows of group 1
    # are read past
    _interrupt_then_resume(pdata, capsys, monkeypatch, after_resume=lambda: _check_memories(
        pdata["store"], pdata["x"], pdata["contents"], pdata["tags"], pdata["ts"], pdata["imp"], capsys))


@pytest.mark.parametrize("how,message", [("dimension", "embedding has dimension 15, the store expects 16"),
                                         ("nan", "NaN"), ("null", "embedding is null"),
                                         ("importance", '"importance" must be in [0, 1]')])
def test_ingest_parquet_bad_row_names_it_and_keeps_only_earlier_batches(tmp_path, capsys, how, message):
    x, contents, tags, ts, imp = _data()
    rows = [list(map(float, v)) for v in x]
    if how == "dimension":
        rows[174] = rows[174][:-1]
    elif how == "nan":
        rows[174][2] = float("nan")
    elif how == "null":
        rows[174] = None
    else:
        imp[174] = 1.5
    src = _parquet(tmp_path / "bad.parquet", x, contents, tags, ts, imp, embeddings=rows)
    store = tmp_path / "store"
    assert cli.main(["ingest", str(store), str(src), "--batch-size", str(BATCH)]) == 1
    captured = capsys.readouterr()
    assert "bad.parquet, row 174" in captured.err and message in captured.err
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    assert _all_contents(store) == contents[:3 * BATCH]  # nothing of rows 150..199
    progress = progress_of(store, src)
    assert progress["ingested"] == 3 * BATCH and not progress["done"]


def test_ingest_parquet_reports_the_first_bad_row_of_a_batch(tmp_path, capsys):
    x, *_ = _data(n=60)
    rows = [list(map(float, v)) for v in x]
    rows[40] = rows[40][:3]  # a later row of the same batch is also bad
    rows[12][0] = float("inf")
    src = _parquet(tmp_path / "bad.parquet", x, embeddings=rows)
    assert cli.main(["ingest", str(tmp_path / "store"), str(src), "--dim", str(DIM)]) == 1
    assert "bad.parquet, row 12: embedding contains NaN or infinity" in capsys.readouterr().err


@pytest.mark.parametrize("what,message", [("column", "has no column 'embedding'"),
                                          ("type", "column 'tags' has type list<")])
def test_ingest_parquet_bad_schema(tmp_path, capsys, what, message):
    pa = optional_import("pyarrow")
    pq = optional_import("pyarrow.parquet")
    emb = pa.array([[0.5] * 4, [0.25] * 4], type=pa.list_(pa.float32()))
    cols = {"vectors": emb} if what == "column" else {"embedding": emb, "tags": pa.array([[1], [2]])}
    pq.write_table(pa.table(cols), tmp_path / "x.parquet")
    assert cli.main(["ingest", str(tmp_path / "store"), str(tmp_path / "x.parquet")]) == 1
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    if what == "type":
        assert "expected list<string>" in captured.err
    else:
        assert "--embedding-column" in captured.err


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    assert cli.main(["ingest", str(tmp_path / "store"), str(tmp_path / "x.parquet")]) == 1
    captured = capsys.readouterr()
    assert 'pip install "lukhas-gpu[parquet]"' in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_ingest_parquet_names_the_columns_it_does_not_read(tmp_path, capsys):
    pa = optional_import("pyarrow")
    pq = optional_import("pyarrow.parquet")
    x, contents, *_ = _data(n=20)
    src = tmp_path / "text.parquet"
    pq.write_table(pa.table({"embedding": pa.array(list(x.astype(np.float64))), "text": pa.array(contents),
                             "source": pa.array(["web"] * 20)}), src)
    assert cli.main(["ingest", str(tmp_path / "store"), str(src), "--json"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["columns_read"] == ["embedding"] and summary["columns_not_read"] == ["text", "source"]
    assert "not read: text, source" in out.err and "a column named 'content'" in out.err
