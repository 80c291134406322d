"""``lukhas-gpu links STORE ID...``: the links of memories (``--in`` the links to them), or with
``--depth`` the memories reachable from one (``MemoryIndex.lineage``); STORE may be a sharded root
(global ids, ``ShardedIndex``)."""
from __future__ import annotations

import json

__all__ = ["add_parsers", "cmd_links"]


def add_parsers(sub) -> None:
    p = sub.add_parser("links", help="print the links of memories, or (--depth) the memories reachable from one")
    p.add_argument("store", help="store directory, or a sharded root")
    p.add_argument("ids", nargs="+", type=int, metavar="ID", help="memory ids (global ids in a sharded root)")
    p.add_argument("--kind", default=None, help="only links of this kind")
    p.add_argument("--in", dest="incoming", action="store_true", help="the links to the ids, not from them")
    p.add_argument("--depth", type=int, default=None, help="the lineage of one id: every memory reachable in at most "
                                                            "this many hops (breadth first)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_links, catch_errors=True)


def cmd_links(args) -> int:
    import numpy as np

    from .search_cmd import open_for_search

    direction = "in" if args.incoming else "out"
    index = open_for_search(args.store)
    try:
        if args.depth is not None:
            if len(args.ids) != 1:
                raise ValueError("--depth follows the lineage of one id")
            lin = index.lineage(args.ids[0], depth=args.depth, kind=args.kind, direction=direction)
            for i, d, p in zip(lin.ids.tolist(), lin.depth.tolist(), lin.parent.tolist()):
                print(json.dumps({"id": i, "depth": d, "parent": p}) if args.json else f"{i} depth={d} via={p}")
            return 0
        ls = index.links(np.asarray(args.ids, np.int64), kind=args.kind, direction=direction)
    finally:
        index.close()
    arrow = "<-" if args.incoming else "->"
    for n, src in enumerate(args.ids):
        ids, kinds, weights = ls.of(n)
        if args.json:
            print(json.dumps({"id": src, "direction": direction, "links": [
                {"id": int(i), "kind": str(k), "weight": float(w)} for i, k, w in zip(ids, kinds, weights)]}))
        else:
            print(f"{src}: " + (", ".join(f"{arrow} {i} ({k}, {w:g})" for i, k, w in zip(ids, kinds, weights))
                                or "no links"))
    return 0
