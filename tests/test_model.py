"""The model test, short profile: random sequences of operations against a store and a plain-Python
model of what it must hold (``model_store.py``; the checks in ``model_checks.py``). The long
profile is ``python -m benchmarks.soak_model --minutes 30``.

The suite steers around the defects known on the main branch (``model_store.KNOWN_DEFECTS``);
the minimal op lists below, found and shrunk by the driver, show each one caught: they fail
today (xfail) and pass once the defect is fixed -- then drop its number from ``KNOWN_DEFECTS``.
"""
from __future__ import annotations

import pytest

import model_store as ms

#: (kind, seed, ops, op kinds every sequence holds): one sequence per store kind, ~60 s in all on
#: a quiet 2-core machine (each subprocess, a crash or a reader, costs seconds of torch import).
SUITE = [
    ("rows", 101, 44, ("crash", "proc", "rollback", "recover", "refresh", "lag", "compact", "reopen", "bad",
                       "dedup_add", "link", "unlink", "tune")),
    ("str", 102, 44, ("crash", "sharded", "rollback", "recover", "refresh", "lag", "compact", "reopen", "bad",
                      "link", "unlink", "tune", "trial")),
    ("int", 103, 24, ("rollback", "refresh", "reopen", "delete", "update", "concurrent", "concurrent")),
]


@pytest.mark.parametrize("kind,seed,n,must", SUITE, ids=[s[0] for s in SUITE])
def test_random_sequences_hold_to_the_model(tmp_path, kind, seed, n, must):
    ops = ms.gen_ops(seed, n, must=must)
    counts = ms.run_ops(kind, ops, tmp_path, seed, ms.KNOWN_DEFECTS)
    assert all(counts.get(o) for o in must), counts  # each op kind the sequence must hold ran
    assert counts.get("add", 0) + counts.get("bulk", 0) > 0 and counts.get("delete") and counts.get("update")


@pytest.mark.parametrize("structure", ["graph", "rabitq", "ivf-spill"])
def test_each_candidate_stage_holds_to_the_model(tmp_path, structure):
    """The tuner forced to a stage early (and again later), then every write path, checkpoints,
    reopens, readers, a crash and a retrain with the stage in place: every route held to the model."""
    must = ("tune", "tune", "update", "update", "delete", "reopen", "refresh", "compact", "crash", "retrain")
    ops = ms.gen_ops(7 + len(structure), 22, ops=[o for o in ms.ALL_OPS if o not in ("proc", "sharded")], must=must)
    ops.insert(2, {"op": "tune", "s": 0})
    for op in ops:
        if op["op"] == "tune":
            op["structure"] = structure
    counts = ms.run_ops("str", ops, tmp_path, 7, ms.KNOWN_DEFECTS)
    assert counts.get(f"tuned: {structure}"), counts


def test_the_driver_refuses_nothing_valid_and_accepts_nothing_invalid(tmp_path):
    """Invalid calls (NaN, importance out of range, repeated or unknown ids, a declared field of
    the wrong type) raise and change nothing, in both id modes."""
    for kind in ("rows", "str"):
        ops = [{"op": "bulk", "n": 40, "s": 1}] + [{"op": "bad", "s": s} for s in range(12)]
        counts = ms.run_ops(kind, ops, tmp_path / kind, 0, ms.KNOWN_DEFECTS)
        assert counts.get("refused", 0) >= 6, counts


#: Minimal op lists that catch the known defects (found by ``benchmarks/soak_model.py``-style
#: runs with that defect not tolerated, then shrunk). Random sequences catch them too, e.g.
#: ``gen_ops(seed, 40)`` without the crash and subprocess ops, the others tolerated: defect 1 in
#: seeds 400-402, 404, 406-411 (10 of 12); defect 3 in seeds 307, 310, 312; defect 2 in 308, 313;
#: defect 9 in the first check of any seed.
DEFECT_REPROS = {
    # 1: trained (1,015 rows), deletes, adds: a memory added after a delete is not found by its own
    #    vector with every list probed (row 1213 ranks below 16 candidates: its fast-scan code is garbled)
    1: ("rows", [{"op": "bulk", "n": 1015, "s": 1592975436}, {"op": "delete", "s": 357522694,
                                                            "picks": [0.3137, 0.1989, 0.8761]},
                 {"op": "bulk", "s": 1032392418, "n": 198}, {"op": "delete", "s": 396797507,
                                                             "picks": [0.4725, 0.1761, 0.2562, 0.939]},
                 {"op": "add", "s": 2038435447, "n": 6}]),
    # 9: search_text / sparse / hybrid with Filter(meta=...) raise "Filter.meta needs the index's
    #    metadata fields" (the first check's random filters hold a meta condition)
    9: ("rows", [{"op": "bulk", "n": 30, "s": 0}]),
    # 3: rollback, checkpoint, rollback: the second publishes gen-3 (the one rolled away from);
    #    the previous generation of gen-4 is gen-2 (pruned: it should refuse)
    3: ("rows", [{"op": "bulk", "n": 30, "s": 1}, {"op": "checkpoint", "s": 0}, {"op": "checkpoint", "s": 0},
                 {"op": "rollback", "s": 1, "discard": True}, {"op": "checkpoint", "s": 0},
                 {"op": "rollback", "s": 2, "discard": True}]),
    # 2: after a rollback to gen-2, an acknowledged add (in the log), close(checkpoint=False), then
    #    recover: it publishes gen-3 and the add is dropped with the stale log
    2: ("rows", [{"op": "bulk", "n": 30, "s": 1}, {"op": "checkpoint", "s": 0}, {"op": "add", "n": 3, "s": 2},
                 {"op": "checkpoint", "s": 0}, {"op": "rollback", "s": 1, "discard": True},
                 {"op": "add", "n": 3, "s": 3}, {"op": "recover", "s": 0}]),
}


@pytest.mark.parametrize("defect", sorted(DEFECT_REPROS))
def test_the_op_list_that_caught_a_defect_now_holds(tmp_path, defect):
    """Each defect's minimal op list (it raised a Violation before its fix), every check on."""
    kind, ops = DEFECT_REPROS[defect]
    ms.run_ops(kind, ops, tmp_path, 0, frozenset())


def test_a_reader_does_not_resume_a_replaced_log_at_its_old_offset(tmp_path):
    """A reader follows the log of gen-2; the writer checkpoints (gen-3), closes, rolls back to
    gen-2 and writes again in a new log with the base gen-2. When that file gets the old log's
    inode, refresh() resumes at the old offset: the reader serves the rolled-away memories and
    misses acknowledged ones (or raises IndexError when the offsets do not line up). Inode reuse
    is up to the file system (0 to 3 of 12 tries on ext4 here). Fixed: the cursor is the file and
    the log's random id (its header), so a replaced log is read from its start."""
    import numpy as np

    from lukhas_gpu import IndexConfig, MemoryIndex

    x = np.random.default_rng(0).standard_normal((60, 16)).astype(np.float32)
    for trial in range(20):
        path = tmp_path / f"s{trial}"
        w = MemoryIndex.create(path, 16, IndexConfig())
        w.add(x[:10], contents=[f"a{i}" for i in range(10)])
        w.checkpoint()
        r = MemoryIndex.open(path)
        for i in range(10, 20):
            w.add(x[i:i + 1], contents=[f"old{i}"])
        r.refresh()
        w.checkpoint()
        w.close()
        MemoryIndex.rollback(path)
        w = MemoryIndex.open(path, mode="w")
        for i in range(20, 60):
            w.add(x[i:i + 1], contents=[f"new{i}"])
        r.refresh()
        assert r.contents(list(range(10, 50))) == w.contents(list(range(10, 50))), f"try {trial}"
        w.close()
        r.close()


def test_dedup_and_links_hold_through_crashes(tmp_path):
    """Dedup adds (exact and near, duplicates planted), links, unlinks and deletes of linked
    memories, among crashes of the writer, reopens and a reader (``model_memops.py``)."""
    ops = ms.gen_ops(104, 26, ops=("add", "dedup_add", "link", "unlink", "delete", "update", "compact", "checkpoint",
                                   "reopen", "refresh", "crash"),
                     must=("crash", "crash", "dedup_add", "dedup_add", "link", "link", "unlink", "refresh"))
    ops[0]["n"] = 120  # untrained: every near candidate found by the exact scan
    counts = ms.run_ops("rows", ops, tmp_path, 104, ms.KNOWN_DEFECTS)
    assert counts.get("dedup exact merged", 0) + counts.get("dedup near merged", 0) > 0, counts


def test_structure_trials_hold_to_the_model(tmp_path):
    """Trials of each candidate structure (index/stagetrial.py), in this process and in writer
    subprocesses killed mid-trial, among writes, checkpoints, rollbacks, reopens and a reader; a
    rolled-back trial's report is durable (logged) at once."""
    ops = ms.gen_ops(105, 14, ops=("add", "update", "delete", "checkpoint", "reopen", "refresh", "rollback"),
                     must=("refresh", "rollback"))
    for i, (change, killed) in enumerate([("graph", False), ("exact", True), ("rabitq", False), ("graph", True),
                                          ("ivf", False), ("rabitq", True), ("ivf-spill", True), ("ivf-spill", False)]):
        ops.insert(3 + 2 * i, {"op": "trial", "s": 50 + i, "change": {"structure": change}, "killed": killed})
    counts = ms.run_ops("str", ops, tmp_path, 105, ms.KNOWN_DEFECTS)
    assert sum(v for k, v in counts.items() if k.startswith("trial structure")) >= 3, counts
    assert sum(v for k, v in counts.items() if k.startswith("trial killed")) == 4, counts
