"""``lukhas-gpu plan``: the RAM, mapped, disk and GPU bytes of N memories, or how many fit; with
``--node-ram``, the cluster plan of a sharded root (shards, nodes, bytes per node, expected QPS)."""
from __future__ import annotations

import json
import re

__all__ = ["add_parsers", "cmd_plan"]


def add_parsers(sub) -> None:
    pl = sub.add_parser(
        "plan", help="capacity: the RAM, mapped, disk and GPU bytes of N memories, how many fit in a budget, "
                     "or the shards and nodes of a cluster",
        description="Predicts, before anything is built, what a store of COUNT memories takes under a config "
                    "(per component, in anonymous RAM, memory-mapped files, disk and GPU memory); with --ram or "
                    "--gpu, how many memories fit in that budget instead; with --node-ram, a sharded root on "
                    "nodes of that size: shards, nodes, RAM/disk/GPU bytes per node and the expected QPS from "
                    "the measured per-shard figures (e.g. plan --count 1e9 --node-ram 256GB --node-gpus 8).")
    pl.add_argument("count", nargs="?", help="memories to plan for, e.g. 1000000 or 1e9 (omit with --ram/--gpu)")
    pl.add_argument("--count", dest="count_opt", metavar="N", help="the same as COUNT")
    pl.add_argument("--dim", type=int, default=384, help="embedding dimension (default 384)")
    pl.add_argument("--preset", default="production", help="config preset (default: production)")
    pl.add_argument("--content-bytes", type=float, default=0.0, metavar="B", help="mean content bytes per memory")
    pl.add_argument("--tags", type=float, default=0.0, metavar="T", help="mean tags per memory")
    pl.add_argument("--tag-vocabulary", type=int, default=1000, metavar="V", help="distinct tags (default 1000)")
    pl.add_argument("--content-ratio", type=float, default=0.72, metavar="R",
                    help="stored / raw content bytes (default 0.72, measured on short English texts)")
    pl.add_argument("--namespaces", type=int, default=1, metavar="N",
                    help="distinct namespaces the memories are spread over (default 1: none)")
    pl.add_argument("--windows", type=float, default=0.0, metavar="F",
                    help="share of memories given a validity window, 0..1 (default 0)")
    pl.add_argument("--state", choices=("built", "opened", "checkpointed"), default="built",
                    help="an index built in the process, a store opened from disk, or a store's writer after "
                         "a checkpoint (its int8 rows mapped; default: built)")
    pl.add_argument("--ram", metavar="SIZE", help="anonymous RAM budget, e.g. 16G: print how many memories fit")
    pl.add_argument("--gpu", metavar="SIZE", help="GPU memory budget, e.g. 40G: print how many memories fit")
    pl.add_argument("--include-mapped", action="store_true", help="count memory-mapped bytes against --ram too")
    pl.add_argument("--no-capacity", action="store_true",
                    help="plan an index grown without a size hint (trained once at the preset's train_threshold) "
                         "instead of one told its size, as `lukhas-gpu ingest` tells it (the default; a --ram/--gpu "
                         "budget is always answered without the hint)")
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    cl = pl.add_argument_group("cluster plan (a sharded root; see lukhas_gpu.distributed.cluster)")
    cl.add_argument("--node-ram", metavar="SIZE",
                    help="RAM of one node, e.g. 256GB (binary units: 256 GiB): plan shards and nodes")
    cl.add_argument("--node-gpus", type=int, default=0, metavar="N", help="GPUs per node (shards GPU-resident)")
    cl.add_argument("--gpu-mem", metavar="SIZE", help="memory of one GPU, e.g. 80GB")
    cl.add_argument("--node-disk", metavar="SIZE", help="disk of one node, e.g. 4TB")
    cl.add_argument("--node-cpus", type=int, metavar="N", help="cores per node (QPS in queries/s)")
    cl.add_argument("--qps", type=float, metavar="TARGET", help="queries/s to sustain (needs --node-cpus)")
    cl.add_argument("--replicas", type=int, default=1, metavar="N", help="full copies of the shards (default 1)")
    cl.add_argument("--shard-rows", metavar="N", help="rows per shard instead of the rule's")
    cl.add_argument("--min-recall", type=float, metavar="R", help="recall@10 floor (default: the preset's target)")
    cl.add_argument("--headroom", type=float, default=0.2, metavar="F",
                    help="share of every budget kept free (default 0.2)")
    cl.add_argument("--wal-rows", metavar="N", help="rows between checkpoints (default: the whole shard)")
    cl.add_argument("--train-concurrency", type=int, metavar="N",
                    help="shards of a node training at once while ingesting (default: all)")
    cl.add_argument("--no-page-cache", action="store_true",
                    help="do not count memory-mapped vectors and contents in RAM")
    pl.set_defaults(func=cmd_plan, catch_errors=True)


_CLUSTER_FLAGS = ("node_gpus", "gpu_mem", "node_disk", "node_cpus", "qps", "shard_rows", "min_recall", "wal_rows",
                  "train_concurrency", "no_page_cache")
_CLUSTER_DEFAULTS = {"node_gpus": 0, "no_page_cache": False}


def cmd_plan(args) -> int:
    from lukhas_gpu.capacity.sizing import max_count, parse_count, parse_size, plan

    if args.count is not None and args.count_opt is not None:
        raise ValueError("give the count once: COUNT or --count")
    raw = args.count if args.count is not None else args.count_opt
    if args.node_ram is not None:
        return cmd_plan_cluster(args, raw)
    given = [f for f in _CLUSTER_FLAGS if getattr(args, f) not in (None, _CLUSTER_DEFAULTS.get(f))]
    if given or args.replicas != 1 or args.headroom != 0.2:
        flag = "--" + (given[0] if given else "replicas" if args.replicas != 1 else "headroom").replace("_", "-")
        raise ValueError(f"{flag} belongs to a cluster plan: give --node-ram too")
    args.count = parse_count(raw, "count") if raw is not None else None
    kw = dict(avg_content_bytes=args.content_bytes, tags_per_memory=args.tags, config=args.preset,
              content_ratio=args.content_ratio, tag_vocabulary=args.tag_vocabulary, state=args.state,
              namespaces=args.namespaces, windows=args.windows)
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


def cmd_plan_cluster(args, count) -> int:
    if count is None:
        raise ValueError("a cluster plan needs the count: --count N (e.g. 1e9)")
    if args.ram or args.gpu or args.include_mapped or args.no_capacity or args.state != "built":
        raise ValueError("--ram, --gpu, --include-mapped, --no-capacity and --state plan one store; "
                         "a cluster plan (--node-ram) takes none of them")
    try:
        p = _plan_cluster(args, count)
    except (TypeError, ValueError) as e:  # name the flags, not the library's arguments
        raise type(e)(_flag_names(str(e))) from None
    if args.json:
        print(json.dumps(p, default=float))
    else:
        print(format_cluster(p))
    return 0


#: plan_cluster's arguments -> the flags that set them.
_FLAGS = {"node_ram": "--node-ram", "node_disk": "--node-disk", "gpu_mem": "--gpu-mem", "node_gpus": "--node-gpus",
          "node_cpus": "--node-cpus", "target_qps": "--qps", "min_recall": "--min-recall", "shard_rows": "--shard-rows",
          "wal_rows": "--wal-rows", "train_concurrency": "--train-concurrency", "avg_content_bytes": "--content-bytes",
          "tags_per_memory": "--tags", "count": "--count", "dim": "--dim", "replicas": "--replicas",
          "headroom": "--headroom"}


def _flag_names(msg: str) -> str:
    """An argument's name -> its flag: anywhere for the snake_case ones, at the start for the others."""
    msg = re.sub(r"\b(" + "|".join(k for k in _FLAGS if "_" in k) + r")\b", lambda m: _FLAGS[m.group(1)], msg)
    first = msg.split(" ", 1)[0]
    return _FLAGS[first] + msg[len(first):] if first in _FLAGS else msg


def _plan_cluster(args, count) -> dict:
    from lukhas_gpu.distributed.cluster import plan_cluster

    return plan_cluster(count, node_ram=args.node_ram, node_gpus=args.node_gpus, gpu_mem=args.gpu_mem,
                        node_disk=args.node_disk, node_cpus=args.node_cpus, dim=args.dim, preset=args.preset,
                        target_qps=args.qps, replicas=args.replicas, headroom=args.headroom,
                        min_recall=args.min_recall, shard_rows=args.shard_rows, avg_content_bytes=args.content_bytes,
                        tags_per_memory=args.tags, page_cache=not args.no_page_cache, wal_rows=args.wal_rows,
                        train_concurrency=args.train_concurrency)


def _gib(b) -> str:
    return "-" if b is None else f"{b / (1 << 30):,.1f} GiB"


def format_cluster(p: dict) -> str:
    """The cluster plan as the readable text ``lukhas-gpu plan --node-ram`` prints."""
    sh, node, q = p["per_shard"], p["per_node"], p["qps"]
    ing, srv, dk = sh["ingest"], sh["serve"], sh["disk"]
    ram, disk, gpu = node["ram"], node["disk"], node["gpu"]
    lines = [
        f"cluster plan for {p['count']:,} memories, {p['dim']} dims, preset {p['preset']} ({p['backend']}), "
        f"recall@10 >= {p['min_recall']}",
        f"  shards      {p['shards']:,} x {p['shard_rows']:,} rows  (IVF{sh['nlist'] or '-'}, PQ{sh['pq_m'] or '-'}; "
        f"{p['rule']}; {p['ids']})",
        f"  nodes       {p['nodes']:,} = {p['nodes_per_replica']:,} per replica x {p['replicas']} "
        f"replica{'s' if p['replicas'] > 1 else ''}; "
        f"{p['shards_per_node']:,} shard{'s' if p['shards_per_node'] > 1 else ''} a node "
        f"(limited by {p['limited_by']}; most per budget: "
        + ", ".join(f"{k} {v:,}" for k, v in p["limits"].items() if v is not None) + ")",
        f"  per shard   ingest peak {_gib(ing['peak'])} (final {_gib(ing['final'])}, training sample "
        f"{_gib(ing['train'])}) + a writer process {_gib(sh['process'])}",
        f"              serve {_gib(srv['ram'])} (anon {_gib(srv['anon'])}, memory-mapped {_gib(srv['mapped'])}); "
        f"disk {_gib(dk['total'])} (2 generations {_gib(2 * dk['generation'])}, vectors.work "
        f"{_gib(dk['vectors_work'])}, WAL {_gib(dk['wal'])})" + (f"; GPU {_gib(sh['gpu'])}" if sh["gpu"] else ""),
        f"  per node    {'':10s}{'budget':>13s}{'usable':>13s}{'ingest':>13s}{'serve':>13s}",
        f"    RAM       {'':10s}{_gib(ram['budget']):>13s}{_gib(ram['usable']):>13s}{_gib(ram['ingest']):>13s}"
        f"{_gib(ram['serve']):>13s}   ({ram['ingest_processes']:,} writer / {ram['serve_processes']:,} serving "
        f"processes, {ram['trainings_at_once']:,} trainings at once)",
        f"    disk      {'':10s}{_gib(disk['budget']):>13s}{_gib(disk['usable']):>13s}{_gib(disk['need']):>13s}"
        f"{_gib(disk['need']):>13s}",
    ]
    if gpu["gpus"]:
        lines.append(f"    GPU       {'(each of ' + str(gpu['gpus']) + ')':10s}{_gib(gpu['per_gpu_budget']):>13s}"
                     f"{_gib(gpu['usable_per_gpu']):>13s}{'-':>13s}{_gib(gpu['need_per_gpu']):>13s}"
                     f"   ({_gib(gpu['need'])} a node)")
    c = p["cluster"]
    lines.append(f"  cluster     RAM {_gib(c['ram'])}, disk {_gib(c['disk'])}"
                 + (f", GPU {_gib(c['gpu'])}" if c["gpu"] else ""))
    lines.append(f"  QPS         q = {q['per_core_per_shard']:,.0f} queries/s per core "
                 f"on one {p['shard_rows']:,}-row shard "
                 f"(measured recall@10 {q['recall']}); a query costs {_duration(1.0 / q['per_core_per_shard'])} of "
                 f"one core on each shard, {_duration(q['core_seconds_per_query'])} of core time over the "
                 f"{p['shards']:,} shards")
    lines.append(f"              {q['formula']}")
    if q["cluster"] is not None:
        lines.append(f"              = {p['replicas']} x {q['node_cores']} x {q['per_core_per_shard']:,.0f} / "
                     f"{p['shards_per_node']:,} = {q['cluster']:,.0f} QPS"
                     + (f" (target {q['target']:,.0f})" if q["target"] else ""))
    else:
        lines.append(f"              = {q['per_node_core']:,.1f} QPS per core of a node (give --node-cpus)")
    lines.append("              GPU search: not measured, not in this figure")
    m = p["merge"]
    lines.append(f"  merge       {m['candidates_per_query']:,} candidates a query (k={m['k']} from each shard, "
                 f"{m['bytes_per_query'] / 1024:,.0f} KiB); {m['after_node_merge']:,} after a per-node merge; "
                 f"time not measured")
    lat = p["latency"]
    if lat["shard_p99_ms"] is not None:
        lines.append(f"  latency     >= a shard's p99, {lat['shard_p99_ms']} ms measured ({lat['note']})")
    b = p["build"]
    lines.append(f"  build       a shard in ~{b['build_s']:,.0f} s on 2 threads (vectors only, {b['ingest_per_s']:,}/s "
                 f"measured at {b['measured_rows']:,}, training {b['train_s']} s of it); "
                 f"~{b['payload_build_s']:,.0f} s with texts, tags and the WAL "
                 f"({b['payload_ingest_per_s']:,}/s at 1M); checkpoint "
                 f"{b['checkpoint_s_at_1M']} s at 1M")
    lines.append("  measured    (benchmarks/RESULTS.md)")
    for r in q["basis"] + p["checks"]:
        lines.append(f"    {r['use']:5s} {r['rows']:>10,} rows  {r['qps']:>6,} QPS/{r['threads']} thr  recall "
                     f"{r['recall'] if r['recall'] is not None else '-'}  {r['setting']}; {r['data']}; "
                     f"{r['section']}, {r['date']}")
    lines.append("  assumptions")
    lines.extend(f"    - {a}" for a in p["assumptions"])
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    """``seconds`` in the unit that reads best: 303 µs, 2.5 ms, 1.2 s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:,.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:,.1f} ms"
    return f"{seconds:,.2f} s"
