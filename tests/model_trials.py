"""The model test's ``trial`` op (``Run.op_trial``): a trial with a random change (a config field or
another candidate structure) and rule, in this process or in a writer subprocess killed with
SIGKILL at a random point of it (a rolled-back trial's report is logged: reopened, it is there). Whatever the
decision, the memories are the model's (every check runs after it); a promotion publishes one
generation (added to the lineage), a rollback none; after a kill the store is the live index or
the promoted one, and a generation written but not published is an orphan (as a checkpoint's)."""
from __future__ import annotations

import signal
import time

from model_calls import dumps_call

#: Changes a trial draws from. The checks search with ``nprobe = NLIST`` as "every list" and
#: hold the own-vector rank of PQ16 at 16 dims, so trials keep ``nlist <= NLIST`` and the PQ size.
CHANGES = ({"nlist": 4}, {"nlist": 8}, {"nlist": 16}, {"coarse": "hnsw"}, {"coarse": "flat"}, {"nprobe": 4},
           {"nlist": 8, "coarse": "hnsw"}, {"rerank": 8},
           # another candidate structure beside the IVF (index/stagetrial.py): the tuner's, promoted durably
           {"structure": "graph"}, {"structure": "rabitq"}, {"structure": "ivf-spill"}, {"structure": "ivf"},
           {"structure": "exact"})
#: (recall_tolerance, qps_tolerance) rules: promote at once, judge recall only, judge both, strict.
RULES = ((1.0, None), (0.5, None), (0.2, 1.0), (0.0, 0.0))


def check_tag_drift(reader, writer) -> None:
    """A reader caught up with the writer has its per-tag references: the same figures per tag."""
    from model_store import Violation

    got, want = reader.drift(by_tag=True)["tags"], writer.drift(by_tag=True)["tags"]
    if set(got) != set(want):
        raise Violation(f"the reader has per-tag drift for {sorted(got)}, the writer for {sorted(want)}")
    for tag, w in want.items():
        g = got[tag]
        if g["count"] != w["count"] or g["reference_count"] != w["reference_count"] \
                or abs(g["shift"] - w["shift"]) > 1e-5 * max(1.0, w["shift"]):
            raise Violation(f"per-tag drift of {tag!r}: the reader has {g}, the writer {w}")


def _call(op, rng) -> dict:
    change = CHANGES[int(rng.integers(len(CHANGES)))]
    change = op.get("change", change)  # a test may name it
    rt, qt = RULES[int(rng.integers(len(RULES)))]
    return {"name": "trial", **change, "recall_tolerance": rt, "qps_tolerance": qt}


def op_trial(run, op, rng) -> None:
    """In this process (70%) or a killed subprocess (30%)."""
    from model_store import Violation

    call = _call(op, rng)
    if op.get("killed", rng.random() < 0.3):
        return _killed(run, call, rng)
    ix = run._writer()
    kw = {k: v for k, v in call.items() if k != "name"}
    try:
        rep = ix.trial(**kw)
    except ValueError as e:
        if ix.is_trained and len(ix) >= 1024:
            raise Violation(f"a trial {kw} of a trained index of {len(ix)} memories raised: {e}") from e
        run.count("trial refused")
        return
    if rep["promoted"] != (rep["generation"] is not None) or rep["decision"] not in ("promoted", "rolled back"):
        raise Violation(f"a trial's report disagrees with itself: {rep['decision']}, generation {rep['generation']}")
    if ix.trials()[-1]["decision"] != rep["decision"]:
        raise Violation("trials() does not end with the last trial's report")
    if rep["generation"] is None:  # the report is logged: durable now, the log holds a record
        run.log_dirty = True
        run.model.writes += 1  # a logged record counts in write_count like any write
        if rng.random() < 0.3:
            _reopened_has(run, rep)
    if rep["generation"] is not None:
        if rep["generation"] != run.current():
            raise Violation(f"a promoted trial reports {rep['generation']}, CURRENT is {run.current()}")
        run.lineage.append((rep["generation"], run.model.copy()))
        run.log_dirty = False
        if any(getattr(ix.config, k) != v for k, v in kw.items() if k in ("nlist", "coarse", "rerank")):
            raise Violation(f"a promoted trial {kw} left the config {ix.config}")
    if "structure" in kw and rep["promoted"]:
        st = ix.parts.stage
        want = kw["structure"] if kw["structure"] in ("graph", "rabitq", "ivf-spill") else None
        if (st.kind if st is not None else None) != want:
            raise Violation(f"a promoted trial {kw} serves the stage {st and st.kind}")
    run.count("trial " + ("structure " if "structure" in kw else "") + rep["decision"])


def _reopened_has(run, rep: dict) -> None:
    """A rolled-back trial's report survives a close without a checkpoint (as a crash would)."""
    import json

    from model_store import Violation

    run._close(False)
    if run._writer().trials()[-1] != json.loads(json.dumps(rep)):
        raise Violation("a rolled-back trial's report is not in trials() after a reopen")
    run.count("trial report reopened")


def _log_holds_records(path) -> bool:
    from lukhas_gpu.index import durable
    from lukhas_gpu.store import layout

    return (path / layout.WAL).exists() and durable.log_summary(path / layout.WAL)["records"] > 0


def _killed(run, call: dict, rng) -> None:
    """A writer subprocess runs the trial and is killed at a random point (maybe after it)."""
    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.store import layout

    from model_checks import matches
    from model_store import Violation, spawn

    run._close(bool(rng.random() < 0.5))
    was = run.current()
    # a checkpoint numbers after the newest generation directory (an orphan or one rolled away from)
    nxt = f"gen-{layout.generations(run.path)[-1] + 1:06d}"
    proc = spawn("writer", run.path)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise Violation(f"the writer subprocess did not start: {proc.communicate(timeout=60)[1][-3000:]}")
        proc.stdin.write(dumps_call(call) + "\n")
        proc.stdin.flush()
        time.sleep(float(rng.uniform(0, 1.5)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    run.ix = MemoryIndex.open(run.path, mode="w")
    if not matches(run.ix, run.model, rng, run.known):
        raise Violation(f"after SIGKILL during a trial {call} the store does not hold the model's memories")
    cur = run.current()
    run.log_dirty = _log_holds_records(run.path)  # a rolled-back trial logged its report, maybe
    if cur == was and run.ix.write_count == run.model.writes + 1:  # its report was logged before the kill
        run.model.writes += 1
    if cur == nxt:
        run.lineage.append((cur, run.model.copy()))
        run.log_dirty = False
        run.count("trial killed: promoted")
    elif cur == was:
        run.orphans[nxt] = run.model.copy()  # a promotion's generation may be written, never published
        run.count("trial killed: live")
    else:
        raise Violation(f"after SIGKILL during a trial CURRENT is {cur}, expected {was} or {nxt}")


def op_tune(self, op, rng):
    """The tuner forced to one candidate structure (a graph, IVF-RaBitQ, the IVF, the exact
    scan): what later searches with a target use, kept through adds, updates, deletes,
    checkpoints, reopens, readers and crashes until a retrain drops a stage."""
    from model_store import Violation

    ix = self._writer()
    try:
        rep = ix.tune(0.9, structure=op["structure"], max_queries=64)
    except ValueError as e:
        if ix.is_trained:
            raise Violation(f"tune(structure={op['structure']!r}) of a trained index raised: {e}") from e
        self.count("tune refused (untrained)")
        return
    self.count("tune")
    self.count(f"tuned: {rep['kind']}")


def op_retrain(self, op, rng):
    """A rebuild of the IVF kept only if the probe says not worse; kept, it checkpoints."""
    from model_store import Violation

    ix = self._writer()
    try:
        rep = ix.retrain(tolerance=0.5)
    except ValueError as e:
        if ix.is_trained and len(ix) >= 1024:
            raise Violation(f"retrain of a trained index of {len(ix)} memories raised: {e}") from e
        self.count("retrain refused")
        return
    if rep["generation"] is not None:
        self.lineage.append((rep["generation"], self.model.copy()))
        self.log_dirty = False
    self.count("retrain accepted" if rep["accepted"] else "retrain discarded")
