"""TagIndex: interned tags, CSR tag lists and per-tag roaring bitmaps, checked against plain Python."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pyroaring import BitMap

from lukhas_gpu.records import taglists
from lukhas_gpu.records.tags import TagIndex

TAG_TEXT = st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)
TAG_LISTS = st.lists(st.lists(TAG_TEXT, max_size=5), max_size=30)


# -- plain-Python reference ----------------------------------------------------------------------
def dedupe(tags) -> list[str]:
    return list(dict.fromkeys(tags or []))


def vocab(ti: TagIndex) -> list[str]:
    """The vocabulary in tag-id order, read through the public arrays."""
    a = ti.to_arrays()
    raw, off = a["names_utf8"].tobytes(), a["names_offsets"].tolist()
    return [raw[lo:hi].decode("utf-8") for lo, hi in zip(off[:-1], off[1:])]


def rows_with(model: list[list[str]], tag: str) -> list[int]:
    return [r for r, lst in enumerate(model) if tag in lst]


def assert_matches(ti: TagIndex, model: list[list[str]], extra_tags=()) -> None:
    """Everything observable about ``ti`` agrees with the list-of-lists ``model``."""
    assert len(ti) == len(model)
    assert ti.get(np.arange(len(model))) == model
    names = vocab(ti)
    assert ti.vocab_size == len(names) == len(set(names))
    assert set(t for lst in model for t in lst) <= set(names)
    for tag in [*names, *extra_tags]:
        expected = rows_with(model, tag)
        assert list(ti.bitmap(tag)) == expected, tag
        assert ti.cardinality(tag) == len(expected)
    live = sum(len(lst) for lst in model)
    nb = ti.nbytes()
    assert nb["flat"] == 4 * live
    assert ti.entries == live + ti.garbage == live + nb["garbage"]  # garbage is exact


def snapshot(ti: TagIndex):
    """Everything a rejected call must leave alone (raw flat length included)."""
    names = vocab(ti)
    return (len(ti), ti.vocab_size, ti.garbage, ti.entries, ti.nbytes(),
            {k: (v.dtype.str, v.tolist()) for k, v in ti.to_arrays().items()},
            ti.get(np.arange(len(ti))), {t: list(ti.bitmap(t)) for t in names})


def small_index() -> tuple[TagIndex, list[list[str]]]:
    model = [["a", "b"], [], ["b", "c"], ["a"]]
    ti = TagIndex()
    ti.append(model, len(model))
    return ti, model


# -- round trips ---------------------------------------------------------------------------------
@settings(max_examples=60)
@given(lists=TAG_LISTS, split=st.integers(0, 30))
def test_append_get_round_trip(lists, split):
    ti = TagIndex()
    split = min(split, len(lists))
    expected = [dedupe(lst) for lst in lists]
    assert ti.validate(lists, len(lists)) == [tuple(lst) for lst in expected]
    assert ti.append(lists[:split], split) == (0, split)
    assert ti.append(lists[split:], len(lists) - split) == (split, len(lists))
    assert_matches(ti, expected)


def test_dedupe_within_a_memory_keeps_first_seen_order():
    ti = TagIndex()
    ti.append([["b", "a", "b", "c", "a"], ("x", "x")], 2)
    assert ti.get([0, 1]) == [["b", "a", "c"], ["x"]]
    assert ti.nbytes()["flat"] == 4 * 4
    assert ti.validate([["q", "q", "p"]], 1) == [("q", "p")]
    # 300 entries but only 255 distinct: the limit is on what is stored, so this is accepted.
    many = [f"t{i}" for i in range(255)]
    ti.append([many + many[:45]], 1)
    assert ti.get([2]) == [many]


def test_none_means_untagged_and_empty_batches_are_fine():
    ti = TagIndex()
    assert ti.validate(None, 3) == [(), (), ()]
    assert ti.append(None, 3) == (0, 3)
    assert ti.append([None, ["a"]], 2) == (3, 5)
    assert ti.append([], 0) == (5, 5)
    assert ti.append(None, 0) == (5, 5)
    assert_matches(ti, [[], [], [], [], ["a"]])


def test_new_tag_seen_twice_in_one_batch_gets_one_id_on_both_lookup_paths():
    # Batch smaller than the vocabulary (lookups hit the live dict) and larger (private copy).
    for n_before in (50, 0):
        ti = TagIndex()
        before = [[f"v{i}"] for i in range(n_before)]
        ti.append(before, n_before)
        ti.append([["z", "y"], ["y"], ["z"]], 3)
        assert ti.vocab_size == n_before + 2
        assert list(ti.bitmap("z")) == [n_before, n_before + 2]
        assert list(ti.bitmap("y")) == [n_before, n_before + 1]


def test_str_subclass_is_stored_as_plain_str():
    class Tag(str):
        pass

    ti = TagIndex()
    ti.append([[Tag("a")], [Tag("a"), "b"]], 2)
    got = ti.get([0, 1])
    assert got == [["a"], ["a", "b"]]
    assert all(type(t) is str for lst in got for t in lst)
    assert type(ti.validate([[Tag("new")]], 1)[0][0]) is str
    assert ti.vocab_size == 2


def test_multibyte_tags_count_bytes_not_characters():
    ti = TagIndex()
    ok = ["é" * 128, "🙂" * 64, "x" * 256]  # exactly 256 UTF-8 bytes each
    ti.append([ok], 1)
    assert ti.get([0]) == [ok]
    with pytest.raises(ValueError, match="257 UTF-8 bytes"):
        ti.append([["é" * 128 + "x"]], 1)
    assert len(ti) == 1


# -- bitmaps against brute force under updates ---------------------------------------------------
def test_seeded_random_operations_match_model():
    rng = random.Random(1234)
    alphabet = ["red", "green", "blue", "ünï", "k" * 40, "x y", "7"]
    ti, model = TagIndex(), []

    def random_list():
        pool = alphabet + [f"fresh{rng.randrange(1000)}"]
        return [rng.choice(pool) for _ in range(rng.choice([0, 1, 2, 2, 3, 6]))]

    for step in range(120):
        op = rng.random()
        if op < 0.35 or not model:
            m = rng.randrange(0, 40)
            lists = [None if rng.random() < 0.1 else random_list() for _ in range(m)]
            assert ti.append(lists, m) == (len(model), len(model) + m)
            model += [dedupe(lst) for lst in lists]
        elif op < 0.65:
            rows = rng.sample(range(len(model)), rng.randrange(0, min(len(model), 15) + 1))
            lists = [random_list() for _ in rows]
            ti.replace(np.array(rows, dtype=np.int64), lists)
            for r, lst in zip(rows, lists):
                model[r] = dedupe(lst)
        elif op < 0.85:
            rows = [rng.randrange(len(model)) for _ in range(rng.randrange(0, 10))]  # repeats ok
            ti.delete(rows)
            for r in rows:
                model[r] = []
        elif op < 0.93:
            ti.compact()
            assert ti.garbage == 0
        else:
            ti = TagIndex.from_arrays(ti.to_arrays())
        if step % 10 == 0 or step == 119:
            assert_matches(ti, model, extra_tags=["never-seen"])
    assert ti.garbage > 0 or len(model) == 0  # the sequence did exercise garbage


class TagMachine(RuleBasedStateMachine):
    """Hypothesis-driven append/replace/delete/compact/reload against a list-of-lists model."""

    LISTS = st.lists(st.lists(st.sampled_from(["a", "b", "c", "ß", "d e"]) | TAG_TEXT, max_size=4),
                     max_size=6)

    @initialize()
    def start(self):
        self.ti, self.model = TagIndex(), []

    @rule(lists=LISTS)
    def append(self, lists):
        start, stop = self.ti.append(lists, len(lists))
        assert (start, stop) == (len(self.model), len(self.model) + len(lists))
        self.model += [dedupe(lst) for lst in lists]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def replace(self, data):
        rows = data.draw(st.lists(st.integers(0, len(self.model) - 1), unique=True, max_size=4))
        lists = data.draw(st.lists(st.lists(st.sampled_from(["a", "b", "z"]) | TAG_TEXT, max_size=4)
                                   | st.none(), min_size=len(rows), max_size=len(rows)))
        self.ti.replace(rows, lists)
        for r, lst in zip(rows, lists):
            self.model[r] = dedupe(lst)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data):
        rows = data.draw(st.lists(st.integers(0, len(self.model) - 1), max_size=4))
        self.ti.delete(rows)
        for r in rows:
            self.model[r] = []

    @rule()
    def compact(self):
        self.ti.compact()
        assert self.ti.garbage == 0

    @rule()
    def reload(self):
        self.ti = TagIndex.from_arrays(self.ti.to_arrays())

    @rule(query=st.lists(st.sampled_from(["a", "b", "c", "z", "unknown"]), max_size=3))
    def queries(self, query):
        check_queries(self.ti, self.model, query)

    @invariant()
    def matches_model(self):
        if hasattr(self, "ti"):
            assert_matches(self.ti, self.model, extra_tags=["unknown"])


TagMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=15)
test_tag_machine = TagMachine.TestCase


def check_queries(ti: TagIndex, model, query) -> None:
    both = ti.all_of(query)
    either = ti.any_of(query)
    if not query:
        assert both is None  # no constraint
    else:
        assert isinstance(both, BitMap)
        assert list(both) == [r for r, lst in enumerate(model) if all(t in lst for t in query)]
    assert isinstance(either, BitMap)
    assert list(either) == [r for r, lst in enumerate(model) if any(t in lst for t in query)]


def test_all_of_any_of_match_brute_force():
    rng = np.random.default_rng(7)
    names = [f"t{i}" for i in range(12)]
    p = 1.0 / np.arange(1, 13)
    lists = [list(rng.choice(names, size=rng.integers(0, 5), p=p / p.sum())) for _ in range(500)]
    ti = TagIndex()
    ti.append(lists, len(lists))
    model = [dedupe(lst) for lst in lists]
    pool = names + ["nope"]
    for _ in range(60):
        query = list(rng.choice(pool, size=rng.integers(0, 4)))
        check_queries(ti, model, query)
    check_queries(ti, model, ["t0", "t0"])
    check_queries(ti, model, ("t0", "t1"))
    assert len(ti.all_of(["t0"])) > 0 and len(ti.any_of(["t0", "t1"])) > len(ti.all_of(["t0"]))


def test_unknown_tag_gives_empty_results_and_bitmaps_are_copies():
    ti, model = small_index()
    assert ti.bitmap("nope") == BitMap() and ti.cardinality("nope") == 0
    assert ti.all_of(["a", "nope"]) == BitMap()
    assert ti.any_of(["nope"]) == BitMap() and ti.any_of([]) == BitMap()
    assert list(ti.any_of(["a", "nope"])) == [0, 3]
    # Results belong to the caller: mutating them must not reach the index.
    for got in (ti.bitmap("a"), ti.all_of(["a"]), ti.any_of(["a"]), ti.all_of(["a", "b"])):
        got.add(99)
        got.discard(0)
    assert_matches(ti, model)
    with pytest.raises(TypeError, match="bare str"):
        ti.all_of("ab")
    with pytest.raises(TypeError, match="int"):
        ti.any_of([1])
    with pytest.raises(TypeError, match="int"):
        ti.bitmap(1)


# -- rejected input leaves everything unchanged --------------------------------------------------
BAD_TAGS = [
    ("bare str", TypeError, ["tags[1]", "bare str"], "abc"),
    ("int item", TypeError, ["tags[1]", "int"], ["ok", 5]),
    ("unhashable item", TypeError, ["tags[1]", "list"], ["ok", ["nested"]]),
    ("bytes item", TypeError, ["tags[1]", "bytes"], [b"raw"]),
    ("dict memory", TypeError, ["tags[1]", "dict"], {"a": 1}),
    ("empty tag", ValueError, ["tags[1]", "empty"], ["ok", ""]),
    ("300-byte tag", ValueError, ["tags[1]", "300 UTF-8 bytes"], ["x" * 300]),
    ("NUL", ValueError, ["tags[1]", "NUL", "a\\x00b"], ["a\x00b"]),
    ("surrogate", ValueError, ["tags[1]", "UTF-8"], ["bad\ud800"]),
    ("256 tags", ValueError, ["tags[1]", "256 distinct tags", "255"], [f"t{i}" for i in range(256)]),
]


@pytest.mark.parametrize("label,exc,words,bad", BAD_TAGS, ids=[b[0] for b in BAD_TAGS])
def test_bad_tags_raise_naming_the_memory_and_change_nothing(label, exc, words, bad):
    ti, model = small_index()
    before = snapshot(ti)
    # Memory 0 brings a brand-new valid tag: a half-applied batch would leave it in the vocabulary.
    batch = [["brand-new"], bad, ["a"]]
    for call in (lambda: ti.validate(batch, 3), lambda: ti.append(batch, 3)):
        with pytest.raises(exc) as info:
            call()
        for word in words:
            assert word in str(info.value), (word, str(info.value))
        assert snapshot(ti) == before
    with pytest.raises(exc) as info:
        ti.replace([3, 0, 2], batch)
    assert "tags[1] (row 0)" in str(info.value)
    assert snapshot(ti) == before
    assert_matches(ti, model)


@pytest.mark.parametrize("tags,n,exc,words", [
    ([["a"], ["b"]], 3, ValueError, ["2 entries", "n=3"]),
    ([["a"]] * 4, 3, ValueError, ["4 entries", "n=3"]),
    ("abc", 3, TypeError, ["bare str"]),
    (5, 1, TypeError, ["int"]),
    ([["a"]], 1.0, TypeError, ["n must be an integer"]),
    ([], -1, ValueError, ["n must be >= 0"]),
])
def test_bad_batch_shape_raises_and_changes_nothing(tags, n, exc, words):
    ti, model = small_index()
    before = snapshot(ti)
    with pytest.raises(exc) as info:
        ti.append(tags, n)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert snapshot(ti) == before


def test_limits_are_inclusive():
    ti = TagIndex()
    ti.append([[f"t{i}" for i in range(255)], ["x" * 256]], 2)
    assert ti.cardinality("t254") == 1 and ti.cardinality("x" * 256) == 1
    with pytest.raises(ValueError, match="257 UTF-8 bytes"):
        ti.append([["x" * 257]], 1)


@pytest.mark.parametrize("call,exc,words", [
    (lambda ti: ti.get([0, 4, -1]), IndexError, ["[4, -1]", "4 rows"]),
    (lambda ti: ti.replace([1, 7], [["a"], ["b"]]), IndexError, ["[7]"]),
    (lambda ti: ti.delete([9]), IndexError, ["[9]"]),
    (lambda ti: ti.replace([1, 1], [["a"], ["b"]]), ValueError, ["more than once", "[1]"]),
    (lambda ti: ti.replace([1, 2], [["a"]]), ValueError, ["1 entries", "n=2"]),
    (lambda ti: ti.delete(np.array([True, False])), TypeError, ["bool"]),
    (lambda ti: ti.get([0.0]), TypeError, ["float64"]),
    (lambda ti: ti.get([[0, 1]]), ValueError, ["1-D", "(1, 2)"]),
])
def test_bad_rows_raise_and_change_nothing(call, exc, words):
    ti, model = small_index()
    before = snapshot(ti)
    with pytest.raises(exc) as info:
        call(ti)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert snapshot(ti) == before


def test_row_arguments_accept_scalars_numpy_and_empty():
    ti, model = small_index()
    assert ti.get(2) == [model[2]]
    assert ti.get(np.uint8(3)) == [model[3]]
    assert ti.get([]) == [] and ti.get(np.array([], dtype=np.int64)) == []
    ti.replace(np.array([], dtype=np.int64), [])
    ti.delete([])
    assert_matches(ti, model)
    ti.replace(np.uint32(1), [["b"]])
    ti.delete(np.array([0, 0], dtype=np.uint16))
    assert_matches(ti, [[], ["b"], ["b", "c"], ["a"]])


# -- replace / delete / compact ------------------------------------------------------------------
def test_replace_and_delete_update_lists_bitmaps_and_garbage():
    ti, model = small_index()  # 5 live entries
    ti.replace([2, 1], [["c", "d"], None])
    assert_matches(ti, [["a", "b"], [], ["c", "d"], ["a"]])
    assert ti.garbage == 2 and ti.vocab_size == 4
    ti.delete([0, 0, 1])
    assert_matches(ti, [[], [], ["c", "d"], ["a"]])
    assert ti.garbage == 4
    assert ti.cardinality("b") == 0 and ti.vocab_size == 4  # tag ids are never reused
    ti.delete([0])  # already empty: nothing more becomes garbage
    assert ti.garbage == 4


def test_compact_keeps_contents_and_drops_garbage():
    rng = random.Random(5)
    ti = TagIndex()
    lists = [[rng.choice("abcdefg") for _ in range(rng.randrange(4))] for _ in range(200)]
    ti.append(lists, 200)
    model = [dedupe(lst) for lst in lists]
    for r in rng.sample(range(200), 60):
        new = [rng.choice("abcxyz") for _ in range(rng.randrange(4))]
        ti.replace([r], [new])
        model[r] = dedupe(new)
    ti.delete(list(range(0, 200, 7)))
    for r in range(0, 200, 7):
        model[r] = []
    arrays_before = ti.to_arrays()
    assert ti.garbage > 0
    ti.compact()
    live = sum(map(len, model))
    assert ti.garbage == 0 and ti.nbytes()["garbage"] == 0 and ti.entries == live
    # Canonical layout: rows laid out back to back in row order.
    counts = np.array([len(lst) for lst in model])
    np.testing.assert_array_equal(ti.csr()["start"], np.cumsum(counts) - counts)
    assert_matches(ti, model, extra_tags=["g", "nope"])
    after = ti.to_arrays()
    assert all(np.array_equal(arrays_before[k], after[k]) for k in after)
    ti.compact()  # idempotent
    assert_matches(ti, model)
    ti.replace([1], [["late"]])  # still updatable after compaction
    model[1] = ["late"]
    assert_matches(ti, model)


def test_flat_offset_limit_compacts_then_refuses(monkeypatch):
    ti, model = small_index()  # 5 live entries
    ti.replace([0], [["c"]])  # flat holds 6: 4 live + 2 garbage
    assert (ti.entries, ti.garbage) == (6, 2)
    monkeypatch.setattr(taglists, "_MAX_FLAT_ENTRIES", 7)
    ti.replace([2], [["a", "b"]])  # 6 + 2 > 7: compacts to 4 live first, then appends 2
    model[0], model[2] = ["c"], ["a", "b"]
    assert (ti.entries, ti.garbage) == (6, 2)
    assert_matches(ti, model)
    before = snapshot(ti)
    with pytest.raises(OverflowError, match="uint32"):
        ti.append([["q", "r", "s", "t"]], 1)  # compacts to 4; 4 + 4 > 7 even so
    assert snapshot(ti)[5:] == before[5:]  # contents kept (compaction only dropped garbage)
    assert ti.garbage == 0 and len(ti) == 4 and "q" not in vocab(ti)
    ti.append([["q", "r", "s"]], 1)  # 4 + 3 fits exactly
    assert_matches(ti, model + [["q", "r", "s"]])


def test_row_limit(monkeypatch):
    ti, model = small_index()
    monkeypatch.setattr(taglists, "MAX_ROWS", 6)
    ti.append(None, 2)
    with pytest.raises(OverflowError, match="6-row limit"):
        ti.append([["new"]], 1)
    assert len(ti) == 6 and "new" not in vocab(ti)


# -- accounting and persistence ------------------------------------------------------------------
def test_nbytes_parts():
    ti, model = small_index()
    ti.replace([0], [["é"]])
    nb = ti.nbytes()
    names = vocab(ti)
    assert nb == {
        "flat": 4 * 4, "start": 4 * 4, "count": 4, "garbage": 2,
        "bitmaps": sum(len(ti.bitmap(t).serialize()) for t in names),
        "vocab": sum(len(t.encode()) for t in names),
    }
    # The fast size estimate agrees with serialisation on multi-container bitmaps too; compact()
    # run-optimises them ("all" covers every row: three 8 KiB bitsets become one run).
    big = TagIndex()
    big.append([["all"] if r % 2 else ["odd", "all"] for r in range(150_000)], 150_000)
    loose = big.nbytes()["bitmaps"]
    # the same lists built directly on the storage half: its bitmaps, not copies (a copy is tighter)
    lists = taglists.TagLists()
    lists.add_tags(2)  # "odd" is id 0, "all" id 1
    counts = np.where(np.arange(150_000) % 2, 1, 2).astype(np.uint8)
    lists.append(counts, np.concatenate([[0, 1] if r % 2 == 0 else [1] for r in range(150_000)]).astype(np.uint32))
    assert loose == lists.nbytes()["bitmaps"] == sum(len(lists.bitmap(t).serialize()) for t in range(2)) > 40_000
    reloaded = TagIndex.from_arrays(big.to_arrays()).nbytes()["bitmaps"]  # optimised on load
    big.compact()
    tight = big.nbytes()["bitmaps"]
    assert tight == sum(len(big.bitmap(t).serialize()) for t in ["odd", "all"]) < loose - 20_000
    assert reloaded == tight
    assert list(big.bitmap("all")) == list(range(150_000))


def test_to_arrays_from_arrays_exact_round_trip(tmp_path):
    rng = random.Random(9)
    ti = TagIndex()
    lists = [[rng.choice(["α", "b", "c d", "e" * 30]) for _ in range(rng.randrange(4))]
             for _ in range(300)]
    ti.append(lists, 300)
    model = [dedupe(lst) for lst in lists]
    for r in rng.sample(range(300), 50):
        model[r] = dedupe([rng.choice(["b", "new", "ζ"]) for _ in range(rng.randrange(3))])
        ti.replace([r], [model[r]])
    ti.delete([5, 6, 7])
    model[5] = model[6] = model[7] = []
    ti.replace([8], [["only-here"]])
    ti.delete([8])  # a tag with an empty bitmap survives the trip
    model[8] = []
    assert ti.garbage > 0
    before = snapshot(ti)[5:]

    arrays = ti.to_arrays()
    assert {k: v.dtype for k, v in arrays.items()} == {
        "names_utf8": np.uint8, "names_offsets": np.int64, "flat": np.uint32,
        "start": np.uint32, "count": np.uint8}
    assert snapshot(ti)[5:] == before and ti.garbage > 0  # to_arrays does not compact self
    np.savez(tmp_path / "tags.npz", **arrays)
    with np.load(tmp_path / "tags.npz", allow_pickle=False) as loaded:
        back = TagIndex.from_arrays(loaded)
    assert vocab(back) == vocab(ti)  # same tag ids
    assert back.vocab_size == ti.vocab_size and "only-here" in vocab(back)
    assert_matches(back, model, extra_tags=["nope"])
    again = back.to_arrays()
    for key in arrays:
        assert again[key].dtype == arrays[key].dtype
        np.testing.assert_array_equal(again[key], arrays[key])
    assert snapshot(back)[5:] == before
    # The reloaded index keeps working.
    back.append([["b", "fresh"]], 1)
    model.append(["b", "fresh"])
    assert_matches(back, model)


def test_from_arrays_accepts_a_layout_with_garbage():
    arrays = {
        "names_utf8": np.frombuffer(b"xyz", dtype=np.uint8),
        "names_offsets": np.array([0, 1, 2, 3], dtype=np.int64),
        "flat": np.array([2, 0, 1, 2, 0], dtype=np.uint32),  # entry 0 is dead
        "start": np.array([3, 1, 0], dtype=np.uint32),
        "count": np.array([2, 2, 0], dtype=np.uint8),
        "unrelated": np.zeros(3),
    }
    ti = TagIndex.from_arrays(arrays)
    assert ti.garbage == 1
    assert_matches(ti, [["z", "x"], ["x", "y"], []])


def _good_arrays():
    ti, _ = small_index()
    return ti.to_arrays()


@pytest.mark.parametrize("mutate,words", [
    (lambda a: a.pop("flat"), ["missing", "flat"]),
    (lambda a: a.update(flat=a["flat"].astype(np.int64)), ["flat", "uint32", "int64"]),
    (lambda a: a.update(flat=np.array([0, 0, 1, 2, 0], dtype=np.uint32)), ["more than once"]),
    (lambda a: a.update(flat=np.array([0, 1, 1, 9, 0], dtype=np.uint32)), ["tag id 9", "3 tag names"]),
    (lambda a: a.update(count=a["count"][:3]), ["start has 4", "count has 3"]),
    (lambda a: a.update(start=a["start"] + 3), ["passes the end of flat"]),
    (lambda a: a.update(names_offsets=np.array([0, 2, 1, 3], dtype=np.int64)), ["names_offsets"]),
    (lambda a: a.update(names_offsets=np.array([0, 1, 2], dtype=np.int64)), ["names_offsets", "3"]),
    (lambda a: a.update(names_offsets=np.array([0, 1, 3, 3], dtype=np.int64)), ["tag name 2", "empty"]),
    (lambda a: a.update(names_utf8=np.frombuffer(b"a\xffc", dtype=np.uint8)), ["not valid UTF-8"]),
    (lambda a: a.update(names_utf8=np.frombuffer(b"aac", dtype=np.uint8)), ["repeat"]),
])
def test_from_arrays_rejects_inconsistent_input(mutate, words):
    arrays = _good_arrays()
    TagIndex.from_arrays(dict(arrays))  # the unmodified arrays load
    mutate(arrays)
    with pytest.raises(ValueError) as info:
        TagIndex.from_arrays(arrays)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_bulk_append_matches_numpy_reference():
    rng = np.random.default_rng(3)
    n, v = 20_000, 300
    names = [f"tag-{i}" for i in range(v)]
    p = 1.0 / np.arange(1, v + 1)
    k = rng.integers(0, 4, n)
    draws = rng.choice(v, size=int(k.sum()), p=p / p.sum())
    owner = np.repeat(np.arange(n), k)
    lists, pos = [], 0
    for c in k.tolist():
        lists.append([names[t] for t in draws[pos:pos + c]])
        pos += c
    ti = TagIndex()
    for lo in range(0, n, 7_000):  # several batches, so bitmaps are extended, not just built
        part = lists[lo:lo + 7_000]
        ti.append(part, len(part))
    for t in rng.choice(v, 25, replace=False).tolist() + [0, 1]:
        expected = np.unique(owner[draws == t])
        np.testing.assert_array_equal(np.asarray(ti.bitmap(names[t]).to_array()), expected)
    assert ti.get([0, n - 1]) == [dedupe(lists[0]), dedupe(lists[-1])]
