"""The ``lukhas-gpu`` command. ``main(argv=None)`` -> parser -> subcommand; tested in-process."""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
import sys
import time

import numpy as np

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lukhas-gpu", description="A compact vector memory index.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="ingest + retrieval benchmark on a built-in synthetic dataset, against the naive store",
                       description="Runs a synthetic set (fitted to MiniLM embeddings of WordNet) through ingest and "
                                   "search with a preset and the naive store of the old design; prints bytes per "
                                   "memory, recall@10, ingest rate, QPS and latency.")
    b.add_argument("--n", type=int, default=100_000, help="memories (default 100000)")
    b.add_argument("--nq", type=int, default=1000, help="queries (default 1000)")
    b.add_argument("--preset", default="production", help="config preset (default production)")
    b.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    b.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("verify", help="check a store's files (sizes, CRC-32) and its internal consistency")
    v.add_argument("path", help="store directory")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("rollback", help="publish the previous generation of a (closed) store again")
    r.add_argument("path", help="store directory")
    r.set_defaults(func=cmd_rollback, catch_errors=True)

    st = sub.add_parser("stats", help="count, bytes per memory per component, backend, config of a store")
    st.add_argument("path", help="store directory")
    st.add_argument("--json", action="store_true", help="print the stats as JSON")
    st.set_defaults(func=cmd_stats, catch_errors=True)

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
    pl.add_argument("--json", action="store_true", help="print the plan as JSON")
    pl.set_defaults(func=cmd_plan, catch_errors=True)

    _add_store_commands(sub)
    _add_migrate_command(sub)
    return p


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


def cmd_verify(args) -> int:
    from lukhas_gpu import MemoryIndex
    from lukhas_gpu.store.layout import StoreError

    try:
        index = MemoryIndex.open(args.path, mode="r", verify=True)
        report = index.verify()
    except StoreError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        else:
            print(f"lukhas-gpu verify: FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report) if args.json else
          f"{args.path}: ok (generation {report['generation']}, {report['count']:,} memories, {report['files']} files checked)")
    return 0


def cmd_rollback(args) -> int:
    from lukhas_gpu import MemoryIndex

    gen = MemoryIndex.rollback(args.path)
    print(f"{args.path}: now at {gen.name}")
    return 0


def cmd_stats(args) -> int:
    from lukhas_gpu import MemoryIndex

    st = MemoryIndex.open(args.path, mode="r").stats()
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"{args.path}: {st['count']:,} memories ({st['rows']:,} rows, {st['deleted']:,} deleted), "
          f"dim {st['dim']} -> {st['dim_out']}, phase {st['phase']}, backend {st['backend']}")
    print(f"  {st['bytes_per_memory']:.1f} B per memory: {st['anon_bytes_per_memory']:.1f} B anonymous RAM, "
          f"the rest memory-mapped")
    for name, nbytes in sorted(st["bytes"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<22} {nbytes / max(st['count'], 1):10.1f} B/memory")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if not getattr(args, "catch_errors", False):
        return int(args.func(args) or 0)
    from lukhas_gpu.store.layout import StoreError

    try:
        return int(args.func(args) or 0)
    except (StoreError, ValueError, TypeError, OSError, _MissingExtra) as e:
        # the library's messages name the file, line or id; a traceback would add nothing
        msg = " ".join(str(e).split("\n"))
        print(f"lukhas-gpu {args.command}: error: {msg}", file=sys.stderr)
        return 1


# -- store commands: ingest, search, get, delete ----------------------------------------------------
#: The ingest's resume record, inside the store directory.
PROGRESS_FILE = "ingest-progress.json"
#: Seconds between two plain (non-TTY) progress lines of ``ingest``.
PROGRESS_INTERVAL = 5.0
#: Queries searched per batch when they come from a file.
QUERY_BATCH = 1024


def _add_store_commands(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    i = sub.add_parser(
        "ingest", help="stream memories from JSONL, Parquet or .npy/.npz + payload JSONL into a store, resumably",
        formatter_class=fmt,
        description="Adds the memories of INPUT to the store STORE (created when it does not exist yet).\n\n"
                    "INPUT is one of\n"
                    "  * a JSON Lines file with embedded vectors, one memory a line (the old naive format):\n"
                    '      {"id": ..., "content": "...", "embedding": [...], "tags": [...],\n'
                    '       "metadata": {"timestamp": <epoch s or ISO-8601>, "importance": <0..1>}}\n'
                    "  * a .npy / .npz of embeddings (n, dim) together with --payloads, a JSONL of the same\n"
                    "    fields without \"embedding\" (row i goes with record line i).\n"
                    "  * a Parquet file (.parquet), one memory a row; it needs pyarrow:\n"
                    "    pip install \"lukhas-gpu[parquet]\". Its columns:\n"
                    "      embedding   list<float> or fixed_size_list<float> (another column: --embedding-column)\n"
                    "      content     string or binary (optional; null: no content)\n"
                    "      tags        list<string> (optional)\n"
                    "      timestamp   epoch seconds (number) or a timestamp/date type; no time zone means UTC\n"
                    "                  (optional; null: the time of the ingest)\n"
                    "      importance  float in [0, 1] (optional; null: 0.5)\n"
                    "    Other columns are not read. Rows are numbered from 0 in messages.\n\n"
                    "Records are validated and added batch by batch (bounded memory); a bad record (invalid\n"
                    "or truncated JSON, wrong dimension, NaN, a null embedding) stops the ingest with exit\n"
                    "code 1 and its file and line (or row) on stderr; nothing of its batch is stored, earlier\n"
                    "batches stay.\n"
                    f"Progress is recorded in STORE/{PROGRESS_FILE} after every batch: running the same\n"
                    "command again after an interruption or an error skips the records already ingested.")
    i.add_argument("store", help="store directory (created if it holds no store)")
    i.add_argument("input", help="JSONL with embeddings, .parquet, or .npy/.npz of embeddings (with --payloads)")
    i.add_argument("--payloads", metavar="JSONL", help="payload records for a .npy/.npz INPUT (row i <-> line i)")
    _add_source_options(i)
    i.add_argument("--embedding-column", metavar="NAME", default="embedding",
                   help="the embeddings' column of a .parquet INPUT (default: embedding)")
    i.add_argument("--checkpoint-every", type=int, default=10, metavar="N",
                   help="checkpoint the store every N batches, and at the end (default: 10)")
    i.add_argument("--restart", action="store_true",
                   help="ignore the recorded progress and ingest INPUT from its first record (records already "
                        "in the store stay there)")
    i.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    i.set_defaults(func=cmd_ingest, catch_errors=True)

    s = sub.add_parser(
        "search", help="top-k memories for query vectors (from a file or stdin), with filters and ranking",
        formatter_class=fmt,
        description="Opens STORE read-only (it sees the last checkpoint) and searches each query.\n\n"
                    "Queries: --query-file F, a .npy (dim,) or (n, dim) array or a JSONL of\n"
                    '{"embedding": [...]} (or bare [...]) lines; without it, the same JSON lines from stdin,\n'
                    "each answered as it arrives.")
    s.add_argument("store", help="store directory")
    s.add_argument("--query-file", metavar="F", help=".npy or JSONL of query vectors (default: JSON lines on stdin)")
    s.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    s.add_argument("--tags-all", nargs="+", metavar="T", help="memories carrying every one of these tags")
    s.add_argument("--tags-any", nargs="+", metavar="T", help="... at least one of these tags")
    s.add_argument("--tags-none", nargs="+", metavar="T", help="... none of these tags")
    s.add_argument("--since", type=_time_arg, metavar="S", help="timestamp >= S (epoch seconds or ISO-8601; UTC "
                                                                "when no offset)")
    s.add_argument("--until", type=_time_arg, metavar="S", help="timestamp <= S (epoch seconds or ISO-8601)")
    s.add_argument("--min-importance", type=float, metavar="X", help="importance >= X (in [0, 1])")
    s.add_argument("--similarity", type=float, default=1.0, metavar="W",
                   help="weight of cosine similarity in the ranked score (default: 1)")
    s.add_argument("--recency", type=float, default=0.0, metavar="W",
                   help="weight of recency decay 0.5**(age/half-life) (default: 0, off)")
    s.add_argument("--importance", type=float, default=0.0, metavar="W", help="weight of importance (default: 0)")
    s.add_argument("--half-life", type=float, default=None, metavar="SECONDS",
                   help="age at which recency halves (default: one day)")
    s.add_argument("--contents", action="store_true", help="print the memories' contents too")
    s.add_argument("--json", action="store_true",
                   help='print one JSON object per query: {"query", "ids", "scores"[, "contents"]}')
    s.set_defaults(func=cmd_search, catch_errors=True)

    g = sub.add_parser("get", help="print memories by id (content, tags, timestamp, importance)")
    g.add_argument("store", help="store directory")
    g.add_argument("ids", nargs="+", type=int, metavar="ID", help="memory ids")
    g.add_argument("--json", action="store_true",
                   help='print one JSON object per id: {"id", "content", "tags", "timestamp", "importance"}')
    g.set_defaults(func=cmd_get, catch_errors=True)

    d = sub.add_parser("delete", help="delete memories by id (then checkpoint)",
                       description="Opens STORE for writing, deletes the ids (all or none: an unknown or already "
                                   "deleted id fails the command and deletes nothing), checkpoints and closes.")
    d.add_argument("store", help="store directory")
    d.add_argument("ids", nargs="+", type=int, metavar="ID", help="memory ids")
    d.add_argument("--json", action="store_true", help='print {"deleted": n, "count": ...} as JSON')
    d.set_defaults(func=cmd_delete, catch_errors=True)


def _add_source_options(p) -> None:
    """The options ``ingest`` and ``migrate`` share: the array in a .npz, a new store's shape, the batch."""
    from lukhas_gpu.ingest.migrate import DEFAULT_BATCH_SIZE

    p.add_argument("--npz-key", metavar="KEY", default="embeddings",
                   help="array name inside a .npz (default: embeddings)")
    p.add_argument("--dim", type=int, help="dimension of a new store (default: the input's first embedding's)")
    p.add_argument("--preset", default="production", help="config preset of a new store (default: production)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"records validated and added per batch (default: {DEFAULT_BATCH_SIZE})")


def _add_migrate_command(sub) -> None:
    m = sub.add_parser(
        "migrate", help="import the old naive store's JSONL (or .npy/.npz + payload JSONL), with a parity check",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Imports the memories of SOURCE into STORE (created when it holds no store yet) and reports\n"
                    "the records, the rate, a parity check and the counts.\n\n"
                    "SOURCE is the old naive store's JSON Lines, one memory a line with its embedding:\n"
                    '    {"id": ..., "content": "...", "embedding": [...], "tags": [...],\n'
                    '     "metadata": {"timestamp": <epoch s or ISO-8601>, "importance": <0..1>}}\n'
                    "With --vectors, the embeddings come from a .npy/.npz (n, dim) instead, and SOURCE holds\n"
                    "the same fields without \"embedding\" (row i goes with record line i).\n\n"
                    "Every record is validated; a bad one stops the migration with exit code 1 and its file\n"
                    "and line on stderr: nothing of its batch is stored, the batches before it are.\n"
                    "--dry-run validates everything and stores nothing (a new store is not even created).\n\n"
                    "Parity: perturbed copies of sampled source embeddings are searched in the store, and\n"
                    "their top-10 compared with the exact cosine top-10 over the source's float embeddings\n"
                    "(the overlap, 1.0 at best); and the store must have grown by the records imported.\n\n"
                    "Undo: a migration that stored anything (also one stopped by a bad record) publishes\n"
                    "exactly one new generation of STORE, so `lukhas-gpu rollback STORE` right after it\n"
                    "restores the store as it was before; the summary (or the error) says so.\n"
                    "A migration does not resume: running it again adds the records again (`ingest` resumes).")
    m.add_argument("source", metavar="SOURCE",
                   help="the old store's JSONL with embeddings (with --vectors: its payload JSONL)")
    m.add_argument("store", metavar="STORE", help="store directory (created if it holds no store)")
    m.add_argument("--vectors", metavar="NPZ", help=".npy/.npz of the embeddings (n, dim); row i goes with line i "
                                                    "of SOURCE")
    _add_source_options(m)
    m.add_argument("--dry-run", action="store_true", help="validate every record, store nothing")
    m.add_argument("--parity-queries", type=int, default=200, metavar="N",
                   help="sampled embeddings searched for the parity check; 0 skips the overlap (default: 200)")
    m.add_argument("--seed", type=int, default=0, help="seed of the parity sampling (default: 0)")
    m.add_argument("--id-map", metavar="JSONL",
                   help='write {"old": <source id>, "new": <store id>} per imported record to this file')
    m.add_argument("--json", action="store_true", help="print the report as one JSON object")
    m.set_defaults(func=cmd_migrate, catch_errors=True)


def _time_arg(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        from lukhas_gpu.ingest import migrate

        try:
            return migrate._iso_seconds(text)
        except migrate._Invalid:
            raise argparse.ArgumentTypeError(f"{text!r} is neither epoch seconds nor an ISO-8601 date-time") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not finite")
    return v


# -- ingest ------------------------------------------------------------------------------------------
def _identity(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_progress(store: pathlib.Path) -> dict | None:
    try:
        with open(store / PROGRESS_FILE, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{store / PROGRESS_FILE} is not valid JSON ({e}); remove it or pass --restart") from None


def _write_progress(store: pathlib.Path, state: dict) -> None:
    """Atomically replace the progress file: a crash leaves the old or the new one, never half."""
    from lukhas_gpu.store.layout import fsync_dir

    tmp = store / (PROGRESS_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, store / PROGRESS_FILE)
    fsync_dir(store)


def _first_dim(path: str) -> int:
    """The embedding length of the first record of a JSONL (for a new store's dimension)."""
    from lukhas_gpu.ingest import migrate

    for lineno, raw in migrate._records(path):
        try:
            obj = migrate._loads(raw)
        except migrate._Invalid as e:
            raise migrate.MigrationError(f"{path}, line {lineno}: {e}", path=path, line=lineno) from None
        emb = obj.get("embedding") if isinstance(obj, dict) else None
        if not isinstance(emb, list) or not emb:
            raise migrate.MigrationError(f"{path}, line {lineno}: no \"embedding\" list to take the store's "
                                         f"dimension from (pass --dim)", path=path, line=lineno)
        return len(emb)
    raise ValueError(f"{path} holds no records: nothing to create a store from (pass --dim)")


def _store_index(store: pathlib.Path, *, dim: int | None, preset: str, records: int, input_dim,
                 dry_run: bool = False):
    """The store at ``store`` open for writing (read-only for a dry run), or where it holds none a
    new one of dimension ``dim`` (default: ``input_dim()``) and config ``preset`` sized for
    ``records``: created on disk, or only in memory for a dry run (which leaves no trace)."""
    from lukhas_gpu import IndexConfig, MemoryIndex
    from lukhas_gpu.store import layout as storage

    if (store / storage.CURRENT).exists():
        index = MemoryIndex.open(store, mode="r" if dry_run else "w")
        if dim is not None and dim != index.dim:
            index.close()
            raise ValueError(f"--dim {dim} differs from the store's dimension {index.dim}")
        return index
    dim = dim or input_dim()
    config = IndexConfig.preset(preset, **({"capacity": records} if records else {}))
    return MemoryIndex(dim, config) if dry_run else MemoryIndex.create(store, dim, config)


class _Progress:
    """Progress of an ingest: a live bar on a terminal (tqdm when installed, else a ``\\r`` line),
    plain lines at most every :data:`PROGRESS_INTERVAL` seconds otherwise."""

    def __init__(self, total: int, initial: int, stream):
        self.total, self.done, self.stream = total, initial, stream
        self.initial = initial
        self.t0 = self.last = time.perf_counter()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.bar = None
        if self.tty:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=initial, unit="rec", unit_scale=True, file=stream,
                                desc="ingest", dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if not self.tty and now - self.last < PROGRESS_INTERVAL and self.done < self.total:
            return
        self.last = now
        rate = (self.done - self.initial) / max(now - self.t0, 1e-9)
        line = f"ingested {self.done:,}/{self.total:,} records, {rate:,.0f} rec/s"
        if self.tty:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = f"{eta:,.0f} s" if math.isfinite(eta) else "?"
            self.stream.write(f"\r{line}, ETA {eta_s}   ")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.tty:
            self.stream.write("\n")
            self.stream.flush()


def cmd_ingest(args) -> int:
    from lukhas_gpu.ingest import migrate

    for name in ("batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.dim is not None and args.dim < 1:
        raise ValueError(f"--dim must be >= 1, got {args.dim}")
    src = args.input
    suffix = pathlib.Path(src).suffix.lower()
    is_array, is_parquet = suffix in (".npy", ".npz"), suffix == ".parquet"
    if is_array and not args.payloads:
        raise ValueError(f"{src} is an array of embeddings: pass its records with --payloads JSONL (row i <-> line i)")
    if not is_array and args.payloads:
        raise ValueError(f"--payloads goes with a .npy/.npz INPUT; {src} is read as "
                         f"{'Parquet' if is_parquet else 'JSONL with embedded vectors'}")
    identity = {"input": _identity(src), "payloads": _identity(args.payloads) if args.payloads else None,
                "npz_key": args.npz_key if suffix == ".npz" else None,
                "embedding_column": args.embedding_column if is_parquet else None}

    rows = None  # the embeddings of an array or Parquet INPUT, read batch by batch
    if is_array:
        rows = migrate._ArrayReader(src, args.npz_key)
    elif is_parquet:
        rows = _ParquetReader(src, args.embedding_column)
    index = None
    try:
        # -- how many records, and the store they go to
        total = rows.n if rows is not None else migrate._count_records(src)
        if is_array:
            n_payload = migrate._count_records(args.payloads)
            if n_payload != total:
                raise migrate.MigrationError(f"count mismatch: {src} holds {total} embeddings, {args.payloads} holds "
                                             f"{n_payload} payload records (row i must go with record line i)",
                                             path=args.payloads)
        store = pathlib.Path(args.store)

        def input_dim() -> int:  # a new store's: the input's first embedding's
            if is_parquet:
                return rows.first_dim()
            return rows.dim if rows is not None else _first_dim(src)

        index = _store_index(store, dim=args.dim, preset=args.preset, records=total, input_dim=input_dim)
        if rows is not None and rows.dim is not None and rows.dim != index.dim:
            raise migrate.MigrationError(f"{src}: embeddings have dimension {rows.dim}, the store expects "
                                         f"{index.dim}", path=src)
        skip, first_row, finished = _resume_point(store, index, identity, restart=args.restart)
        state = {"version": 1, **identity, "records": total, "first_row": first_row, "ingested": skip,
                 "pending": 0, "done": False}
        if skip > total:
            raise ValueError(f"{store / PROGRESS_FILE} records {skip} ingested records, {src} holds only {total}; "
                             "pass --restart to ingest it from its first record")
        _write_progress(store, state)
        if is_parquet:
            path, reader = src, rows.batches(index, args.batch_size, start=skip)
        else:
            path = args.payloads if rows is not None else src
            reader = migrate._read_batches(path, index, args.batch_size, rows=rows, npz_path=src, start=skip)
        return _ingest_loop(args, index, store, state, reader, path, total, skip, finished,
                            unit="rows" if is_parquet else "lines")
    finally:
        if rows is not None:
            rows.close()
        if index is not None:
            index.close()


def _resume_point(store: pathlib.Path, index, identity: dict, *, restart: bool) -> tuple[int, int, bool]:
    """(records of the input to skip, the store's row count when this ingest began, whether this
    very ingest already finished).

    Ids are dense row numbers that are never reused, so the rows this ingest added are exactly
    ``first_row .. first_row + ingested - 1``. ``pending`` is the batch being added when the
    progress was last written: if the store holds it (a stop between the write-ahead log taking it
    and the progress file recording it), it counts as ingested.
    """
    rows_now = index.stats()["rows"]
    prev = None if restart else _read_progress(store)
    if prev is None:
        return 0, rows_now, False
    same = all(prev.get(k) == identity[k] for k in identity)
    if not same:
        if prev.get("done") and prev.get("input", {}).get("path") != identity["input"]["path"]:
            return 0, rows_now, False  # another input, after a finished ingest: a new ingest
        was = prev.get("input", {})
        raise ValueError(f"{store / PROGRESS_FILE} records {'an unfinished' if not prev.get('done') else 'a finished'} "
                         f"ingest of {was.get('path')} (size {was.get('size')}), and the input differs "
                         f"(now {identity['input']['path']}, size {identity['input']['size']}, or another mtime, "
                         "--payloads, --npz-key or --embedding-column); pass --restart to ingest it from its first "
                         "record")
    first, ingested, pending = int(prev["first_row"]), int(prev["ingested"]), int(prev.get("pending", 0))
    expected = first + ingested
    if rows_now < expected:
        raise ValueError(f"{store / PROGRESS_FILE} records {ingested} ingested records (rows {first}..{expected - 1}), "
                         f"the store holds only {rows_now} rows (rolled back?); pass --restart to ingest from the "
                         "first record")
    if pending and rows_now == expected + pending:
        logging.getLogger("lukhas_gpu.cli").info("the batch of %d records being added when the last ingest stopped is in the store", pending)
        ingested += pending
    elif rows_now > expected:
        logging.getLogger("lukhas_gpu.cli").warning(
            "the store holds %d rows beyond those this ingest recorded (another writer?); resuming after record %d",
            rows_now - expected, ingested)
    return ingested, first, bool(prev.get("done")) and rows_now == first + ingested


def _ingest_loop(args, index, store: pathlib.Path, state: dict, reader, path: str, total: int, skip: int,
                 finished: bool, *, unit: str = "lines") -> int:
    """Add the validated batches that ``reader`` yields from ``path``, recording the progress
    around every add; ``unit`` names what the batches' ``lines`` count (lines or rows)."""
    from lukhas_gpu.ingest import migrate

    out = sys.stderr if args.json else sys.stdout
    t0 = time.perf_counter()
    ingested = batches = 0
    progress = _Progress(total, skip, out)
    try:
        try:
            for b in reader:
                n = len(b.lines)
                ts = b.timestamps
                missing = np.isnan(ts)
                if missing.any():
                    ts = np.where(missing, time.time(), ts)
                _write_progress(store, {**state, "pending": n})
                try:
                    index.add(b.x, contents=b.contents, tags=b.tags, timestamps=ts, importance=b.importance)
                except (TypeError, ValueError) as e:  # add() stores nothing of a batch it rejects
                    _write_progress(store, {**state, "pending": 0})
                    raise migrate.MigrationError(f"{path}, {unit} {b.lines[0]}-{b.lines[-1]}: the store rejected "
                                                 f"this batch: {e}", path=path, line=b.lines[0]) from e
                state["ingested"] += n
                _write_progress(store, {**state, "pending": 0})
                ingested += n
                batches += 1
                progress.update(n)
                if batches % args.checkpoint_every == 0:
                    index.checkpoint()
        except (migrate.MigrationError, ValueError, TypeError):
            # the batches before the bad one are valid: publish them for readers too
            index.checkpoint()
            raise
    except KeyboardInterrupt:
        progress.close()
        print(f"lukhas-gpu ingest: interrupted after {state['ingested']:,} of {total:,} records (they are in the "
              f"store's write-ahead log); run the same command again to resume", file=sys.stderr)
        return 130
    progress.close()
    if not (finished and batches == 0):  # a re-run of a finished ingest publishes no new generation
        index.checkpoint()
    state["done"] = True
    _write_progress(store, state)
    seconds = time.perf_counter() - t0
    rate = ingested / seconds if seconds > 0 else 0.0
    count = len(index)
    if args.json:
        print(json.dumps({"store": str(store), "input": args.input, "records": total, "ingested": ingested,
                          "skipped_resumed": skip, "seconds": seconds, "rate": rate, "count": count}))
    else:
        resumed = f", {skip:,} skipped (ingested before)" if skip else ""
        print(f"{args.store}: ingested {ingested:,} of {total:,} records from {args.input} in {seconds:.1f} s "
              f"({rate:,.0f} rec/s){resumed}; the store holds {count:,} memories")
    return 0


# -- Parquet input ----------------------------------------------------------------------------------
class _MissingExtra(ImportError):
    """An optional dependency is missing; the message gives the ``pip install`` that adds it."""


def _pyarrow(path: str):
    """``(pyarrow, pyarrow.parquet, pyarrow.compute)``, imported on first use."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError as e:
        raise _MissingExtra(f"{path}: reading Parquet needs pyarrow, which is not installed ({e}); "
                            'pip install "lukhas-gpu[parquet]"') from None
    return pyarrow, pyarrow.parquet, pyarrow.compute


_STRINGS = ("string", "large_string")
_NUMBERS = ("integer", "floating")
_LISTS = ("list", "large_list", "fixed_size_list")
#: The Parquet columns read besides the embeddings: the Arrow types each may have (by the names of
#: ``pyarrow.types.is_*``), those of a list's values, and the same in words. An all-null column
#: (Arrow type ``null``) is read as a missing one.
PARQUET_COLUMNS = {
    "content": (_STRINGS + ("binary", "large_binary"), None, "string or binary"),
    "tags": (_LISTS, _STRINGS, "list<string>"),
    "timestamp": (_NUMBERS + ("timestamp", "date"), None, "epoch seconds (a number), a timestamp or a date"),
    "importance": (_NUMBERS, None, "a number in [0, 1]"),
}


def _arrow_is(t, kinds, values=None) -> bool:
    """Whether the Arrow type ``t`` is one of ``kinds`` (and, for a list, its values one of ``values``)."""
    import pyarrow.types as pat

    return any(getattr(pat, "is_" + k)(t) for k in kinds) and (values is None or _arrow_is(t.value_type, values))


#: Seconds per unit of an Arrow timestamp.
_UNIT_SECONDS = {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


class _ParquetReader:
    """The memories of a Parquet file, validated batch by batch (one column at a time).

    The vectors never become a Python object per row: each batch's embedding column is
    flattened into one float32 buffer and reshaped to ``(n, dim)``. Errors name the file and the
    0-based row. ``n`` is the row count (from the footer), ``dim`` the list size of a
    ``fixed_size_list`` column (None for variable lists: every row's length is checked instead).
    """

    def __init__(self, path: str, column: str):
        from lukhas_gpu.ingest.migrate import MigrationError

        self._pa, pq, self._pc = _pyarrow(path)
        self.path, self.column = path, column
        try:
            self._file = pq.ParquetFile(path)
        except (self._pa.ArrowException, OSError) as e:
            raise MigrationError(f"{path}: not a readable Parquet file: {e}", path=path) from None
        schema = self._file.schema_arrow
        self.n = self._file.metadata.num_rows
        if column not in schema.names:
            raise MigrationError(f"{path} has no column {column!r} (it holds {schema.names}); name the "
                                 "embeddings' column with --embedding-column", path=path)
        t = schema.field(column).type
        if not _arrow_is(t, _LISTS, _NUMBERS):
            raise MigrationError(f"{path}: column {column!r} has type {t}, expected list<float> or "
                                 "fixed_size_list<float>", path=path)
        self.dim = t.list_size if self._pa.types.is_fixed_size_list(t) else None
        self.columns = [column]
        for name, (kinds, values, expected) in PARQUET_COLUMNS.items():
            if name == column or name not in schema.names:
                continue
            t = schema.field(name).type
            if not (_arrow_is(t, kinds, values) or self._pa.types.is_null(t)):
                raise MigrationError(f"{path}: column {name!r} has type {t}, expected {expected}", path=path)
            self.columns.append(name)

    def first_dim(self) -> int:
        """The length of the first non-null embedding (for a new store's dimension)."""
        if self.dim is not None:
            return self.dim
        for rb in self._file.iter_batches(batch_size=1024, columns=[self.column]):
            lengths = self._pc.list_value_length(rb.column(0)).drop_null()
            if len(lengths):
                return lengths[0].as_py()
        raise ValueError(f"{self.path} holds no row with an embedding in column {self.column!r}: nothing to create a "
                         "store from (pass --dim)")

    def batches(self, index, batch_size: int, *, start: int = 0):
        """Validated batches (``migrate._Batch``, ``lines`` holding row numbers) of ``batch_size``
        rows, the last one shorter, from row ``start`` on; whole row groups before it are not read."""
        pa, meta = self._pa, self._file.metadata
        group, first = 0, 0
        while group < meta.num_row_groups and first + meta.row_group(group).num_rows <= start:
            first += meta.row_group(group).num_rows
            group += 1
        if group == meta.num_row_groups:
            return
        drop, row = start - first, start  # rows of the first group read to skip; the next batch's first row
        pending, have = [], 0  # record batches as read (their sizes vary): re-cut to batch_size rows
        for rb in self._file.iter_batches(batch_size=batch_size, row_groups=list(range(group, meta.num_row_groups)),
                                          columns=self.columns):
            if drop:
                k = min(drop, rb.num_rows)
                rb, drop = rb.slice(k), drop - k
            if rb.num_rows:
                pending.append(rb)
                have += rb.num_rows
            while have >= batch_size:
                table = pa.Table.from_batches(pending)
                yield self._batch(table.slice(0, batch_size), row, index)
                row += batch_size
                rest = table.slice(batch_size)
                pending, have = rest.to_batches(), rest.num_rows
        if have:
            yield self._batch(pa.Table.from_batches(pending), row, index)

    def _batch(self, table, first: int, index):
        from lukhas_gpu.records.metadata import DEFAULT_IMPORTANCE
        from lukhas_gpu.ingest.migrate import MigrationError, _Batch

        n = table.num_rows
        problems: list[tuple[int, str]] = []  # (row in the batch, why): the first row's is reported
        cols = {name: table.column(name).combine_chunks() for name in self.columns}
        x = self._vectors(cols.pop(self.column), index.dim, index.config.metric == "cosine", problems)
        cols = {name: c for name, c in cols.items() if not self._pa.types.is_null(c.type)}
        contents = tags = None
        if "content" in cols:
            contents = self._contents(cols["content"], index.config.max_content_bytes, problems)
        if "tags" in cols:
            tags = self._tags(cols["tags"], problems)
        ts, ts_ok = self._numbers(cols.get("timestamp"), n, np.nan)
        bad = np.flatnonzero(ts_ok & ~np.isfinite(ts))
        if bad.size:
            problems.append((int(bad[0]), f'"timestamp" must be finite, got {float(ts[bad[0]])!r}'))
        imp, imp_ok = self._numbers(cols.get("importance"), n, DEFAULT_IMPORTANCE)
        bad = np.flatnonzero(imp_ok & ~((imp >= 0.0) & (imp <= 1.0)))  # NaN fails too
        if bad.size:
            problems.append((int(bad[0]), f'"importance" must be in [0, 1], got {float(imp[bad[0]])!r}'))
        if problems:
            i, why = min(problems)
            raise MigrationError(f"{self.path}, row {first + i}: {why}", path=self.path, line=first + i)
        return _Batch(range(first, first + n), [None] * n, x, contents, tags, ts, imp)

    def _vectors(self, col, dim: int, cosine: bool, problems: list):
        """``(n, dim)`` float32 from a list column, or None after adding its first bad row to ``problems``."""
        from lukhas_gpu.ingest.migrate import _first_bad_row, _to_f32

        n = len(col)
        null = col.is_null().to_numpy(zero_copy_only=False)
        if self._pa.types.is_fixed_size_list(col.type):
            lengths = np.full(n, col.type.list_size, dtype=np.int64)
        else:
            lengths = self._pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        # the non-null rows' values, end to end; a null inside a list reads as NaN
        values = _to_f32(col.flatten().to_numpy(zero_copy_only=False))
        wrong = null | (lengths != dim)
        if not wrong.any():
            x = values.reshape(n, dim)
            i, why = _first_bad_row(x, cosine)
            if i < n:
                problems.append((i, why))
            return x
        i = int(np.flatnonzero(wrong)[0])
        problems.append((i, "embedding is null" if null[i] else
                         f"embedding has dimension {int(lengths[i])}, the store expects {dim}"))
        bad = np.flatnonzero(~np.isfinite(values))  # an earlier row may hold a NaN
        if bad.size:
            owner = np.repeat(np.arange(n), np.where(null, 0, lengths))
            problems.append((int(owner[bad[0]]), "embedding contains NaN or infinity (or a value beyond the "
                                                 "float32 range)"))
        return None

    def _contents(self, col, max_bytes: int, problems: list) -> list:
        size = self._pc.binary_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        over = np.flatnonzero(size > max_bytes)
        if over.size:
            problems.append((int(over[0]), f'"content" is {int(size[over[0]])} bytes, over the store\'s '
                                           f"max_content_bytes ({max_bytes})"))
        return col.to_pylist()

    def _tags(self, col, problems: list) -> list:
        from lukhas_gpu.records.tags import MAX_TAG_BYTES, MAX_TAGS_PER_MEMORY

        pc = self._pc
        counts = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        owner = np.repeat(np.arange(len(col)), counts)  # the row of each tag
        flat = col.flatten()
        null = flat.is_null().to_numpy(zero_copy_only=False)
        size = pc.binary_length(flat).fill_null(0).to_numpy(zero_copy_only=False)
        nul = pc.match_substring(flat, "\x00").fill_null(False).to_numpy(zero_copy_only=False)
        for mask, why in ((null, "a tag is null"), (~null & ((size == 0) | nul), "a tag is empty or contains NUL"),
                          (size > MAX_TAG_BYTES, f"a tag is over the limit of {MAX_TAG_BYTES} UTF-8 bytes")):
            bad = np.flatnonzero(mask)
            if bad.size:
                problems.append((int(owner[bad[0]]), why))
        tags = col.to_pylist()
        for i in np.flatnonzero(counts > MAX_TAGS_PER_MEMORY):  # duplicates count once
            if len(set(tags[i])) > MAX_TAGS_PER_MEMORY:
                problems.append((int(i), f"{len(set(tags[i]))} distinct tags, at most {MAX_TAGS_PER_MEMORY} per "
                                         "memory"))
                break
        return tags

    def _numbers(self, col, n: int, default: float) -> tuple[np.ndarray, np.ndarray]:
        """A number (or timestamp, date) column as float64 (epoch seconds for times), ``default``
        where null or missing, and the mask of the rows that hold a value."""
        pa = self._pa
        if col is None:
            return np.full(n, default, dtype=np.float64), np.zeros(n, dtype=bool)
        t = col.type
        ok = ~col.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_timestamp(t):  # stored as UTC ticks, also when the type names a zone
            v = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False) * _UNIT_SECONDS[t.unit]
        elif pa.types.is_date32(t):
            v = col.cast(pa.int32()).fill_null(0).to_numpy(zero_copy_only=False) * 86400.0
        elif pa.types.is_date64(t):
            v = col.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False) * 1e-3
        else:
            v = col.cast(pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
        return np.where(ok, np.asarray(v, dtype=np.float64), default), ok

    def close(self) -> None:
        self._file.close()


# -- migrate -----------------------------------------------------------------------------------------
def cmd_migrate(args) -> int:
    from lukhas_gpu.ingest import migrate
    from lukhas_gpu.store import layout as storage

    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--parity-queries", args.parity_queries, 0),
                             ("--dim", args.dim, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    src, vectors, store = args.source, args.vectors, pathlib.Path(args.store)
    if vectors is None and pathlib.Path(src).suffix.lower() in (".npy", ".npz"):
        raise ValueError(f"{src} is an array of embeddings: pass it with --vectors, and as SOURCE the JSONL of its "
                         "records (row i <-> line i)")
    new = not (store / storage.CURRENT).exists()

    def input_dim() -> int:  # a new store's: the source's first embedding's
        if vectors is None:
            return _first_dim(src)
        rows = migrate._ArrayReader(vectors, args.npz_key)
        rows.close()
        return rows.dim

    index = _store_index(store, dim=args.dim, preset=args.preset, records=migrate._count_records(src) if new else 0,
                         input_dim=input_dim, dry_run=args.dry_run)
    try:
        before = None if args.dry_run else storage.current_generation(store).name
        count_before = len(index)
        options = {"batch_size": args.batch_size, "dry_run": args.dry_run, "parity_queries": args.parity_queries,
                   "seed": args.seed, "id_map_path": args.id_map}
        try:
            if vectors is None:
                report = migrate.migrate_jsonl(src, index, **options)
            else:
                report = migrate.migrate_npz(vectors, src, index, key=args.npz_key, **options)
        except (migrate.MigrationError, KeyboardInterrupt) as e:
            stored = len(index) - count_before
            if stored:  # published as one generation, which a rollback takes back whole
                index.checkpoint()
            if isinstance(e, KeyboardInterrupt):
                print(f"lukhas-gpu migrate: interrupted after storing {stored:,} records"
                      + (f"; {_undo(store, before)}" if stored else ""), file=sys.stderr)
                return 130
            if not stored:
                raise
            raise migrate.MigrationError(f"{e}; the {stored:,} records before its batch are stored: "
                                         f"{_undo(store, before)}", path=e.path, line=e.line, report=e.report) from e
        generation = None if args.dry_run else index.checkpoint().name
        count = len(index)
    finally:
        index.close()
    rate, parity = report.records_per_second, report.parity
    if args.json:
        print(json.dumps({"source": src, "vectors": vectors, "store": str(store), "dry_run": report.dry_run,
                          "records": report.records, "imported": report.imported, "skipped": report.skipped,
                          "seconds": report.seconds, "rate": rate, "parity": parity, "count": count,
                          "generation": generation, "rollback_to": None if args.dry_run else before,
                          "id_map": report.id_map_path}))
        return 0
    what = src if vectors is None else f"{vectors} + {src}"
    if report.dry_run:
        print(f"{what}: {report.records:,} records valid ({report.seconds:.1f} s, {rate:,.0f} rec/s); dry run: "
              "nothing stored")
        return 0
    print(f"{args.store}: migrated {report.imported:,} of {report.records:,} records from {what} in "
          f"{report.seconds:.1f} s ({rate:,.0f} rec/s); the store holds {count:,} memories ({generation})")
    overlap = parity["top10_overlap"]
    measured = ("not measured (--parity-queries 0)" if overlap is None else
                f"{overlap:.3f} over {parity['queries']} queries, against exact cosine on the source's embeddings")
    print(f"  parity: top-{parity['k']} overlap {measured}; the store grew by "
          f"{'exactly' if parity['count_match'] else 'NOT'} {report.imported:,}")
    if report.id_map_path:
        print(f"  id map: {report.id_map_path}")
    print(f"  undo: {_undo(store, before)}")
    return 0


def _undo(store: pathlib.Path, before: str) -> str:
    """How to take a migration back: rolling back publishes the generation before its one checkpoint."""
    from lukhas_gpu.store import layout as storage

    prev = storage.previous_generation(store)
    if prev is not None and prev.name == before:
        return f"lukhas-gpu rollback {store} restores the store as it was before ({before})"
    return f"the generation before it ({before}) is no longer kept, so rollback cannot take it back"


# -- search / get / delete -----------------------------------------------------------------------
def _query_vector(obj, dim: int, where: str) -> np.ndarray:
    emb = obj.get("embedding") if isinstance(obj, dict) else obj
    if not isinstance(emb, list) or not emb:
        raise ValueError(f'{where}: expected {{"embedding": [...]}} or a list of numbers')
    if len(emb) != dim:
        raise ValueError(f"{where}: query has dimension {len(emb)}, the store expects {dim}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in emb):
        raise ValueError(f"{where}: the embedding must hold numbers only")
    q = np.asarray(emb, dtype=np.float32)
    if not np.isfinite(q).all():
        raise ValueError(f"{where}: the embedding contains NaN or infinity")
    return q


def _jsonl_queries(lines, name: str, dim: int, batch: int):
    """Batches of (first query number, (b, dim) float32) from (lineno, raw bytes) pairs."""
    from lukhas_gpu.ingest import migrate

    buf, first, n = [], 0, 0
    for lineno, raw in lines:
        try:
            obj = migrate._loads(raw)
        except migrate._Invalid as e:
            raise ValueError(f"{name}, line {lineno}: {e}") from None
        buf.append(_query_vector(obj, dim, f"{name}, line {lineno}"))
        n += 1
        if len(buf) == batch:
            yield first, np.stack(buf)
            buf, first = [], n
    if buf:
        yield first, np.stack(buf)


def _stdin_lines():
    for lineno, line in enumerate(sys.stdin, 1):
        raw = line.encode("utf-8") if isinstance(line, str) else line
        if raw.strip():
            yield lineno, raw


def _queries(args, dim: int):
    from lukhas_gpu.ingest import migrate

    f = args.query_file
    if f is None:
        yield from _jsonl_queries(_stdin_lines(), "<stdin>", dim, 1)  # each answered as it arrives
        return
    if f.lower().endswith(".npy"):
        q = np.load(f, mmap_mode="r", allow_pickle=False)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != dim:
            raise ValueError(f"{f}: queries have shape {q.shape}, the store expects (n, {dim})")
        if q.dtype.kind != "f":
            raise ValueError(f"{f}: queries must be a float array, got dtype {q.dtype}")
        for s in range(0, len(q), QUERY_BATCH):
            yield s, np.array(q[s: s + QUERY_BATCH], dtype=np.float32)  # a writable copy
        return
    yield from _jsonl_queries(migrate._records(f), f, dim, QUERY_BATCH)


def _text(c):
    return c.decode("utf-8", "backslashreplace") if isinstance(c, bytes) else c


def cmd_search(args) -> int:
    from lukhas_gpu import Filter, MemoryIndex, Rank

    where = Filter(tags_all=args.tags_all, tags_any=args.tags_any, tags_none=args.tags_none, since=args.since,
                   until=args.until, min_importance=args.min_importance)
    rank = None
    if args.recency or args.importance or args.similarity != 1.0 or args.half_life is not None:
        extra = {} if args.half_life is None else {"half_life": args.half_life}
        rank = Rank(args.similarity, args.recency, args.importance, **extra)
    index = MemoryIndex.open(args.store, mode="r")
    try:
        for first, q in _queries(args, index.dim):
            res = index.search(q, args.k, where=None if where.is_empty() else where, rank=rank)
            ids, scores = np.asarray(res.ids), np.asarray(res.scores)
            contents = res.contents() if args.contents else None
            for r in range(len(ids)):
                live = ids[r] >= 0
                row_ids, row_scores = ids[r][live].tolist(), scores[r][live].tolist()
                row_contents = [_text(c) for c, ok in zip(contents[r], live) if ok] if contents else None
                if args.json:
                    obj = {"query": first + r, "ids": row_ids, "scores": row_scores}
                    if row_contents is not None:
                        obj["contents"] = row_contents
                    print(json.dumps(obj))
                else:
                    print(f"query {first + r}: {len(row_ids)} results")
                    for j, (i, s) in enumerate(zip(row_ids, row_scores)):
                        tail = f"  {row_contents[j]!r}" if row_contents is not None else ""
                        print(f"  {i:>10}  {s: .4f}{tail}")
            sys.stdout.flush()
    finally:
        index.close()
    return 0


def cmd_get(args) -> int:
    from lukhas_gpu import MemoryIndex

    index = MemoryIndex.open(args.store, mode="r")
    try:
        memories = index.get(np.asarray(args.ids, dtype=np.int64))
    finally:
        index.close()
    for m in memories:
        if args.json:
            print(json.dumps({"id": m.id, "content": _text(m.content), "tags": m.tags, "timestamp": m.timestamp,
                              "importance": m.importance}))
        else:
            import datetime as _dt

            when = _dt.datetime.fromtimestamp(m.timestamp, _dt.timezone.utc).isoformat(timespec="seconds")
            print(f"{m.id}: {_text(m.content)!r} tags={m.tags} time={when} importance={m.importance:.3f}")
    return 0


def cmd_delete(args) -> int:
    from lukhas_gpu import MemoryIndex

    index = MemoryIndex.open(args.store, mode="w")
    try:
        n = index.delete(np.asarray(args.ids, dtype=np.int64))
        index.checkpoint()
        count = len(index)
    finally:
        index.close()
    print(json.dumps({"deleted": n, "count": count}) if args.json else
          f"{args.store}: deleted {n} memories; {count:,} remain")
    return 0


# -- bench ---------------------------------------------------------------------------------------
def _rss_anon() -> int:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _recall(ids: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(np.intersect1d(a[:k], b[:k])) for a, b in zip(ids, gt)]) / k)


def _measure(name: str, build, search, xq: np.ndarray, gt: np.ndarray, n: int) -> dict:
    before = _rss_anon()
    t0 = time.perf_counter()
    obj = build()
    ingest = time.perf_counter() - t0
    grow = max(_rss_anon() - before, 0)
    search(obj, xq[:8])
    t0 = time.perf_counter()
    ids = search(obj, xq)
    batch = time.perf_counter() - t0
    lat = []
    for i in range(min(200, len(xq))):
        t1 = time.perf_counter()
        search(obj, xq[i: i + 1])
        lat.append(time.perf_counter() - t1)
    lat_ms = np.array(lat) * 1e3
    return {"system": name, "bytes/memory": grow / n, "memories/GB": 1e9 * n / grow if grow else float("inf"),
            "recall@10": _recall(np.asarray(ids), gt), "ingest/s": n / ingest, "QPS": len(xq) / batch,
            "p50 ms": float(np.percentile(lat_ms, 50)), "p99 ms": float(np.percentile(lat_ms, 99)), "_obj": obj}


def cmd_bench(args) -> int:
    import torch

    import lukhas_gpu
    from lukhas_gpu.tools.baseline import NaiveMemoryStore
    from lukhas_gpu.tools.synthetic import builtin_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = builtin_model()
    t0 = time.perf_counter()
    xb = model.sample(args.n)
    xq = model.queries(args.nq)
    gt = np.argsort(-(xq @ xb.T), axis=1)[:, :10] if args.n * args.nq <= 5e8 else None
    if gt is None:
        import faiss

        flat = faiss.IndexFlatIP(xb.shape[1])
        flat.add(xb)
        gt = flat.search(xq, 10)[1]
    log = logging.getLogger("lukhas_gpu.bench")
    log.info("dataset: %d x %d synthetic (%.1f s)", *xb.shape, time.perf_counter() - t0)
    # a batch job knows its size: the capacity hint sizes the IVF for all of it
    config = lukhas_gpu.IndexConfig.preset(args.preset, capacity=args.n,
                                           **({"threads": args.threads} if args.threads else {}))

    def build_lukhas():
        index = lukhas_gpu.MemoryIndex(xb.shape[1], config)
        for s in range(0, len(xb), 50_000):
            index.add(xb[s: s + 50_000])
        return index

    # warm-up: thread pools and allocator arenas are paid once per process, not per memory
    warm = lukhas_gpu.MemoryIndex(xb.shape[1], config.replace(capacity=None, train_threshold=2048, nlist=16))
    warm.add(xb[:4096])
    warm.search(xq[:8], 10)
    del warm
    rows = [_measure(f"lukhas_gpu ({args.preset})", build_lukhas, lambda ix, q: ix.search(q, 10).ids, xq, gt, args.n)]
    index = rows[0].pop("_obj")
    st = index.stats()
    if not args.no_naive:
        def build_naive():
            store = NaiveMemoryStore(xb.shape[1])
            store.add(xb)
            return store

        naive = _measure("naive dict store", build_naive, lambda s, q: s.search(q, 10)[1], xq, gt, args.n)
        naive.pop("_obj")
        rows.append(naive)
        for key in ("bytes/memory",):
            rows[0][f"naive/{key.split('/')[0]}"] = naive[key] / max(rows[0][key], 1e-9)
    result = {"n": args.n, "nq": args.nq, "dim": int(xb.shape[1]), "preset": args.preset,
              "backend": index.backend, "phase": st["phase"], "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2, default=float))
        return 0
    print(f"lukhas-gpu bench: {args.n:,} synthetic memories x {xb.shape[1]} dims, {args.nq:,} queries, "
          f"preset {args.preset!r}, backend {index.backend}, index {st['phase']}"
          + (f" (IVF{st['nlist']}, PQ{st['pq_m']}x4fs)" if st["nlist"] else ""))
    print("bytes/memory: anonymous RAM growth per memory; ingest/s includes training; QPS: one batch of all "
          "queries; p50/p99: single queries; recall@10 against exact float32")
    cols = ["system", "bytes/memory", "memories/GB", "recall@10", "ingest/s", "QPS", "p50 ms", "p99 ms"]
    widths = [max(len(c), 12) for c in cols]
    widths[0] = 24
    print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for r in rows:
        cells = []
        for i, (c, w) in enumerate(zip(cols, widths)):
            v = r[c]
            s = v if isinstance(v, str) else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}")
            cells.append(s.ljust(w) if i == 0 else s.rjust(w))
        print("  ".join(cells))
    if "naive/bytes" in rows[0]:
        print(f"naive store / lukhas_gpu: {rows[0]['naive/bytes']:.1f}x the RAM per memory "
              f"(vectors only: contents and tags come with the memory payload)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
