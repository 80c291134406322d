"""The cluster plan: shards, nodes, bytes per node and the expected QPS of N memories, on paper.

:func:`plan_cluster` is arithmetic only (no Ray, no index built): the single-store planner
(:func:`lukhas_gpu.capacity.sizing.plan`, the same components as a real store) at the shard
size, and the search figures measured in ``benchmarks/RESULTS.md`` (:data:`MEASURED`, the one
table of them, each row naming its section and date).

**Rows per shard.** A shard is an ordinary store (at most ``util.bounds.MAX_ROWS`` rows; a root
holds at most ``layout.MAX_SHARDS`` shards). Its size is the largest size at which a measured run
reached the recall floor (``min_recall``, default the preset's ``target_recall``) and of which one
shard fits a node; then ``shards = ceil(count / size)`` equal shards. Not larger: above the largest
measured size nothing says what recall or QPS a shard gives (at 10M the defaults measured recall
0.674). Not smaller: a fan-out search visits every shard, so a query costs ``shards / q(rows)``
core-seconds, and ``rows * q(rows)`` grows with the size (measured: 4.0e8 at 100k, 2.6e9 at 1M,
1.6e10 at 10M rows x QPS per core), so fewer, larger shards are cheaper. Build, training and
checkpoint times at that size are the measured ones (reported).

**Bytes per shard**, in two phases:

* ingest: the store being built (``plan(state="built")``: anonymous and memory-mapped bytes), the
  writer's process, and while it trains, the float32 training sample and its projection (what
  ``index.lifecycle.train`` holds; k-means' own buffers are not counted);
* serve: the store opened read-only (``plan(state="opened")``), the memory-mapped int8 vectors and
  content records counted in RAM when ``page_cache`` (the measured QPS had them cached);
* disk: two generations (the published one and the previous one, kept for rollback), the
  writer's working copy of the vectors (``vectors.work``) and the write-ahead log of at most
  ``wal_rows`` rows between checkpoints (:func:`wal_row_bytes`);
* GPU (``node_gpus > 0``): ``plan(backend="cuda").gpu_bytes``: the encoder and the projected
  codes mirrored on the device (``gpu_resident``); a shard is never split across GPUs.

Every process that holds shards costs ``PROCESS`` bytes more (measured). While ingesting, each
shard has its writer process (one writer actor per shard) and ``train_concurrency`` shards of a
node train at once (default: all of them). Serving, a node runs one process per shard, or with
``node_cpus`` known one per core (shard groups) when shards outnumber cores.

**Shards per node** is the most that fit every budget less ``headroom`` in both phases (and the
QPS target); nodes per replica ``= ceil(shards / that)``.

**QPS.** ``q(r)``: one shard's batched QPS per core at ``r`` rows -- the measured QPS over the
threads it ran on (linear scaling with cores assumed), at each measured size the fastest setting
that reached the recall floor, linear in ``log(r)`` between measured sizes. A query visits every
shard: a node holding ``s`` shards spends ``s / q`` core-seconds on it, so with ``c`` cores it
serves ``c * q / s`` queries/s; every node of a replica sees every query, so a replica serves
``min over its nodes of c * q / s_node``, and the cluster ``replicas`` times that. Merging costs
``shards * k`` candidates per query (``nodes * k`` after a per-node merge); its time, the
network's and GPU search have not been measured and are left out (said so in the plan).
"""
from __future__ import annotations

import math

from ..capacity.sizing import TAG_NAME_BYTES, parse_count, parse_size, plan
from ..config import as_config
from ..util.bounds import MAX_DIM, MAX_ROWS
from ..util.checks import check_int, check_real
from ..util.memory import PAGE
from ..vectors.policy import dim_out_for, planned_nlist, train_at, train_rows
from .rootfiles import MAX_SHARDS, SHARD_SHIFT

__all__ = ["MEASURED", "PROCESS", "plan_cluster", "shard_bytes", "shard_qps", "wal_row_bytes", "MAX_COUNT"]

_SCALE = "Scale: 100k, 1M, 10M (synthetic, streamed)"
_CORE_1M = "Core vector index / 1M vectors (synthetic, fitted to the real set)"
_CORE_REAL = "Core vector index (real set, 117k x 384)"
_TRUST = "Recall you can trust (issue 14)"
_DURABLE = "Durable store / 1M memories"
_SERVE = "Retrieval server (issue 15)"
_PLAN = "A 1B-memory plan (issue 16) / one process (benchmarks/bench_actor_rss.py)"


def _m(kind: str, rows: int, section: str, date: str, **values) -> dict:
    return {"kind": kind, "rows": rows, **values, "section": section, "date": date}


#: Every measured figure the plan uses, from ``benchmarks/RESULTS.md`` (section, date). ``search``:
#: one store's batched QPS on ``threads`` threads of a 2-core machine, recall@10 vs exact float32,
#: single-query p50/p99 ms; ``use="curve"`` rows (the synthetic set, ``production``) are what the
#: plan interpolates, ``use="check"`` rows (real data, the HTTP server) are reported beside it.
#: ``build``: training seconds and ingest rate (vectors only, training included) of one store;
#: ``payload_ingest``: the same with contents, tags and the WAL; ``checkpoint``: seconds to write
#: and publish a generation; ``process``: RssAnon of a process that holds shards.
MEASURED = (
    _m("search", 100_000, _SCALE, "2026-11-24", use="curve", data="synthetic", setting="nprobe 128, rerank 10",
       qps=7_906, threads=2, recall=0.986, p50=0.43, p99=0.54),
    _m("search", 1_000_000, _SCALE, "2026-11-24", use="curve", data="synthetic", setting="nprobe 128, rerank 10",
       qps=5_248, threads=2, recall=0.920, p50=0.87, p99=2.44),
    _m("search", 10_000_000, _SCALE, "2026-11-24", use="curve", data="synthetic", setting="nprobe 128, rerank 10",
       qps=3_111, threads=2, recall=0.674, p50=1.20, p99=1.90),
    _m("search", 1_000_000, _CORE_1M, "2026-11-24", use="curve", data="synthetic", setting="nprobe 128, rerank 10",
       qps=6_044, threads=2, recall=0.928, p50=0.84, p99=1.31),
    _m("search", 1_000_000, _CORE_1M, "2026-11-24", use="curve", data="synthetic", setting="nprobe 256, rerank 16",
       qps=2_928, threads=2, recall=0.964, p50=None, p99=None),
    _m("search", 1_000_000, _TRUST + " / 1M synthetic", "2026-12-02", use="curve", data="synthetic",
       setting="tuned for 0.90: nprobe 4, rerank 8", qps=9_098, threads=2, recall=0.899, p50=1.38, p99=1.72),
    _m("search", 1_000_000, _TRUST + " / 1M synthetic", "2026-12-02", use="curve", data="synthetic",
       setting="tuned for 0.95: nprobe 4, rerank 12", qps=8_583, threads=2, recall=0.944, p50=0.93, p99=1.25),
    _m("search", 1_000_000, _TRUST + " / 1M synthetic", "2026-12-02", use="curve", data="synthetic",
       setting="tuned for 0.99: nprobe 6, rerank 24", qps=6_606, threads=2, recall=0.973, p50=1.21, p99=1.52),
    _m("search", 117_659, _CORE_REAL, "2026-11-24", use="check", data="WordNet (MiniLM)",
       setting="nprobe 128, rerank 10", qps=12_105, threads=2, recall=0.965, p50=0.44, p99=0.64),
    _m("search", 117_659, _TRUST + " / wordnet-minilm", "2026-12-02", use="check", data="WordNet (MiniLM)",
       setting="tuned for 0.95: nprobe 96, rerank 12", qps=6_849, threads=2, recall=0.964, p50=None, p99=None),
    _m("search", 50_000, _TRUST + " / debian-minilm-50000", "2026-12-02", use="check", data="Debian (MiniLM)",
       setting="tuned for 0.95: nprobe 384, rerank 8", qps=5_375, threads=2, recall=0.965, p50=None, p99=None),
    _m("search", 50_000, _SERVE, "2026-12-01", use="check", data="WordNet (MiniLM), over HTTP",
       setting="lukhas-gpu serve, batched, 64 clients (in-process batched: 2,359 QPS)", qps=1_015, threads=1,
       recall=None, p50=64.7, p99=137.8),
    _m("build", 100_000, _SCALE, "2026-11-24", train_s=4.7, ingest_per_s=15_470, threads=2),
    _m("build", 1_000_000, _SCALE, "2026-11-24", train_s=28.4, ingest_per_s=23_782, threads=2),
    _m("build", 10_000_000, _SCALE, "2026-11-24", train_s=17.7, ingest_per_s=48_891, threads=2),
    _m("checkpoint", 1_000_000, _DURABLE, "2026-11-24", seconds=1.30),
    # ingest with ~100-byte texts, a tag, timestamps and importance through the WAL (group sync),
    # training included, measured while another benchmark shared the 2 cores
    _m("payload_ingest", 1_000_000, _DURABLE, "2026-11-24", ingest_per_s=7_176),
    # a Ray actor after importing lukhas_gpu and building, searching (256 queries) and dropping a
    # 40,000-row index: interpreter, torch, FAISS, Ray's worker and the libraries' working memory
    _m("process", 0, _PLAN, "2026-12-02", anon_bytes=230_019_072),
)
#: Anonymous RAM of one process that holds shards (the ``process`` row of :data:`MEASURED`).
PROCESS = next(m["anon_bytes"] for m in MEASURED if m["kind"] == "process")
#: The most memories a plan takes: every shard full.
MAX_COUNT = MAX_SHARDS * MAX_ROWS
#: Bytes of one (id, score) pair a shard returns: int64 id, float32 score.
PAIR_BYTES = 12
_TIB = 1 << 40
_GIB = 1 << 30


# -- the pieces ------------------------------------------------------------------------------------
def wal_row_bytes(dim: int, avg_content_bytes: float = 0.0, tags_per_memory: float = 0.0) -> float:
    """Write-ahead-log bytes of one added memory (``index.writes.PreparedAdd.log_fields`` through
    ``store.walcodec``): the float32 embedding, timestamp and importance (8 B each), a content
    (kind byte, 8-byte length, its bytes) and the tag lists as compact JSON."""
    row = 4 * dim + 16
    if avg_content_bytes > 0:
        row += 9 + avg_content_bytes
    if tags_per_memory > 0:
        row += 2 + tags_per_memory * (TAG_NAME_BYTES + 3)
    return float(row)


def _shard_config(cfg, rows: int):
    """The config a shard is built with: told its size (as ``lukhas-gpu ingest`` tells a store)."""
    return cfg if cfg.capacity else cfg.replace(capacity=max(rows, 1))


def shard_bytes(rows: int, dim: int, config, *, backend: str = "cpu", avg_content_bytes: float = 0.0,
                tags_per_memory: float = 0.0, page_cache: bool = True, wal_rows: int | None = None) -> dict:
    """Bytes of one shard of ``rows`` memories, per phase and place (see the module docstring).

    Returns ``{"ingest": {...}, "serve": {...}, "disk": {...}, "gpu": int, "nlist", "pq_m"}``; the
    RAM figures exclude the process (:data:`PROCESS`), which the node plan adds per process.
    ``wal_rows``: rows logged between checkpoints (None: the whole shard, as an ingest that
    checkpoints at its end).
    """
    cfg = _shard_config(as_config(config), rows)
    kw = dict(avg_content_bytes=avg_content_bytes, tags_per_memory=tags_per_memory, config=cfg,
              backend=backend, faiss_gpu=False, runtime=False)
    built, opened = plan(rows, dim, state="built", **kw), plan(rows, dim, state="opened", **kw)
    mapped = page_cache  # memory-mapped bytes count in RAM

    def ram(p):
        return p.anon_bytes + (p.mapped_bytes if mapped else 0)

    peak, train = ram(built), 0
    if built.nlist is not None:  # training, at train_at rows: the float32 sample and its projection
        n0 = train_at(cfg)
        train = min(n0, train_rows(planned_nlist(n0, cfg))) * 4 * (dim + dim_out_for(dim, cfg))
        peak = max(peak, ram(plan(n0, dim, state="built", **kw)) + train)
    generation = built.disk_bytes
    work = -(-rows * dim // PAGE) * PAGE
    logged = rows if wal_rows is None else min(wal_rows, rows)
    wal = int(math.ceil(logged * wal_row_bytes(dim, avg_content_bytes, tags_per_memory)))
    return {"rows": rows, "nlist": built.nlist, "pq_m": built.pq_m,
            "ingest": {"anon": built.anon_bytes, "mapped": built.mapped_bytes, "final": ram(built), "train": train,
                       "peak": peak},
            "serve": {"anon": opened.anon_bytes, "mapped": opened.mapped_bytes, "ram": ram(opened)},
            "disk": {"generation": generation, "previous_generation": generation, "vectors_work": work,
                     "wal": wal, "total": 2 * generation + work + wal},
            "gpu": opened.gpu_bytes}


def _curve(min_recall: float) -> dict:
    """``{rows: the fastest "curve" row at that size with recall >= min_recall}``."""
    best: dict = {}
    for m in MEASURED:
        if m["kind"] == "search" and m["use"] == "curve" and m["recall"] >= min_recall:
            q = m["qps"] / m["threads"]
            if m["rows"] not in best or q > best[m["rows"]]["qps"] / best[m["rows"]]["threads"]:
                best[m["rows"]] = m
    return best


def shard_qps(rows: int, min_recall: float) -> dict:
    """One shard's batched QPS per core at ``rows`` rows, from the measured sizes that reached
    ``min_recall``: linear in ``log(rows)`` between the two around it, the nearest measured figure
    outside them (flagged). Returns ``{"per_core", "recall", "p99", "basis": [rows of MEASURED],
    "flag": str or None}``; raises ``ValueError`` when no measured size reached ``min_recall``."""
    curve = _curve(min_recall)
    if not curve:
        top = max((m for m in MEASURED if m["kind"] == "search" and m["use"] == "curve"), key=lambda m: m["recall"])
        raise ValueError(f"no measured shard reached recall@10 {min_recall}: the best measured is {top['recall']} "
                         f"at {top['rows']:,} rows ({top['section']}); lower min_recall")
    sizes = sorted(curve)
    flag = None
    if rows <= sizes[0] or rows >= sizes[-1]:
        near = sizes[0] if rows <= sizes[0] else sizes[-1]
        basis, t = [curve[near]], 0.0
        if rows < near:
            flag = (f"{rows:,} rows is below the smallest measured size ({near:,}): "
                    f"its figure is used (smaller is faster)")
        elif rows > near:
            flag = (f"{rows:,} rows is above the largest size measured at recall >= {min_recall} ({near:,}): its "
                    f"figure is used, an upper bound (QPS falls with size; recall there is not measured)")
    else:
        hi = next(s for s in sizes if s >= rows)
        lo = sizes[sizes.index(hi) - 1]
        basis = [curve[lo], curve[hi]]
        t = (math.log(rows) - math.log(lo)) / (math.log(hi) - math.log(lo))
    q = [m["qps"] / m["threads"] for m in basis]
    per_core = q[0] + (q[-1] - q[0]) * t
    p99 = [m["p99"] for m in basis if m["p99"] is not None]
    return {"per_core": per_core, "recall": min(m["recall"] for m in basis), "p99": max(p99) if p99 else None,
            "basis": basis, "flag": flag}


def _build(rows: int) -> dict:
    """The measured build figures nearest ``rows`` (by log distance)."""
    builds = [m for m in MEASURED if m["kind"] == "build"]
    near = min(builds, key=lambda m: abs(math.log(max(rows, 1)) - math.log(m["rows"])))
    payload = next(m for m in MEASURED if m["kind"] == "payload_ingest")
    return {"measured_rows": near["rows"], "train_s": near["train_s"], "ingest_per_s": near["ingest_per_s"],
            "build_s": rows / near["ingest_per_s"], "section": near["section"], "date": near["date"],
            "payload_ingest_per_s": payload["ingest_per_s"], "payload_build_s": rows / payload["ingest_per_s"]}


def _checks() -> list:
    return [m for m in MEASURED if m["kind"] == "search" and m["use"] == "check"]


# -- one node ---------------------------------------------------------------------------------------
def _node_ram(s: int, shard: dict, cpus, train_concurrency) -> dict:
    """RAM of a node holding ``s`` shards, ingesting and serving. Ingesting, a shard's peak is
    training (its store at ``train_at`` rows plus the sample) or its final size; with fewer
    trainings at once than shards, the others are counted at their final size."""
    trains = min(s, train_concurrency or s)
    serve_procs = min(s, cpus) if cpus else s
    ing = shard["ingest"]
    ingest = s * PROCESS + trains * ing["peak"] + (s - trains) * ing["final"]
    return {"ingest": ingest,
            "serve": s * shard["serve"]["ram"] + serve_procs * PROCESS, "ingest_processes": s,
            "serve_processes": serve_procs, "trainings_at_once": trains}


def _most(fits, hi: int) -> int:
    """The largest ``s`` in ``0..hi`` with ``fits(s)`` (``fits`` monotone, ``fits(0)`` true)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _shards_per_node(shards: int, shard: dict, q: float, *, ram: int, disk, gpus: int, gpu_mem, cpus,
                     train_concurrency, target_per_replica) -> dict:
    """The most shards one node takes under each budget (``None``: no such budget)."""
    def ram_fits(s):
        r = _node_ram(s, shard, cpus, train_concurrency)
        return max(r["ingest"], r["serve"]) <= ram

    limits = {"ram": _most(ram_fits, shards)}
    limits["disk"] = min(shards, disk // shard["disk"]["total"]) if disk is not None else None
    if gpus and gpu_mem is not None and shard["gpu"]:
        limits["gpu"] = min(shards, gpus * (gpu_mem // shard["gpu"]))
    else:
        limits["gpu"] = None
    limits["qps"] = min(shards, int(cpus * q // target_per_replica)) if target_per_replica else None
    return limits


# -- the plan ------------------------------------------------------------------------------------------
def plan_cluster(count, *, node_ram, node_gpus: int = 0, gpu_mem=None, node_disk=None, node_cpus=None,
                 dim: int = 384, preset="production", target_qps=None, replicas: int = 1, headroom: float = 0.2,
                 min_recall=None, shard_rows=None, avg_content_bytes: float = 0.0, tags_per_memory: float = 0.0,
                 page_cache: bool = True, wal_rows=None, train_concurrency=None, k: int = 10) -> dict:
    """Plan a sharded root of ``count`` memories on nodes of the given size (see the module docstring
    for every rule).

    Parameters
    ----------
    count : int or str
        Memories (``1e9`` and ``"1_000_000"`` forms taken), ``1..MAX_COUNT``.
    node_ram, node_disk, gpu_mem : int or str
        Bytes of one node's RAM and disk, and of one of its GPUs (``"256GB"``, ``"1.5TiB"``: binary
        units). ``node_disk`` and ``gpu_mem`` are optional (no budget checked without them).
    node_gpus : int, default 0
        GPUs per node; with any, shards are planned GPU-resident (``backend="cuda"``).
    node_cpus : int, optional
        Cores per node: QPS in queries/s (else per core of a node), one serving process per core.
    dim : int, default 384
    preset : str or IndexConfig, default "production"
    target_qps : float, optional
        Queries/s to sustain: fewer shards per node, and more replicas when one shard per node is
        not enough.
    replicas : int, default 1
        Full copies of the shards, each on its own nodes; queries are split among them.
    headroom : float, default 0.2
        Share of every budget kept free (OS, page cache beyond the store's files, CUDA context).
    min_recall : float, optional
        Recall@10 floor for the shard size and the QPS figures; default the preset's
        ``target_recall`` (0.95 without one).
    shard_rows : int, optional
        Rows per shard instead of the rule's (QPS outside the measured range is flagged).
    avg_content_bytes, tags_per_memory : float
        Payload per memory, as :func:`~lukhas_gpu.capacity.sizing.plan`.
    page_cache : bool, default True
        Count memory-mapped files (int8 vectors, contents) in RAM.
    wal_rows : int, optional
        Rows logged between checkpoints (the WAL's disk); default the whole shard, as an ingest
        that checkpoints at its end (``lukhas-gpu ingest`` checkpoints every 100,000 by default).
    train_concurrency : int, optional
        Shards of a node training at once during ingest (default: all of them).
    k : int, default 10
        Results per query (the merge's size).

    Returns
    -------
    dict
        JSON-ready: ``shards``, ``shard_rows``, ``rule``, ``nodes``, ``shards_per_node``, ``limits``
        (the most shards a node takes under each budget) and ``limited_by``, ``per_shard``,
        ``per_node``, ``cluster`` (totals), ``qps`` (with its ``basis``: the rows of
        :data:`MEASURED` used), ``merge``, ``latency``, ``build``, ``checks``, ``assumptions``.

    Raises
    ------
    ValueError, TypeError
        A number out of its bounds or unreadable (named), no measured size at the recall floor,
        more shards than a root holds, or one shard too big for a node.
    """
    count = parse_count(count, "count", 1, MAX_COUNT)
    o = _options(node_ram=node_ram, node_gpus=node_gpus, gpu_mem=gpu_mem, node_disk=node_disk, node_cpus=node_cpus,
                 dim=dim, preset=preset, target_qps=target_qps, replicas=replicas, headroom=headroom,
                 min_recall=min_recall, avg_content_bytes=avg_content_bytes, page_cache=page_cache,
                 wal_rows=wal_rows, train_concurrency=train_concurrency, k=k)
    o["shard_rows_given"] = shard_rows is not None
    if shard_rows is not None:
        sizes = [parse_count(shard_rows, "shard_rows", 1, MAX_ROWS)]
    else:  # the measured sizes that reached the floor, largest first
        shard_qps(1, o["floor"])  # names the best measured recall when none reached the floor
        sizes = sorted(_curve(o["floor"]), reverse=True)
    shards, rows, shard, qps, limits, per_node, reps = _fit(count, sizes, o, avg_content_bytes, tags_per_memory)
    name = preset if isinstance(preset, str) else "custom"
    return _assemble(count, o["dim"], name, o["floor"], shards, rows, shard, qps, limits, per_node, reps, o["replicas"],
                     o)


def _options(*, node_ram, node_gpus, gpu_mem, node_disk, node_cpus, dim, preset, target_qps, replicas, headroom,
             min_recall, avg_content_bytes, page_cache, wal_rows, train_concurrency, k) -> dict:
    """:func:`plan_cluster`'s arguments checked (each named when out of bounds) and the budgets
    less the headroom (``usable``)."""
    dim = check_int("dim", dim, 1)
    if dim > MAX_DIM:
        raise ValueError(f"dim must be <= {MAX_DIM}, got {dim}")
    cfg = as_config(preset)
    ram = _budget(node_ram, "node_ram", 1 << 30, 64 * _TIB)
    disk = _budget(node_disk, "node_disk", 1 << 30, 1024 * _TIB) if node_disk is not None else None
    gpus = _bounded_int("node_gpus", node_gpus, 0, 64)
    gmem = _budget(gpu_mem, "gpu_mem", 1 << 30, 16 * _TIB) if gpu_mem is not None else None
    if gmem is not None and not gpus:
        raise ValueError("gpu_mem was given with node_gpus=0: give the GPUs per node")
    cpus = _bounded_int("node_cpus", node_cpus, 1, 1 << 16) if node_cpus is not None else None
    replicas = _bounded_int("replicas", replicas, 1, 1024)
    head = check_real("headroom", headroom, 0.0, 0.9)
    target = check_real("target_qps", target_qps, 0.0, 1e9, lo_open=True) if target_qps is not None else None
    if target is not None and cpus is None:
        raise ValueError("target_qps needs node_cpus: a node's QPS is its cores' work")
    floor = check_real("min_recall", min_recall if min_recall is not None else (cfg.target_recall or 0.95), 0.0, 1.0,
                       lo_open=True)
    wal_rows = parse_count(wal_rows, "wal_rows", 0, MAX_ROWS) if wal_rows is not None else None
    trains = _bounded_int("train_concurrency", train_concurrency, 1, 1 << 20) if train_concurrency is not None else None
    k = _bounded_int("k", k, 1, 100_000)
    check_real("avg_content_bytes", avg_content_bytes, 0.0, float(cfg.max_content_bytes))
    usable = {"ram": int(ram * (1 - head)), "disk": int(disk * (1 - head)) if disk else None,
              "gpu": int(gmem * (1 - head)) if gmem else None}
    return dict(dim=dim, cfg=cfg, floor=floor, replicas=replicas, ram=ram, disk=disk, gpus=gpus, gpu_mem=gmem,
                cpus=cpus, headroom=head, usable=usable, target=target, trains=trains, k=k,
                backend="cuda" if gpus else "cpu", page_cache=page_cache, wal_rows=wal_rows)


def _fit(count: int, sizes: list, o: dict, avg_content_bytes: float, tags_per_memory: float) -> tuple:
    """The first shard size (of ``sizes``, largest first) of which a node holds at least one shard:
    ``(shards, rows, shard bytes, qps, limits, shards per node, replicas)``."""
    usable, cpus, target = o["usable"], o["cpus"], o["target"]
    for size in sizes:
        shards = -(-count // size)
        if shards > MAX_SHARDS:
            raise ValueError(f"{count:,} memories in shards of {size:,} rows make {shards:,} shards, over the "
                             f"{MAX_SHARDS:,} a root holds: raise shard_rows (at most {MAX_ROWS:,})")
        rows = -(-count // shards)
        shard = shard_bytes(rows, o["dim"], o["cfg"], backend=o["backend"], avg_content_bytes=avg_content_bytes,
                            tags_per_memory=tags_per_memory, page_cache=o["page_cache"], wal_rows=o["wal_rows"])
        qps = shard_qps(rows, o["floor"])
        reps = o["replicas"]
        if target is not None and cpus * qps["per_core"] * reps < target:  # one shard a node is too slow
            reps = max(reps, math.ceil(target / (cpus * qps["per_core"])))
        limits = _shards_per_node(shards, shard, qps["per_core"], ram=usable["ram"], disk=usable["disk"],
                                  gpus=o["gpus"], gpu_mem=usable["gpu"], cpus=cpus, train_concurrency=o["trains"],
                                  target_per_replica=target / reps if target else None)
        per_node = min(v for v in limits.values() if v is not None)
        if per_node >= 1:
            return shards, rows, shard, qps, limits, per_node, reps
    short = [name for name, v in limits.items() if v == 0]
    raise ValueError(f"one shard of {rows:,} rows does not fit a node's {' and '.join(short)} (less "
                     f"{o['headroom']:.0%} headroom): it needs {_need_text(shard, cpus, o['trains'])}; give bigger "
                     f"nodes or smaller shards (shard_rows)")


def _assemble(count, dim, preset, floor, shards, rows, shard, qps, limits, per_node, reps, replicas_asked, o) -> dict:
    """The plan's dict: shards spread evenly over the nodes, the busiest node's figures, the QPS."""
    nodes_per_replica = -(-shards // per_node)
    s = -(-shards // nodes_per_replica)  # the busiest node's shards once spread evenly
    node_ram = _node_ram(s, shard, o["cpus"], o["trains"])
    q = qps["per_core"]
    binding = min((v, name) for name, v in limits.items() if v is not None)[1]
    if binding == "ram":
        binding = "ram while ingesting" if node_ram["ingest"] >= node_ram["serve"] else "ram while serving"
    gpu_node = s * shard["gpu"] if o["gpus"] else 0
    per_gpu = -(-s // o["gpus"]) * shard["gpu"] if o["gpus"] else 0
    replica_qps = o["cpus"] * q / s if o["cpus"] else None
    nodes = reps * nodes_per_replica
    assumptions = [
        "QPS per core = a store's measured batched QPS / the threads it ran on (2 threads, 2 cores); "
        "linear scaling with cores is assumed, not measured",
        f"{o['headroom']:.0%} of every budget kept free (a choice, not a measurement)",
        "ingest: every shard of a node has its writer process; "
        + (f"{o['trains']} trainings at once per node" if o["trains"] else "all its shards train at once")
        + " (float32 sample + projection counted; k-means buffers and a background restructure's second IVF not)",
        "merge, network and front-end (HTTP) time: not measured, not in the QPS",
        "recall and QPS are those of the synthetic set (the only one measured across sizes); real sets "
        "at 50k-117k: see the check rows",
    ]
    if preset != "production":
        assumptions.append("search figures were measured with the production preset; this preset's QPS is not measured")
    if o["gpus"]:
        assumptions.append("GPU search: not measured (RESULTS 'The GPU path': the CUDA run is owed); the QPS is the "
                           "nodes' CPU cores on the IVF path; GPU bytes are the device mirror (codes + tombstones) "
                           "and the encoder, without the CUDA context")
    if qps["flag"]:
        assumptions.append(qps["flag"])
    if reps > replicas_asked:
        assumptions.append(f"replicas raised from {replicas_asked} to {reps}: one shard per node cannot serve "
                           f"{o['target']:,.0f} QPS on {o['cpus']} cores")
    ids = "global id = shard << %d | row (distributed.rootfiles)" % SHARD_SHIFT
    rule = ("shard_rows as given" if o["shard_rows_given"] else
            f"the largest measured size with recall@10 >= {floor} whose one shard fits a node; then equal shards")
    return {
        "count": count, "dim": dim, "preset": preset, "backend": o["backend"],
        "min_recall": floor, "shards": shards, "shard_rows": rows, "rule": rule, "ids": ids,
        "nodes": nodes, "nodes_per_replica": nodes_per_replica, "replicas": reps, "shards_per_node": s,
        "limits": limits, "limited_by": binding,
        "per_shard": {**shard, "process": PROCESS},
        "per_node": {
            "ram": {"budget": o["ram"], "usable": o["usable"]["ram"], **node_ram},
            "disk": {"budget": o["disk"], "usable": o["usable"]["disk"], "need": s * shard["disk"]["total"]},
            "gpu": {"gpus": o["gpus"], "per_gpu_budget": o["gpu_mem"], "usable_per_gpu": o["usable"]["gpu"],
                    "need": gpu_node, "need_per_gpu": per_gpu},
            "cpus": o["cpus"]},
        "cluster": {"ram": nodes * max(node_ram["ingest"], node_ram["serve"]),
                    "disk": nodes * s * shard["disk"]["total"], "gpu": nodes * gpu_node},
        "qps": {"per_core_per_shard": q, "recall": qps["recall"], "node_cores": o["cpus"],
                "per_replica": replica_qps, "cluster": replica_qps * reps if replica_qps else None,
                "per_node_core": None if o["cpus"] else q / s * reps, "target": o["target"],
                "core_seconds_per_query": shards / q,
                "formula": "cluster QPS = replicas x min over nodes (node cores x q / shards on the node); "
                           "q = one shard's QPS per core at its size",
                "gpu": "not measured", "basis": qps["basis"]},
        "merge": {"k": o["k"], "candidates_per_query": shards * o["k"], "bytes_per_query": shards * o["k"] * PAIR_BYTES,
                  "after_node_merge": nodes_per_replica * o["k"], "time": "not measured"},
        "latency": {"shard_p99_ms": qps["p99"],
                    "note": "a query waits for its slowest shard; merge and network not measured"},
        "build": {**_build(rows),
                  "checkpoint_s_at_1M": next(m["seconds"] for m in MEASURED if m["kind"] == "checkpoint")},
        "checks": _checks(),
        "assumptions": assumptions,
    }


def _need_text(shard: dict, cpus, trains) -> str:
    r = _node_ram(1, shard, cpus, trains)
    parts = [f"RAM {max(r['ingest'], r['serve']) / _GIB:.2f} GiB", f"disk {shard['disk']['total'] / _GIB:.2f} GiB"]
    if shard["gpu"]:
        parts.append(f"GPU {shard['gpu'] / _GIB:.2f} GiB")
    return ", ".join(parts)


def _budget(value, name: str, lo: int, hi: int) -> int:
    v = parse_size(value, name)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be between {lo / _GIB:g} GiB and {hi / _TIB:g} TiB, got {value!r}")
    return v


def _bounded_int(name: str, value, lo: int, hi: int) -> int:
    v = check_int(name, value, lo)
    if v > hi:
        raise ValueError(f"{name} must be <= {hi:,}, got {v}")
    return v
