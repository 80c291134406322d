"""Migration from the old naive formats: round trips, the npz layout, parity, dry runs, bad records."""
from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.ingest.migrate import MigrationError, MigrationReport, migrate_jsonl, migrate_npz, write_naive_jsonl
from lukhas_gpu.ingest.npy_rows import ArrayReader

DIM = 16
EXACT = IndexConfig(train_threshold=100_000)  # stays in the exact phase: parity is the int8 scan's
WORDS = "memory user said project meeting coffee python review garden weather sister office".split()
NOW = 1_750_000_000.0


def _data(n: int, dim: int = DIM, seed: int = 0):
    from conftest import make_clustered

    xb, _ = make_clustered(n, dim, seed=seed)
    rng = np.random.default_rng(seed)
    contents = [" ".join(rng.choice(WORDS, 6)) + f" #{i} ✓" for i in range(n)]
    if n > 3:
        contents[3] = None  # a memory without content
    tags = [[t for t in ("work", "home", "rare") if rng.random() < p] for p in rng.random(n) * 0.9]
    ts = NOW - rng.random(n) * 86400 * 365
    imp = rng.random(n)
    ids = [f"old-{i}" if i % 2 else i * 7 for i in range(n)]
    return xb, contents, tags, ts, imp, ids


def _index(dim: int = DIM) -> MemoryIndex:
    return MemoryIndex(dim, EXACT)


def _check_memories(index, new_ids, contents, tags, ts, imp):
    got = index.get(new_ids)
    assert len(got) == len(contents)
    for m, c, t, s, i in zip(got, contents, tags, ts, imp):
        assert m.content == c
        assert m.tags == list(t)
        assert abs(m.timestamp - s) <= 1e-6
        assert abs(m.importance - i) <= 1e-4


def _lines(path) -> list[str]:
    return open(path, encoding="utf-8").read().splitlines()


def _set_line(path, lineno: int, text: str) -> None:
    lines = _lines(path)
    lines[lineno - 1] = text
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")


# -- round trips --------------------------------------------------------------------------------
def test_jsonl_round_trip(tmp_path):
    xb, contents, tags, ts, imp, ids = _data(700)
    src = tmp_path / "old.jsonl"
    assert write_naive_jsonl(src, xb, contents, tags, ts, imp, ids=ids) == 700
    index = _index()
    rep = migrate_jsonl(src, index, batch_size=128)
    assert isinstance(rep, MigrationReport)
    assert (rep.records, rep.imported, rep.skipped, rep.dry_run) == (700, 700, 0, False)
    assert rep.id_map.dtype == np.int64
    np.testing.assert_array_equal(rep.id_map, np.arange(700))
    assert rep.seconds > 0 and rep.records_per_second == pytest.approx(700 / rep.seconds)
    assert len(index) == 700 and rep.parity["count_match"]
    _check_memories(index, rep.id_map, contents, tags, ts, imp)
    # the vectors went in too: each record's own embedding finds it first
    res = index.search(xb[:50], k=1)
    np.testing.assert_array_equal(res.ids[:, 0], rep.id_map[:50])


def test_writer_keeps_float32_exactly_and_omits_missing_columns(tmp_path):
    xb = np.random.default_rng(1).standard_normal((40, 24)).astype(np.float32) * 1e-3
    path = tmp_path / "w.jsonl"
    write_naive_jsonl(path, xb, ids=[f"k{i}" for i in range(40)])
    recs = [json.loads(line) for line in _lines(path)]
    np.testing.assert_array_equal(np.array([r["embedding"] for r in recs], dtype=np.float32), xb)
    assert set(recs[0]) == {"id", "embedding"} and recs[5]["id"] == "k5"
    with pytest.raises(ValueError, match="lengths disagree"):
        write_naive_jsonl(path, xb, contents=["x"] * 39)
    bad = xb.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"embeddings\[7\]"):
        write_naive_jsonl(path, bad)


@pytest.mark.parametrize("text, expected", [
    ("2024-03-01T12:00:00Z", dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)),
    ("2024-03-01T14:00:00+02:00", dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)),
    ("2024-03-01T12:00:00", dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)),  # naive means UTC
    ("2024-03-01T12:00:00.250Z", dt.datetime(2024, 3, 1, 12, 0, 0, 250_000, tzinfo=dt.timezone.utc)),
    ("1999-12-31", dt.datetime(1999, 12, 31, tzinfo=dt.timezone.utc)),
])
def test_iso_8601_timestamps(tmp_path, text, expected):
    xb = _data(5)[0]
    src = tmp_path / "iso.jsonl"
    write_naive_jsonl(src, xb, timestamps=[text] * 4 + [1234.5])
    index = _index()
    rep = migrate_jsonl(src, index, batch_size=2, parity_queries=0)
    got = [m.timestamp for m in index.get(rep.id_map)]
    assert got[:4] == pytest.approx([expected.timestamp()] * 4, abs=1e-6)
    assert got[4] == 1234.5


def test_missing_fields_take_the_defaults_and_string_metadata_is_read(tmp_path):
    xb = _data(3)[0]
    src = tmp_path / "sparse.jsonl"
    lines = [
        {"embedding": xb[0].tolist()},
        {"id": 9, "embedding": xb[1].tolist(), "metadata": {"importance": 0.25, "source": "ignored"}, "tags": None},
        # the old store kept metadata as a JSON-encoded string
        {"id": "x", "embedding": xb[2].tolist(), "metadata": json.dumps({"timestamp": 77.0, "importance": 1}),
         "content": "kept"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    index = _index()
    import time

    t0 = time.time()
    rep = migrate_jsonl(src, index, parity_queries=0)
    t1 = time.time()
    a, b, c = index.get(rep.id_map)
    assert (a.content, a.tags, a.importance) == (None, [], 0.5)
    assert t0 - 1 <= a.timestamp <= t1 + 1 and t0 - 1 <= b.timestamp <= t1 + 1
    assert b.importance == 0.25 and b.tags == []
    assert (c.content, c.timestamp, c.importance) == ("kept", 77.0, 1.0)


# -- the npz layout ----------------------------------------------------------------------------
@pytest.mark.parametrize("layout, access", [("savez", "mmap"), ("savez_compressed", "stream"), ("npy", "mmap")])
def test_npz_path_equals_jsonl_path(tmp_path, layout, access):
    xb, contents, tags, ts, imp, ids = _data(500)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb, contents, tags, ts, imp, ids=ids)
    payload = tmp_path / "payload.jsonl"
    write_naive_jsonl(payload, None, contents, tags, ts, imp, ids=ids)
    assert "embedding" not in json.loads(_lines(payload)[0])
    if layout == "npy":
        arr = tmp_path / "emb.npy"
        np.save(arr, xb.astype(np.float64))
    else:
        arr = tmp_path / "emb.npz"
        getattr(np, layout)(arr, other=np.zeros(3), vectors=xb)
    reader = ArrayReader(str(arr), "vectors")
    assert reader.access == access and (reader.n, reader.dim) == xb.shape
    np.testing.assert_array_equal(reader.read(500), xb)  # read lazily, all the same
    reader.close()

    a, b = _index(), _index()
    rep_a = migrate_jsonl(src, a, batch_size=128, id_map_path=tmp_path / "a.map")
    rep_b = migrate_npz(arr, payload, b, key="vectors", batch_size=128, id_map_path=tmp_path / "b.map")
    assert rep_b.records == rep_b.imported == 500 and rep_b.parity["count_match"]
    assert rep_b.parity["top10_overlap"] >= 0.9
    np.testing.assert_array_equal(rep_a.id_map, rep_b.id_map)
    _check_memories(b, rep_b.id_map, contents, tags, ts, imp)
    assert _lines(tmp_path / "a.map") == _lines(tmp_path / "b.map")
    q = xb[::25] + 0.01
    ra, rb = a.search(q, k=10), b.search(q, k=10)
    np.testing.assert_array_equal(ra.ids, rb.ids)
    np.testing.assert_allclose(ra.scores, rb.scores, rtol=1e-6)


def test_npz_count_mismatch_names_both_counts(tmp_path):
    xb, contents, *_ = _data(300)
    arr = tmp_path / "emb.npz"
    np.savez(arr, embeddings=xb)
    payload = tmp_path / "payload.jsonl"
    write_naive_jsonl(payload, None, contents[:299])
    index = _index()
    with pytest.raises(ValueError, match=r"300 embeddings.*299 payload records") as ei:
        migrate_npz(arr, payload, index, batch_size=100)
    assert len(index) == 0 and ei.value.report.imported == 0


def test_npz_bad_arrays(tmp_path):
    payload = tmp_path / "payload.jsonl"
    write_naive_jsonl(payload, None, ["x"] * 4)
    np.savez(tmp_path / "a.npz", embeddings=np.ones((4, DIM + 1), np.float32))
    np.savez(tmp_path / "b.npz", vecs=np.ones((4, DIM), np.float32))
    np.savez(tmp_path / "c.npz", embeddings=np.ones((4, DIM), np.int32))
    with pytest.raises(ValueError, match=rf"dimension {DIM + 1}, the index expects {DIM}"):
        migrate_npz(tmp_path / "a.npz", payload, _index())
    with pytest.raises(ValueError, match=r"no array 'embeddings'; it holds \['vecs'\]"):
        migrate_npz(tmp_path / "b.npz", payload, _index())
    with pytest.raises(ValueError, match="must be a float array"):
        migrate_npz(tmp_path / "c.npz", payload, _index())


@pytest.mark.parametrize("nan_row, bad_line, reported", [(149, 140, 140), (129, 160, 130)])
@pytest.mark.parametrize("compressed", [False, True])
def test_npz_reports_the_first_bad_record_of_a_batch(tmp_path, nan_row, bad_line, reported, compressed):
    xb, contents, *_ = _data(250)
    xb[nan_row, 3] = np.nan
    arr = tmp_path / "emb.npz"
    (np.savez_compressed if compressed else np.savez)(arr, embeddings=xb)
    payload = tmp_path / "payload.jsonl"
    write_naive_jsonl(payload, None, contents)
    _set_line(payload, bad_line, '{"id": 1, "tags": "a"}')
    index = _index()
    with pytest.raises(ValueError, match=rf"payload\.jsonl, line {reported}:") as ei:
        migrate_npz(arr, payload, index, batch_size=100)
    if reported == nan_row + 1:
        assert f"row {nan_row} of" in str(ei.value) and "NaN" in str(ei.value)
    else:
        assert '"tags" must be a list' in str(ei.value)
    assert ei.value.line == reported
    assert len(index) == 100 and ei.value.report.imported == 100


# -- parity ------------------------------------------------------------------------------------
def test_parity_on_clustered_data(tmp_path):
    xb, contents, tags, ts, imp, ids = _data(4000, dim=32, seed=3)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb, contents, tags, ts, imp, ids=ids)
    index = MemoryIndex(32, EXACT)
    rep = migrate_jsonl(src, index, batch_size=1000, seed=5)
    p = rep.parity
    assert p["queries"] == 200 and p["k"] == 10 and p["count_match"] is True
    assert p["top10_overlap"] >= 0.9
    assert not index.is_trained


class _WrongIndex(MemoryIndex):
    """Answers every query with the neighbours of its opposite."""

    def search(self, queries, k=10, **kw):
        return super().search(-np.asarray(queries), k=k, **kw)


def test_parity_detects_a_wrong_index(tmp_path):
    xb, *_ = _data(2000, dim=32, seed=4)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb)
    rep = migrate_jsonl(src, _WrongIndex(32, EXACT), batch_size=500, parity_queries=50)
    assert rep.parity["queries"] == 50 and rep.parity["top10_overlap"] < 0.2


def test_import_into_a_non_empty_index(tmp_path):
    xb, contents, tags, ts, imp, ids = _data(300, seed=2)
    index = _index()
    index.add(xb[:40] * -1.0)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb, contents, tags, ts, imp)
    rep = migrate_jsonl(src, index, batch_size=64, parity_queries=20)
    np.testing.assert_array_equal(rep.id_map, np.arange(40, 340))
    assert rep.parity["count_match"] and len(index) == 340
    assert rep.parity["top10_overlap"] >= 0.9  # the reference ids are mapped to the new ones
    _check_memories(index, rep.id_map, contents, tags, ts, imp)


# -- dry run, batching, id map -----------------------------------------------------------------
def test_dry_run_changes_nothing(tmp_path):
    xb, contents, tags, ts, imp, ids = _data(333)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb, contents, tags, ts, imp, ids=ids)
    index = _index()
    rep = migrate_jsonl(src, index, batch_size=100, dry_run=True, id_map_path=tmp_path / "map.jsonl")
    assert len(index) == 0
    assert (rep.records, rep.imported, rep.dry_run, rep.parity) == (333, 0, True, None)
    assert len(rep.id_map) == 0 and not (tmp_path / "map.jsonl").exists()
    # a dry run still validates every record
    _set_line(src, 301, _lines(src)[300].replace('"importance": ', '"importance": 7'))
    with pytest.raises(ValueError, match="line 301:.*importance"):
        migrate_jsonl(src, index, batch_size=100, dry_run=True)
    assert len(index) == 0


class _CountingIndex(MemoryIndex):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches = []

    def add(self, embeddings, **kw):
        self.batches.append(len(embeddings))
        return super().add(embeddings, **kw)


def test_adds_in_batches_of_batch_size(tmp_path):
    xb, *_ = _data(1000)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb)
    index = _CountingIndex(DIM, EXACT)
    migrate_jsonl(src, index, batch_size=300, parity_queries=0)
    assert index.batches == [300, 300, 300, 100]


def test_id_map_file(tmp_path):
    xb, contents, *_ = _data(10)
    src = tmp_path / "old.jsonl"
    old = ["a", 17, "ü-ñ", 2**40, "x", 5, "quote\"d", 0, "y", 1]
    write_naive_jsonl(src, xb, contents, ids=old)
    _set_line(src, 5, json.dumps({"content": "no id", "embedding": xb[4].tolist()}))
    index = _index()
    index.add(xb[:3])
    rep = migrate_jsonl(src, index, batch_size=4, id_map_path=tmp_path / "map.jsonl")
    pairs = [json.loads(line) for line in _lines(tmp_path / "map.jsonl")]
    want = old[:4] + [None] + old[5:]
    assert pairs == [{"old": o, "new": n} for o, n in zip(want, range(3, 13))]
    assert rep.id_map_path == str(tmp_path / "map.jsonl")
    assert [m.content for m in index.get([p["new"] for p in pairs])] == contents[:4] + ["no id"] + contents[5:]


# -- bad records -------------------------------------------------------------------------------
def _bad(kind: str, rec: dict, line: str) -> str:
    if kind == "truncated":
        return line[: len(line) // 2]
    if kind == "wrong_dim":
        rec["embedding"] = rec["embedding"][:-1]
    elif kind == "nan":
        rec["embedding"][2] = math.nan  # json writes NaN, which json reads back
    elif kind == "inf":
        rec["embedding"][0] = math.inf
    elif kind == "zero":
        rec["embedding"] = [0.0] * DIM
    elif kind == "importance":
        rec["metadata"]["importance"] = 2.0
    elif kind == "tags_str":
        rec["tags"] = "a"
    elif kind == "tag_not_str":
        rec["tags"] = ["a", 3]
    elif kind == "no_embedding":
        del rec["embedding"]
    elif kind == "empty_embedding":
        rec["embedding"] = []
    elif kind == "str_in_embedding":
        rec["embedding"][1] = "0.5"
    elif kind == "timestamp":
        rec["metadata"]["timestamp"] = "last tuesday"
    elif kind == "content":
        rec["content"] = 12
    elif kind == "content_too_big":
        rec["content"] = "x" * 70_000
    elif kind == "float_id":
        rec["id"] = 1.5
    elif kind == "not_object":
        return json.dumps([1, 2])
    return json.dumps(rec)


BAD = {"truncated": "invalid JSON.*truncated", "wrong_dim": f"dimension {DIM - 1}, the index expects {DIM}",
       "nan": "NaN or infinity", "inf": "NaN or infinity", "zero": "all zeros",
       "importance": r"importance.*\[0, 1\], got 2.0", "tags_str": '"tags" must be a list of strings, got a string',
       "tag_not_str": "strings only", "no_embedding": 'missing "embedding"',
       "empty_embedding": '"embedding" is empty', "str_in_embedding": "numbers only, found a string",
       "timestamp": "not an ISO-8601", "content": '"content" must be a string',
       "content_too_big": "70000 bytes of UTF-8, over the index's max_content_bytes", "float_id": '"id" must be',
       "not_object": "expected a JSON object"}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_record_names_file_and_line_and_keeps_earlier_batches(tmp_path, kind):
    n, batch = 250, 100
    xb, contents, tags, ts, imp, ids = _data(n)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb, contents, tags, ts, imp, ids=ids)
    # the truncated line is the file's last (a copy cut mid-write); the others sit in batch 2
    bad_line = n if kind == "truncated" else 180
    lines = _lines(src)
    lines[bad_line - 1] = _bad(kind, json.loads(lines[bad_line - 1]), lines[bad_line - 1])
    text = "\n".join(lines) + ("" if kind == "truncated" else "\n")
    src.write_text(text, encoding="utf-8")
    kept = 200 if kind == "truncated" else 100
    index = _index()
    with pytest.raises(ValueError, match=rf"old\.jsonl, line {bad_line}: .*{BAD[kind]}") as ei:
        migrate_jsonl(src, index, batch_size=batch, id_map_path=tmp_path / "map.jsonl")
    err = ei.value
    assert isinstance(err, MigrationError) and err.line == bad_line and err.path == str(src)
    assert len(index) == kept
    assert index.contains(np.arange(kept + 1)).tolist() == [True] * kept + [False]
    rep = err.report
    assert (rep.imported, rep.records, rep.parity) == (kept, bad_line - 1, None)
    np.testing.assert_array_equal(rep.id_map, np.arange(kept))
    assert len(_lines(tmp_path / "map.jsonl")) == kept
    _check_memories(index, rep.id_map, contents[:kept], tags[:kept], ts[:kept], imp[:kept])


def test_blank_lines_are_skipped_and_line_numbers_stay_real(tmp_path):
    xb, contents, *_ = _data(6)
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, xb, contents)
    lines = _lines(src)
    lines = lines[:2] + ["", "   "] + lines[2:]
    lines[6] = lines[6].replace('"embedding": [', '"embedding": [1.0, ')  # record 5, file line 7
    src.write_text("\n".join(lines) + "\n")
    index = _index()
    with pytest.raises(ValueError, match="line 7: .*dimension") as ei:
        migrate_jsonl(src, index, batch_size=2)
    assert ei.value.report.records == 4 and len(index) == 4


def test_empty_input(tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("\n")
    index = _index()
    rep = migrate_jsonl(src, index)
    assert (rep.records, rep.imported, len(rep.id_map), len(index)) == (0, 0, 0, 0)
    assert rep.parity["count_match"] and rep.parity["top10_overlap"] is None


def test_arguments_are_checked(tmp_path):
    src = tmp_path / "old.jsonl"
    write_naive_jsonl(src, _data(3)[0])
    with pytest.raises(TypeError, match="MemoryIndex"):
        migrate_jsonl(src, object())
    with pytest.raises(ValueError, match="batch_size"):
        migrate_jsonl(src, _index(), batch_size=0)
    with pytest.raises(ValueError, match="parity_queries"):
        migrate_jsonl(src, _index(), parity_queries=-1)


def test_public_names_of_the_ingest_package():
    import lukhas_gpu.ingest as ingest
    from lukhas_gpu.ingest import migrate

    for name in ("migrate_jsonl", "migrate_npz", "write_naive_jsonl", "MigrationError", "MigrationReport"):
        assert getattr(ingest, name) is getattr(migrate, name)
    for name in ingest.__all__:
        assert getattr(ingest, name) is not None
    assert ingest.PROGRESS_FILE == "ingest-progress.json" and ingest.DEFAULT_BATCH_SIZE == 10_000
    with pytest.raises(AttributeError):
        ingest.no_such_name
