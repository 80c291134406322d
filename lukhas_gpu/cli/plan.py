"""``lukhas-gpu plan``: the RAM, mapped, disk and GPU bytes of N memories, or how many fit."""
from __future__ import annotations

import json

__all__ = ["add_parsers", "cmd_plan"]


def add_parsers(sub) -> None:
    pl = sub.add_parser(
        "plan", help="capacity: the RAM, mapped, disk and GPU bytes of N memories, or how many fit in a budget",
        description="Predicts, before anything is built, what a store of COUNT memories takes under a config "
                    "(per component, in anonymous RAM, memory-mapped files, disk and GPU memory); with --ram or "
                    "--gpu, how many memories fit in that budget instead.")
    pl.add_argument("count", nargs="?", type=int, help="memories to plan for (omit with --ram/--gpu)")
    pl.add_argument("--dim", type=int, required=True, help="embedding dimension")
    pl.add_argument("--preset", default="production", help="config preset (default: production)")
    pl.add_argument("--content-bytes", type=float, default=0.0, metavar="B", help="mean content bytes per memory")
    pl.add_argument("--tags", type=float, default=0.0, metavar="T", help="mean tags per memory")
    pl.add_argument("--tag-vocabulary", type=int, default=1000, metavar="V", help="distinct tags (default 1000)")
    pl.add_argument("--content-ratio", type=float, default=0.72, metavar="R",
                    help="stored / raw content bytes (default 0.72, measured on short English texts)")
    pl.add_argument("--state", choices=("built", "opened"), default="built",
                    help="an index built in the process, or a store opened from disk (default: built)")
    pl.add_argument("--ram", metavar="SIZE", help="anonymous RAM budget, e.g. 16G: print how many memories fit")
    pl.add_argument("--gpu", metavar="SIZE", help="GPU memory budget, e.g. 40G: print how many memories fit")
    pl.add_argument("--include-mapped", action="store_true", help="count memory-mapped bytes against --ram too")
    pl.add_argument("--no-capacity", action="store_true",
                    help="plan an index grown without a size hint (trained once at the preset's train_threshold) "
                         "instead of one told its size, as `lukhas-gpu ingest` tells it (the default; a --ram/--gpu "
                         "budget is always answered without the hint)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan, catch_errors=True)


def cmd_plan(args) -> int:
    from lukhas_gpu.capacity.planner import max_count, parse_size, plan

    kw = dict(avg_content_bytes=args.content_bytes, tags_per_memory=args.tags, config=args.preset,
              content_ratio=args.content_ratio, tag_vocabulary=args.tag_vocabulary, state=args.state)
    count, fits = args.count, None
    if args.ram or args.gpu:
        ram = parse_size(args.ram, "--ram") if args.ram else None
        gpu = parse_size(args.gpu, "--gpu") if args.gpu else None
        fits = max_count(ram, gpu, include_mapped=args.include_mapped, dim=args.dim, **kw)
        count = fits if count is None else count
    if count is None:
        raise ValueError("give COUNT, or a budget with --ram / --gpu")
    if not args.no_capacity and fits is None and count and count > 0:
        from lukhas_gpu.config import IndexConfig

        cfg = IndexConfig.preset(args.preset)
        kw["config"] = cfg if cfg.capacity else cfg.replace(capacity=count)  # the IVF sized for all of it
    p = plan(count, args.dim, **kw)
    if args.json:
        print(json.dumps({**p.to_dict(), "max_count": fits}, default=float))
        return 0
    gib = 1 << 30
    if fits is not None:
        budget = " and ".join(f"{v} {name}" for v, name in ((args.ram, "RAM"), (args.gpu, "GPU")) if v)
        print(f"{fits:,} memories fit in {budget} ({args.preset}, {args.dim} dims)")
    print(f"plan for {p.count:,} memories, {args.dim} dims, preset {args.preset} ({p.state}, {p.backend}): "
          f"IVF{p.nlist or '-'}, PQ{p.pq_m or '-'}, dim_out {p.dim_out}")
    for place in ("anon", "mapped", "disk", "gpu"):
        print(f"  {place:6s} {getattr(p, place + '_bytes') / gib:10.3f} GiB  "
              f"{p.per_memory.get(place, 0.0):9.1f} B/memory")
        for name, b in sorted(p.memory[place].items(), key=lambda kv: -kv[1]):
            if b:
                print(f"         {name:28s} {b / gib:10.3f} GiB")
    return 0
