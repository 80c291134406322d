"""Readers beside a writer that gets killed: does every reader see every acknowledged memory?

One writer process adds batches of memories (content ``m<id>``), deletes one now and then and
checkpoints every ``--checkpoint-every`` batches; after each call returns it appends an
acknowledgement line (``add FIRST LAST T`` / ``del ID T``, ``T`` on the system-wide monotonic
clock) to ``acks.log``. ``--readers`` reader processes each hold one store open (mode ``"r"``) and
loop: read the new acknowledgement lines, ``refresh()``, then check that every add acknowledged
*before* the refresh is there (its row exists, and sampled contents are right, the newest batch
always among them) and every acknowledged delete is gone; an acknowledgement's *lag* is the
time from ``T`` to the end of the first refresh that showed it. The parent SIGKILLs the writer
at random moments (``--kills`` over the run) and restarts it on the same store. At the end the
writer is stopped cleanly, every reader refreshes once more and checks everything, and the
parent reopens the store and checks every acknowledged memory.

Figures: kills, acknowledged (memories, and deletes), lost (acknowledged memories missing or
wrong in the final store, or an acknowledged delete undone), reader violations (a reader missing
an acknowledged memory after a refresh), reader errors, reader lag p50 / p99 / max in ms,
refreshes and reloads (refreshes that loaded a new generation).

    python -m benchmarks.soak_readers --minutes 30 --kills 100
    python -m benchmarks.soak_readers --seconds 20 --kills 3        # the test suite's short run

Everything runs on this machine: child processes of this one, bounded by the run's duration.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIM = 16
ACKS, STOP_WRITER, STOP_READERS = "acks.log", "stop-writer", "stop-readers"


# -- the writer ---------------------------------------------------------------------------------
def run_writer(store: str, run: pathlib.Path, seed: int, batch: int, checkpoint_every: int, pause: float) -> None:
    import numpy as np

    from lukhas_gpu import MemoryIndex

    ix = MemoryIndex.open(store, mode="w")
    ix.encoder  # torch loads on first use: before "ready", so kills land in the work
    rng = np.random.default_rng(seed)
    acks = open(run / ACKS, "a", buffering=1)
    print("ready", flush=True)
    step = 0
    while not (run / STOP_WRITER).exists():
        m = int(rng.integers(1, batch + 1))
        start = len(ix.parts.vectors)
        x = rng.standard_normal((m, DIM)).astype(np.float32)
        ids = ix.add(x, contents=[f"m{start + i}" for i in range(m)])
        acks.write(f"add {ids[0]} {ids[-1]} {time.monotonic():.6f}\n")
        step += 1
        if step % 4 == 0:
            victim = int(rng.integers(0, len(ix.parts.vectors)))
            if ix.contains([victim])[0]:
                ix.delete([victim])
                acks.write(f"del {victim} {time.monotonic():.6f}\n")
        if step % checkpoint_every == 0:
            ix.checkpoint()
        if pause:
            time.sleep(pause)
    ix.close()  # checkpoints
    acks.close()


# -- a reader -----------------------------------------------------------------------------------
class Acks:
    """The acknowledgement file, read incrementally; lines cut by a kill are ignored."""

    def __init__(self, path: pathlib.Path):
        self.path, self.offset = path, 0
        self.adds: list[tuple[int, int, float]] = []
        self.dels: dict[int, float] = {}

    def read(self) -> tuple[list, list]:
        """New complete lines: ``(adds, dels)``."""
        adds, dels = [], []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return adds, dels
        lines = data.split(b"\n")
        tail = lines.pop()  # the bytes after the last newline: a line still being written (or cut)
        self.offset += len(data) - len(tail)
        for line in lines:
            p = line.split()
            if p[:1] == [b"add"] and len(p) == 4:
                adds.append((int(p[1]), int(p[2]), float(p[3])))
            elif p[:1] == [b"del"] and len(p) == 3:
                dels.append((int(p[1]), float(p[2])))
        self.adds += adds
        self.dels.update(dels)
        return adds, dels

    @property
    def top(self) -> int:
        """One past the largest acknowledged id."""
        return max((b for _, b, _ in self.adds), default=-1) + 1


def check(ix, acks: Acks, rng, sample: int = 16) -> list[str]:
    """What ``ix`` gets wrong about the acknowledgements read so far."""
    import numpy as np

    bad = []
    rows = len(ix.parts.vectors)
    if acks.top > rows:
        bad.append(f"acknowledged ids {rows}..{acks.top - 1} missing (the reader holds {rows} rows)")
        return bad
    dels = np.fromiter(acks.dels, dtype=np.int64, count=len(acks.dels))
    if len(dels) and ix.contains(dels).any():
        bad.append(f"acknowledged deletes visible: {dels[ix.contains(dels)][:5].tolist()}")
    if acks.top:
        pick = rng.integers(0, acks.top, sample)
        pick = np.unique(np.concatenate([pick, [acks.top - 1]]))
        pick = pick[ix.contains(pick)]
        for mem in ix.get(pick):
            if mem.content != f"m{mem.id}":
                bad.append(f"id {mem.id} holds {mem.content!r}")
    return bad


def run_reader(store: str, run: pathlib.Path, rank: int, seed: int, poll: float) -> dict:
    import numpy as np

    from lukhas_gpu import MemoryIndex

    rng = np.random.default_rng(seed * 100 + rank)
    acks = Acks(run / ACKS)
    ix = MemoryIndex.open(store)
    ix.encoder  # torch loads on the first record replayed: load it before the clock starts
    print("ready", flush=True)
    lags, violations, errors, refreshes, reloads = [], [], [], 0, 0
    final = False
    while True:
        final = (run / STOP_READERS).exists()  # read before the acks: the last pass sees them all
        new_adds, new_dels = acks.read()
        try:
            ch = ix.refresh()
        except Exception as e:  # reported, never hidden; the reader reopens
            errors.append(f"{type(e).__name__}: {e}")
            ix = MemoryIndex.open(store)
            continue
        now = time.monotonic()
        refreshes += 1
        reloads += ch["reloaded"]
        lags += [(now - t) * 1000 for _, _, t in new_adds] + [(now - t) * 1000 for _, t in new_dels]
        violations += check(ix, acks, rng)
        if final:
            break
        time.sleep(poll)
    return {"rank": rank, "refreshes": refreshes, "reloads": reloads, "violations": violations[:20],
            "n_violations": len(violations), "errors": errors[:20], "n_errors": len(errors), "lags": lags,
            "seen": len(ix.parts.vectors), "acknowledged": acks.top}


# -- the parent ---------------------------------------------------------------------------------
def _child(role: str, args, run: pathlib.Path, *extra) -> subprocess.Popen:
    # one thread per library and process: idle OpenMP workers spinning in five processes would
    # starve each other on a small machine (see tests/conftest.py)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.soak_readers", "--role", role, "--store", str(args.store),
           "--run-dir", str(run), "--seed", str(args.seed), "--batch", str(args.batch),
           "--checkpoint-every", str(args.checkpoint_every), "--pause", str(args.pause), "--poll", str(args.poll),
           *map(str, extra)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _ready(proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    line = proc.stdout.readline()  # blocks until the child has imported and opened the store
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{what} failed to start: {line!r} {proc.communicate(timeout=timeout)[1][-3000:]}")


def final_check(store: str, acks: Acks) -> dict:
    import numpy as np

    from lukhas_gpu import MemoryIndex

    ix = MemoryIndex.open(store)
    rows = len(ix.parts.vectors)
    missing = max(0, acks.top - rows)
    ids = np.arange(min(rows, acks.top))
    live = ids[ix.contains(ids)]
    wrong = sum(m.content != f"m{m.id}" for m in ix.get(live)) if len(live) else 0
    dels = np.fromiter(acks.dels, dtype=np.int64, count=len(acks.dels))
    undone = int(ix.contains(dels).sum()) if len(dels) else 0
    return {"lost": int(missing + wrong + undone), "missing": int(missing), "wrong": int(wrong),
            "deletes_undone": undone, "rows": rows, "live": len(ix), "verify": ix.verify()["ok"]}


def percentile(values, q: float) -> float:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if len(values) else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0, help="length of the run (default 2)")
    ap.add_argument("--seconds", type=float, default=None, help="length of the run in seconds (overrides --minutes)")
    ap.add_argument("--kills", type=int, default=10, help="SIGKILLs of the writer spread over the run (default 10)")
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32, help="memories per add, at most (uniform 1..batch)")
    ap.add_argument("--checkpoint-every", type=int, default=25, help="adds between the writer's checkpoints")
    ap.add_argument("--pause", type=float, default=0.005, help="writer's pause between adds, seconds")
    ap.add_argument("--poll", type=float, default=0.01, help="readers' pause between refreshes, seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="store directory (default: a temporary one)")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/out/soak_readers.{json,md}")
    ap.add_argument("--role", choices=["parent", "writer", "reader"], default="parent", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "writer":
        run_writer(args.store, pathlib.Path(args.run_dir), args.seed + args.rank, args.batch, args.checkpoint_every,
                   args.pause)
        return {}
    if args.role == "reader":
        print(json.dumps(run_reader(args.store, pathlib.Path(args.run_dir), args.rank, args.seed, args.poll)),
              flush=True)
        return {}
    with tempfile.TemporaryDirectory(prefix="soak_readers_") as tmp:
        if args.store is None:
            args.store = str(pathlib.Path(tmp) / "store")
        return _parent(args, pathlib.Path(tmp))


def _parent(args, run: pathlib.Path) -> dict:
    from lukhas_gpu import IndexConfig, MemoryIndex

    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    seconds = args.seconds if args.seconds is not None else 60 * args.minutes
    MemoryIndex.create(args.store, DIM, IndexConfig(train_threshold=2048, nlist=16)).close()
    rnd = random.Random(args.seed)
    readers = [_child("reader", args, run, "--rank", r) for r in range(args.readers)]
    for i, r in enumerate(readers):
        _ready(r, f"reader {i}")
    t0 = time.monotonic()
    deadline = t0 + seconds
    kills = starts = 0
    writer = None
    try:
        while True:
            t_start = time.monotonic()
            writer = _child("writer", args, run, "--rank", starts)
            starts += 1
            _ready(writer, "writer")
            startup = time.monotonic() - t_start
            left = deadline - time.monotonic()
            remaining = args.kills - kills
            if remaining <= 0 or left <= 0:
                break
            # spread the kills left over the time left, less the restarts they cost
            wait = rnd.uniform(0.1, max(0.2, 2 * (left - remaining * startup) / (remaining + 1)))
            time.sleep(min(wait, left))
            writer.send_signal(signal.SIGKILL)
            writer.communicate()
            kills += 1
            say(f"{time.monotonic() - t0:7.1f} s  kill {kills}")
        time.sleep(max(0.0, deadline - time.monotonic()))
        (run / STOP_WRITER).touch()
        _, err = writer.communicate(timeout=300)
        if writer.returncode != 0:
            raise RuntimeError(f"the writer failed: {err[-3000:]}")
        (run / STOP_READERS).touch()
        results = []
        for r in readers:
            out, err = r.communicate(timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"a reader failed: {err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in [writer, *readers]:
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    acks = Acks(run / ACKS)
    acks.read()
    final = final_check(args.store, acks)
    lags = [x for r in results for x in r["lags"]]
    summary = {
        "seconds": round(time.monotonic() - t0, 1), "kills": kills, "writer_starts": starts,
        "readers": args.readers, "acknowledged": acks.top, "acknowledged_deletes": len(acks.dels),
        "lost": final["lost"], "final": final,
        "reader_violations": sum(r["n_violations"] for r in results),
        "reader_errors": sum(r["n_errors"] for r in results),
        "unseen_at_end": sum(max(0, acks.top - r["seen"]) for r in results),
        "refreshes": sum(r["refreshes"] for r in results), "reloads": sum(r["reloads"] for r in results),
        "lag_ms": {"count": len(lags), "p50": percentile(lags, 50), "p99": percentile(lags, 99),
                   "max": round(max(lags), 1) if lags else float("nan")},
        "examples": [v for r in results for v in r["violations"] + r["errors"]][:10],
    }
    say(json.dumps(summary, indent=1))
    if not args.no_save:
        from benchmarks import common

        row = {"minutes": round(summary["seconds"] / 60, 1), "kills": kills, "readers": args.readers,
               "acknowledged": summary["acknowledged"], "deletes": summary["acknowledged_deletes"],
               "lost": summary["lost"], "reader violations": summary["reader_violations"],
               "reader errors": summary["reader_errors"], "lag p50 ms": summary["lag_ms"]["p50"],
               "lag p99 ms": summary["lag_ms"]["p99"], "lag max ms": summary["lag_ms"]["max"],
               "refreshes": summary["refreshes"], "reloads": summary["reloads"]}
        common.write_results("soak_readers", {**summary, "machine": common.machine(), "date": common.today()},
                             common.markdown_table([row]))
    return summary


if __name__ == "__main__":
    res = main()
    sys.exit(0 if not res or (res["lost"] == 0 and res["reader_violations"] == 0 and res["reader_errors"] == 0)
             else 1)
