"""Readers beside a writer: a read-only open replays the log and changes no file, refresh() costs
what is new, a writer's close() checkpoints, the CLI sees acknowledged memories, search bounds,
and a short multi-process soak with SIGKILLs of the writer (benchmarks/soak_readers.py)."""
import hashlib
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, MemoryIndex
from lukhas_gpu.store import layout
from lukhas_gpu.store.layout import StoreError
from lukhas_gpu.store.wal import HEADER_SIZE
from lukhas_gpu.util import checks
from lukhas_gpu.vectors.store import VectorStore

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIM = 32
CFG = IndexConfig(train_threshold=2048, nlist=16, nprobe=16)


@pytest.fixture(scope="module")
def data():
    from conftest import make_clustered

    return make_clustered(4000, DIM, n_queries=20, seed=5)


def _add(index, xb, start, stop, batch=100):
    for a in range(start, stop, batch):
        b = min(stop, a + batch)
        index.add(xb[a:b], contents=[f"m{i}" for i in range(a, b)], tags=[[f"t{i % 5}"] for i in range(a, b)])


def _snapshot(root: pathlib.Path) -> dict:
    """Every path under ``root`` with its kind, bytes' hash and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_size, st.st_mtime_ns)
    out["."] = ("dir", 0, root.stat().st_mtime_ns)
    return out


# -- 1. a read-only open replays the log, changing nothing ------------------------------------------
def test_read_only_open_replays_the_log_and_changes_no_file(tmp_path, data):
    xb, xq = data
    path = tmp_path / "s"
    w = MemoryIndex.create(path, DIM, CFG)
    _add(w, xb, 0, 1100)  # past the int8 calibration (which rewrites the first rows)
    w.checkpoint()
    _add(w, xb, 1100, 3000)  # crosses the training threshold in the log
    w.delete([5, 2500])
    w.update([7], contents=["changed"], importance=[0.25])
    expect = w.search(xq, 10)
    before = _snapshot(path)
    r = MemoryIndex.open(path)
    assert _snapshot(path) == before  # not a byte, not an mtime, no new file (no LOCK, no vectors.work)
    assert len(r) == len(w) == 2998 and r.is_trained
    assert r.get([2999])[0].content == "m2999" and r.get([7])[0].content == "changed"
    assert r.get([7])[0].importance == 0.25 and not r.contains([5, 2500]).any()
    np.testing.assert_array_equal(r.search(xq, 10).ids, expect.ids)  # the writer's state, exactly
    np.testing.assert_allclose(r.search(xq, 10).scores, expect.scores, rtol=1e-6)
    # the published vectors stay a read-only file map; replayed rows are this process's memory
    usage = r.parts.vectors.memory_usage()
    assert usage["mapped"]["vectors_int8"] == 1100 * DIM and usage["anon"]["vectors_int8"] == 1900 * DIM
    with pytest.raises(StoreError, match="read-only"):
        r.add(xb[:1])
    r.close()
    assert _snapshot(path) == before
    w.close()


def test_read_only_open_does_not_read_or_cut_a_torn_tail(tmp_path, data):
    xb, _ = data
    path = tmp_path / "s"
    w = MemoryIndex.create(path, DIM, CFG)
    _add(w, xb, 0, 300)
    w.close(checkpoint=False)
    wal = path / layout.WAL
    with open(wal, "r+b") as f:  # a crash in the middle of the last append
        f.truncate(wal.stat().st_size - 100)
    before = _snapshot(path)
    r = MemoryIndex.open(path)
    assert len(r) == 200 and _snapshot(path) == before
    assert r.refresh()["records"] == 0 and _snapshot(path) == before


def test_a_log_of_an_older_generation_is_not_replayed(tmp_path, data):
    xb, _ = data
    path = tmp_path / "s"
    w = MemoryIndex.create(path, DIM, CFG)
    _add(w, xb, 0, 300)
    stale = (path / layout.WAL).read_bytes()  # follows generation 1
    w.checkpoint()  # generation 2 holds the 300
    w.close(checkpoint=False)
    (path / layout.WAL).write_bytes(stale)  # a crash between publishing and restarting the log
    r = MemoryIndex.open(path)
    assert len(r) == 300
    assert r.refresh()["records"] == 0 and len(r) == 300


# -- 2. refresh: what is new, at the cost of what is new ------------------------------------------
def test_refresh_follows_the_log_and_new_generations(tmp_path, data):
    xb, xq = data
    path = tmp_path / "s"
    w = MemoryIndex.create(path, DIM, CFG)
    _add(w, xb, 0, 500)
    w.checkpoint()
    r = MemoryIndex.open(path)
    assert len(r) == 500
    ch = r.refresh()
    assert (ch["records"], ch["added"], ch["reloaded"], ch["count"]) == (0, 0, False, 500)

    _add(w, xb, 500, 800)  # 3 records
    ch = r.refresh()
    assert (ch["records"], ch["added"], ch["reloaded"], ch["count"]) == (3, 300, False, 800)
    w.delete([1, 2])
    w.update([3], contents=["new"])
    ch = r.refresh()  # only the two new records are read: the cursor resumes at its offset
    assert (ch["records"], ch["deleted"], ch["updated"], ch["added"]) == (2, 2, 1, 0)
    assert r.get([3])[0].content == "new" and not r.contains([1, 2]).any()

    w.checkpoint()  # a new generation, a new log
    _add(w, xb, 800, 2500)  # trains in the writer: the reader trains while replaying
    ch = r.refresh()
    assert ch["reloaded"] and ch["generation"] == layout.generation_number(layout.current_generation(path))
    assert (ch["records"], ch["added"], ch["count"]) == (17, 1700, 2498)
    assert r.is_trained
    np.testing.assert_array_equal(r.search(xq, 10).ids, w.search(xq, 10).ids)
    assert r.refresh()["records"] == 0

    w.close()  # checkpoints: the reader reloads, sees the same memories, reads no record
    ch = r.refresh()
    assert ch["reloaded"] and ch["records"] == 0 and ch["count"] == 2498
    with pytest.raises(StoreError, match="mode='r'"):
        MemoryIndex.open(path, mode="w").refresh()


def test_refresh_follows_a_rollback(tmp_path, data):
    xb, _ = data
    path = tmp_path / "s"
    w = MemoryIndex.create(path, DIM, CFG)
    _add(w, xb, 0, 100)
    w.checkpoint()
    _add(w, xb, 100, 200)
    w.close()  # checkpoints
    r = MemoryIndex.open(path)
    assert len(r) == 200
    MemoryIndex.rollback(path)
    ch = r.refresh()
    assert ch["reloaded"] and ch["count"] == 100 and len(r) == 100


def test_refresh_cost_is_proportional_to_what_is_new(tmp_path, data):
    xb, _ = data
    path = tmp_path / "s"
    w = MemoryIndex.create(path, DIM, IndexConfig(train_threshold=100_000))
    _add(w, xb, 0, 2000, batch=10)  # 200 records in the log
    r = MemoryIndex.open(path)
    assert len(r) == 2000
    _add(w, xb, 0, 10, batch=10)
    t = time.perf_counter()
    ch = r.refresh()
    one = time.perf_counter() - t
    assert ch["records"] == 1 and not ch["reloaded"]
    t = time.perf_counter()
    MemoryIndex.open(path)
    full = time.perf_counter() - t
    assert one < full / 5, (one, full)
    w.close(checkpoint=False)


# -- 3. a writer's close checkpoints ----------------------------------------------------------------
def test_writer_close_checkpoints_by_default(tmp_path, data):
    xb, _ = data
    path = tmp_path / "s"
    w = MemoryIndex.create(path, DIM, CFG)
    gen0 = layout.current_generation(path).name
    w.close()  # nothing logged: no new generation (the previous one stays the rollback target)
    assert layout.current_generation(path).name == gen0
    w = MemoryIndex.open(path, mode="w")
    _add(w, xb, 0, 200)
    w.close()
    gen1 = layout.current_generation(path).name
    assert gen1 != gen0 and (path / layout.WAL).stat().st_size == HEADER_SIZE  # the log restarted empty
    with MemoryIndex.open(path, mode="w") as w:
        _add(w, xb, 200, 300)
    assert layout.current_generation(path).name != gen1 and len(MemoryIndex.open(path)) == 300
    gen2 = layout.current_generation(path).name
    with pytest.raises(RuntimeError, match="boom"):
        with MemoryIndex.open(path, mode="w") as w:
            _add(w, xb, 300, 400)
            raise RuntimeError("boom")
    assert layout.current_generation(path).name == gen2  # an error on its way: no checkpoint
    w = MemoryIndex.open(path, mode="w")
    assert len(w) == 400  # the log kept them
    _add(w, xb, 400, 500)
    w.close(checkpoint=False)
    assert layout.current_generation(path).name == gen2 and len(MemoryIndex.open(path)) == 500
    MemoryIndex.open(path, mode="w").close(checkpoint=False)  # the lock is free again


# -- 4. the CLI sees acknowledged memories ----------------------------------------------------------
WRITER = r"""
import sys, numpy as np, lukhas_gpu
ix = lukhas_gpu.MemoryIndex.create(sys.argv[1], 16, lukhas_gpu.IndexConfig(train_threshold=100_000))
x = np.random.default_rng(0).standard_normal((1000, 16)).astype("float32")
for a in range(0, 1000, 100):
    ix.add(x[a:a + 100], contents=[f"memory {i}" for i in range(a, a + 100)])
    if a + 100 == 300:
        ix.checkpoint()
print("acknowledged", len(ix), flush=True)
sys.stdin.read()  # stays open, never closed: the CLI runs beside it
"""


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_cli_get_and_search_see_acknowledged_memories_of_a_running_writer(tmp_path):
    store = str(tmp_path / "s")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, store], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=_env())
    try:
        assert writer.stdout.readline().split() == ["acknowledged", "1000"]
        cli = [sys.executable, "-c", "import sys; from lukhas_gpu.cli import main; sys.exit(main())"]
        got = subprocess.run([*cli, "get", store, "900", "--json"], capture_output=True, text=True, env=_env(),
                             timeout=120)
        assert got.returncode == 0, got.stderr
        assert '"content": "memory 900"' in got.stdout
        q = np.random.default_rng(0).standard_normal((1000, 16)).astype("float32")[950:951]
        np.save(tmp_path / "q.npy", q)
        found = subprocess.run([*cli, "search", store, "--query-file", str(tmp_path / "q.npy"), "-k", "1", "--json"],
                               capture_output=True, text=True, env=_env(), timeout=120)
        assert found.returncode == 0, found.stderr
        assert '"ids": [950]' in found.stdout
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)


# -- 5. bounds --------------------------------------------------------------------------------------
def test_search_bounds_fail_fast_before_allocating(tmp_path, data, capsys):
    xb, xq = data
    index = MemoryIndex(DIM)
    index.add(xb[:100])
    t = time.perf_counter()
    with pytest.raises(ValueError, match="k=1000000000 exceeds the limit of 100,000"):
        index.search(xq, k=10**9)
    assert time.perf_counter() - t < 1.0
    assert index.search(xq[0], k=checks.MAX_K).ids.shape == (checks.MAX_K,)  # the limit itself works
    with pytest.raises(ValueError, match="queries in one call exceed"):
        checks.check_queries(checks.MAX_QUERIES + 1, 1)
    with pytest.raises(ValueError, match="results exceed the limit"):
        checks.check_queries(checks.MAX_RESULTS // 1000 + 1, 1000)
    assert checks.check_queries(checks.MAX_QUERIES, 100) == 100
    index.save(tmp_path / "s")
    np.save(tmp_path / "q.npy", xq)
    from lukhas_gpu.cli import main

    rc = main(["search", str(tmp_path / "s"), "--query-file", str(tmp_path / "q.npy"), "-k", str(10**9)])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "exceeds the limit of 100,000" in err and "Traceback" not in err


# -- the private vector store ----------------------------------------------------------------------
@pytest.mark.parametrize("n, dim", [(0, 8), (3, 7), (5000, 32)])
def test_private_vector_store_never_writes_its_file(tmp_path, n, dim):
    rng = np.random.default_rng(n)
    rows = rng.integers(-127, 128, (n, dim), dtype=np.int8)
    f = tmp_path / "v.i8"
    rows.tofile(f)
    before = (f.read_bytes(), f.stat().st_mtime_ns)
    s = VectorStore.attach(f, dim, n, writable=False, private=True)
    np.testing.assert_array_equal(s.array, rows)
    more = rng.integers(-127, 128, (9000, dim), dtype=np.int8)
    s.append(more[:10])
    if n:
        s[:1] = 0  # a re-calibration rewrites published rows: private copies
    s.append(more[10:])  # grows: the file is mapped again, the private rows copied
    expect = np.concatenate([rows, more])
    if n:
        expect[:1] = 0
    np.testing.assert_array_equal(s.array, expect)
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before
    other = VectorStore.attach(f, dim, n, writable=False)
    np.testing.assert_array_equal(other.array if n else other.array[:0], rows)


def _rss_anon_of(a: np.ndarray) -> int:
    """Resident anonymous bytes of the mapping holding ``a`` (smaps)."""
    addr = a.__array_interface__["data"][0]
    with open("/proc/self/smaps") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(x, 16) for x in head.split("-"))
            if lo <= addr < hi:
                for rest in lines[i + 1:]:
                    if rest.startswith("Anonymous:"):
                        return int(rest.split()[1]) * 1024
    raise AssertionError("mapping not found")


@pytest.mark.parametrize("dim", [7, 384, 5000])
def test_rebased_store_maps_its_file_and_tracks_changed_pages(tmp_path, dim):
    """A writer's rows after a checkpoint (VectorStore.rebase): the file mapped copy-on-write,
    rows changed in place cost their pages (carried over when the store grows), the rows'
    block CRCs checked again at the next checkpoint, the file never written."""
    import mmap as _mmap

    from lukhas_gpu.util.errors import CorruptStoreError
    rng = np.random.default_rng(dim)
    n = 3000
    rows = rng.integers(-127, 128, (n, dim), dtype=np.int8)
    s = VectorStore(dim)
    s.append(rows)
    crcs = s.block_crcs()
    f = tmp_path / "v.i8"
    rows.tofile(f)
    before = f.read_bytes()
    assert s.rebase(f, crcs)
    mem = s.memory_usage()
    assert mem["mapped"]["vectors_int8"] == n * dim and not mem["anon"]
    np.testing.assert_array_equal(s.array, rows)
    if sys.platform.startswith("linux"):
        assert _rss_anon_of(s.array) == 0  # read through: page cache only
    expect = rows.copy()
    changed = np.array([5, 17, 2999])
    s[changed] = 1
    s[100:103] = 2
    expect[changed], expect[100:103] = 1, 2
    pages = {p for r in [*changed, 100, 101, 102] for p in range(r * dim // _mmap.PAGESIZE,
                                                                 ((r + 1) * dim - 1) // _mmap.PAGESIZE + 1)}
    mem = s.memory_usage()
    assert mem["anon"]["vectors_int8"] == min(n * dim, len(pages) * _mmap.PAGESIZE)
    more = rng.integers(-127, 128, (9000, dim), dtype=np.int8)
    s.append(more)  # grows: the file mapped again, changed pages and appended rows carried over
    expect = np.concatenate([expect, more])
    np.testing.assert_array_equal(s.array, expect)
    assert f.read_bytes() == before
    s.block_crcs()  # the unchanged blocks still hold what was written: no error
    # bytes damaged on disk under the map are named by the next checkpoint's CRCs, never carried
    with open(f, "r+b") as fh:
        fh.seek(40 * 64 * dim + 3)
        fh.write(bytes([before[40 * 64 * dim + 3] ^ 0xFF]))
    if (40 * 64 * dim) // _mmap.PAGESIZE not in pages:
        with pytest.raises(CorruptStoreError, match="changed on disk"):
            s.block_crcs()
    assert not VectorStore(dim, storage="mmap", spill_dir=str(tmp_path)).rebase(f)  # its own file already


# -- 7. the multi-process soak, short ---------------------------------------------------------------
def test_soak_readers_short(tmp_path):
    from benchmarks import soak_readers

    res = soak_readers.main(["--seconds", "15", "--kills", "3", "--readers", "4", "--seed", "1",
                             "--store", str(tmp_path / "s"), "--quiet", "--no-save"])
    assert res["kills"] >= 2 and res["acknowledged"] > 0
    assert res["lost"] == 0 and res["reader_violations"] == 0 and res["reader_errors"] == 0, res
    assert res["unseen_at_end"] == 0
    assert res["lag_ms"]["count"] > 0
