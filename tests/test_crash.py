"""Crash safety: a writer killed with SIGKILL at random moments, 20 times, loses nothing it
acknowledged and leaves nothing half-written (see benchmarks/stress_crash.py); a rollback killed
before each of its file operations leaves the store whole, before or after it."""
import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import stress_crash
from lukhas_gpu import MemoryIndex
from lukhas_gpu.store import layout
from lukhas_gpu.store.wal import WalReader


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_memory():
    summary = stress_crash.main(["--trials", "20", "--max-wait", "0.8", "--seed", "3"])
    assert summary["trials"] == 20
    assert summary["acknowledged_memories"] > 0
    assert summary["lost_or_wrong"] == 0


# -- a rollback killed at every step -------------------------------------------------------------
# The child counts every file operation that changes something (a write, a flush, a rename, a
# link, an unlink, an open for writing) and SIGKILLs itself before the k-th: k = 1, 2, ... until
# the rollback completes. The store module alone is imported (no torch): a fast start.
_ROLLBACK = r"""
import builtins, os, signal, sys
from lukhas_gpu.index import durable
root, k, discard = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
count = 0

def hit():
    global count
    count += 1
    if count == k:
        os.kill(os.getpid(), signal.SIGKILL)

def wrap(owner, name, when=None):
    real = getattr(owner, name)
    def call(*a, **kw):
        if when is None or when(*a, **kw):
            hit()
        return real(*a, **kw)
    setattr(owner, name, call)

for name in ("write", "pwrite", "ftruncate", "fsync", "replace", "rename", "link", "unlink"):
    wrap(os, name)
wrap(os, "open", lambda path, flags, *a, **kw: flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
wrap(builtins, "open", lambda file, mode="r", *a, **kw: any(c in mode for c in "wax+"))
if sys.argv[4:] == ["checkpoint"]:  # a writer's open and checkpoint after the rollback
    from lukhas_gpu import MemoryIndex
    MemoryIndex.open(root, mode="w").close()
else:
    durable.rollback(root, discard_log=discard)
print(count, flush=True)
"""
DIM = 8


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def _add(ix, lo: int, hi: int) -> None:
    ix.add(np.stack([_vec(i) for i in range(lo, hi)]), contents=[f"m{i}" for i in range(lo, hi)])


@pytest.fixture(scope="module")
def rolled(tmp_path_factory):
    """gen 2: ids 0..59; gen 3 (its child): ids 0..79, 5 deleted; the log: ids 80..89 added, 70
    deleted, 3 updated (acknowledged, not checkpointed)."""
    path = tmp_path_factory.mktemp("rollback") / "s"
    ix = MemoryIndex.create(path, DIM)
    _add(ix, 0, 60)
    ix.checkpoint()
    _add(ix, 60, 80)
    ix.delete([5])
    ix.checkpoint()
    _add(ix, 80, 90)
    ix.delete([70])
    ix.update([3], contents=["u3"])
    ix.close(checkpoint=False)
    return path


OLD = {i: f"m{i}" for i in range(90) if i not in (5, 70)} | {3: "u3"}
NEW = {i: f"m{i}" for i in range(60)}


def _state(path: pathlib.Path) -> dict:
    """What the store holds, for a reader and then for a writer (which must agree)."""
    seen = []
    for mode in ("r", "w"):
        ix = MemoryIndex.open(path, mode=mode)
        try:
            rows = np.arange(ix.parts.rows)
            live = rows[ix.contains(rows)]
            seen.append({int(m.id): m.content for m in ix.get(live)})
            if mode == "w":
                assert ix.verify()["ok"]
        finally:
            ix.close(checkpoint=False)
    assert seen[0] == seen[1], "a reader and a writer disagree on where the store is"
    return seen[1]


def _kill_rollback_at_every_step(template: pathlib.Path, tmp: pathlib.Path, discard: bool):
    outcomes = []
    for k in range(1, 200):
        path = tmp / f"k{k}"
        shutil.copytree(template, path)
        proc = subprocess.run([sys.executable, "-c", _ROLLBACK,
                               str(path), str(k), "1" if discard else "0"], capture_output=True, text=True, timeout=120,
                              check=False)
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, proc.stderr[-2000:]
        state = _state(path)
        assert state in (OLD, NEW), f"killed before file operation {k}: neither the old nor the new state"
        which = "old" if state == OLD else "new"
        if which == "new":  # the acknowledged records dropped are kept aside, whole
            aside = list(path.glob(layout.WAL + ".discarded-*"))
            assert len(aside) == 1, aside
            with WalReader(aside[0]) as r:
                assert sum(1 for _ in r) == 3 and not r.torn  # the adds, the delete, the update
        assert not (path / layout.WAL_NEXT).exists()
        outcomes.append(which)
        if which == "old" and killed:  # and the rollback, run again, completes
            MemoryIndex.rollback(path, discard_log=discard)
            assert _state(path) == NEW
        shutil.rmtree(path)
        if not killed:
            return outcomes
    raise AssertionError("the rollback never completed")


def test_a_rollback_killed_before_any_file_operation_leaves_old_or_new_state_whole(rolled, tmp_path):
    outcomes = _kill_rollback_at_every_step(rolled, tmp_path, discard=True)
    assert len(outcomes) >= 10 and outcomes[0] == "old" and outcomes[-1] == "new"
    flip = outcomes.index("new")
    assert outcomes[flip:] == ["new"] * (len(outcomes) - flip)  # one commit point: old, then new


@pytest.mark.slow
def test_the_checkpoint_after_a_rollback_killed_at_every_step_keeps_the_lineage(rolled, tmp_path):
    """After rollback(discard_log=True), a writer logs and checkpoints; killed before each file
    operation of its open and checkpoint (prune, log restart included), the store holds what was
    acknowledged and is at gen 2 (the parent) or gen 4 (its child); the abandoned gen 3 never
    comes back, and the next rollback goes to gen 2."""
    template = tmp_path / "t"
    shutil.copytree(rolled, template)
    MemoryIndex.rollback(template, discard_log=True)
    ix = MemoryIndex.open(template, mode="w")
    ix.delete([1, 2])
    ix.update([3], contents=["u3"])
    ix.close(checkpoint=False)
    expect = {i: c for i, c in NEW.items() if i not in (1, 2)} | {3: "u3"}
    for k in range(1, 400, 2):
        path = tmp_path / f"k{k}"
        shutil.copytree(template, path)
        proc = subprocess.run([sys.executable, "-c", _ROLLBACK, str(path), str(k), "0", "checkpoint"],
                              capture_output=True, text=True, timeout=300, check=False)
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, proc.stderr[-2000:]
        assert _state(path) == expect, f"killed before file operation {k}"
        at = layout.current_generation(path).name
        assert at in ("gen-000002", "gen-000004")  # never gen 3 (pruned by the checkpoint, or by the next)
        if at == "gen-000004":
            assert MemoryIndex.rollback(path).name == "gen-000002" and _state(path) == NEW
        shutil.rmtree(path)
        if not killed:
            return
    raise AssertionError("the checkpoint never completed")
