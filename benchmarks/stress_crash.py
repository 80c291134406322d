"""Crash safety: a writer in a subprocess is killed with SIGKILL at random moments (during adds,
updates, deletes and checkpoints); after each kill the store is reopened and checked.

Checks after every kill: every acknowledged memory is there with its content and tags; the batch
in flight is there whole or not at all; no deleted id comes back; the store verifies.

    python -m benchmarks.stress_crash --trials 20
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

DIM = 32
BATCH = 200

WRITER = r"""
import sys, numpy as np, lukhas_gpu
path, seed = sys.argv[1], int(sys.argv[2])
ix = lukhas_gpu.MemoryIndex.open(path, mode="w")
ix.encoder  # the vector path (torch) loads on first use: load it before the clock starts
print("ready", flush=True)
rng = np.random.default_rng(seed)
step = 0
while True:
    start = len(ix.parts.vectors)
    x = rng.standard_normal((%(batch)d, %(dim)d)).astype("float32")
    ids = ix.add(x, contents=[f"m{start + i}" for i in range(%(batch)d)],
                 tags=[[f"t{(start + i) %% 7}"] for i in range(%(batch)d)])
    print("add", int(ids[0]), int(ids[-1]), flush=True)
    step += 1
    if step %% 3 == 0:
        live = np.setdiff1d(np.arange(len(ix.parts.vectors)), ix.parts.tombstones.array())
        victim = int(rng.choice(live))
        ix.delete([victim])
        print("del", victim, flush=True)
    if step %% 5 == 0:
        ix.checkpoint()
        print("ckpt", flush=True)
""" % {"batch": BATCH, "dim": DIM}


def check(path: pathlib.Path, acked: set, deleted: set, in_flight: tuple | None) -> dict:
    import lukhas_gpu

    ix = lukhas_gpu.MemoryIndex.open(path, mode="w")
    try:
        ix.verify()
        rows = len(ix.parts.vectors)
        lost = [i for i in acked if i >= rows]
        store_deleted = set(ix.parts.tombstones.array().tolist())
        # a delete in flight when the writer died may have landed (logged, not acknowledged)
        in_flight_deletes = store_deleted - deleted
        deleted |= in_flight_deletes
        present = [i for i in acked if i < rows and i not in deleted]
        got = ix.get(present) if present else []
        wrong = [m.id for m in got if m.content != f"m{m.id}" or m.tags != [f"t{m.id % 7}"]]
        resurrected = [d for d in deleted if ix.contains([d])[0]]
        extra = rows - (max(acked) + 1 if acked else 0)
        partial = extra not in (0, BATCH)  # the batch in flight: whole or absent
        return {"rows": rows, "lost": len(lost), "wrong": len(wrong), "resurrected": len(resurrected),
                "partial_batch": bool(partial), "unacknowledged_deletes_landed": len(in_flight_deletes),
                "too_many_unacknowledged": len(in_flight_deletes) > 1}
    finally:
        ix.close()


def main(argv=None) -> dict:
    import lukhas_gpu

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--max-wait", type=float, default=1.5, help="seconds before a kill, at most")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "store"
        lukhas_gpu.MemoryIndex.create(path, DIM, lukhas_gpu.IndexConfig(train_threshold=2048, nlist=16)).close()
        acked: set[int] = set()
        deleted: set[int] = set()
        for trial in range(args.trials):
            proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(args.seed * 1000 + trial)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            first = proc.stdout.readline()  # torch takes seconds to import: kill once it is loaded
            if first.strip() != "ready":
                proc.kill()
                raise RuntimeError(f"writer failed to start: {first!r} {proc.communicate()[1][-2000:]}")
            time.sleep(rnd.uniform(0.05, args.max_wait))
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
            for line in out.splitlines(keepends=True):
                parts = line.split()
                if not line.endswith("\n") or len(parts) != {"add": 3, "del": 2}.get(parts[0] if parts else "", 0):
                    continue  # a line the kill cut short acknowledges nothing
                if parts[:1] == ["add"]:
                    acked.update(range(int(parts[1]), int(parts[2]) + 1))
                elif parts[:1] == ["del"]:
                    deleted.add(int(parts[1]))
            r = check(path, acked, deleted, None)
            # the in-flight batch, if it landed, is acknowledged from now on (it is in the store)
            acked.update(range(0, r["rows"]))
            r["trial"] = trial
            r["acknowledged"] = len(acked)
            results.append(r)
            print(json.dumps(r), flush=True)
    lost = sum(r["lost"] + r["wrong"] + r["resurrected"] + r["partial_batch"] + r["too_many_unacknowledged"]
               for r in results)
    summary = {"trials": len(results), "acknowledged_memories": len(acked), "lost_or_wrong": lost}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["lost_or_wrong"] == 0 else 1)
