"""records/: the validation rules an ingest pipeline can run on a batch, the metadata columns'
round trip, and the layering of records/ and vectors/ (they import only util/ and config)."""
from __future__ import annotations

import ast
import datetime as dt
import pathlib

import numpy as np
import pytest

import lukhas_gpu
from lukhas_gpu.records import metadata, tags, validate
from lukhas_gpu.records.contents import ContentArena
from lukhas_gpu.records.metadata import MetadataColumns
from lukhas_gpu.records.tags import TagIndex
from lukhas_gpu.records.validate import validate_contents, validate_importance, validate_tags, validate_timestamps

PACKAGE = pathlib.Path(lukhas_gpu.__file__).parent


# -- tags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch, n", [
    (None, 3),
    ([["a", "b", "a"], None, ("c",), []], 4),
    ([["é", "e\u0301"]], 1),  # no normalisation: two tags
    ([["x" * validate.MAX_TAG_BYTES]], 1),
    ([[f"t{i}" for i in range(validate.MAX_TAGS_PER_MEMORY)] * 2], 1),  # duplicates do not count
])
def test_validate_tags_agrees_with_the_index(batch, n):
    assert validate_tags(batch, n) == TagIndex().validate(batch, n)


@pytest.mark.parametrize("batch, n, error, match", [
    ("work", 1, TypeError, "bare str"),
    (3, 1, TypeError, "sequence"),
    ([["a"]], 2, ValueError, "n=2"),
    ([["a"], "b"], 2, TypeError, r"tags\[1\] is a bare str"),
    ([{"a"}], 1, TypeError, "list or tuple"),
    ([["a", 3]], 1, TypeError, r"tags\[0\] item 1 must be str"),
    ([["ok"], [""]], 2, ValueError, "empty tag"),
    ([["a\x00b"]], 1, ValueError, "NUL"),
    ([["\ud800"]], 1, ValueError, "UTF-8"),
    ([["x" * (validate.MAX_TAG_BYTES + 1)]], 1, ValueError, "limit is 256"),
    ([[f"t{i}" for i in range(validate.MAX_TAGS_PER_MEMORY + 1)]], 1, ValueError, "256 distinct tags"),
    (None, -1, ValueError, "n must be >= 0"),
    (None, 1.5, TypeError, "n must be an integer"),
])
def test_validate_tags_errors_match_the_index(batch, n, error, match):
    with pytest.raises(error, match=match) as a:
        validate_tags(batch, n)
    with pytest.raises(error, match=match) as b:
        TagIndex().validate(batch, n)
    assert str(a.value) == str(b.value)


def test_validate_tags_returns_plain_str():
    class Tag(str):
        pass

    out = validate_tags([[Tag("a")]], 1)
    assert out == [("a",)] and type(out[0][0]) is str


# -- timestamps and importance --------------------------------------------------------------------
def test_validate_timestamps():
    got = validate_timestamps([1.5, np.datetime64("1970-01-01T00:00:02"), dt.datetime(1970, 1, 1, 0, 0, 3)], 3)
    np.testing.assert_array_equal(got, [1.5, 2.0, 3.0])
    assert validate_timestamps(np.array(["1970-01-02"], dtype="datetime64[D]"), 1).tolist() == [86400.0]
    assert validate_timestamps(None, 2).shape == (2,)
    for bad, error, match in [([1.0], ValueError, "expected 2"), ([np.nan, 1.0], ValueError, "finite"),
                              (np.array([True, False]), TypeError, "dtype bool"),
                              (np.array(["NaT", "2020-01-01"], dtype="datetime64[s]"), ValueError, "NaT"),
                              ([1.0, "x"], TypeError, "epoch seconds")]:
        with pytest.raises(error, match=match):
            validate_timestamps(bad, 2)
    assert validate.to_epoch_seconds(dt.datetime(1970, 1, 1, 1, tzinfo=dt.timezone.utc)) == 3600.0


def test_validate_importance():
    np.testing.assert_array_equal(validate_importance(None, 2), [validate.DEFAULT_IMPORTANCE] * 2)
    np.testing.assert_array_equal(validate_importance(0.25, 3), [0.25] * 3)
    np.testing.assert_array_equal(validate_importance([0, 1], 2), [0.0, 1.0])
    for bad, error, match in [([0.5], ValueError, "expected 2"), ([0.5, 1.5], ValueError, r"importance\[1\]"),
                              ([np.nan, 0.5], ValueError, r"importance\[0\]"),
                              (np.array([True, True]), TypeError, "floats")]:
        with pytest.raises(error, match=match):
            validate_importance(bad, 2)


def test_metadata_validate_is_the_rules():
    ts, imp = MetadataColumns.validate(2, [1.0, 2.0], 0.5)
    np.testing.assert_array_equal(ts, validate_timestamps([1.0, 2.0], 2))
    np.testing.assert_array_equal(imp, validate_importance(0.5, 2))


# -- contents ------------------------------------------------------------------------------------
def test_validate_contents_agrees_with_the_arena():
    items = ["text", b"\x00bytes", None, ""]
    v = validate_contents(items)
    a = ContentArena().validate(items)
    assert v.payloads == a.payloads == [b"text", b"\x00bytes", None, b""]
    np.testing.assert_array_equal(v.kinds, a.kinds)
    assert validate_contents(v) is v
    with pytest.raises(ValueError, match=r"contents\[1\] is 5 bytes encoded, above the limit of 4"):
        validate_contents(["abcd", "abcde"], max_content_bytes=4)
    with pytest.raises(TypeError, match="single str"):
        validate_contents("abc")
    with pytest.raises(TypeError, match=r"contents\[0\] must be str, bytes or None"):
        validate_contents([3])


# -- one owner per rule ---------------------------------------------------------------------------
def test_old_names_are_the_rules():
    assert tags.MAX_TAG_BYTES is validate.MAX_TAG_BYTES and tags.MAX_TAGS_PER_MEMORY is validate.MAX_TAGS_PER_MEMORY
    assert metadata.DEFAULT_IMPORTANCE is validate.DEFAULT_IMPORTANCE
    assert metadata.IMPORTANCE_SCALE is validate.IMPORTANCE_SCALE
    assert metadata.to_epoch_seconds is validate.to_epoch_seconds
    assert not hasattr(metadata, "FLAG_DELETED") and not hasattr(MetadataColumns, "mark_deleted")


# -- metadata round trip -------------------------------------------------------------------------
def test_metadata_to_arrays_from_arrays_round_trip():
    m = MetadataColumns()
    rng = np.random.default_rng(0)
    for n in (3, 2000):
        m.append(*MetadataColumns.validate(n, 1.7e9 + rng.random(n), rng.random(n)))
    arrays = m.to_arrays()
    back = MetadataColumns.from_arrays(arrays)
    assert len(back) == len(m) == 2003 and back.nbytes() == m.nbytes() == 11 * 2003
    for k, v in back.to_arrays().items():
        np.testing.assert_array_equal(v, arrays[k])
        assert v.dtype == arrays[k].dtype
    np.testing.assert_array_equal(back.importance(), m.importance())
    assert back.memory_usage()["anon"] == m.memory_usage()["anon"] == {"metadata": 11 * 2003}


# -- layering ------------------------------------------------------------------------------------
ALLOWED = {"records": {"records", "util", "config"}, "vectors": {"vectors", "util", "config"}}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_down(package):
    """records/ and vectors/ import only their own package, util/ and config (lazily or not)."""
    for path in sorted((PACKAGE / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = (node.module or "").split(".")
                top = package if node.level == 1 else parts[0]
                assert top in ALLOWED[package], f"{path.name} imports {'.' * node.level}{node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for name in names:
                    if name and name.startswith("lukhas_gpu"):
                        top = name.split(".")[1] if "." in name else ""
                        assert top in ALLOWED[package], f"{path.name} imports {name}"


@pytest.mark.parametrize("n", [5, 4096, 70_000])
def test_growable_column_over_a_file_grows_into_a_private_overlay(tmp_path, n):
    """A column wrapping a whole file's memory map (a store's content records) keeps the file's
    rows mapped when it grows: only the appended rows are anonymous; the file is never written."""
    from lukhas_gpu.records.columns import GrowableArray

    rng = np.random.default_rng(n)
    rows = rng.integers(0, 256, n, dtype=np.uint8)
    f = tmp_path / "c.bin"
    rows.tofile(f)
    before = f.read_bytes()
    col = GrowableArray.wrap(np.memmap(f, dtype=np.uint8, mode="r", shape=(n,)))
    assert col.mapped_bytes() == n and col.is_mapped
    more = rng.integers(0, 256, 3 * n + 10, dtype=np.uint8)
    col.append(more[:7])
    col.append(more[7:])  # grows again: the file mapped once more, the appended rows copied
    np.testing.assert_array_equal(col.view(), np.concatenate([rows, more]))
    assert col.mapped_bytes() == n and not col.is_mapped and f.read_bytes() == before
    col[0] = rows[0] ^ 1  # a row of the file written: every row this process's own from now on
    col.append(more[:5])
    assert col.mapped_bytes() == 0 and col[0] == rows[0] ^ 1 and f.read_bytes() == before
    np.testing.assert_array_equal(col.view()[1:n], rows[1:])
