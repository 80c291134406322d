"""The namespace commands: ``namespaces`` (list), ``drop-namespace``, ``purge-expired``."""
from __future__ import annotations

import json

__all__ = ["add_parsers", "cmd_namespaces", "cmd_drop_namespace", "cmd_purge_expired"]


def add_parsers(sub) -> None:
    from .search_cmd import _time_arg

    n = sub.add_parser("namespaces", help="list the namespaces of a store and their live memories")
    n.add_argument("store", help="store directory, or a sharded root (counts summed over its shards)")
    n.add_argument("--json", action="store_true", help='print {"namespace": count, ...} as JSON')
    n.set_defaults(func=cmd_namespaces, catch_errors=True)
    d = sub.add_parser("drop-namespace", help="delete every memory of a namespace (then checkpoint)",
                       description="Opens STORE for writing, deletes NAME's memories (one logged delete), "
                                   "checkpoints and closes. A namespace holding no memory fails the command.")
    d.add_argument("store", help="store directory")
    d.add_argument("name", help='the namespace ("" is the default one)')
    d.add_argument("--json", action="store_true", help='print {"deleted": n, "count": ...} as JSON')
    d.set_defaults(func=cmd_drop_namespace, catch_errors=True)
    p = sub.add_parser("purge-expired", help="delete every memory whose validity window has ended (then checkpoint)")
    p.add_argument("store", help="store directory")
    p.add_argument("--now", type=_time_arg, metavar="S", help="the time windows are held to (default: the clock)")
    p.add_argument("--json", action="store_true", help='print {"deleted": n, "count": ...} as JSON')
    p.set_defaults(func=cmd_purge_expired, catch_errors=True)


def _writer(store):
    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.distributed.rootfiles import is_sharded_root
    from lukhas_gpu.store.layout import StoreError

    if is_sharded_root(store):
        raise StoreError(f"{store} is a sharded root: run the command on each of its shard-NNNNN stores")
    return MemoryIndex.open(store, mode="w")


def cmd_namespaces(args) -> int:
    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.distributed.rootfiles import is_sharded_root

    if is_sharded_root(args.store):
        from lukhas_gpu.distributed import ShardedIndex

        with ShardedIndex.open(args.store) as index:
            counts = index.namespaces()
    else:
        index = MemoryIndex.open(args.store, mode="r")
        try:
            counts = index.namespaces()
        finally:
            index.close()
    if args.json:
        print(json.dumps(counts))
        return 0
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n:>12,}  {json.dumps(name, ensure_ascii=False)}")
    return 0


def _report(args, n: int, count: int, what: str) -> int:
    print(json.dumps({"deleted": n, "count": count}) if args.json else
          f"{args.store}: deleted {n:,} memories {what}; {count:,} remain")
    return 0


def cmd_drop_namespace(args) -> int:
    from lukhas_gpu.records.scopes import check_namespace

    name = check_namespace(args.name, "NAME")
    index = _writer(args.store)
    try:
        if name not in index.namespaces():
            raise ValueError(f"no memory in namespace {name!r} (see `lukhas-gpu namespaces {args.store}`)")
        n = index.drop_namespace(name)
        count = len(index)
    finally:
        index.close()  # checkpoints the delete
    return _report(args, n, count, f"of namespace {name!r}")


def cmd_purge_expired(args) -> int:
    index = _writer(args.store)
    try:
        n = index.purge_expired(args.now)
        count = len(index)
    finally:
        index.close()
    return _report(args, n, count, "past their validity window")
