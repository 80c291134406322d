"""ContentArena: per-record zstd content storage with trained dictionaries."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lukhas_gpu.records import codec, contents as payload
from lukhas_gpu.records.contents import ContentArena, ValidatedContents

WORDS = ("the a memory user said about project meeting tomorrow coffee likes prefers remembers "
         "deadline python code review friday morning team dinner travel book music garden weather "
         "birthday sister brother doctor appointment gym runs walks reads writes cat dog blue green "
         "alice bob carol dave monday tuesday office kitchen email phone call plan idea note").split()
OTHER = ("sensor_id temperature_celsius humidity_pct battery_mv firmware rssi_dbm uptime_s "
         "error_code gateway packet_loss latitude longitude altitude_m").split()

contents = st.one_of(st.text(), st.binary(), st.none())


def sentences(n: int, seed: int = 0, words=WORDS) -> list[str]:
    """English-like sentences of ~70 bytes from a small seeded vocabulary."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, int(rng.integers(9, 15)))).capitalize() + "."
            for _ in range(n)]


def telemetry(n: int, seed: int = 1) -> list[bytes]:
    """Records of a different shape entirely (JSON-ish bytes), to shift the distribution."""
    rng = np.random.default_rng(seed)
    return [("{" + ", ".join(f'"{k}": {int(rng.integers(0, 10_000))}'
                             for k in rng.choice(OTHER, 5, replace=False)) + "}").encode()
            for _ in range(n)]


def same(got: list, want: list) -> bool:
    """Equal values *and* kinds (str stays str, bytes stay bytes)."""
    return len(got) == len(want) and all(type(g) is type(w) and g == w for g, w in zip(got, want))


def headers(arena: ContentArena) -> np.ndarray:
    """Each row's header byte, parsed independently of the implementation (LEB128 + header)."""
    arrays = arena.to_arrays()
    buf, out = arrays["buffer"], []
    for s in arrays["starts"].tolist():
        while buf[s] & 0x80:
            s += 1
        out.append(buf[s + 1])
    return np.array(out, dtype=np.uint8)


def raw_size(item) -> int:
    return 0 if item is None else len(item.encode("utf-8") if isinstance(item, str) else item)


def check_accounting(arena: ContentArena, expected: list) -> None:
    assert arena.raw_bytes == sum(raw_size(x) for x in expected)
    nb = arena.nbytes()
    assert nb["records"] == arena.stored_bytes + arena.garbage_bytes
    assert nb["starts"] == 8 * len(arena)


@pytest.fixture(scope="module")
def trained_arrays():
    """A snapshot of an arena that has a dictionary, restored per test (cheaper than training)."""
    arena = ContentArena(train_after=64)
    arena.append(sentences(300, seed=7))
    assert arena.generation >= 1
    return arena.to_arrays()


# -- round trips ---------------------------------------------------------------------------------
@settings(max_examples=60)
@given(st.lists(st.lists(contents, max_size=20), max_size=4))
def test_round_trip_any_contents(batches):
    arena = ContentArena()
    expected = []
    for batch in batches:
        assert arena.append(batch) == (len(expected), len(expected) + len(batch))
        expected += batch
    assert len(arena) == len(expected)
    assert same(arena.get(np.arange(len(expected))), expected)
    check_accounting(arena, expected)


@settings(max_examples=40)
@given(st.lists(contents, min_size=1, max_size=30))
def test_round_trip_with_dictionary(trained_arrays, batch):
    arena = ContentArena.from_arrays(trained_arrays)
    before = arena.get(np.arange(len(arena)))
    start, stop = arena.append(batch)
    assert same(arena.get(np.arange(start, stop)), batch)
    assert same(arena.get(np.arange(start)), before)


def test_kinds_and_unicode_round_trip():
    items = ["", b"", None, "héllo wörld", "日本語のテキスト", "emoji 🧠💾🚀", b"\x00\xff\x80", "x" * 300,
             bytes(range(256)) * 3, "\u200b", "a\x00b"]
    arena = ContentArena()
    arena.append(items)
    assert same(arena.get(np.arange(len(items))), items)
    assert [type(x) for x in arena.get([0, 1, 2])] == [str, bytes, type(None)]


def test_record_layout_is_pinned():
    arena = ContentArena()
    arena.append([None, "hi", b"hi", ""])
    buf = arena.to_arrays()["buffer"]
    # None = 00 00; raw str "hi" = len 2, header 0x01; raw bytes = header 0x41; "" = 00 01.
    assert buf.tobytes() == b"\x00\x00" + b"\x02\x01hi" + b"\x02\x41hi" + b"\x00\x01"
    np.testing.assert_array_equal(arena.to_arrays()["starts"], [0, 2, 6, 10])


def test_multi_byte_varints():
    rng = np.random.default_rng(3)
    big = rng.bytes(65536)           # incompressible: stored raw, 3-byte varint
    mid = rng.bytes(300)             # 2-byte varint
    text = "z" * 65536               # compresses to a frame, still the full size back
    arena = ContentArena()
    arena.append([big, None, mid, text, "end"])
    assert same(arena.get([3, 0, 2, 4, 1]), [text, big, mid, "end", None])
    assert arena.stored_bytes == arena.nbytes()["records"] < 65536 + 300 + 65536


def test_get_any_order_and_repeats():
    items = sentences(500, seed=1) + [None, b"bin", ""]
    arena = ContentArena(train_after=64)
    arena.append(items[:100])
    arena.append(items[100:])
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(items), 2000)
    assert len(np.unique(rows)) < len(rows)  # repeats are exercised
    assert same(arena.get(rows), [items[i] for i in rows])
    assert same(arena.get(rows[::-1].astype(np.uint32)), [items[i] for i in rows[::-1]])
    assert arena.get([]) == [] and arena.get(np.array([], dtype=np.int64)) == []
    assert same(arena.get(7), [items[7]])  # a scalar is a batch of one


# -- dictionaries --------------------------------------------------------------------------------
def test_dictionary_is_trained_and_pays():
    texts = sentences(3000, seed=2)
    arena = ContentArena()
    arena.append(texts)
    assert arena.generation >= 1
    hdr = headers(arena)
    # The records written before the first training were re-compressed with the dictionary.
    assert (hdr[:50] & 0x80).all() and ((hdr[:50] & 0x3F) >= 1).all()
    ratio = arena.stored_bytes / arena.raw_bytes
    assert ratio < 0.8, ratio
    assert arena.garbage_bytes == 0 and arena.nbytes()["records"] == arena.stored_bytes
    assert 1024 <= arena.nbytes()["dictionaries"] <= 16384 * arena.generation
    assert same(arena.get(np.arange(len(texts))), texts)

    no_dict = ContentArena(train_after=10**9)  # 64 KiB still triggers: check the first 800 only
    no_dict.append(texts[:800])
    assert no_dict.generation == 0
    assert no_dict.stored_bytes / no_dict.raw_bytes > 0.95  # what the dictionary buys


def test_first_training_waits_for_64_samples_and_then_triggers():
    arena = ContentArena(train_after=100)
    arena.append(sentences(99, seed=4) + [None, ""] * 20)  # None / "" are not samples
    assert arena.generation == 0
    arena.append(sentences(1, seed=5))
    assert arena.generation == 1
    # bytes trigger: 64 KiB in fewer than train_after contents, but never fewer than 64 contents
    big = ContentArena()
    big.append(["word " * 400] * 63)  # ~126 KiB, only 63 samples
    assert big.generation == 0
    big.append(["word " * 400])
    assert big.generation == 1


def test_retraining_after_distribution_shift_keeps_old_records_readable():
    english = sentences(300, seed=8)
    other = telemetry(1700)
    arena = ContentArena(train_after=64)
    arena.append(english)
    gen_english = arena.generation
    for i in range(0, len(other), 250):
        arena.append(other[i:i + 250])
    assert arena.generation > gen_english >= 1
    hdr = headers(arena)
    gens = hdr & 0x3F
    assert gens[: len(english)].max() <= gen_english < gens[len(english):].max()
    expected = english + other
    assert same(arena.get(np.arange(len(expected))), expected)
    assert arena.nbytes()["dictionaries"] == sum(
        int(np.diff(arena.to_arrays()["dictionary_offsets"])[g]) for g in range(arena.generation))
    assert arena.stored_bytes / arena.raw_bytes < 0.8


def test_retrain_schedule_doubles_and_respects_gain(monkeypatch):
    texts = sentences(1100, seed=9)
    # Always adopt: one new generation per doubling of the content count (64, 128, 256, 512, 1024).
    monkeypatch.setattr(codec, "_RETRAIN_GAIN", -1.0)
    arena = ContentArena(train_after=64)
    for i in range(0, 1024, 100):
        arena.append(texts[i:min(i + 100, 1024)])
    assert arena.generation == 5
    assert same(arena.get(np.arange(1024)), texts[:1024])
    # Never adopt: the first dictionary stays.
    monkeypatch.setattr(codec, "_RETRAIN_GAIN", 1.0)
    arena = ContentArena(train_after=64)
    arena.append(texts)
    assert arena.generation == 1
    # Attempts stop after the limit.
    monkeypatch.setattr(codec, "_RETRAIN_GAIN", -1.0)
    monkeypatch.setattr(codec, "_RETRAIN_UNTIL", 256)
    arena = ContentArena(train_after=64)
    arena.append(texts)
    assert arena.generation == 3  # 64, 128, 256


def test_recent_samples_are_bounded_and_recent():
    notes = [f"note {i}" for i in range(2047)] + [None, ""]  # one batch, below any training
    arena = ContentArena()
    arena.append(notes)
    assert arena.generation == 0
    arrays = arena.to_arrays()
    offsets = arrays["samples_offsets"]
    assert len(offsets) - 1 == 2000  # a ring of the most recent contents, not all of them
    assert arrays["samples"][offsets[-2]:].tobytes() == b"note 2046"
    assert arrays["samples"][:offsets[1]].tobytes() == b"note 47"
    big = ContentArena()
    big.append([b"y" * 65536] * 80)  # 5 MiB of samples offered, 4 MiB kept
    assert 0 < big.nbytes()["samples"] <= 4 << 20


# -- replace / compact ---------------------------------------------------------------------------
def test_replace_then_get():
    items = sentences(400, seed=10) + [None, b"raw", ""]
    arena = ContentArena(train_after=64)
    arena.append(items)
    used = arena.nbytes()["records"]
    rows = [0, 5, 400, 401, 402, 5, 399]
    new = [None, "first", "was none", None, b"was empty", "last wins", "日本 🧠"]
    arena.replace(rows, new)
    expected = list(items)
    for r, x in zip(rows, new):
        expected[r] = x
    assert expected[5] == "last wins"
    assert same(arena.get(np.arange(len(items))), expected)
    assert len(arena) == len(items)
    assert arena.garbage_bytes > 0 and arena.nbytes()["records"] > used
    check_accounting(arena, expected)
    arena.replace(np.array([], dtype=np.int64), [])
    assert same(arena.get(np.arange(len(items))), expected)


def test_compact_reclaims_garbage_and_keeps_contents():
    items = sentences(300, seed=11) + [b"\x01\x02", None]
    arena = ContentArena(train_after=64)
    arena.append(items)
    assert arena.compact() == 0  # nothing to reclaim yet
    rows = np.arange(0, 300, 3)
    new = [s.upper() for s in np.array(items, dtype=object)[rows]]
    arena.replace(rows, new)
    expected = list(items)
    for r, x in zip(rows, new):
        expected[r] = x
    garbage = arena.garbage_bytes
    assert garbage > 0
    assert arena.compact() == garbage
    assert arena.garbage_bytes == 0 and arena.nbytes()["records"] == arena.stored_bytes
    assert same(arena.get(np.arange(len(items))), expected)
    starts = arena.to_arrays()["starts"]
    assert (np.diff(starts.astype(np.int64)) > 0).all()  # records in row order
    check_accounting(arena, expected)

    live = np.arange(0, len(items), 2)
    before = arena.nbytes()["records"]
    reclaimed = arena.compact(live)
    assert reclaimed > 0 and arena.nbytes()["records"] == before - reclaimed
    expected = [x if i % 2 == 0 else None for i, x in enumerate(expected)]
    assert same(arena.get(np.arange(len(items))), expected)
    check_accounting(arena, expected)
    arena.append(["after compact"])
    assert arena.get([len(items)]) == ["after compact"]


# -- persistence ---------------------------------------------------------------------------------
def test_to_from_arrays_round_trip_is_exact(monkeypatch):
    monkeypatch.setattr(codec, "_RETRAIN_GAIN", -1.0)  # make sure several generations exist
    items = sentences(300, seed=12) + [None, "", b"", "🧠"]
    arena = ContentArena(train_after=64, level=5)
    arena.append(items)
    assert arena.generation >= 3
    arena.replace([1, 2, 300], [b"new bytes", None, "new text"])
    arrays = arena.to_arrays()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    assert arrays["buffer"].dtype == np.uint8 and arrays["starts"].dtype == np.uint64
    assert arrays["raw_bytes"].shape == ()

    f = io.BytesIO()
    np.savez(f, **arrays)
    f.seek(0)
    with np.load(f, allow_pickle=False) as loaded:
        back = ContentArena.from_arrays(dict(loaded))
    assert back.level == 5 and len(back) == len(arena) and back.generation == arena.generation
    for key, value in back.to_arrays().items():
        np.testing.assert_array_equal(value, arrays[key], err_msg=key)
        assert value.dtype == arrays[key].dtype, key
    rows = np.arange(len(arena))
    assert same(back.get(rows), arena.get(rows))
    assert back.nbytes() == arena.nbytes()
    # Same state, same future: appending the same batch (which retrains) gives identical arrays.
    more = sentences(400, seed=13)
    arena.append(more)
    back.append(more)
    for key, value in back.to_arrays().items():
        np.testing.assert_array_equal(value, arena.to_arrays()[key], err_msg=key)


def test_from_arrays_rejects_bad_input():
    arrays = ContentArena().to_arrays()
    with pytest.raises(ValueError, match="lack"):
        ContentArena.from_arrays({k: v for k, v in arrays.items() if k != "starts"})
    with pytest.raises(ValueError, match="format_version"):
        ContentArena.from_arrays({**arrays, "format_version": np.array(99)})
    with pytest.raises(ValueError, match="past the"):
        ContentArena.from_arrays({**arrays, "starts": np.array([5], dtype=np.uint64)})
    empty = ContentArena.from_arrays(arrays)
    assert len(empty) == 0 and empty.get([]) == []


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, error, pattern", [
    (7, TypeError, r"contents\[2\].*int"),
    ("\ud800", ValueError, r"contents\[2\].*UTF-8"),
    ("x" * 101, ValueError, r"contents\[2\] is 101 bytes.*limit of 100"),
    (b"x" * 101, ValueError, r"contents\[2\] is 101 bytes.*limit of 100"),
    (bytearray(b"x"), TypeError, r"contents\[2\].*bytearray"),
])
def test_bad_items_rejected_without_change(bad, error, pattern):
    arena = ContentArena(max_content_bytes=100)
    arena.append(["keep", b"me", None])
    state = {k: v.copy() for k, v in arena.to_arrays().items()}
    batch = ["ok", "x" * 100, bad, "never stored"]
    with pytest.raises(error, match=pattern):
        arena.validate(batch)
    with pytest.raises(error, match=pattern):
        arena.append(batch)
    with pytest.raises(error, match=pattern):
        arena.replace([0, 1, 2, 0], batch)
    assert len(arena) == 3
    assert same(arena.get([0, 1, 2]), ["keep", b"me", None])
    for key, value in arena.to_arrays().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


def test_validate_normalises_and_append_accepts_it():
    arena = ContentArena()
    v = arena.validate(["é", b"b", None, ""])
    assert isinstance(v, ValidatedContents)
    assert v.payloads == ["é".encode(), b"b", None, b""]
    np.testing.assert_array_equal(v.kinds, [payload.KIND_STR, payload.KIND_BYTES, payload.KIND_NONE,
                                            payload.KIND_STR])
    assert len(arena) == 0
    arena.append(v)
    assert same(arena.get([0, 1, 2, 3]), ["é", b"b", None, ""])
    with pytest.raises(TypeError, match="single str"):
        arena.validate("not a list")


def test_rows_out_of_range_raise_index_error():
    arena = ContentArena()
    arena.append(["a", "b", "c"])
    with pytest.raises(IndexError, match=r"\[3\]"):
        arena.get([0, 3])
    with pytest.raises(IndexError, match=r"\[-1\]"):
        arena.get([-1])
    with pytest.raises(IndexError, match=r"\[10\]"):
        arena.replace([10], ["x"])
    with pytest.raises(IndexError, match=r"\[4\]"):
        arena.compact([0, 4])
    with pytest.raises(TypeError, match="integers"):
        arena.get([0.5])
    with pytest.raises(TypeError, match="integers"):
        arena.get(np.array([True, False, True]))
    with pytest.raises(ValueError, match="2 rows but 1"):
        arena.replace([0, 1], ["x"])
    with pytest.raises(IndexError):
        ContentArena().get([0])
    assert same(arena.get([2, 1, 0]), ["c", "b", "a"])


def test_constructor_validates_settings():
    with pytest.raises(ValueError, match="level"):
        ContentArena(level=23)
    with pytest.raises(ValueError, match="train_after"):
        ContentArena(train_after=10)
    with pytest.raises(ValueError, match="dict_size"):
        ContentArena(dict_size=100)
    with pytest.raises(TypeError, match="max_content_bytes"):
        ContentArena(max_content_bytes=1.5)


def test_record_crcs_follow_every_change_and_match_a_recomputation():
    """The per-record CRC-32 kept through appends (before and after the first dictionary),
    replaces, compaction and a round trip equals one computed from the bytes, and a flipped bit
    in any record is an error naming the arena's source, never altered text."""
    from lukhas_gpu.records.crcs import record_crcs
    from lukhas_gpu.util.errors import CorruptStoreError

    rng = np.random.default_rng(12)
    arena = ContentArena(train_after=64)
    want = []
    for step in range(30):
        batch = [f"note {step}-{i} " + "word " * int(rng.integers(0, 30)) if rng.random() > 0.1 else None
                 for i in range(int(rng.integers(1, 40)))]
        arena.append(batch)
        want += batch
        if step % 3 == 2 and len(want) > 5:
            rows = rng.choice(len(want), 5, replace=False)
            new = [f"edited {step} {r}" for r in rows.tolist()]
            arena.replace(rows, new)
            for r, c in zip(rows.tolist(), new):
                want[r] = c
        if step == 20:
            live = np.flatnonzero(rng.random(len(want)) > 0.2)
            arena.compact(live)
            want = [c if i in set(live.tolist()) else None for i, c in enumerate(want)]
    assert arena.generation >= 1  # a dictionary was trained (every record re-compressed)
    arrays = arena.to_arrays()
    assert np.array_equal(arrays["crcs"], record_crcs(arrays["buffer"], arrays["starts"].tolist()))
    back = ContentArena.from_arrays({k: (v.copy() if k == "buffer" else v) for k, v in arrays.items()})
    assert back.get(np.arange(len(want))) == want
    buf = back._buf.view()
    row = max(i for i, c in enumerate(want) if c is not None)  # a live record (garbage is never read)
    buf[int(arrays["starts"][row]) + 2] ^= 0x08
    back.source = "somewhere/content.bin"
    with pytest.raises(CorruptStoreError, match=rf"somewhere/content\.bin: the content record of row {row} fails"):
        back.get(np.arange(len(want)))
