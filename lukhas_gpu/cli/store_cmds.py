"""The store commands: ``verify``, ``rollback``, ``recover``, ``stats``, ``get``, ``delete``, ``tune``."""
from __future__ import annotations

import json
import sys

__all__ = ["add_parsers", "cmd_verify", "cmd_rollback", "cmd_recover", "cmd_stats", "cmd_get", "cmd_delete", "cmd_tune",
           "text"]


def add_parsers(sub, *names: str) -> None:
    """Add the subcommands ``names`` (default: all), in that order."""
    for name in names or _PARSERS:
        _PARSERS[name](sub)


def _verify(sub) -> None:
    v = sub.add_parser("verify", help="check a store's files (sizes, CRC-32) and its internal consistency")
    v.add_argument("path", help="store directory, or a sharded root (every shard is verified)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.add_argument("--salvage", action="store_true",
                   help="if the write-ahead log is damaged in the middle, keep every valid record, move the log "
                        "aside (never deleted), checkpoint, and report exactly which ids were lost; a damaged last "
                        "record (kept beside the log as wal.log.tail-damaged-*) is reported and marked salvaged")
    v.set_defaults(func=cmd_verify)


def _rollback(sub) -> None:
    r = sub.add_parser("rollback", help="publish the parent of the published generation of a (closed) store again, "
                                        "once verified")
    r.add_argument("path", help="store directory")
    r.add_argument("--discard-log", action="store_true",
                   help="drop the acknowledged records of the write-ahead log (moved aside, not deleted); without "
                        "it, rollback refuses while the log holds any")
    r.set_defaults(func=cmd_rollback, catch_errors=True)


def _recover(sub) -> None:
    r = sub.add_parser("recover", help="publish the newest generation of the store's lineage that verifies completely "
                                       "(after a damaged CURRENT or generation); the write-ahead log says where the "
                                       "store is when CURRENT cannot, and a rolled-back branch is never taken")
    r.add_argument("path", help="store directory")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(func=cmd_recover, catch_errors=True)


def _stats(sub) -> None:
    st = sub.add_parser("stats", help="count, bytes per memory per component, backend, config of a store")
    st.add_argument("path", help="store directory, or a sharded root (totals and one line per shard)")
    st.add_argument("--json", action="store_true", help="print the stats as JSON")
    st.set_defaults(func=cmd_stats, catch_errors=True)


def _get(sub) -> None:
    g = sub.add_parser("get", help="print memories by id (content, tags, timestamp, importance)")
    g.add_argument("store", help="store directory, or a sharded root (global ids, as `search` prints them)")
    g.add_argument("ids", nargs="+", type=int, metavar="ID", help="memory ids")
    g.add_argument("--json", action="store_true",
                   help='print one JSON object per id: {"id", "content", "tags", "timestamp", "importance"}')
    g.add_argument("--namespace", metavar="NAME", help="fail unless every id is in this namespace")
    g.set_defaults(func=cmd_get, catch_errors=True)


def _delete(sub) -> None:
    d = sub.add_parser("delete", help="delete memories by id (then checkpoint)",
                       description="Opens STORE for writing, deletes the ids (all or none: an unknown or already "
                                   "deleted id fails the command and deletes nothing), checkpoints and closes.")
    d.add_argument("store", help="store directory")
    d.add_argument("ids", nargs="+", type=int, metavar="ID", help="memory ids")
    d.add_argument("--json", action="store_true", help='print {"deleted": n, "count": ...} as JSON')
    d.set_defaults(func=cmd_delete, catch_errors=True)


def _tune(sub) -> None:
    t = sub.add_parser("tune", help="choose the search parameters that hold a recall target, and store them",
                       description="Opens STORE for writing, measures the settings that hold the recall target (as "
                                   "MemoryIndex.tune) and checkpoints: the new generation carries the tuning, which "
                                   "readers (`serve --mode r`, `search`) use as it is -- a reader never tunes. Run it "
                                   "after a large ingest, or let a writer's background runs do it.")
    t.add_argument("store", help="store directory")
    t.add_argument("--target", type=float, metavar="R",
                   help="recall@k to hold, in (0, 1) (default: the store's target_recall, else 0.95)")
    t.add_argument("-k", type=int, default=10, help="results per query the target applies to (default 10)")
    t.add_argument("--json", action="store_true", help="print the tuning report as JSON")
    t.set_defaults(func=cmd_tune, catch_errors=True)


_PARSERS = {"verify": _verify, "rollback": _rollback, "recover": _recover, "stats": _stats, "get": _get,
            "delete": _delete, "tune": _tune}


def text(c):
    """A memory's content for printing: bytes decoded (undecodable bytes escaped)."""
    return c.decode("utf-8", "backslashreplace") if isinstance(c, bytes) else c


def _sharded(path) -> bool:
    from lukhas_gpu.distributed.rootfiles import is_sharded_root

    return is_sharded_root(path)


def cmd_verify(args) -> int:
    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.store.layout import StoreError

    try:
        if _sharded(args.path):
            return _verify_sharded(args)
        if args.salvage:
            index = MemoryIndex.open(args.path, mode="w", verify=True, salvage=True)
            try:
                report = index.verify()
                salvage = index.salvage_report
            finally:
                index.close()
            if salvage is not None:
                report["salvage"] = salvage
                tails = ", ".join(t["file"] for t in salvage.get("tails", []))
                if not args.json:
                    print(f"{args.path}: salvaged the write-ahead log: kept {salvage['kept']} records; damaged: "
                          f"{'; '.join(salvage['damaged'])}; lost ids: "
                          f"{', '.join(f'{a}..{b}' for a, b in salvage['lost_ids']) or 'none known'}"
                          f"{'; skipped: ' + '; '.join(salvage['lost_records']) if salvage['lost_records'] else ''}; "
                          f"{'; the damaged log is at ' + salvage['moved_to'] if salvage['moved_to'] else ''}"
                          f"{'; damaged last records kept in ' + tails if tails else ''}"
                          f"; published {salvage['generation']}",
                          file=sys.stderr)
        else:
            index = MemoryIndex.open(args.path, mode="r", verify=True)
            report = index.verify()
    except StoreError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        else:
            print(f"lukhas-gpu verify: FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else
          f"{args.path}: ok (generation {report['generation']}, {report['count']:,} memories, "
          f"{report['files']} files checked, {report['wal_records']:,} logged records; "
          f"rollback goes to {report['rollback_to'] or 'nothing (none kept)'})")
    return 0


def _verify_sharded(args) -> int:
    from lukhas_gpu.distributed import ShardedIndex
    from lukhas_gpu.store.layout import StoreError

    if args.salvage:
        raise StoreError(f"{args.path} is a sharded root: salvage each shard-NNNNN store on its own")
    with ShardedIndex.open(args.path, verify=True) as index:
        report = index.verify()
    files = sum(r["files"] for r in report["shards"])
    print(json.dumps(report) if args.json else
          f"{args.path}: ok ({len(report['shards'])} shards, {report['count']:,} memories, {files} files checked)")
    return 0


def cmd_rollback(args) -> int:
    from lukhas_gpu import MemoryIndex

    gen = MemoryIndex.rollback(args.path, discard_log=args.discard_log)
    print(f"{args.path}: now at {gen.name}")
    return 0


def cmd_recover(args) -> int:
    from lukhas_gpu.index import durable

    report = durable.recover(args.path)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    what = (f"now at {report['generation']} (was {report['was'] or 'an unreadable CURRENT'})" if report["changed"]
            else f"{report['generation']} verifies; nothing to do")
    print(f"{args.path}: {what}")
    for why in report["skipped"]:
        print(f"  skipped: {why}")
    if report["log"]:
        n = report["log"]["records"]
        print(f"  the write-ahead log does not follow it: {'its' if n is None else n} records "
              f"({report['log'].get('memories', '?')} memories) not applied, kept at {report['log']['moved_to']}")
    return 0


def cmd_stats(args) -> int:
    from lukhas_gpu import MemoryIndex

    if _sharded(args.path):
        from lukhas_gpu.distributed import ShardedIndex

        with ShardedIndex.open(args.path) as index:
            st = index.stats()
    else:
        st = MemoryIndex.open(args.path, mode="r").stats()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    if "per_shard" in st:
        return _print_sharded_stats(args.path, st)
    print(f"{args.path}: {st['count']:,} memories ({st['rows']:,} rows, {st['deleted']:,} deleted), "
          f"dim {st['dim']} -> {st['dim_out']}, phase {st['phase']}, backend {st['backend']}")
    mem, n = st["memory"], max(st["count"], 1)
    print(f"  {st['bytes_per_memory']:.1f} B per memory in RAM: {mem['per_memory']['anon']:.1f} B anonymous, "
          f"{mem['per_memory']['mapped']:.1f} B memory-mapped (page cache); {mem['per_memory']['disk']:.1f} B on disk")
    for place in ("anon", "mapped", "gpu", "disk"):
        for name, nbytes in sorted(mem[place].items(), key=lambda kv: -kv[1]):
            if nbytes:
                print(f"  {place:<6} {name:<24} {nbytes / n:10.1f} B/memory")
    print("  " + _tuning_line(st["tuning"]))
    return 0


def _print_sharded_stats(path, st: dict) -> int:
    mem = st["memory"]
    print(f"{path}: {st['count']:,} memories over {st['shards']['root']} shards ({st['rows']:,} rows, "
          f"{st['deleted']:,} deleted), dim {st['dim']}, phase {st['phase']}")
    print(f"  {st['bytes_per_memory']:.1f} B per memory in RAM: {mem['per_memory']['anon']:.1f} B anonymous, "
          f"{mem['per_memory']['mapped']:.1f} B memory-mapped; {mem['per_memory']['disk']:.1f} B on disk")
    for s in st["per_shard"]:
        print(f"  shard {s['shard']:>5}: {s['count']:>12,} memories, phase {s['phase']}, "
              f"{s['bytes_per_memory']:.1f} B/memory; {_tuning_line(s['tuning'])}")
    return 0


def _tuning_line(t: dict) -> str:
    """One line on the recall target and what the tuner chose for it."""
    target, c = t["target_recall"], t["chosen"]
    head = f"recall target {target}" if target is not None else "no recall target (config nprobe/rerank)"
    if c is None:
        return head + ("; not tuned yet" if target is not None else "")
    how = ("exact int8 scan" if c["kind"] == "exact" else
           f"{c['kind']} probing, nprobe {c['nprobe']}, rerank {c['rerank']}")
    flag = "" if c["met"] else " -- BELOW TARGET"
    return (f"{head}; tuned for {c['target']}: {how}; estimated recall@{c['k']} {c['recall']:.3f} "
            f"[{c['ci'][0]:.3f}, {c['ci'][1]:.3f}] from {c['queries']} {c['source']}{flag}")


def cmd_get(args) -> int:
    import numpy as np

    from lukhas_gpu import MemoryIndex

    if _sharded(args.store):  # the global ids `search` prints from a sharded root
        from lukhas_gpu.distributed import ShardedIndex

        index = ShardedIndex.open(args.store)
    else:
        index = MemoryIndex.open(args.store, mode="r")
    try:
        memories = index.get(np.asarray(args.ids, dtype=np.int64), namespace=args.namespace)
    finally:
        index.close()
    for m in memories:
        if args.json:
            print(json.dumps({"id": m.id, "content": text(m.content), "tags": m.tags, "timestamp": m.timestamp,
                              "importance": m.importance}))
        else:
            import datetime as _dt

            when = _dt.datetime.fromtimestamp(m.timestamp, _dt.timezone.utc).isoformat(timespec="seconds")
            print(f"{m.id}: {text(m.content)!r} tags={m.tags} time={when} importance={m.importance:.3f}")
    return 0


def cmd_delete(args) -> int:
    import numpy as np

    from lukhas_gpu import MemoryIndex

    if _sharded(args.store):
        from lukhas_gpu.distributed.rootfiles import ROW_MASK, SHARD_SHIFT
        from lukhas_gpu.store.layout import StoreError

        raise StoreError(f"{args.store} is a sharded root: delete in its shard-NNNNN stores (a global id's shard "
                         f"is id >> {SHARD_SHIFT}, its id there id & {ROW_MASK:#x})")
    index = MemoryIndex.open(args.store, mode="w")
    try:
        n = index.delete(np.asarray(args.ids, dtype=np.int64))
        count = len(index)
    finally:
        index.close()  # checkpoints the delete
    print(json.dumps({"deleted": n, "count": count}) if args.json else
          f"{args.store}: deleted {n} memories; {count:,} remain")
    return 0


def cmd_tune(args) -> int:
    from lukhas_gpu import MemoryIndex

    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    index = MemoryIndex.open(args.store, mode="w")
    try:
        report = index.tune(args.target, k=args.k)
        generation = index.checkpoint().name
        line = _tuning_line(index.stats()["tuning"])
    finally:
        index.close()
    if args.json:
        print(json.dumps({**report, "generation": generation}, default=str))
    else:
        print(f"{args.store}: {line} ({report['seconds']:.1f} s; stored in {generation})")
    return 0
