"""WriteAheadLog: the record codec, append / replay, torn tails, corruption, reset, crash safety."""
from __future__ import annotations

import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from lukhas_gpu.store import wal, walcodec
from lukhas_gpu.store.layout import CorruptStoreError
from lukhas_gpu.store.wal import (
    HEADER_SIZE,
    MAGIC,
    RECORD_HEADER_SIZE,
    WalReader,
    WriteAheadLog,
    decode_fields,
    encode_fields,
)
from lukhas_gpu.store.walcodec import pack_header


def _roundtrip(fields: dict) -> dict:
    return decode_fields(encode_fields(fields))


def _assert_array_identical(got, want):
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype and got.dtype.str == want.dtype.str  # byte order included
    assert got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()  # bit-exact, NaNs included


def _record(rng, i: int, dim: int = 384) -> dict:
    """About 1.5 KB encoded, like one added memory: a float32 vector, its text, its tags."""
    return {"ids": np.array([i], dtype=np.int64),
            "vectors": rng.standard_normal((1, dim)).astype(np.float32),
            "contents": [f"memory number {i}"],
            "tags": [["t", str(i % 3)]]}


def _assert_records_equal(got, want):
    assert list(got) == list(want)
    for k in want:
        if isinstance(want[k], np.ndarray):
            _assert_array_identical(got[k], want[k])
        else:
            assert got[k] == want[k]


def _write_log(path, records, *, base=0):
    with WriteAheadLog(path, base=base, sync="none") as w:
        for op, fields in records:
            w.append(op, fields)
    return path


def _record_offsets(path) -> list[int]:
    """Byte offset of each record, and of the end, parsed independently of the reader."""
    data = open(path, "rb").read()
    offs, pos = [], HEADER_SIZE
    while pos < len(data):
        offs.append(pos)
        (length,) = struct.unpack_from("<I", data, pos)
        pos += RECORD_HEADER_SIZE + length
    assert pos == len(data)
    return offs + [pos]


# -- public surface -----------------------------------------------------------------------------
def test_public_names():
    assert set(wal.__all__) == {
        "WriteAheadLog", "WalReader", "WalRecord", "WalScan", "WalDamage", "encode_fields", "decode_fields",
        "find_record", "scan_damage", "check_torn_tail", "move_aside", "WalHeaderError", "damaged_tails",
        "keep_damaged_tail", "check_tail", "TAIL_DAMAGED", "TAIL_SALVAGED",
        "MAGIC", "HEADER_SIZE", "RECORD_HEADER_SIZE", "SYNC_MODES",
        "DEFAULT_GROUP_INTERVAL", "DEFAULT_MAX_RECORD_BYTES"}
    for name in wal.__all__:
        assert getattr(wal, name) is not None
    assert (MAGIC, HEADER_SIZE, RECORD_HEADER_SIZE) == (b"LKGWAL02", 28, 9)


# -- codec: arrays --------------------------------------------------------------------------------
_DTYPES = ["?", "i1", "u1", "<i2", "<u2", "<i4", "<u4", "<i8", "<u8", "<f2", "<f4", "<f8",
           "<c8", "<c16", ">i4", ">f4", ">f8", ">c16", ">u8"]


@settings(max_examples=150)
@given(a=st.sampled_from(_DTYPES).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))))
def test_codec_arrays_round_trip(a):
    got = _roundtrip({"a": a})["a"]
    _assert_array_identical(got, a)
    assert got.flags.writeable and got.flags.c_contiguous and got.flags.aligned and got.flags.owndata


def test_codec_array_layouts_and_copies():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8))
    cases = {
        "fortran": np.asfortranarray(base.astype(np.float32)),
        "strided": base[::2, 1::3],
        "transposed": base.T.astype(np.int16),
        "zero_d": np.array(7, dtype=np.uint64),
        "empty": np.empty((0, 384), dtype=np.float32),
        "empty_mid": np.empty((3, 0, 2), dtype=np.int8),
        "bool": rng.random((5, 3)) > 0.5,
        "big_endian_view": base.astype(">f8")[1:4, ::2],
        "extremes": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]),
        "specials": np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 5e-324], dtype=np.float64),
    }
    data = encode_fields(cases)
    got = decode_fields(data)
    for k, a in cases.items():
        _assert_array_identical(got[k], a)
        assert got[k].flags.writeable and got[k].flags.owndata
    got["fortran"][0, 0] = 123.0  # a copy: the decoded array does not alias the input or bytes
    assert cases["fortran"][0, 0] != 123.0 and decode_fields(data)["fortran"][0, 0] != 123.0


# -- codec: contents lists ------------------------------------------------------------------------
@settings(max_examples=150)
@given(items=st.lists(st.one_of(st.text(), st.binary(), st.none()), max_size=30))
def test_codec_contents_round_trip(items):
    got = _roundtrip({"contents": items})["contents"]
    assert got == items
    assert [type(x) for x in got] == [type(x) for x in items]


def test_codec_contents_edge_cases():
    items = ["", b"", None, "\x00nul", b"\x00\xff", "héllo wörld", "日本語", "emoji 🧠🚀",
             "lone \ud800 surrogate", "\udfff", "x" * 70000, b"\x80" * 1000]
    got = _roundtrip({"c": items, "empty": []})
    assert got["c"] == items and [type(x) for x in got["c"]] == [type(x) for x in items]
    assert got["empty"] == []


# -- codec: JSON values ----------------------------------------------------------------------------
_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                          st.floats(allow_nan=False))
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=25)


@settings(max_examples=150)
@given(v=_json_values)
def test_codec_json_round_trip(v):
    got = _roundtrip({"j": v})["j"]
    assert got == v
    assert repr(got) == repr(v)  # also -0.0 vs 0.0, 1 vs 1.0 vs True


def test_codec_json_edge_cases():
    nan_back = _roundtrip({"f": float("nan")})["f"]
    assert nan_back != nan_back
    fields = {"tags": [["a", "b"], []], "more_tags": [[], ["ü", "\ud83d"], ["x"]],
              "inf": [float("inf"), -float("inf"), -0.0, 1e308, 5e-324],
              "big": 2 ** 100, "neg": -(2 ** 70), "flag": True, "none": None, "s": "",
              "nested": {"a": {"b": [1, {"c": None}]}, "": 1}}
    got = _roundtrip(fields)
    assert repr(got) == repr(fields)


def test_codec_mixed_fields_keep_order():
    rng = np.random.default_rng(1)
    fields = {"z": 1, "vectors": rng.standard_normal((4, 8)).astype(np.float32),
              "contents": ["a", None, b"b"], "tags": [["x"], [], ["y", "z"]], "a": {"k": [1, 2]},
              "ü": None, "": 0, "n" * 255: 1}
    got = _roundtrip(fields)
    _assert_records_equal(got, fields)
    assert _roundtrip({}) == {}


@pytest.mark.parametrize("value, hint", [
    (np.array([1, "a"], dtype=object), "dtype object"),
    (np.array(["ab", "c"]), "<U2"),
    (np.array([1], dtype="datetime64[s]"), "datetime64"),
    (np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), "not numeric"),
    (np.ma.array([1, 2], mask=[0, 1]), "masked"),
    ((1, 2), "tuple"),
    ({1, 2}, "set"),
    ({1: "a"}, "dict key 1"),
    ({"ok": [1, (2,)]}, "tuple"),
    (np.float32(1.5), ".item()"),
    ([b"a", 1], "bytes"),
    ([bytearray(b"a")], "bytearray"),
    (b"raw", "bytes are allowed only"),
    (object(), "object"),
])
def test_codec_rejects_unsupported_values_naming_the_field(value, hint):
    with pytest.raises(TypeError, match="field 'the_field'") as exc:
        encode_fields({"ok": 1, "the_field": value})
    assert hint in str(exc.value)


def test_codec_rejects_bad_names_and_containers():
    with pytest.raises(TypeError, match="must be a dict"):
        encode_fields([("a", 1)])
    with pytest.raises(TypeError, match="field names must be str"):
        encode_fields({1: 1})
    with pytest.raises(ValueError, match="256 UTF-8 bytes"):
        encode_fields({"n" * 256: 1})
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="field 'loop'.*contains itself"):
        encode_fields({"loop": [loop]})


def test_decode_rejects_every_truncation_and_trailing_bytes():
    data = encode_fields({"a": np.arange(5, dtype=np.int32), "c": ["x", b"y", None], "j": [["t"]]})
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            decode_fields(data[:cut])
    with pytest.raises(ValueError, match="trailing"):
        decode_fields(data + b"\x00")


# -- append / read ------------------------------------------------------------------------------
def test_append_read_round_trip_across_reopen(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "store.wal"
    recs = [(i % 3, _record(rng, i)) for i in range(20)]
    with WriteAheadLog(path, base=41, sync="none") as w:
        assert (w.base, len(w), w.nbytes) == (41, 0, HEADER_SIZE)
        assert [w.append(op, f) for op, f in recs[:12]] == list(range(12))
        assert w.nbytes == os.path.getsize(path)
    w = WriteAheadLog.open_for_append(path, sync="none")
    assert (w.base, len(w), w.nbytes) == (41, 12, os.path.getsize(path))
    assert [w.append(op, f) for op, f in recs[12:]] == list(range(12, 20))
    assert w.nbytes == os.path.getsize(path)
    w.close()
    assert w.closed
    scan = WriteAheadLog.read(path)
    assert (scan.base, scan.n_records, scan.torn, scan.reason) == (41, 20, False, None)
    assert scan.valid_end == scan.file_size == os.path.getsize(path)
    for seq, (rec, (op, fields)) in enumerate(zip(scan.records, recs)):
        assert (rec.seq, rec.op) == (seq, op)
        _assert_records_equal(rec.fields, fields)
    assert 1300 < (scan.file_size - HEADER_SIZE) / 20 < 1800  # the ~1.5 KB records benchmarked


def test_streaming_reader(tmp_path):
    path = _write_log(tmp_path / "s.wal", [(7, {"i": i}) for i in range(5)], base=3)
    with WalReader(path) as r:
        assert r.base == 3
        first = next(r)
        assert first == (0, 7, {"i": 0})
        with pytest.raises(RuntimeError, match="read to the end"):
            r.valid_end
        rest = list(r)
        assert [x.fields["i"] for x in rest] == [1, 2, 3, 4]
        assert (r.n_records, r.valid_end, r.torn) == (5, os.path.getsize(path), False)
    raw = list(WalReader(path, decode=False))
    assert decode_fields(raw[2].fields) == {"i": 2}


def test_open_missing_for_append_and_base_guard(tmp_path):
    with pytest.raises(FileNotFoundError):
        WriteAheadLog.open_for_append(tmp_path / "nope.wal")
    path = _write_log(tmp_path / "b.wal", [(0, {"i": 1})], base=5)
    with pytest.raises(ValueError, match="follows base 5, expected base 6"):
        WriteAheadLog(path, base=6)
    with WriteAheadLog(path, base=5, sync="none") as w:
        assert len(w) == 1
    with pytest.raises(FileNotFoundError):  # a missing directory is not silently created
        WriteAheadLog(tmp_path / "no_dir" / "x.wal")


def test_empty_log_and_bad_arguments(tmp_path):
    path = tmp_path / "e.wal"
    w = WriteAheadLog(path, sync="none")
    w.close()
    assert open(path, "rb").read() == pack_header(0, w.log_id) and w.log_id > 0
    assert pack_header(0, w.log_id) == MAGIC + struct.pack("<QQI", 0, w.log_id,
                                                            zlib.crc32(MAGIC + struct.pack("<QQ", 0, w.log_id)))
    scan = WriteAheadLog.read(path)
    assert (scan.records, scan.valid_end, scan.torn) == ([], HEADER_SIZE, False)
    with pytest.raises(ValueError, match="'always', 'group', 'none'.*'fast'"):
        WriteAheadLog(path, sync="fast")
    with pytest.raises(ValueError, match="group_interval"):
        WriteAheadLog(path, sync="group", group_interval=0)
    with pytest.raises(ValueError, match="max_record_bytes"):
        WriteAheadLog(path, max_record_bytes=2 ** 32)
    with pytest.raises(ValueError, match="base"):
        WriteAheadLog(tmp_path / "neg.wal", base=-1)


def test_op_validation_writes_nothing(tmp_path):
    with WriteAheadLog(tmp_path / "o.wal", sync="none") as w:
        for bad in (256, -1):
            with pytest.raises(ValueError, match="op must be in 0..255"):
                w.append(bad, {})
        with pytest.raises(TypeError, match="op must be an int"):
            w.append(1.0, {})
        with pytest.raises(TypeError, match="field 'x'"):
            w.append(1, {"x": np.array([None])})
        assert (len(w), w.nbytes) == (0, HEADER_SIZE)
        assert w.append(255, {}) == 0 and w.append(np.uint8(0), {}) == 1
    assert [r.op for r in WriteAheadLog.read(tmp_path / "o.wal").records] == [255, 0]


def test_closed_log_raises(tmp_path):
    w = WriteAheadLog(tmp_path / "c.wal", sync="none")
    w.close()
    w.close()  # idempotent
    for call in (lambda: w.append(0, {}), w.sync, lambda: w.reset(1)):
        with pytest.raises(ValueError, match="closed WAL"):
            call()


# -- torn tails and corruption ----------------------------------------------------------------
def test_torn_tail_at_every_byte_of_the_last_record(tmp_path, caplog):
    rng = np.random.default_rng(3)
    recs = [(1, _record(rng, i, dim=8)) for i in range(3)]
    full = open(_write_log(tmp_path / "full.wal", recs, base=9), "rb").read()
    offs = _record_offsets(tmp_path / "full.wal")
    good_end = offs[2]
    assert len(full) - good_end > 100
    path = tmp_path / "cut.wal"
    new = {"after": np.arange(3, dtype=np.int16), "c": ["new"]}
    for cut in range(good_end, len(full)):
        with open(path, "wb") as f:
            f.write(full[:cut])
        scan = WriteAheadLog.read(path)
        assert [r.fields["ids"][0] for r in scan.records] == [0, 1], cut
        assert (scan.valid_end, scan.file_size, scan.torn) == (good_end, cut, cut > good_end), cut
        assert scan.torn_bytes == cut - good_end
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lukhas_gpu.store"), \
                WriteAheadLog(path, sync="none") as w:
            assert (len(w), w.nbytes, w.base) == (2, good_end, 9)
            assert os.path.getsize(path) == good_end  # the tail is cut on open, before any append
            assert w.append(4, new) == 2
        if cut > good_end:
            assert f"torn tail of {cut - good_end} bytes" in caplog.text
            assert f"at byte {good_end}; kept 2 records" in caplog.text
        else:
            assert "torn" not in caplog.text
        scan = WriteAheadLog.read(path)
        assert not scan.torn and scan.n_records == 3
        _assert_records_equal(scan.records[2].fields, new)
        assert scan.records[2].op == 4


@pytest.mark.parametrize("tail", [b"\x00" * 9, b"\x00" * 4096, "random"])
def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path, tail):
    """A crash can leave the file longer than what was written (zeros, or stale blocks)."""
    path = _write_log(tmp_path / "g.wal", [(1, {"i": i}) for i in range(4)])
    size = os.path.getsize(path)
    if tail == "random":
        tail = np.random.default_rng(4).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    with open(path, "ab") as f:
        f.write(tail)
    scan = WriteAheadLog.read(path)
    assert (scan.n_records, scan.valid_end, scan.torn) == (4, size, True)


def test_flipped_byte_in_a_middle_record_stops_replay_there(tmp_path, caplog):
    rng = np.random.default_rng(5)
    recs = [(2, {"i": i, "v": rng.standard_normal(6).astype(np.float32), "c": [f"m{i}"]})
            for i in range(5)]
    clean = open(_write_log(tmp_path / "m.wal", recs), "rb").read()
    offs = _record_offsets(tmp_path / "m.wal")
    start, stop = offs[2], offs[3]
    path = tmp_path / "flipped.wal"
    reasons = set()
    for pos in range(start, stop):
        data = bytearray(clean)
        data[pos] ^= int(rng.integers(1, 256))
        with open(path, "wb") as f:
            f.write(data)
        scan = WriteAheadLog.read(path)
        assert [r.fields["i"] for r in scan.records] == [0, 1], pos
        assert (scan.valid_end, scan.torn) == (start, True), pos
        reasons.add(scan.reason.split(" (")[0].split(" exceeds")[0])
        # valid records follow the bad one: corruption, not a torn tail -- the writer refuses,
        # naming the offset and the sequence number, and cuts nothing
        with pytest.raises(CorruptStoreError, match=rf"2 at bytes {start}\.\.{stop} .*2 valid records follow"):
            WriteAheadLog(path, sync="none")
        assert path.read_bytes() == bytes(data)
        with WalReader(path, resync=True) as r:  # salvage reads past it
            assert [rec.fields["i"] for rec in r] == [0, 1, 3, 4], pos
        assert [(d.offset, d.end, d.seq) for d in r.damage] == [(start, stop, 2)]
    assert "CRC mismatch" in reasons and len(reasons) >= 2  # length-field flips stop differently
    # with nothing valid after it, the same record cut short (its length runs past the end of the
    # file: an interrupted append) is a torn tail: cut, with a warning
    path.write_bytes(bytes(data[:stop - 1]))
    with caplog.at_level(logging.WARNING, logger="lukhas_gpu.store"):
        with WriteAheadLog(path, sync="none") as w:
            assert (len(w), w.nbytes, w.damaged_tail) == (2, start, None)
            w.append(0, {"i": 99})
    assert f"torn tail of {stop - 1 - start} bytes" in caplog.text
    assert [r.fields["i"] for r in WriteAheadLog.read(path).records] == [0, 1, 99]
    assert not wal.damaged_tails(path)


def test_a_damaged_last_record_is_kept_aside_not_cut_as_a_torn_tail(tmp_path, caplog):
    """A last record that lies within the file and fails its CRC is an acknowledged record
    altered: readers name it; a writer keeps its bytes in a named file beside the log, then cuts."""
    recs = [(2, {"i": i, "c": [f"m{i}"]}) for i in range(4)]
    path = _write_log(tmp_path / "d.wal", recs)
    offs = _record_offsets(path)
    data = bytearray(path.read_bytes())
    data[(offs[3] + offs[4]) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with WalReader(path) as r:
        assert [rec.fields["i"] for rec in r] == [0, 1, 2]
    assert r.torn and r.crc_failed
    with pytest.raises(CorruptStoreError, match=rf"record 3 at byte {offs[3]} lies within the file and fails its CRC"):
        wal.check_tail(r)
    assert path.read_bytes() == bytes(data)  # readers change nothing
    with caplog.at_level(logging.ERROR, logger="lukhas_gpu.store"), WriteAheadLog(path, sync="none") as w:
        assert len(w) == 3 and w.damaged_tail is not None
    assert wal.damaged_tails(path) == [w.damaged_tail] and w.damaged_tail in caplog.text
    assert open(w.damaged_tail, "rb").read() == bytes(data[offs[3]:])  # the bytes kept, exactly
    assert os.path.getsize(path) == offs[3] and not WriteAheadLog.read(path).torn
    # an all-zero tail (a file extended without its data) stays a torn tail
    with open(path, "ab") as f:
        f.write(b"\0" * 64)
    with WalReader(path) as r:
        assert len(list(r)) == 3
    assert r.torn and not r.crc_failed


def test_a_damaged_header_is_named_and_a_first_format_log_still_reads(tmp_path):
    path = _write_log(tmp_path / "h.wal", [(1, {"i": i}) for i in range(3)], base=5)
    for pos in range(8, HEADER_SIZE):  # the base or the header's CRC
        data = bytearray(path.read_bytes())
        data[pos] ^= 0x01
        bad = tmp_path / "bad.wal"
        bad.write_bytes(bytes(data))
        for open_it in (WalReader, WriteAheadLog.read, lambda p: WriteAheadLog(p, sync="none")):
            with pytest.raises(CorruptStoreError, match="damaged header") as e:
                open_it(bad)
            assert isinstance(e.value, ValueError) and str(bad) in str(e.value)
    old = tmp_path / "v1.wal"  # the first format: no header CRC
    body = path.read_bytes()[HEADER_SIZE:]
    old.write_bytes(walcodec.MAGIC_V1 + struct.pack("<Q", 5) + body)
    with WriteAheadLog(old, sync="none") as w:
        assert (w.base, len(w)) == (5, 3)
        w.append(1, {"i": 3})
    scan = WriteAheadLog.read(old)
    assert (scan.base, [r.fields["i"] for r in scan.records], scan.torn) == (5, [0, 1, 2, 3], False)


def test_oversized_length_field_is_corruption_not_an_allocation(tmp_path):
    path = _write_log(tmp_path / "big.wal", [(0, {"i": 0}), (0, {"blob": np.zeros(5000, np.uint8)}),
                                             (0, {"i": 2})])
    offs = _record_offsets(path)
    scan = WriteAheadLog.read(path, max_record_bytes=1000)
    assert (scan.n_records, scan.valid_end, scan.torn) == (1, offs[1], True)
    assert "exceeds max_record_bytes=1000" in scan.reason
    # a length field claiming ~4 GiB in a small file: stops, allocates nothing
    data = bytearray(open(path, "rb").read())
    data[offs[1]:offs[1] + 4] = struct.pack("<I", 2 ** 32 - 1)
    open(path, "wb").write(data)
    scan = WriteAheadLog.read(path, max_record_bytes=2 ** 32 - 1)
    assert (scan.n_records, scan.torn) == (1, True) and "incomplete record" in scan.reason
    # and the writer refuses to write what a reader would reject
    with WriteAheadLog(tmp_path / "small.wal", sync="none", max_record_bytes=1000) as w:
        with pytest.raises(ValueError, match="exceeds max_record_bytes=1000"):
            w.append(0, {"blob": np.zeros(2000, np.uint8)})
        assert w.nbytes == HEADER_SIZE


def test_crc_valid_but_undecodable_record_raises(tmp_path):
    path = _write_log(tmp_path / "u.wal", [(0, {"i": 0})])
    payload = b"\x01\x00\x00\x00garbage"
    with open(path, "ab") as f:
        f.write(struct.pack("<IIB", len(payload), zlib.crc32(payload, zlib.crc32(b"\x05")), 5) + payload)
    with pytest.raises(ValueError, match=r"record 1 at byte \d+ passed its CRC but cannot be decoded"):
        WriteAheadLog.read(path)


@pytest.mark.parametrize("content, message", [
    (b"", "truncated header"),
    (MAGIC[:5], "truncated header"),
    (MAGIC, "truncated header"),
    (MAGIC + b"\x00" * 7, "truncated header"),
    (b"LKGWAL09" + b"\x00" * 16, "not a lukhas_gpu WAL"),
    (MAGIC + b"\x00" * 20, "damaged header"),
    (b"\x93NUMPY" + b"\x00" * 30, "not a lukhas_gpu WAL"),
    (b"LK", "truncated header"),
    (b"XK", "not a lukhas_gpu WAL"),
])
def test_bad_header_raises_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad_header.wal"
    path.write_bytes(content)
    for open_it in (WriteAheadLog.read, WalReader, lambda p: WriteAheadLog(p, sync="none")):
        with pytest.raises(ValueError, match=message) as exc:
            open_it(path)
        assert str(path) in str(exc.value)
    assert path.read_bytes() == content  # never "repaired" into something else


# -- reset ---------------------------------------------------------------------------------------
def test_reset_starts_an_empty_log_with_the_new_base(tmp_path):
    path = tmp_path / "r.wal"
    with WriteAheadLog(path, base=1, sync="always") as w:
        for i in range(5):
            w.append(1, {"i": i})
        inode = os.stat(path).st_ino
        w.reset(2)
        assert (w.base, len(w), w.nbytes, w.unsynced) == (2, 0, HEADER_SIZE, 0)
        assert os.stat(path).st_ino != inode  # replaced, not truncated in place
        scan = WriteAheadLog.read(path)
        assert (scan.base, scan.records, scan.valid_end, scan.torn) == (2, [], HEADER_SIZE, False)
        assert w.append(3, {"after": True}) == 0
        with pytest.raises(ValueError, match="base"):
            w.reset(2 ** 64)
    scan = WriteAheadLog.read(path)
    assert scan.base == 2 and [(r.seq, r.op, r.fields) for r in scan.records] == [(0, 3, {"after": True})]
    assert sorted(os.listdir(tmp_path)) == ["r.wal"]  # no temporaries left behind


def test_stale_temporaries_are_removed_on_open(tmp_path):
    path = _write_log(tmp_path / "t.wal", [(0, {})])
    stale = tmp_path / "t.wal.1234-deadbeef.wal-tmp"
    stale.write_bytes(MAGIC)
    other = tmp_path / "other.wal.1-2.wal-tmp"  # belongs to another log
    other.write_bytes(MAGIC)
    WriteAheadLog(path, sync="none").close()
    assert sorted(os.listdir(tmp_path)) == ["other.wal.1-2.wal-tmp", "t.wal"]


# -- sync modes, failures, concurrency --------------------------------------------------------
@pytest.fixture
def count_flushes(monkeypatch):
    calls = []
    real = wal._datasync

    def counting(fd):
        calls.append(time.monotonic())
        real(fd)

    monkeypatch.setattr(wal, "_datasync", counting)
    return calls


def test_sync_always_flushes_every_append_and_none_never(tmp_path, count_flushes):
    with WriteAheadLog(tmp_path / "a.wal", sync="always") as w:
        for i in range(5):
            w.append(0, {"i": i})
            assert w.unsynced == 0
        assert len(count_flushes) == 5
    count_flushes.clear()
    with WriteAheadLog(tmp_path / "n.wal", sync="none") as w:
        for i in range(5):
            w.append(0, {"i": i})
        assert w.unsynced == 5 and count_flushes == []
    assert count_flushes == []  # close() does not flush in "none" mode either
    with WriteAheadLog(tmp_path / "n.wal", sync="none") as w:
        w.sync()  # an explicit sync() always flushes
        assert len(count_flushes) == 1 and w.unsynced == 0


def test_sync_group_batches_flushes_and_bounds_the_window(tmp_path, count_flushes):
    interval = 0.05
    with WriteAheadLog(tmp_path / "g.wal", sync="group", group_interval=interval) as w:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 0.25:
            w.append(0, {"i": n})
            n += 1
        elapsed = time.monotonic() - t0
        assert n > 20
        assert len(count_flushes) <= elapsed / interval + 2  # at most one flush per interval
        deadline = time.monotonic() + 2.0
        while w.unsynced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.unsynced == 0  # the background flusher caught up without a sync() call
        gaps = np.diff(count_flushes)
        assert len(count_flushes) >= 2 and (gaps >= interval * 0.9).all()
        w.append(0, {"i": n})
        w.sync()
        assert w.unsynced == 0
    assert WriteAheadLog.read(tmp_path / "g.wal").n_records == n + 1


def test_group_log_dropped_without_close_is_collected(tmp_path):
    import gc
    import weakref

    w = WriteAheadLog(tmp_path / "d.wal", sync="group", group_interval=0.01)
    w.append(0, {})
    ref = weakref.ref(w)
    thread = w._flusher
    del w
    gc.collect()
    assert ref() is None
    thread.join(timeout=3)
    assert not thread.is_alive()
    with WriteAheadLog(tmp_path / "d.wal", sync="none") as w2:  # its lock was released
        assert len(w2) == 1


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "l.wal"
    with WriteAheadLog(path, sync="none") as w:
        w.append(0, {"i": 0})
        with pytest.raises(RuntimeError, match="already open for writing"):
            WriteAheadLog(path, sync="none")
        assert WriteAheadLog.read(path).n_records == 1  # readers are welcome
    with WriteAheadLog(path, sync="none") as w:
        assert len(w) == 1


def test_failed_write_is_rolled_back(tmp_path, monkeypatch):
    path = tmp_path / "f.wal"
    w = WriteAheadLog(path, sync="none")
    w.append(0, {"i": 0})
    real_write = os.write
    fail = {"on": True}

    def half_then_enospc(fd, data):
        if fd == w._fd and fail["on"]:
            fail["on"] = False
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_enospc)
    size = w.nbytes
    with pytest.raises(OSError, match="No space"):
        w.append(0, {"i": 1, "pad": "x" * 500})
    assert os.path.getsize(path) == size == w.nbytes and len(w) == 1
    assert w.append(0, {"i": 2}) == 1  # still usable: the partial record is gone
    w.close()
    scan = WriteAheadLog.read(path)
    assert [r.fields["i"] for r in scan.records] == [0, 2] and not scan.torn


def test_failed_flush_makes_the_log_unusable(tmp_path, monkeypatch):
    def eio(fd):
        raise OSError(5, "Input/output error")

    w = WriteAheadLog(tmp_path / "x.wal", sync="always")
    monkeypatch.setattr(wal, "_datasync", eio)
    with pytest.raises(OSError, match="Input/output"):
        w.append(0, {})
    with pytest.raises(RuntimeError, match="unusable after an earlier I/O error"):
        w.append(0, {})
    w.close()  # still closes (and releases the lock)
    monkeypatch.undo()
    WriteAheadLog(tmp_path / "x.wal", sync="none").close()


def test_concurrent_appends_get_distinct_seqs(tmp_path):
    path = tmp_path / "t.wal"
    seqs: list = []
    with WriteAheadLog(path, sync="always") as w:
        def work(t):
            for i in range(25):
                seqs.append((w.append(t, {"t": t, "i": i}), t, i))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert w.unsynced == 0
    records = WriteAheadLog.read(path).records
    assert sorted(s for s, _, _ in seqs) == list(range(100))
    for seq, t, i in seqs:
        assert records[seq].fields == {"t": t, "i": i} and records[seq].op == t


# -- crash safety ----------------------------------------------------------------------------
_CHILD = r"""
import os, sys
import numpy as np
from lukhas_gpu.store import wal  # the store layer alone: no torch / faiss import, a fast start
assert "torch" not in sys.modules and "faiss" not in sys.modules
w = wal.WriteAheadLog(sys.argv[2], sync="always")
os.write(1, b"ready %d\n" % len(w))
while True:
    i = len(w)
    seq = w.append(1, {"i": i, "v": np.full(64, i, dtype=np.float32), "c": ["m%d" % i]})
    os.write(1, b"%d\n" % seq)  # only once append has returned
"""


def test_sigkill_loses_no_acknowledged_record(tmp_path):
    rng = np.random.default_rng(6)
    path = str(tmp_path / "crash.wal")
    acked_all: set = set()
    for trial in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, wal.__file__, path],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            ready = proc.stdout.readline()
            assert ready.startswith(b"ready"), proc.stderr.read().decode()
            before = int(ready.split()[1])
            assert before >= len(acked_all)  # reopened the previous trial's log
            time.sleep(float(rng.uniform(0.002, 0.04)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        acked = {int(line) for line in out.split(b"\n")[:-1]}  # complete lines only
        acked_all |= acked
        scan = WriteAheadLog.read(path)
        got = [r.fields["i"] for r in scan.records]
        assert got == list(range(len(got)))  # records are in order, each the one expected
        assert acked_all <= set(got), f"trial {trial}: lost {sorted(acked_all - set(got))[:5]}"
        # this child added at most the one record whose append completed but was not yet reported
        # (under load a child may be killed before acknowledging anything: count from its start)
        assert len(got) - (max(acked) + 1 if acked else before) in (0, 1)
        for r in scan.records[-3:]:
            np.testing.assert_array_equal(r.fields["v"], np.full(64, r.fields["i"], np.float32))
    assert len(acked_all) > 5  # the children really got to append


def test_resync_reads_past_every_damaged_place_and_a_large_torn_tail_is_quick(tmp_path):
    recs = [(1, {"i": i, "v": np.full(40, i, np.float32)}) for i in range(12)]
    path = _write_log(tmp_path / "two.wal", recs)
    offs = _record_offsets(path)
    data = bytearray(path.read_bytes())
    data[offs[3] + 20] ^= 1
    data[offs[8] + 1] ^= 0x80  # a length field
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="2 damaged places") as e:
        WriteAheadLog(path, sync="none")
    assert [(d.offset, d.seq) for d in e.value.damage] == [(offs[3], 3), (offs[8], 7)]
    with WalReader(path, resync=True) as r:
        assert [rec.fields["i"] for rec in r] == [i for i in range(12) if i not in (3, 8)]
    # a crash in the middle of a 40 MB append: the scan over its torn tail finds nothing, fast
    big = tmp_path / "big.wal"
    with WriteAheadLog(big, sync="none") as w:
        w.append(1, {"x": np.random.default_rng(0).standard_normal((10_000, 1000)).astype(np.float32)})
    os.truncate(big, os.path.getsize(big) - 1)
    t = time.perf_counter()
    with WriteAheadLog(big, sync="none") as w:
        assert len(w) == 0
    assert time.perf_counter() - t < 5


def test_a_log_of_the_first_format_is_read_and_appended_to(tmp_path):
    """Logs written before the log id (b"LKGWAL01", a 16-byte header) replay as before; their id
    is None. New logs carry a random id, a new one at each reset."""
    from lukhas_gpu.store.walcodec import HEADER_V1, MAGIC_V1

    path = _write_log(tmp_path / "v2.wal", [(1, {"i": i}) for i in range(3)], base=4)
    v2 = path.read_bytes()
    old = tmp_path / "v1.wal"
    old.write_bytes(HEADER_V1.pack(MAGIC_V1, 4) + v2[HEADER_SIZE:])
    with WalReader(old) as r:
        assert (r.base, r.log_id, r.header_size) == (4, None, HEADER_V1.size)
        assert [rec.fields["i"] for rec in r] == [0, 1, 2]
    with WriteAheadLog(old, sync="none") as w:
        assert (w.base, w.log_id, len(w)) == (4, None, 3)
        w.append(1, {"i": 3})
        w.reset(5)
        assert w.log_id and w.base == 5
    with WriteAheadLog(path, sync="none") as w:
        first = w.log_id
        w.reset(5)
        assert w.log_id not in (None, first)
    with WalReader(path) as r:
        assert (r.base, r.log_id, r.header_size) == (5, w.log_id, HEADER_SIZE)
