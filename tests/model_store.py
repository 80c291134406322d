"""A plain-Python model of what a store must hold, and a seeded driver that runs random sequences
of operations against a real store and the model side by side (the model test of STYLE habit 13).

The model (:class:`Model`) is a dict of memories by key (the row id, or the external id) with
their vector, content, tags, timestamp, importance, metadata and sparse vector, plus the next row
number. The driver (:class:`Run`) executes *ops*: small JSON dicts that describe an operation
independently of the state (``{"op": "delete", "picks": [0.3, 0.9]}`` picks among the live keys
when it runs), so any sub-list of a failing sequence is itself a valid sequence (``shrink``).
After every op :func:`model_checks.check_index` holds the store to the model.

Ops: add (contents, tags, timestamps, importance, metadata, sparse, namespaces, validity windows; external ids with
upserts of live ids and re-adds of deleted ones), dedup adds, link, unlink (``model_memops.py``), delete, update
(every field, embeddings and window ends included), drop_namespace, purge_expired (``model_scopes.py``), invalid
calls (nothing may change), compact, checkpoint, reopen, rollback, recover, a reader in this process (refresh, lag),
a reader in a subprocess that also runs the CLI's ``get`` and ``search``, a ShardedIndex over the store (a one-shard
root), concurrent searches (``model_concurrent.py``) and a writer subprocess killed with SIGKILL at a random point:
every acknowledged call there, the one in flight whole or not.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import random
import signal
import time

import numpy as np
from model_concurrent import ConcurrentOps
from model_procs import spawn
from model_scopes import ScopeOps, deleted_keys, one, scope_call, valid_keys
from model_trials import check_tag_drift, op_retrain as _op_retrain, op_trial as _op_trial, op_tune as _op_tune

import model_memops as memops
from model_calls import _enc, _pick, dumps_call, make_add, make_bad, make_update, run_call
from model_consts import (  # noqa: F401
    ALL_OPS,
    DIM,
    FIELDS,
    KINDS,
    KNOWN_DEFECTS,
    NLIST,
    ROOT,
    STRUCTURES,
    T0,
    TAGS,
    USERS,
    WEIGHTS,
    WORDS,
)


class Violation(AssertionError):
    """The store disagrees with the model."""


def config(kind: str):
    from lukhas_gpu import IndexConfig

    return IndexConfig(train_threshold=1024, nlist=NLIST, nprobe=NLIST, pq_m=16, rerank=16, filter_exact_max=48,
                       text_index=True, metadata_fields=FIELDS, external_ids=None if kind == "rows" else kind,
                       probe_size=64, probe_queries=16, auto_tune=False, gpu_resident="off")


# -- the model --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Mem:
    row: int
    vec: np.ndarray
    content: object
    tags: tuple
    ts: float
    imp: float
    meta: dict | None
    sparse: tuple | None  # (indices, values) or None
    ns: str = ""  # the namespace
    vf: float = float("-inf")  # the validity window [vf, vt)
    vt: float = float("inf")


@dataclasses.dataclass
class Model:
    kind: str
    mems: dict = dataclasses.field(default_factory=dict)
    next_row: int = 0
    dead: set = dataclasses.field(default_factory=set)  # keys once live, now deleted or replaced
    links: dict = dataclasses.field(default_factory=dict)  # (src row, dst row, kind) -> weight (model_memops)
    writes: int = 0  # the store's write count (MemoryIndex.write_count): records logged, rollbacks taken back

    def copy(self) -> Model:
        return Model(self.kind, dict(self.mems), self.next_row, set(self.dead), dict(self.links), self.writes)

    def keys(self) -> list:
        return sorted(self.mems, key=lambda k: self.mems[k].row)

    def by_row(self) -> dict:
        return {m.row: k for k, m in self.mems.items()}

    def same(self, other: Model) -> bool:
        return self.next_row == other.next_row and set(self.mems) == set(other.mems) and self.links == other.links \
            and all(_mem_eq(self.mems[k], other.mems[k]) for k in self.mems)


def _mem_eq(a: Mem, b: Mem) -> bool:
    return (a.row == b.row and np.array_equal(a.vec, b.vec) and a.content == b.content and a.tags == b.tags
            and a.ts == b.ts and a.imp == b.imp and a.meta == b.meta and _sp_eq(a.sparse, b.sparse)
            and (a.ns, a.vf, a.vt) == (b.ns, b.vf, b.vt))


def _sp_eq(a, b) -> bool:
    return a is b if a is None or b is None else np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def apply_call(model: Model, call: dict) -> Model:
    """The model after ``call`` (a concrete call, see :func:`make_add`) succeeds."""
    m = model.copy()
    name = call["name"]
    if name == "add" and any(t >= 0 for t in memops.dedup_into(model, call)):  # a deduped add (model_memops)
        memops.apply_dedup_add(m, call, memops.dedup_into(model, call), lambda mm, i: _new_mem(call, i, mm.next_row))
    elif name == "add":
        ids = call.get("ids")
        for i in range(len(call["embeddings"])):
            key = ids[i] if ids is not None else m.next_row
            if key in m.mems:
                del m.mems[key]
            m.dead.discard(key)
            m.mems[key] = _new_mem(call, i, m.next_row)
            m.next_row += 1
    elif name in ("link", "unlink"):
        memops.apply_link_call(m, call)
    elif name in ("delete", "drop_namespace", "purge_expired"):
        for key in deleted_keys(m, call):
            del m.mems[key]
            m.dead.add(key)
    elif name == "update":
        names = {"contents": "content", "tags": "tags", "timestamps": "ts", "importance": "imp",
                 "embeddings": "vec", "metadata": "meta"}
        for i, key in enumerate(call["ids"]):
            change = {f: (tuple(call[a][i]) if a == "tags" else call[a][i]) for a, f in names.items() if a in call}
            window = (("valid_from", "vf"), ("valid_to", "vt"))
            change.update({f: one(call, a, i, None) for a, f in window if a in call})
            m.mems[key] = dataclasses.replace(m.mems[key], **change)
    m.writes += logs_record(call, model, m)
    return m


def _new_mem(call, i: int, row: int) -> Mem:
    return Mem(row, call["embeddings"][i], _nth(call, "contents", i, None), tuple(_nth(call, "tags", i, ())),
               _nth(call, "timestamps", i, None), _imp(call.get("importance"), i), _nth(call, "metadata", i, None),
               _nth(call, "sparse", i, None), one(call, "namespace", i, ""), one(call, "valid_from", i, float("-inf")),
               one(call, "valid_to", i, float("inf")))


def _nth(call, name, i, default):
    v = call.get(name)
    return default if v is None else v[i]


def _imp(v, i):
    if v is None:
        return 0.5
    return float(v) if np.isscalar(v) else float(v[i])


# -- op generation ------------------------------------------------------------------------------------
def gen_ops(seed: int, n_ops: int, ops=ALL_OPS, must=()) -> list:
    """A random sequence: a first bulk add (so training happens early) and a checkpoint, then
    ``n_ops`` ops drawn by ``WEIGHTS`` from ``ops``, with one of each kind in ``must`` among them."""
    rng = random.Random(seed)
    kinds = [o for o in ops if o in WEIGHTS]
    weights = [WEIGHTS[o] for o in kinds]
    out = [{"op": "bulk", "n": rng.randint(950, 1100), "s": rng.getrandbits(31)}, {"op": "checkpoint", "s": 0}]
    drawn = [rng.choices(kinds, weights)[0] for _ in range(max(n_ops - len(must), 0))]
    for o in must:
        drawn.insert(rng.randint(0, len(drawn)), o)
    for o in drawn:
        op = {"op": o, "s": rng.getrandbits(31)}
        if o in ("add", "bulk", "dedup_add"):
            op["n"] = rng.randint(20, 200) if o == "bulk" else rng.randint(1, 6)
        elif o in ("delete", "update"):
            op["picks"] = [round(rng.random(), 4) for _ in range(rng.randint(1, 4))]
        elif o == "reopen":
            op["ckpt"] = rng.random() < 0.5
        elif o == "rollback":
            op["discard"] = rng.random() < 0.5
        elif o == "crash":
            op["n"] = rng.randint(2, 10)
        elif o == "tune":
            op["structure"] = rng.choice(STRUCTURES)
        out.append(op)
    return out


# -- the driver -----------------------------------------------------------------------------------------
class Run(ScopeOps, memops.MemOpsMixin, ConcurrentOps):
    """One store (a one-shard root, so ShardedIndex can open it), its model and its history.

    ``lineage``: ``(generation name, model)`` of every generation published, newest last; a
    rollback must publish the one before the current (or refuse), never another. ``log_dirty``:
    the log holds acknowledged records after the current generation.
    """

    def __init__(self, kind: str, tmp, seed: int, known=KNOWN_DEFECTS):
        from lukhas_gpu import MemoryIndex
        from lukhas_gpu.distributed import rootfiles as droot

        self.kind, self.seed, self.known = kind, seed, frozenset(known)
        self.root = pathlib.Path(tmp) / "root"
        self.path = self.root / "shard-00000"
        droot.write_root(self.root, shards=1, dim=DIM, state="complete")
        self.model = Model(kind)
        self.ix = MemoryIndex.create(self.path, DIM, config(kind))
        self.lineage = [(self.current(), self.model.copy())]
        self.orphans: dict = {}  # generations written but never published (a checkpoint killed midway)
        self.log_dirty = False
        self.reader, self.reader_model = None, None
        self.replaced = self.reader_replaced = 0  # rollbacks and recoveries (a new log, maybe the old inode)
        self.counts: dict = {}
        self.note = ""  # what the last op saw, added to a violation's message
        self.tmp = pathlib.Path(tmp)

    def current(self) -> str:
        from lukhas_gpu.store import layout

        return layout.current_generation(self.path).name

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def close(self) -> None:
        for ix in (self.reader, self.ix):
            if ix is not None:
                ix.close(checkpoint=False)
        self.reader = self.ix = None

    def execute(self, op: dict) -> None:
        from model_checks import check_index

        rng = np.random.default_rng(op["s"])
        self.note = ""
        getattr(self, "op_" + op["op"])(op, rng)
        self.count(op["op"])
        self._writer()
        try:
            check_index(self.ix, self.model, rng, self.known)
        except Violation as e:
            raise Violation(f"{e} [{self.note}]" if self.note else str(e)) from None

    # -- the writer's life ----------------------------------------------------------------------------------
    def _writer(self):
        from lukhas_gpu import MemoryIndex

        if self.ix is None:
            self.ix = MemoryIndex.open(self.path, mode="w")
        return self.ix

    def _close(self, checkpoint: bool) -> None:
        if self.ix is None:
            return
        before = self.current()
        self.ix.close(checkpoint=checkpoint)
        self.ix = None
        after = self.current()
        if after != before:
            self.lineage.append((after, self.model.copy()))
            self.log_dirty = False
        elif checkpoint and self.log_dirty:
            raise Violation("close() with acknowledged records in the log published no generation")

    def call(self, call: dict) -> None:
        ix = self._writer()
        expect = None if call.get("bad") else apply_call(self.model, call)
        t0 = time.time()
        try:
            out = run_call(ix, call)
        except (ValueError, TypeError) as e:
            if call.get("bad"):
                self.count("refused")
                return
            raise Violation(f"a valid {call['name']} raised {type(e).__name__}: {e}") from e
        if call.get("bad"):
            raise Violation(f"an invalid {call['name']} was accepted: {_brief(call)}")
        if call["name"] == "add":
            want = memops.add_ids(self.model, expect, call)
            if np.asarray(out).tolist() != want:
                raise Violation(f"add returned rows {np.asarray(out).tolist()}, expected {want}")
            if call.get("timestamps") is None:  # "now": read back, within the call's time
                self._read_back_times(expect, call, want, t0, time.time())
        elif call["name"] in ("delete", "drop_namespace", "purge_expired") \
                and out != len(self.model.mems) - len(expect.mems):
            raise Violation(f"{call['name']} returned {out}, expected {len(self.model.mems) - len(expect.mems)}")
        self.log_dirty = self.log_dirty or logs_record(call, self.model, expect)
        self.model = expect

    def _read_back_times(self, expect: Model, call: dict, rows: list, t0: float, t1: float) -> None:
        keys = call.get("ids") or rows
        for key, m in zip(keys, self.ix.get(keys)):
            if not t0 - 1 <= m.timestamp <= t1 + 1:
                raise Violation(f"default timestamp {m.timestamp} of {key!r} is not the time of the add ({t0}..{t1})")
            expect.mems[key] = dataclasses.replace(expect.mems[key], ts=m.timestamp)

    # -- ops ------------------------------------------------------------------------------------------------
    def op_add(self, op, rng):
        self.call(make_add(self.model, rng, op["n"]))

    op_bulk = op_add

    def op_delete(self, op, rng):
        keys = _pick(self.model, op["picks"])
        if keys:
            self.call({"name": "delete", "ids": keys})

    def op_update(self, op, rng):
        keys = _pick(self.model, op["picks"])
        if keys:
            self.call(make_update(self.model, rng, keys))

    def op_bad(self, op, rng):
        call = make_bad(self.model, rng)
        if call is not None:
            self.call(call)

    def op_compact(self, op, rng):
        if self._writer().compact() < 0:
            raise Violation("compact() reclaimed a negative number of bytes")

    def op_checkpoint(self, op, rng):
        gen = self._writer().checkpoint()
        self.lineage.append((gen.name, self.model.copy()))
        self.log_dirty = False

    op_retrain = _op_retrain  # model_trials.py
    op_tune = _op_tune  # model_trials.py
    op_trial = _op_trial  # model_trials.py

    def op_reopen(self, op, rng):
        self._close(op["ckpt"])

    def op_rollback(self, op, rng):
        from lukhas_gpu import MemoryIndex
        from lukhas_gpu.store import layout

        self._close(bool(rng.random() < 0.5))
        parent = self.lineage[-2][0] if len(self.lineage) > 1 else None
        prev = layout.previous_generation(self.path)
        if 3 in self.known and prev is not None and prev.name != parent and prev.name not in self.orphans:
            self.count("rollback skipped (defect 3)")
            return
        was = self.current()
        self.replaced += 1
        try:
            gen = MemoryIndex.rollback(self.path, discard_log=op["discard"])
        except layout.StoreError as e:
            if not (self.log_dirty and not op["discard"]) and parent is not None and (self.path / parent).is_dir():
                raise Violation(f"rollback of {was} refused although its previous generation {parent} is there: {e}")
            self.count("rollback refused")
            return
        if self.log_dirty and not op["discard"]:
            raise Violation("rollback dropped acknowledged log records without discard_log=True")
        if gen.name in self.orphans and gen.name != parent:  # a checkpoint killed between rename and publish
            self.model = self.orphans[gen.name].copy()
            self.lineage[-1] = (gen.name, self.model.copy())
        elif gen.name != parent:
            raise Violation(f"rollback of {was} published {gen.name}; the generation before {was} in this store's "
                            f"history is {parent} (history: {[g for g, _ in self.lineage]})")
        else:
            self.lineage.pop()
            self.model = self.lineage[-1][1].copy()
        self.log_dirty = False

    def op_recover(self, op, rng):
        from lukhas_gpu import MemoryIndex
        from lukhas_gpu.index import durable
        from lukhas_gpu.store import layout

        self._close(bool(rng.random() < 0.5))
        if 2 in self.known \
                and layout.generations(self.path)[-1] != layout.generation_number(self.path / self.current()):
            self.count("recover skipped (defect 2)")
            return
        self.replaced += 1
        if rng.random() < 0.5:
            rep = durable.recover(self.path)  # what `lukhas-gpu recover` runs
            if rep["changed"]:
                self.note = f"recover moved CURRENT from {rep['was']} to {rep['generation']} on an undamaged store"
                self.count("recover moved CURRENT")
        else:
            self.ix = MemoryIndex.open(self.path, mode="w", recover=True)

    def op_refresh(self, op, rng):
        from lukhas_gpu import MemoryIndex

        from model_checks import check_index

        if self.reader is not None and 11 in self.known and self.replaced != self.reader_replaced:
            self.reader.close()  # steer around defect 11: a log replaced since the last refresh
            self.reader = None
            self.count("reader reopened (defect 11)")
        if self.reader is None:
            self.reader = MemoryIndex.open(self.path)
        else:
            self.reader.refresh()
        self.reader_model, self.reader_replaced = self.model.copy(), self.replaced
        check_index(self.reader, self.reader_model, rng, self.known)
        check_tag_drift(self.reader, self._writer())  # model_trials.py: the per-tag references

    def op_lag(self, op, rng):
        from model_checks import check_index

        if self.reader is not None:  # nothing changes under a reader between two calls
            check_index(self.reader, self.reader_model, rng, self.known)

    def op_sharded(self, op, rng):
        from model_checks import check_sharded

        check_sharded(self.root, self.model, rng, self.known)

    def op_proc(self, op, rng):
        from model_checks import FOUND_DEPTH, check_dump

        keys = valid_keys(self.model)  # what a search (and select()) sees now
        vecs = np.stack([self.model.mems[k].vec for k in keys]) if keys else np.zeros((0, DIM), np.float32)
        np.save(self.tmp / "q_all.npy", vecs)
        np.save(self.tmp / "q_cli.npy", vecs[:2])
        depth = max(FOUND_DEPTH, len(keys)) if 1 in self.known else FOUND_DEPTH  # see model_checks.check_found
        proc = spawn("reader", self.path, self.tmp / "q_all.npy", self.tmp / "q_cli.npy", len(keys) + 1, depth)
        try:
            first = proc.stdout.readline()
            if not first:
                raise Violation(f"the subprocess reader failed: {proc.communicate(timeout=60)[1][-3000:]}")
            check_dump(json.loads(first), self.model, len(keys) + 1)
            self.call(make_add(self.model, rng, 3))  # the writer goes on; the reader refreshes
            keys = _pick(self.model, [0.5])
            if keys:
                self.call({"name": "delete", "ids": keys})
            proc.stdin.write("refresh\n")
            proc.stdin.flush()
            second = proc.stdout.readline()
            if not second:
                raise Violation(f"the subprocess reader's refresh failed: {proc.communicate(timeout=60)[1][-3000:]}")
            check_dump(json.loads(second), self.model, 0)
        finally:
            proc.kill()
            proc.communicate(timeout=60)

    def op_crash(self, op, rng):
        """A writer subprocess runs ``n`` calls and is killed with SIGKILL at a random point."""
        from model_checks import matches

        self._close(bool(rng.random() < 0.5))
        calls, states = [], [self.model]
        for _ in range(op["n"]):
            calls.append(self._crash_call(states[-1], rng))
            states.append(states[-1] if calls[-1]["name"] == "checkpoint" else apply_call(states[-1], calls[-1]))
        from lukhas_gpu.store import layout

        base, was = layout.generations(self.path)[-1], self.current()
        proc = spawn("writer", self.path)
        acked = 0
        try:
            if rng.random() < 0.15:  # killed while it opens (replays the log, cuts a torn tail)
                time.sleep(float(rng.uniform(0, 1.5)))
                calls, states = [], states[:1]
            elif proc.stdout.readline().strip() != "ready":
                raise Violation(f"the writer subprocess did not start: {proc.communicate(timeout=60)[1][-3000:]}")
            else:
                proc.stdin.write("".join(dumps_call(c) + "\n" for c in calls))
                proc.stdin.flush()
                wait_for = int(rng.integers(0, len(calls) + 1))
                while acked < wait_for:
                    line = proc.stdout.readline()
                    if not line.startswith("ack"):
                        break
                    acked += 1
                time.sleep(float(rng.uniform(0, 0.004)))
        finally:
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=60)
        acked += sum(1 for line in rest.splitlines(keepends=True) if line.startswith("ack") and line.endswith("\n"))
        self._after_crash(calls, states, acked, base, was, rng, matches)

    def _crash_call(self, model: Model, rng) -> dict:
        r = rng.random()
        keys = _pick(model, rng.random(int(rng.integers(1, 4))).tolist())
        if r < 0.15:
            return {"name": "checkpoint"}
        if r < 0.35 and keys:
            return {"name": "delete", "ids": keys}
        if r < 0.4:
            return scope_call(rng)
        if r < 0.55 and keys:
            return make_update(model, rng, keys)
        if r < 0.7 and len(keys) > 1:  # a link or an unlink (model_memops)
            return (r < 0.6 and memops.make_unlink(model, rng)) or memops.make_link(model, rng)
        return (memops.make_dedup_add if r < 0.8 else make_add)(model, rng, int(rng.integers(1, 6)), explicit_ts=True)

    def _after_crash(self, calls, states, acked, base, was, rng, matches) -> None:
        from lukhas_gpu import MemoryIndex

        self.ix = MemoryIndex.open(self.path, mode="w")
        options = [acked] + ([acked + 1] if acked < len(calls) else [])
        landed = [i for i in options if matches(self.ix, states[i], rng, self.known)]
        if not landed:
            raise Violation(f"after SIGKILL ({acked} of {len(calls)} calls acknowledged) the store holds neither the "
                            f"acknowledged state nor it plus the call in flight "
                            f"({_brief(calls[acked]) if acked < len(calls) else '-'})")
        # both: the call in flight changes no memory; whether it was logged, the write count says
        applied = landed[0] if len(landed) == 1 else acked + int(self.ix.write_count > states[acked].writes)
        self.count("crash: killed opening" if not calls else
                   "crash: in flight landed" if applied > acked else "crash: in flight lost")
        number, want, dirty = base, int(was[4:]), self.log_dirty
        for i, c in enumerate(calls[:applied]):
            if c["name"] == "checkpoint":
                number = want = number + 1
                self.lineage.append((f"gen-{number:06d}", states[i].copy()))
                dirty = False
            else:
                dirty = dirty or logs_record(c, states[i], states[i + 1])
        cur = int(self.current()[4:])
        if acked < len(calls) and calls[acked]["name"] == "checkpoint" and cur == number + 1:
            want = number = number + 1  # the checkpoint in flight was published
            self.lineage.append((self.current(), states[acked].copy()))
            dirty = False
        elif acked < len(calls) and calls[acked]["name"] == "checkpoint":
            self.orphans[f"gen-{number + 1:06d}"] = states[acked].copy()  # renamed, maybe, never published
        if cur != want:
            raise Violation(f"after SIGKILL CURRENT is gen-{cur:06d}, expected gen-{want:06d} ({number - base} "
                            f"checkpoints completed; the newest generation before was gen-{base:06d})")
        self.model, self.log_dirty = states[applied].copy(), dirty


def logs_record(call: dict, before: Model, after: Model) -> bool:
    """Whether a call that succeeded appended to the log: a drop or purge that removes nothing does not."""
    if call["name"] in ("drop_namespace", "purge_expired"):
        return len(before.mems) != len(after.mems)
    return not call.get("bad")


def _brief(call: dict) -> str:
    return json.dumps({k: (v if k in ("name", "ids") else "...") for k, v in _enc(call).items()},
                      ensure_ascii=False)[:300]


def run_ops(kind: str, ops: list, tmp, seed: int = 0, known=KNOWN_DEFECTS, *, log=None) -> dict:
    """Run ``ops`` on a fresh store; returns the counts. Raises :class:`Violation` naming the step."""
    run = Run(kind, tmp, seed, known)
    try:
        for i, op in enumerate(ops):
            try:
                run.execute(op)
            except Violation as e:
                raise Violation(f"step {i} {json.dumps(op)}: {e}") from e
            except Exception as e:
                raise Violation(f"step {i} {json.dumps(op)}: {type(e).__name__}: {e}") from e
            if log is not None:
                log(i, op, run)
    finally:
        run.close()
    return run.counts


def signature(message: str) -> str:
    """What a violation says, without its step, op and numbers (the shrinker keeps this one)."""
    import re

    text = message.split("}: ", 1)[-1]
    return re.sub(r"[0-9]+", "#", text)[:50]


def shrink(kind: str, ops: list, known=KNOWN_DEFECTS, budget_s: float = 600.0, want: str | None = None) -> list:
    """The shortest sub-list of ``ops`` that still fails the same way (delta debugging: drop
    chunks while it fails; ``want`` the :func:`signature` to keep, default the first failure's)."""
    import tempfile

    deadline = time.time() + budget_s

    def fails(sub) -> bool:
        nonlocal want
        with tempfile.TemporaryDirectory() as tmp:
            try:
                run_ops(kind, sub, tmp, known=known)
            except Violation as e:
                want = want or signature(str(e))
                return signature(str(e)) == want
        return False

    if not fails(ops):
        return ops
    chunk = max(1, len(ops) // 2)
    while chunk >= 1 and time.time() < deadline:
        i, progressed = 0, False
        while i < len(ops) and time.time() < deadline:
            trial = ops[:i] + ops[i + chunk:]
            if trial and fails(trial):
                ops, progressed = trial, True
            else:
                i += chunk
        if not progressed:
            chunk //= 2
    return ops
