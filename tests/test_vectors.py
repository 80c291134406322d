"""VectorStore: growable int8 rows in RAM or in a file-backed memory map."""
from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from lukhas_gpu.vectors.store import VectorStore

STORAGES = ["memory", "mmap"]


def _rows(rng, m, dim=8):
    return rng.integers(-127, 128, (m, dim), dtype=np.int8)


def _store(storage, tmp_path, dim=8):
    return VectorStore(dim, storage=storage, spill_dir=str(tmp_path))


@pytest.mark.parametrize("storage", STORAGES)
def test_append_across_growths_preserves_contents(storage, tmp_path):
    rng = np.random.default_rng(0)
    store = _store(storage, tmp_path)
    assert len(store) == 0 and store.shape == (0, 8) and store.capacity == 0
    assert store.array.shape == (0, 8)
    batches = [_rows(rng, m) for m in (1, 3, 4092, 1, 2000, 5000, 7000, 123)]
    expected, capacities = [], []
    for b in batches:
        start = len(store)
        assert store.append(b) == (start, start + len(b))
        expected.append(b)
        capacities.append(store.capacity)
        ref = np.concatenate(expected)
        assert len(store) == len(ref) and store.shape == (len(ref), 8)
        assert store.capacity >= len(store)
        np.testing.assert_array_equal(store.array, ref)
    assert len(set(capacities)) >= 4  # grew several times
    assert store.nbytes() == len(ref) * 8
    np.testing.assert_array_equal(store[[5, 0, len(ref) - 1]], ref[[5, 0, len(ref) - 1]])
    np.testing.assert_array_equal(store[100:110], ref[100:110])
    store.close()


@pytest.mark.parametrize("storage", STORAGES)
def test_setitem_and_flush(storage, tmp_path):
    rng = np.random.default_rng(1)
    store = _store(storage, tmp_path)
    ref = _rows(rng, 50)
    store.append(ref)
    new = _rows(rng, 2)
    store[[3, 7]] = new
    ref[[3, 7]] = new
    store.flush()
    np.testing.assert_array_equal(store.array, ref)
    store.close()


@pytest.mark.parametrize("storage", STORAGES)
def test_empty_append_changes_nothing(storage, tmp_path):
    store = _store(storage, tmp_path)
    ref = _rows(np.random.default_rng(2), 10)
    store.append(ref)
    assert store.append(np.empty((0, 8), np.int8)) == (10, 10)
    assert len(store) == 10
    np.testing.assert_array_equal(store.array, ref)
    store.close()


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("bad, err, match", [
    (np.zeros((4, 8), np.float32), TypeError, "int8"),
    (np.zeros((4, 8), np.int16), TypeError, "int8"),
    (np.zeros((4, 7), np.int8), ValueError, r"shape \(m, 8\)"),
    (np.zeros(8, np.int8), ValueError, r"shape \(m, 8\)"),
    (np.zeros((2, 4, 8), np.int8), ValueError, r"shape \(m, 8\)"),
])
def test_bad_rows_rejected_and_store_unchanged(storage, tmp_path, bad, err, match):
    store = _store(storage, tmp_path)
    ref = _rows(np.random.default_rng(3), 20)
    store.append(ref)
    with pytest.raises(err, match=match):
        store.append(bad)
    assert len(store) == 20
    np.testing.assert_array_equal(store.array, ref)
    store.close()


def test_invalid_storage():
    with pytest.raises(ValueError, match="storage"):
        VectorStore(8, storage="disk")


def test_mmap_close_removes_its_temp_file(tmp_path):
    store = _store("mmap", tmp_path)
    store.append(_rows(np.random.default_rng(4), 5000))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("lukhas_vectors_")
    assert files[0].stat().st_size >= 5000 * 8  # the rows are in the file
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_mmap_rows_live_in_the_file_and_given_path_is_kept(tmp_path):
    path = tmp_path / "vectors.i8"
    path.touch()
    rng = np.random.default_rng(5)
    ref = _rows(rng, 6000, dim=16)
    store = VectorStore(16, storage="mmap", path=str(path))
    store.append(ref[:10])
    store.append(ref[10:])
    store.flush()
    on_disk = np.fromfile(path, dtype=np.int8)[: ref.size].reshape(ref.shape)
    np.testing.assert_array_equal(on_disk, ref)
    store.close()
    assert path.exists()  # a caller's file is not the store's to delete


def test_memory_store_makes_no_file(tmp_path):
    store = _store("memory", tmp_path)
    store.append(_rows(np.random.default_rng(6), 100))
    assert list(tmp_path.iterdir()) == []
    assert not isinstance(store.array, np.memmap)
    store.close()
    assert os.listdir(tmp_path) == []


def test_mmap_temp_file_removed_when_store_is_collected(tmp_path):
    store = _store("mmap", tmp_path)
    store.append(_rows(np.random.default_rng(7), 10))
    assert len(list(tmp_path.iterdir())) == 1
    del store
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_vector_store_memory_usage_and_spill_path(tmp_path):
    from lukhas_gpu.vectors.store import VectorStore

    mem = VectorStore(16)
    mem.append(np.ones((10, 16), dtype=np.int8))
    assert mem.spill_path is None
    assert mem.memory_usage() == {"anon": {"vectors_int8": 160}, "reserved": {"vectors_int8": (4096 - 10) * 16}}
    mm = VectorStore(16, storage="mmap", spill_dir=str(tmp_path))
    mm.append(np.ones((10, 16), dtype=np.int8))
    assert mm.memory_usage() == {"mapped": {"vectors_int8": 160}}
    path = mm.spill_path
    assert path is not None and path.startswith(str(tmp_path))
    mm.close()
    assert mm.spill_path is None and not os.path.exists(path)
