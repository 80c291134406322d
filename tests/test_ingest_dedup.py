"""``lukhas-gpu ingest`` with dedup: the store it builds equals a library ``add`` with the same dedup,
and a resume after a SIGKILL anywhere in the run (before or after a batch's log record, after its
progress entry, after a checkpoint) ends with exactly the memories of one uninterrupted run, in
every dedup mode (the resume decides on the store's write count, not its rows)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lukhas_gpu import IndexConfig, MemoryIndex, cli
from lukhas_gpu.ingest import resume
from lukhas_gpu.ingest.migrate import write_naive_jsonl
from lukhas_gpu.ingest.pipeline import Pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, DIM, BATCH, SEED_ROWS = 60, 16, 10, 4
#: Records of the input that repeat an earlier record's content (same batch or an earlier one),
#: with a later timestamp, a higher importance and a tag of their own: what a merge takes.
EXACT_DUPS = {7: 3, 15: 11, 16: 2, 33: 5, 34: 33, 52: 20}
#: Records that repeat content the store held before the ingest.
STORE_DUPS = {9: 0, 41: 2}
#: Near duplicates: another content, the vector of an earlier record plus a little noise.
NEAR_DUPS = {12: 1, 27: 13, 45: 44, 58: 30}

#: A subprocess that runs the CLI and SIGKILLs itself at one point: ``before``/``after`` the AT-th
#: append to the write-ahead log (one per batch), or after the AT-th write of the progress file.
_KILLER = r"""
import os, signal, sys
from lukhas_gpu import cli
from lukhas_gpu.ingest import resume
from lukhas_gpu.store import wal

where, at = sys.argv[1], int(sys.argv[2])
seen = {"append": 0, "progress": 0}
real_append, real_write = wal.WriteAheadLog.append, resume.write_progress

def append(self, op, fields):
    seen["append"] += 1
    if where == "before" and seen["append"] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    seq = real_append(self, op, fields)
    if where == "after" and seen["append"] == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return seq

def write_progress(store, state):
    real_write(store, state)
    seen["progress"] += 1
    if where == "progress" and seen["progress"] == at:
        os.kill(os.getpid(), signal.SIGKILL)

wal.WriteAheadLog.append, resume.write_progress = append, write_progress
sys.exit(cli.main(sys.argv[3:]))
"""


def _env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _records():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    contents = [f"memory {i}" for i in range(N)]
    tags = [[f"t{i % 3}"] for i in range(N)]
    ts = [1_700_000_000.0 + 60.0 * i for i in range(N)]
    imp = [round((i % 7) / 10, 1) for i in range(N)]
    for i, j in EXACT_DUPS.items():
        contents[i] = contents[j]
        tags[i] = tags[i] + [f"dup{i}"]
        imp[i] = 0.9
    for i, j in STORE_DUPS.items():
        contents[i] = f"stored {j}"
        tags[i] = ["from-file"]
    for i, j in NEAR_DUPS.items():
        x[i] = x[j] + 1e-3 * rng.standard_normal(DIM).astype(np.float32)
        tags[i] = [f"near{i}"]
    return x, contents, tags, ts, imp


def _seed():
    """What the store holds before the ingest: four memories, two of whose contents the input repeats."""
    rng = np.random.default_rng(8)
    return (rng.standard_normal((SEED_ROWS, DIM)).astype(np.float32), [f"stored {j}" for j in range(SEED_ROWS)],
            [["seed"]] * SEED_ROWS, [1_600_000_000.0] * SEED_ROWS, [0.2] * SEED_ROWS)


@pytest.fixture()
def src(tmp_path):
    x, contents, tags, ts, imp = _records()
    path = tmp_path / "in.jsonl"
    write_naive_jsonl(path, x, contents=contents, tags=tags, timestamps=ts, importance=imp)
    return path


def _create(store, dedup="exact"):
    """A store of the production preset (dedup exact unless told) holding the seed memories."""
    ix = MemoryIndex.create(store, DIM, IndexConfig.preset("production", dedup=dedup))
    x, c, t, ts, imp = _seed()
    ix.add(x, contents=c, tags=t, timestamps=ts, importance=imp, dedup="off")
    ix.close()


def _dump(store):
    with MemoryIndex.open(store, mode="r") as ix:
        rows = ix.select()
        return [(m.id, m.content, list(m.tags), m.timestamp, round(m.importance, 6))
                for m in ix.memories_at(rows)]


def _reference(tmp_path, dedup):
    """The store one library run makes: the seed, then the input's batches added with ``dedup``."""
    store = tmp_path / f"ref-{dedup}"
    _create(store)
    x, contents, tags, ts, imp = _records()
    with MemoryIndex.open(store, mode="w") as ix:
        for a in range(0, N, BATCH):
            ix.add(x[a:a + BATCH], contents=contents[a:a + BATCH], tags=tags[a:a + BATCH],
                   timestamps=ts[a:a + BATCH], importance=imp[a:a + BATCH], dedup=dedup)
    return _dump(store)


def _argv(store, src, dedup, *extra):
    return ["ingest", str(store), str(src), "--batch-size", str(BATCH), "--json",
            *(["--dedup", dedup] if dedup else []), *extra]


def _cli_subprocess(*argv):
    return subprocess.run([sys.executable, "-m", "lukhas_gpu.cli", *argv], capture_output=True, text=True,
                          env=_env(), timeout=300)


@pytest.mark.parametrize("dedup", ["exact", "near"])
def test_cli_ingest_equals_a_library_add_with_the_same_dedup(tmp_path, src, dedup):
    store = tmp_path / "store"
    _create(store)
    done = _cli_subprocess(*_argv(store, src, dedup))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    ref = _reference(tmp_path, dedup)
    assert _dump(store) == ref
    planted = len(EXACT_DUPS) + len(STORE_DUPS) if dedup == "exact" else len(NEAR_DUPS)
    assert summary["dedup"] == dedup and summary["merged"] >= planted
    assert summary["new"] == N - summary["merged"] and summary["count"] == SEED_ROWS + summary["new"]
    assert summary["count"] == len(ref)
    if dedup == "exact":  # the merges took the newest timestamp, the highest importance, the tag union
        by_content = {m[1]: m for m in ref}
        _, _, tags, ts, imp = _records()
        for i, j in EXACT_DUPS.items():
            m = by_content[f"memory {j}"] if j not in EXACT_DUPS else by_content[f"memory {EXACT_DUPS[j]}"]
            assert f"dup{i}" in m[2] and m[3] >= ts[i] and m[4] == pytest.approx(0.9, abs=1e-3)
        for i, j in STORE_DUPS.items():
            m = by_content[f"stored {j}"]
            assert m[0] == j and m[2] == ["seed", "from-file"] and m[3] == ts[i]


def test_a_new_production_store_dedups_exact_by_default_and_the_flags_reach_its_config(tmp_path, src, capsys):
    store = tmp_path / "new"
    assert cli.main(["ingest", str(store), str(src), "--batch-size", str(BATCH), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dedup"] == "exact" and summary["merged"] == len(EXACT_DUPS)
    with MemoryIndex.open(store, mode="r") as ix:
        assert ix.config.dedup == "exact"
    other = tmp_path / "near"
    assert cli.main(["ingest", str(other), str(src), "--batch-size", str(BATCH), "--dedup", "near",
                     "--dedup-threshold", "0.99"]) == 0
    out = capsys.readouterr().out
    assert "dedup near:" in out and f"{len(NEAR_DUPS)} records merged" in out
    with MemoryIndex.open(other, mode="r") as ix:
        assert (ix.config.dedup, ix.config.dedup_threshold) == ("near", 0.99)
    # an existing store's threshold is fixed; its mode is the default, --dedup overrides it per run
    assert cli.main(_argv(other, src, None, "--dedup-threshold", "0.9")) == 1
    assert "--dedup-threshold 0.9 differs from the store's 0.99" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(_argv(other, src, "bogus"))
    assert e.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err
    assert cli.main(_argv(tmp_path / "bad", src, None, "--dedup-threshold", "1.5")) == 1
    assert "dedup_threshold" in capsys.readouterr().err
    assert cli.main(_argv(tmp_path / "root", src, "exact", "--ray")) == 1  # Ray's resume counts a shard's rows
    assert "--ray ingests with dedup off" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dedup must be one of"):
        Pipeline(MemoryIndex(DIM), dedup="fuzzy")
    assert Pipeline(MemoryIndex(DIM, IndexConfig(dedup="near"))).dedup == "near"


#: (dedup, where, at): a kill before / after the log record of a batch, after a progress write;
#: with --checkpoint-every 2 some kills come after a checkpoint that absorbed earlier batches.
KILLS = [("off", "after", 3), ("off", "before", 4), ("exact", "after", 2), ("exact", "before", 5),
         ("exact", "progress", 8), ("near", "after", 5), ("near", "before", 3)]


@pytest.mark.parametrize("dedup, where, at", KILLS)
def test_a_sigkill_then_a_resume_gives_the_memories_of_one_uninterrupted_run(tmp_path, src, capsys, dedup, where,
                                                                              at):
    store = tmp_path / "store"
    _create(store)
    argv = _argv(store, src, dedup, "--checkpoint-every", "2")
    killed = subprocess.run([sys.executable, "-c", _KILLER, where, str(at), *argv], capture_output=True, text=True,
                            env=_env(), timeout=300)
    assert killed.returncode == -9, killed.stderr
    entry = resume.progress_of(store, src)
    assert not entry["done"]
    if where in ("before", "after"):
        assert entry["pending"] == BATCH and entry["ingested"] == (at - 1) * BATCH
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    # a batch whose log record was written landed; one killed before its record did not
    assert summary["skipped_resumed"] == entry["ingested"] + (BATCH if where == "after" else 0)
    assert summary["skipped_resumed"] + summary["ingested"] == N
    assert _dump(store) == _reference(tmp_path, dedup)
    assert resume.progress_of(store, src)["done"]


def test_another_writer_between_the_kill_and_the_resume(tmp_path, src, capsys, monkeypatch):
    """The documented case: a batch landed, another writer added a memory, then the resume: the count
    moved by more than one, so the batch is added again, and merges into the memories it made."""
    store = tmp_path / "store"
    _create(store)
    real_write = resume.write_progress

    def crash_after_third_add(path, state):
        (entry,) = state["inputs"].values()
        if entry["ingested"] == 3 * BATCH and entry["pending"] == 0:
            raise KeyboardInterrupt  # the batch is in the log, not yet in the progress file
        real_write(path, state)

    monkeypatch.setattr(resume, "write_progress", crash_after_third_add)
    assert cli.main(_argv(store, src, "exact")) == 130
    monkeypatch.setattr(resume, "write_progress", real_write)
    with MemoryIndex.open(store, mode="w") as ix:
        ix.add(np.ones(DIM, np.float32), contents="someone else's", timestamps=1.0)
    capsys.readouterr()
    assert cli.main(_argv(store, src, "exact")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped_resumed"] == 2 * BATCH
    got = _dump(store)
    ref = _reference(tmp_path, "exact")
    assert [m for m in got if m[1] != "someone else's"] == [m for m in ref if m[0] < 30] + [
        (m[0] + 1, *m[1:]) for m in ref if m[0] >= 30]


@pytest.mark.parametrize("landed", [True, False])
def test_a_version_2_progress_file_still_resumes(tmp_path, src, capsys, monkeypatch, landed):
    """Entries without ``writes`` (written before the write count) are decided by the row rule, right for
    the dedup off those ingests ran with."""
    store = tmp_path / "store"
    _create(store)
    real_write, real_add = resume.write_progress, MemoryIndex.add

    def crash_after_third_add(path, state):
        (entry,) = state["inputs"].values()
        if entry["ingested"] == 3 * BATCH and entry["pending"] == 0:
            raise KeyboardInterrupt
        real_write(path, state)

    def crash_in_fourth_add(self, *args, **kwargs):
        if self.write_count >= 4:  # the seed's add, then three batches
            raise KeyboardInterrupt
        return real_add(self, *args, **kwargs)

    if landed:
        monkeypatch.setattr(resume, "write_progress", crash_after_third_add)
    else:
        monkeypatch.setattr(MemoryIndex, "add", crash_in_fourth_add)
    assert cli.main(_argv(store, src, "off")) == 130
    monkeypatch.setattr(resume, "write_progress", real_write)
    monkeypatch.setattr(MemoryIndex, "add", real_add)
    state = resume.read_progress(store)
    (entry,) = state["inputs"].values()
    assert entry["pending"] == BATCH and entry["ingested"] == (2 if landed else 3) * BATCH
    for key in ("writes", "dedup"):
        del entry[key]
    state["version"] = 2
    (store / resume.PROGRESS_FILE).write_text(json.dumps(state))
    capsys.readouterr()
    assert cli.main(_argv(store, src, "off")) == 0
    assert json.loads(capsys.readouterr().out)["skipped_resumed"] == 3 * BATCH
    assert _dump(store) == _reference(tmp_path, "off")


def test_the_write_count_survives_checkpoints_reopens_and_readers(tmp_path):
    store = tmp_path / "store"
    _create(store)
    x, contents, *_ = _records()
    with MemoryIndex.open(store, mode="w") as ix:
        assert ix.write_count == 1
        ix.add(x[:2], contents=contents[:2])
        ix.add(x[:2], contents=contents[:2])  # every memory merges: still one logged record
        assert ix.last_add.merged == 2 and ix.write_count == 3
        ix.checkpoint()
        assert ix.write_count == 3
        ix.delete([0])
        with MemoryIndex.open(store, mode="r") as reader:
            assert reader.write_count == 4
        ix.close(checkpoint=False)
    with MemoryIndex.open(store, mode="w") as ix:
        assert ix.write_count == 4
    assert MemoryIndex(DIM).write_count == 0


def test_an_ingest_whose_duplicates_merge_still_leaves_its_store_trained(tmp_path):
    """``capacity`` (the input's record count) raises the training count to it; merged duplicates
    leave the rows short of it, so the ingest's last step trains (and tunes) the store itself."""
    from lukhas_gpu.ingest.batch import Batch
    from lukhas_gpu.vectors.policy import train_at

    n, dups = 2000, 100
    cfg = IndexConfig(train_threshold=1024, capacity=n, dedup="exact", target_recall=0.9, auto_tune=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    contents = [f"memory {i}" for i in range(n)]
    for i in range(dups):  # the last records repeat earlier contents
        contents[n - 1 - i] = contents[i]
    ix = MemoryIndex.create(tmp_path / "s", DIM, cfg)
    assert train_at(ix.config) == n  # the premise: the store trains only once it holds every record
    batches = [Batch(list(range(s, s + 500)), [None] * 500, x[s:s + 500], contents[s:s + 500], None,
                     np.full(500, np.nan), np.zeros(500)) for s in range(0, n, 500)]
    p = Pipeline(ix, checkpoint_every=2).run(batches)
    assert (p.merged, len(ix)) == (dups, n - dups)
    assert ix.is_trained and ix.tuning() is not None
    ix.close()
    with MemoryIndex.open(tmp_path / "s", mode="r") as rd:
        assert rd.is_trained and rd.tuning() is not None
