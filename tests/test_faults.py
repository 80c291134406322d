"""Fault injection on the durable store (issue 13, part A): ENOSPC and EIO through the file
layer, a crash (an exception) between each step of a checkpoint and of a rollback, and two
writers racing for a stale lock. After each fault the store opens, every acknowledged memory is
there, and the error the caller got names the file."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from lukhas_gpu import MemoryIndex
from lukhas_gpu.store import layout, wal
from lukhas_gpu.store.layout import StoreLockedError

DIM = 16


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "s"
    ix = MemoryIndex.create(path, DIM)
    ix.add(np.stack([_vec(i) for i in range(60)]), contents=[f"m{i}" for i in range(60)])
    ix.checkpoint()
    ix.add(np.stack([_vec(i) for i in range(60, 80)]), contents=[f"m{i}" for i in range(60, 80)])  # logged
    ix.close(checkpoint=False)
    return path


@pytest.fixture
def store(template, tmp_path):
    shutil.copytree(template, tmp_path / "s")
    return tmp_path / "s"


def _all_there(path, n: int) -> None:
    ix = MemoryIndex.open(path, mode="w")
    try:
        assert len(ix) == n
        got = [m.content for m in ix.get(np.arange(n))]
        assert got[:80] == [f"m{i}" for i in range(80)]
        assert ix.verify()["ok"]
    finally:
        ix.close(checkpoint=False)


# -- disk full and I/O errors ------------------------------------------------------------------
def test_enospc_during_a_wal_append_names_the_log_and_loses_nothing(store, monkeypatch):
    ix = MemoryIndex.open(store, mode="w")
    real = os.write

    def full(fd, data):
        if fd == ix.state.wal._fd:
            real(fd, bytes(data)[:7])  # a partial record reaches the file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match=f"No space left on device.*{layout.WAL}") as e:
        ix.add(_vec(100), contents="not acknowledged")
    assert e.value.errno == errno.ENOSPC and e.value.filename.endswith(layout.WAL)
    assert len(ix) == 80
    monkeypatch.undo()
    ix.add(_vec(81), contents="m80")  # the partial record was cut: appends go on
    ix.close(checkpoint=False)
    _all_there(store, 81)


def test_eio_on_the_wal_flush_names_the_log(store, monkeypatch):
    ix = MemoryIndex.open(store, mode="w")

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(wal, "_datasync", eio)
    with pytest.raises(OSError, match=f"Input/output error.*{layout.WAL}"):
        ix.add(_vec(100), contents="unknown")
    monkeypatch.undo()
    ix.close(checkpoint=False)
    ix = MemoryIndex.open(store, mode="w")  # the acknowledged 80 are there (the unflushed one may be)
    assert [m.content for m in ix.get(np.arange(80))] == [f"m{i}" for i in range(80)]
    ix.close(checkpoint=False)


def _enospc_in_npz(monkeypatch):
    real = np.savez

    def savez(f, **arrays):
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", savez)
    return real


def _eio_on_fsync(monkeypatch):
    real = os.fsync

    def fsync(fd):
        if ".tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _crash(monkeypatch, owner, name):
    real = getattr(owner, name)

    def crash(*a, **k):
        raise KeyboardInterrupt(f"crash in {name}")  # not an OSError: nothing may catch it

    monkeypatch.setattr(owner, name, crash)
    return real


def _crash_renaming_the_generation(monkeypatch):
    real = os.rename

    def rename(src, dst, *a, **k):
        if str(src).endswith(".tmp"):
            raise KeyboardInterrupt("crash renaming the generation")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", rename)


FAULTS = {
    "enospc-writing-a-file": _enospc_in_npz,
    "eio-on-fsync": _eio_on_fsync,
    "no-space-up-front": lambda mp: mp.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1, 1, 0)),
    "crash-before-rename": _crash_renaming_the_generation,
    "crash-publishing-current": lambda mp: _crash(mp, layout, "publish"),
    "crash-pruning": lambda mp: _crash(mp, layout, "prune"),
    "crash-restarting-the-wal": lambda mp: _crash(mp, wal.WriteAheadLog, "reset"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failed_checkpoint_keeps_every_acknowledged_memory(store, monkeypatch, fault):
    ix = MemoryIndex.open(store, mode="w")
    ix.add(_vec(80), contents="m80")
    published = (store / layout.CURRENT).read_text()
    FAULTS[fault](monkeypatch)
    with pytest.raises((OSError, KeyboardInterrupt)) as e:
        ix.checkpoint()
    monkeypatch.undo()
    if isinstance(e.value, OSError):  # the caller is told which file (or store) it was
        assert str(store) in str(e.value) and e.value.errno in (errno.ENOSPC, errno.EIO)
        assert (store / layout.CURRENT).read_text() == published  # the previous generation stays
        assert not list(store.glob("gen-*.tmp"))  # and the partial one is gone
    ix.close(checkpoint=False)  # the "process" ends
    _all_there(store, 81)


@pytest.mark.parametrize("step, lands", [("check", "old"), ("new-log", "old"), ("commit", "old"), ("publish", "new")])
def test_a_crash_during_rollback_leaves_a_store_that_opens(store, monkeypatch, step, lands):
    ix = MemoryIndex.open(store, mode="w")
    ix.checkpoint()  # 80 in gen 3 (its parent gen 2 holds 60), an empty log
    ix.close(checkpoint=False)
    if step == "commit":  # the new log replacing wal.log: the rollback's commit point
        real_replace = os.replace

        def replace(src, dst, *a, **k):
            if str(dst).endswith(layout.WAL):
                raise KeyboardInterrupt("crash replacing the log")
            return real_replace(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
    elif step == "new-log":
        _crash(monkeypatch, wal.WriteAheadLog, "__init__")
    else:
        _crash(monkeypatch, layout, "check_files" if step == "check" else "publish")
    with pytest.raises(KeyboardInterrupt):
        MemoryIndex.rollback(store)
    monkeypatch.undo()
    if lands == "old":
        _all_there(store, 80)
    else:  # committed: the store is at gen 2, whole, for a reader and a writer alike
        assert len(MemoryIndex.open(store)) == 60
        ix = MemoryIndex.open(store, mode="w")
        assert len(ix) == 60 and ix.verify()["ok"] and layout.current_generation(store).name == "gen-000002"
        ix.close(checkpoint=False)


# -- the lock ----------------------------------------------------------------------------------
_RACER = r"""
import os, sys, time
from lukhas_gpu.store import layout
root, marker, start, rounds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
held = refused = double = 0
for i in range(rounds):
    t = start + i * 0.01
    while time.time() < t:
        pass
    try:
        lock = layout.acquire_lock(root)
    except layout.StoreLockedError as e:
        refused += 1
        continue
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        double += 1
        lock.release()
        continue
    held += 1
    time.sleep(0.002)
    os.unlink(marker)
    with open(os.path.join(root, "LOCK"), "w") as f:  # leave a stale pid behind, as a crash would
        f.write("999999999")
    lock.release()
print(held, refused, double)
"""


def test_two_writers_racing_for_a_stale_lock_never_both_hold_it(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / layout.LOCK).write_text("999999999")  # a stale lock: its process is long gone
    rounds, start = 150, time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(root), str(tmp_path / "marker"), str(start),
                               str(rounds)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=30)[0].split() for p in procs]
    held, refused, double = (sum(int(o[i]) for o in outs) for i in range(3))
    assert double == 0, "two writers held the lock at once"
    assert held >= rounds and held + refused == 2 * rounds


def test_a_second_writer_is_told_the_holder_and_a_dead_holder_frees_it(tmp_path):
    MemoryIndex.create(tmp_path / "s", DIM).close(checkpoint=False)
    code = ("import sys, time; from lukhas_gpu.store import layout; l = layout.acquire_lock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError, match=f"process {child.pid}"):
            MemoryIndex.open(tmp_path / "s", mode="w")
        with pytest.raises(StoreLockedError, match=f"process {child.pid}"):
            MemoryIndex.rollback(tmp_path / "s")
    finally:
        child.kill()
        child.wait()
    ix = MemoryIndex.open(tmp_path / "s", mode="w")  # the kernel dropped the dead holder's lock
    with pytest.raises(StoreLockedError, match="already open for writing in this process"):
        MemoryIndex.open(tmp_path / "s", mode="w")
    ix.close(checkpoint=False)
    MemoryIndex.open(tmp_path / "s", mode="w").close(checkpoint=False)


def test_a_writer_dropped_without_close_releases_its_lock(tmp_path):
    MemoryIndex.create(tmp_path / "s", DIM)  # never closed, no reference kept
    MemoryIndex.open(tmp_path / "s", mode="w").close(checkpoint=False)

