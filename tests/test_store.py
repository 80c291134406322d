"""The durable store: checkpoint/open round trips, lazy loading, corruption, lock, rollback."""

import pathlib

import numpy as np
import pytest
from hypothesis import settings as _settings, strategies as _st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lukhas_gpu import Filter, IndexConfig, MemoryIndex
from lukhas_gpu.store import layout
from lukhas_gpu.store.layout import CorruptStoreError, StoreError, StoreLockedError
from lukhas_gpu.store.wal import WalReader

NOW = 1_750_000_000.0


def _fill(index, xb, start=0, batch=1000):
    n = len(xb)
    rng = np.random.default_rng(start)
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        m = sl.stop - sl.start
        index.add(xb[sl], contents=[f"memory {start + i}" for i in range(sl.start, sl.stop)],
                  tags=[["even"] if (start + i) % 2 == 0 else ["odd"] for i in range(sl.start, sl.stop)],
                  timestamps=NOW - rng.random(m) * 1e6, importance=rng.random(m))


@pytest.fixture(scope="module")
def data():
    from conftest import make_clustered

    return make_clustered(5000, 32, n_queries=30, seed=11)


@pytest.mark.parametrize("trained", [False, True])
def test_checkpoint_open_round_trip(tmp_path, data, trained):
    xb, xq = data
    cfg = IndexConfig(train_threshold=2048 if trained else 100_000, nlist=32, nprobe=32)
    index = MemoryIndex.create(tmp_path / "s", 32, cfg)
    _fill(index, xb)
    index.delete([3, 4, 5])
    index.update([7], contents=["changed"], tags=[["new"]])
    index.checkpoint()
    before = index.search(xq, 10, where=Filter(tags_any=["odd", "new"]))
    index.close()
    for mode in ("r", "w"):
        back = MemoryIndex.open(tmp_path / "s", mode=mode)
        assert len(back) == len(index) and back.is_trained == trained
        after = back.search(xq, 10, where=Filter(tags_any=["odd", "new"]))
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_allclose(after.scores, before.scores, rtol=1e-6)
        assert back.get([7])[0].content == "changed" and back.get([7])[0].tags == ["new"]
        with pytest.raises(ValueError, match="deleted"):
            back.get([4])
        assert back.verify()["ok"]
        back.close()


def test_read_only_is_lazy_and_refuses_writes(tmp_path, data):
    xb, xq = data
    index = MemoryIndex.create(tmp_path / "s", 32, IndexConfig(train_threshold=2048, nlist=32))
    _fill(index, xb)
    index.checkpoint()
    index.close()
    ro = MemoryIndex.open(tmp_path / "s")
    assert ro.parts.vectors.memory_usage() == {"mapped": {"vectors_int8": 5000 * 32}, "anon": {}}  # a file map
    assert "content_records" in ro.parts.contents.memory_usage()["mapped"]  # the records are a file map
    with pytest.raises(StoreError, match="read-only"):
        ro.add(xb[:2])
    with pytest.raises(StoreError, match="read-only"):
        ro.delete([1])


def test_writer_appends_after_open_and_checkpoint_keeps_both(tmp_path, data):
    xb, xq = data
    index = MemoryIndex.create(tmp_path / "s", 32, IndexConfig(train_threshold=2048, nlist=32))
    _fill(index, xb[:3000])
    index.checkpoint()
    index.close()
    w = MemoryIndex.open(tmp_path / "s", mode="w")
    _fill(w, xb[3000:], start=3000)
    w.checkpoint()
    w.close()
    r = MemoryIndex.open(tmp_path / "s")
    assert len(r) == 5000
    assert r.get([4999])[0].content == "memory 4999"
    assert r.search(xb[4500], 1).ids[0] == 4500


def test_second_writer_is_refused_readers_are_not(tmp_path, data):
    import subprocess
    import sys

    xb, _ = data
    index = MemoryIndex.create(tmp_path / "s", 32)
    _fill(index, xb[:100])
    index.checkpoint()
    index.close()
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, lukhas_gpu; ix = lukhas_gpu.MemoryIndex.open(sys.argv[1], mode='w'); "
        "print('ready', flush=True); time.sleep(60)"), str(tmp_path / "s")], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLockedError, match=str(child.pid)):
            MemoryIndex.open(tmp_path / "s", mode="w")
        assert len(MemoryIndex.open(tmp_path / "s")) == 100  # readers run beside the writer
    finally:
        child.kill()
        child.wait()
    # the owner is gone: its lock is taken over
    MemoryIndex.open(tmp_path / "s", mode="w").close()


def test_rollback_returns_to_previous_generation(tmp_path, data):
    xb, _ = data
    index = MemoryIndex.create(tmp_path / "s", 32)
    _fill(index, xb[:100])
    index.checkpoint()
    _fill(index, xb[100:200], start=100)
    index.checkpoint()
    index.close()
    assert len(MemoryIndex.open(tmp_path / "s")) == 200
    MemoryIndex.rollback(tmp_path / "s")
    assert len(MemoryIndex.open(tmp_path / "s")) == 100


@pytest.mark.parametrize("name", ["manifest.json", "vectors.i8", "content.bin", "content.npz", "metadata.npz",
                                  "tags.npz", "deleted.roaring", "encoder.npz", "ann.faiss"])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corruption_names_the_file(tmp_path, data, name, damage):
    xb, _ = data
    index = MemoryIndex.create(tmp_path / "s", 32, IndexConfig(train_threshold=2048, nlist=32))
    _fill(index, xb)
    gen = index.checkpoint()
    index.close()
    p = gen / name
    raw = bytearray(p.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    p.write_bytes(bytes(raw))
    with pytest.raises((CorruptStoreError, StoreError)) as e:
        ix = MemoryIndex.open(tmp_path / "s")
        ix.verify()
    assert name in str(e.value)


def test_open_missing_and_create_existing(tmp_path):
    with pytest.raises(StoreError, match="not a lukhas_gpu store"):
        MemoryIndex.open(tmp_path)
    MemoryIndex.create(tmp_path / "s", 8).close()
    with pytest.raises(StoreError, match="already holds a store"):
        MemoryIndex.create(tmp_path / "s", 8)


def test_newer_format_version_says_how(tmp_path):
    import json

    ix = MemoryIndex.create(tmp_path / "s", 8)
    gen = ix.checkpoint()
    ix.close()
    m = json.loads((gen / "manifest.json").read_text())
    m["format_version"] = 99
    (gen / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="newer lukhas_gpu"):
        MemoryIndex.open(tmp_path / "s")


def test_save_in_memory_index(tmp_path, data):
    xb, xq = data
    index = MemoryIndex(32)
    _fill(index, xb[:500])
    index.save(tmp_path / "s")
    back = MemoryIndex.open(tmp_path / "s")
    np.testing.assert_array_equal(back.search(xq, 5).ids, index.search(xq, 5).ids)


def test_wal_replays_unCheckpointed_writes(tmp_path, data):
    xb, xq = data
    index = MemoryIndex.create(tmp_path / "s", 32, IndexConfig(train_threshold=2048, nlist=32))
    _fill(index, xb[:3000])
    index.checkpoint()
    _fill(index, xb[3000:], start=3000)           # logged, not checkpointed
    index.delete([10, 3500])
    index.update([11], contents=["after"], importance=[0.25])
    expect = index.search(xq, 10)
    index.close(checkpoint=False)
    ro = MemoryIndex.open(tmp_path / "s")                  # readers replay the log too
    assert len(ro) == 4998 and ro.get([11])[0].content == "after"
    np.testing.assert_array_equal(ro.search(xq, 10).ids, expect.ids)
    back = MemoryIndex.open(tmp_path / "s", mode="w")      # the writer replays the log
    assert len(back) == 4998 and back.get([11])[0].content == "after"
    assert back.get([11])[0].importance == 0.25
    np.testing.assert_array_equal(back.search(xq, 10).ids, expect.ids)
    back.checkpoint()
    back.close()
    assert len(MemoryIndex.open(tmp_path / "s")) == 4998


def test_torn_wal_tail_is_cut_not_replayed(tmp_path, data):
    xb, _ = data
    index = MemoryIndex.create(tmp_path / "s", 32)
    _fill(index, xb[:300], batch=100)
    index.close(checkpoint=False)
    wal = tmp_path / "s" / "wal.log"
    size = wal.stat().st_size
    with open(wal, "r+b") as f:  # a crash in the middle of the last append
        f.truncate(size - 100)
    back = MemoryIndex.open(tmp_path / "s", mode="w")
    assert len(back) == 200 and back.get([199])[0].content == "memory 199"
    back.add(xb[300:301])
    back.close()
    assert len(MemoryIndex.open(tmp_path / "s", mode="w")) == 201


# -- the lineage: rollback, recover, prune, reopen in sequence ----------------------------------------
def _lineage_store(path, xb):
    """gen 2 holds ids 0..99, gen 3 (its child) 0..199; closed, the log empty."""
    index = MemoryIndex.create(path, 32)
    _fill(index, xb[:100])
    index.checkpoint()
    _fill(index, xb[100:200], start=100)
    index.close()
    return path


def _contents(path, mode="r"):
    ix = MemoryIndex.open(path, mode=mode)
    try:
        rows = np.arange(ix.parts.rows)
        return {int(m.id): m.content for m in ix.get(rows[ix.contains(rows)])}
    finally:
        ix.close(checkpoint=False)


@pytest.mark.parametrize("how", ["cli", "open"])
def test_recover_after_a_rollback_keeps_the_acknowledged_writes(tmp_path, data, how):
    """Issue: recover published the generation rolled away from (the newest that verifies) and the
    next writer dropped the log that followed the rollback's target."""
    from lukhas_gpu import cli

    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    assert MemoryIndex.rollback(path).name == "gen-000002"
    ix = MemoryIndex.open(path, mode="w")
    _fill(ix, xb[200:210], start=100)  # ids 100..109 again: new memories after the rollback
    ix.delete([3])
    ix.close(checkpoint=False)  # acknowledged, in the log only (it follows gen 2)
    expect = {i: f"memory {i}" for i in range(110) if i != 3}
    if how == "cli":
        assert cli.main(["recover", str(path)]) == 0
        ix = MemoryIndex.open(path, mode="w")
    else:
        ix = MemoryIndex.open(path, mode="w", recover=True)
    assert len(ix) == 109 and not ix.contains([3])[0] and ix.parts.rows == 110
    ix.close(checkpoint=False)
    assert (path / layout.WAL).exists() and _contents(path) == expect == _contents(path, "w")
    assert layout.current_generation(path).name == "gen-000002"


def test_a_second_rollback_follows_the_lineage(tmp_path, data):
    """Issue: after rollback N -> N-1, a checkpoint (N+1) pruned N-1 and kept N, and the next
    rollback returned to N, the generation rolled away from."""
    import json

    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    MemoryIndex.rollback(path)  # gen 3 abandoned
    ix = MemoryIndex.open(path, mode="w")
    _fill(ix, xb[300:320], start=1000)
    gen = ix.checkpoint()  # gen 4, child of gen 2
    ix.close()
    assert gen.name == "gen-000004" and layout.generations(path) == [2, 4]  # the abandoned branch pruned
    manifest = json.loads((gen / layout.MANIFEST).read_text())
    assert manifest["parent"] == 2 and manifest["log_id"]
    assert layout.previous_generation(path).name == "gen-000002"
    assert MemoryIndex.rollback(path).name == "gen-000002"
    assert len(MemoryIndex.open(path)) == 100
    with pytest.raises(StoreError, match="no previous generation"):  # gen 2's parent (gen 1) is pruned
        MemoryIndex.rollback(path)
    ix = MemoryIndex.open(path, mode="w")
    _fill(ix, xb[400:410], start=2000)
    assert ix.checkpoint().name == "gen-000005"  # numbers never reused
    ix.close()
    assert layout.generations(path) == [2, 5]


def test_the_parent_field_is_covered_by_the_manifest_crc(tmp_path, data):
    import json

    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    gen = layout.current_generation(path)
    m = json.loads((gen / layout.MANIFEST).read_text())
    m["parent"] = 1
    (gen / layout.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CorruptStoreError, match="manifest.json.*corrupted"):
        MemoryIndex.rollback(path)
    m["parent"] = 7  # not below its own number: out of bounds before anything else
    (gen / layout.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CorruptStoreError, match="parent = 7 is outside"):
        MemoryIndex.open(path)


def test_a_store_without_lineage_rolls_back_to_the_previous_number(tmp_path, data):
    """Generations written before the parent field: the parent is the previous number on disk."""
    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    _strip_lineage(path)
    assert layout.parent_number(path, 3) == 2 and layout.previous_generation(path).name == "gen-000002"
    assert MemoryIndex.rollback(path).name == "gen-000002" and len(MemoryIndex.open(path)) == 100


def _strip_lineage(path):
    """The store as an older lukhas_gpu wrote it: manifests without parent, log id, own CRC."""
    import json

    for g in layout.generations(path):
        p = path / layout.generation_name(g) / layout.MANIFEST
        m = json.loads(p.read_text())
        for k in ("parent", "log_id", layout.MANIFEST_CRC):
            m.pop(k, None)
        p.write_text(json.dumps(m))
    wal = path / layout.WAL
    if wal.exists():  # the first log format: 16-byte header, no id
        from lukhas_gpu.store.walcodec import HEADER_V1, MAGIC_V1

        with WalReader(wal) as r:
            base, start = r.base, r.header_size
        wal.write_bytes(HEADER_V1.pack(MAGIC_V1, base) + wal.read_bytes()[start:])


def test_a_store_without_lineage_replays_its_log_and_keeps_a_stale_one_aside(tmp_path, data):
    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    ix = MemoryIndex.open(path, mode="w")
    _fill(ix, xb[200:210], start=200)
    ix.close(checkpoint=False)
    _strip_lineage(path)
    assert len(_contents(path)) == 210 == len(_contents(path, "w"))  # a log of the first format, replayed
    ix = MemoryIndex.open(path, mode="w")
    stale = (path / layout.WAL).read_bytes()
    ix.checkpoint()  # gen 4 (with lineage) absorbs the old-format log
    ix.close()
    (path / layout.WAL).write_bytes(stale)
    assert len(_contents(path, "w")) == 210 and not list(path.glob("wal.log.stale-*"))  # absorbed: dropped
    _strip_lineage(path)
    (path / layout.WAL).write_bytes(stale)  # neither says whether gen 4 holds it: kept aside, not replayed
    assert len(_contents(path, "w")) == 210 and len(list(path.glob("wal.log.stale-*"))) == 1


def test_a_log_the_lineage_does_not_explain_is_refused_never_dropped(tmp_path, data):
    """A log whose base is neither the published generation nor its parent (absorbed): the
    writer, a reader and verify refuse it, nothing changes; recover publishes the generation the
    log follows and its records are replayed."""
    from lukhas_gpu import cli

    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    ix = MemoryIndex.open(path, mode="w")
    _fill(ix, xb[200:230], start=200)  # logged after gen 3
    ix.close(checkpoint=False)
    layout.publish(path, "gen-000002")  # CURRENT moved by hand: the log follows a child of it
    before = (path / layout.WAL).read_bytes()
    for call in (lambda: MemoryIndex.open(path, mode="w"), lambda: MemoryIndex.open(path),
                 lambda: MemoryIndex.rollback(path)):
        with pytest.raises(CorruptStoreError, match="follows generation 3"):
            call()
    assert cli.main(["verify", str(path)]) == 1
    assert (path / layout.WAL).read_bytes() == before
    assert cli.main(["recover", str(path)]) == 0
    assert len(_contents(path, "w")) == 230 and layout.current_generation(path).name == "gen-000003"


def test_an_absorbed_log_is_dropped_and_a_committed_rollback_is_finished(tmp_path, data):
    """The two crash windows the lineage tells apart by the log's id: a checkpoint published but
    its log not restarted (the log is in the checkpoint), and a rollback whose new log is in place
    but CURRENT not switched (the store is at the target)."""
    from lukhas_gpu import cli

    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    ix = MemoryIndex.open(path, mode="w")
    _fill(ix, xb[200:210], start=200)
    absorbed = (path / layout.WAL).read_bytes()
    ix.checkpoint()  # gen 4 absorbed that log
    ix.close()
    (path / layout.WAL).write_bytes(absorbed)
    assert len(MemoryIndex.open(path)) == 210  # a reader does not replay it on gen 4
    assert _contents(path, "w") == {i: f"memory {i}" for i in range(210)}
    assert (path / layout.WAL).read_bytes() != absorbed

    from lukhas_gpu.store import lineage
    lineage.commit_rollback(path, 3, keep_log=False)  # the whole rollback ...
    layout.publish(path, "gen-000004")  # ... but CURRENT as if the switch never happened
    r = MemoryIndex.open(path)
    assert len(r) == 200 and r.verify()["generation"] == 3  # a reader and verify: at gen 3
    assert cli.main(["verify", str(path)]) == 0
    ix = MemoryIndex.open(path, mode="w")  # the writer finishes the rollback
    assert len(ix) == 200 and layout.current_generation(path).name == "gen-000003"
    ix.close()


def test_recover_after_a_rollback_never_takes_the_abandoned_branch(tmp_path, data):
    """CURRENT unreadable: the log's header says where the store is; the generation it names
    damaged: its lineage is walked, the branch the rollback abandoned is never a candidate."""
    from lukhas_gpu import cli

    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    MemoryIndex.rollback(path)
    ix = MemoryIndex.open(path, mode="w")
    _fill(ix, xb[200:205], start=100)
    ix.close(checkpoint=False)
    (path / layout.CURRENT).write_bytes(b"\xffen-000003\n")
    report = MemoryIndex.open(path, mode="w", recover=True)
    assert len(report) == 105 and layout.current_generation(path).name == "gen-000002"
    report.close(checkpoint=False)
    meta = path / "gen-000002" / "metadata.npz"
    raw = bytearray(meta.read_bytes())
    raw[40] ^= 0x5A
    meta.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match="no generation of its lineage verifies"):
        MemoryIndex.open(path, mode="w", recover=True)
    assert cli.main(["recover", str(path)]) == 1
    assert layout.current_generation(path).name == "gen-000002" and (path / layout.WAL).exists()


def test_recover_past_a_damaged_generation_with_an_empty_log_leaves_a_store_that_opens(tmp_path, data):
    """The empty log of the damaged generation (base 3) was left in place, and the next open
    refused it as following a generation newer than the published one."""
    xb, _ = data
    path = _lineage_store(tmp_path / "s", xb)
    meta = path / "gen-000003" / "metadata.npz"
    raw = bytearray(meta.read_bytes())
    raw[40] ^= 0x5A
    meta.write_bytes(bytes(raw))
    ix = MemoryIndex.open(path, mode="w", recover=True)
    assert len(ix) == 100
    ix.close()
    assert len(_contents(path, "w")) == 100 and layout.current_generation(path).name == "gen-000002"


# -- a model of the generations: every sequence of writes, checkpoints, reopens, rollbacks, recovers --


class GenerationsModel(RuleBasedStateMachine):
    """The store against a model of its lineage: what each generation holds, its parent, which are
    on disk; the contents a reader and a writer see must be the model's after every step."""

    def __init__(self):
        super().__init__()
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.path = pathlib.Path(self.tmp.name) / "s"
        self.ix = MemoryIndex.create(self.path, 8)
        self.next_id, self.live, self.logged = 0, {}, False
        self.gens, self.parent, self.head = {1: {}}, {1: None}, 1

    def teardown(self):
        if self.ix is not None:
            self.ix.close(checkpoint=False)
        self.tmp.cleanup()

    def _writer(self):
        if self.ix is None:
            self.ix = MemoryIndex.open(self.path, mode="w")
        return self.ix

    def _close(self, checkpoint=False):
        if self.ix is not None:
            if checkpoint and self.logged:
                self._published()
            self.ix.close(checkpoint=checkpoint)
            self.ix = None

    def _published(self):
        g = max(self.gens) + 1
        self.gens[g], self.parent[g], self.head, self.logged = dict(self.live), self.head, g, False
        keep = {g, self.head, self.parent[g]}
        self.gens = {k: v for k, v in self.gens.items() if k in keep}

    @rule(n=_st.integers(1, 3))
    def add(self, n):
        ids = self._writer().add(np.random.default_rng(self.next_id).standard_normal((n, 8)).astype(np.float32),
                                 contents=[f"c{self.next_id + i}" for i in range(n)])
        assert list(ids) == list(range(self.next_id, self.next_id + n))
        self.live.update({self.next_id + i: f"c{self.next_id + i}" for i in range(n)})
        self.next_id, self.logged = self.next_id + n, True

    @precondition(lambda self: self.live)
    @rule(k=_st.integers(0, 10**6))
    def delete(self, k):
        victim = sorted(self.live)[k % len(self.live)]
        self._writer().delete([victim])
        del self.live[victim]
        self.logged = True

    @rule()
    def checkpoint(self):
        assert layout.generation_number(self._writer().checkpoint()) == max(self.gens) + 1
        self._published()

    @rule(checkpoint=_st.booleans())
    def reopen(self, checkpoint):
        self._close(checkpoint)
        self._writer()

    @rule(discard=_st.booleans())
    def rollback(self, discard):
        self._close()
        target = self.parent[self.head]
        if target not in self.gens or (self.logged and not discard):
            with pytest.raises(StoreError):
                MemoryIndex.rollback(self.path, discard_log=discard)
            return
        assert MemoryIndex.rollback(self.path, discard_log=discard).name == layout.generation_name(target)
        self.head, self.live, self.logged = target, dict(self.gens[target]), False
        self.next_id = MemoryIndex.open(self.path).parts.rows  # ids are rows: adds go on after the target's

    @precondition(lambda self: self.logged)
    @rule()
    def checkpoint_then_crash(self):
        """Killed between publishing a checkpoint and restarting its log: the old log is back."""
        wal = self.path / layout.WAL
        old = wal.read_bytes()
        self.checkpoint()
        self._close()
        wal.write_bytes(old)

    @rule()
    def rollback_then_crash(self):
        """Killed after a rollback's commit (its new log in place), before CURRENT is switched."""
        from unittest import mock

        from lukhas_gpu.store import lineage

        self._close()
        target = self.parent[self.head]
        if target not in self.gens or self.logged:
            return
        with mock.patch.object(layout, "publish"):
            lineage.commit_rollback(self.path, target, keep_log=False)
        self.head, self.live = target, dict(self.gens[target])
        self.next_id = MemoryIndex.open(self.path).parts.rows
        assert layout.current_generation(self.path).name != layout.generation_name(target)
        self.ix = MemoryIndex.open(self.path, mode="w")  # finishes it

    @rule()
    def recover(self):
        from lukhas_gpu.index import durable

        self._close()
        report = durable.recover(self.path)
        assert report["generation"] == layout.generation_name(self.head) and not report["changed"]

    @invariant()
    def agrees(self):
        if self.ix is not None:
            rows = np.arange(self.ix.parts.rows)
            assert {int(m.id): m.content for m in self.ix.get(rows[self.ix.contains(rows)])} == self.live
        else:
            assert _contents(self.path) == self.live
        assert layout.generations(self.path) == sorted(self.gens)  # nothing outside the model, nothing missing
        assert layout.current_generation(self.path).name == layout.generation_name(self.head)


GenerationsModel.TestCase.settings = _settings(max_examples=12, stateful_step_count=20, deadline=None)
test_generations_model = GenerationsModel.TestCase
