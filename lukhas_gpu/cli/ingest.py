"""``lukhas-gpu ingest`` (resumable, any input) and ``lukhas-gpu migrate`` (the old store, with parity).

Both read their input through :mod:`lukhas_gpu.ingest.sources` and add it through the one ingest
loop, :class:`lukhas_gpu.ingest.pipeline.Pipeline`; this module only parses the options, opens
the store and prints.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from ..util.bounds import check_max_content_bytes
from .progress import ProgressDisplay

__all__ = ["add_ingest_parser", "add_migrate_parser", "cmd_ingest", "cmd_migrate"]


def add_ingest_parser(sub) -> None:
    from lukhas_gpu.ingest.resume import PROGRESS_FILE

    fmt = argparse.RawDescriptionHelpFormatter
    i = sub.add_parser(
        "ingest", help="stream memories from JSONL, Parquet or .npy/.npz + payload JSONL into a store, resumably",
        formatter_class=fmt,
        description="Adds the memories of INPUT to the store STORE (created when it does not exist yet).\n\n"
                    "INPUT is one of\n"
                    "  * a JSON Lines file with embedded vectors, one memory a line (the old naive format):\n"
                    '      {"id": ..., "content": "...", "embedding": [...], "tags": [...],\n'
                    '       "metadata": {"timestamp": <epoch s or ISO-8601>, "importance": <0..1>},\n'
                    '       "namespace": "...", "valid_from": <epoch s or ISO-8601>, "valid_to": ...}\n'
                    "    (namespace and the validity window optional; null: the default namespace, open)\n"
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
                    "      namespace   string (optional; null: the default namespace \"\")\n"
                    "      valid_from, valid_to  the validity window, as timestamp (optional; null: open)\n"
                    "    Other columns are not read (the ingest names them). Rows are numbered from 0 in messages.\n\n"
                    "Records are validated and added batch by batch (bounded memory); a bad record (invalid\n"
                    "or truncated JSON, wrong dimension, NaN, a null embedding) stops the ingest with exit\n"
                    "code 1 and its file and line (or row) on stderr; nothing of its batch is stored, earlier\n"
                    "batches stay.\n"
                    f"Progress is recorded in STORE/{PROGRESS_FILE} after every batch, per input file:\n"
                    "running the same command again after an interruption or an error skips the records\n"
                    "already ingested, and other inputs can be ingested in between. An input that changed\n"
                    "since (size, mtime) is refused until --restart.\n\n"
                    "Dedup: records are added with the store's configured dedup (a new store of the production\n"
                    "preset: exact, the same content merges into one memory), or --dedup off|exact|near; a\n"
                    "duplicate merges into the existing memory (newest timestamp, highest importance, union of\n"
                    "tags) and the summary counts them. The resume decides whether an interrupted batch landed\n"
                    "on the store's write count (one logged record per batch), so it is right in every mode.\n\n"
                    "With --ray, STORE is a sharded root of --shards stores filled on a Ray cluster (the `ray`\n"
                    "extra: pip install \"lukhas-gpu[ray]\"); INPUT is a Parquet file or directory, or JSON Lines\n"
                    "with the columns above at the top level of each line. Running the same command again\n"
                    "resumes an interrupted ingest; see lukhas_gpu.distributed.ingest.")
    i.add_argument("store", help="store directory (created if it holds no store)")
    i.add_argument("input", help="JSONL with embeddings, .parquet, or .npy/.npz of embeddings (with --payloads)")
    i.add_argument("--payloads", metavar="JSONL", help="payload records for a .npy/.npz INPUT (row i <-> line i)")
    _add_source_options(i)
    i.add_argument("--embedding-column", metavar="NAME", default="embedding",
                   help="the embeddings' column of a .parquet INPUT (default: embedding)")
    i.add_argument("--checkpoint-every", type=int, default=10, metavar="N",
                   help="checkpoint the store every N batches, and at the end (default: 10)")
    i.add_argument("--restart", action="store_true",
                   help="ignore INPUT's recorded progress and ingest it from its first record (records already "
                        "in the store stay there; with dedup, the same records merge into them)")
    i.add_argument("--dedup", choices=("off", "exact", "near"),
                   help="merge duplicates as they are added: exact (same content), near (cosine >= the threshold), "
                        "off (default: the store's config; a new store's from --preset, exact for production)")
    i.add_argument("--dedup-threshold", type=float, metavar="T",
                   help="cosine of a near duplicate, in (0, 1] (a new store's config; an existing store's is fixed: "
                        "default the store's, else the preset's 0.97)")
    i.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    from .ray_ingest import add_ray_options

    add_ray_options(i)
    i.set_defaults(func=cmd_ingest, catch_errors=True)


def _add_source_options(p) -> None:
    """The options ``ingest`` and ``migrate`` share: the array in a .npz, a new store's shape, the batch."""
    from lukhas_gpu.ingest.pipeline import DEFAULT_BATCH_SIZE

    p.add_argument("--npz-key", metavar="KEY", default="embeddings",
                   help="array name inside a .npz (default: embeddings)")
    p.add_argument("--dim", type=int, help="dimension of a new store (default: the input's first embedding's)")
    p.add_argument("--preset", default="production", help="config preset of a new store (default: production)")
    p.add_argument("--text-index", action="store_true",
                   help="a new store indexes its contents for BM25 (search --text); see IndexConfig.text_index")
    p.add_argument("--max-content-bytes", type=int, metavar="B",
                   help="largest content of a memory in a new store, encoded bytes (default: the preset's, 65536; "
                        "fixed when the store is created)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"records validated and added per batch (default: {DEFAULT_BATCH_SIZE})")


def add_migrate_parser(sub) -> None:
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


def _store_index(store: pathlib.Path, *, dim: int | None, preset: str, records: int, input_dim,
                 dry_run: bool = False, text_index: bool = False, max_content_bytes: int | None = None,
                 dedup: str | None = None, dedup_threshold: float | None = None):
    """The store at ``store`` open for writing (read-only for a dry run), or where it holds none a
    new one of dimension ``dim`` (default: ``input_dim()``) and config ``preset`` sized for
    ``records`` (its ``dedup`` and ``dedup_threshold`` when given): created on disk, or only in
    memory for a dry run (which leaves no trace)."""
    from lukhas_gpu import IndexConfig, MemoryIndex
    from lukhas_gpu.store import layout as storage

    check_max_content_bytes(max_content_bytes, "--max-content-bytes")
    if (store / storage.CURRENT).exists():
        index = MemoryIndex.open(store, mode="r" if dry_run else "w")
        problem = None
        if dim is not None and dim != index.dim:
            problem = f"--dim {dim} differs from the store's dimension {index.dim}"
        elif max_content_bytes is not None and max_content_bytes != index.config.max_content_bytes:
            problem = (f"--max-content-bytes {max_content_bytes} differs from the store's "
                       f"{index.config.max_content_bytes}: it is fixed when a store is created")
        elif dedup_threshold is not None and dedup_threshold != index.config.dedup_threshold:
            problem = (f"--dedup-threshold {dedup_threshold} differs from the store's {index.config.dedup_threshold}: "
                       "it is fixed when a store is created (--dedup chooses the mode per ingest)")
        if problem:
            index.close()
            raise ValueError(problem)
        return index
    dim = dim or input_dim()
    config = IndexConfig.preset(preset, **({"capacity": records} if records else {}),
                                **({"text_index": True} if text_index else {}),
                                **({"max_content_bytes": max_content_bytes} if max_content_bytes else {}),
                                **({"dedup": dedup} if dedup is not None else {}),
                                **({"dedup_threshold": dedup_threshold} if dedup_threshold is not None else {}))
    return MemoryIndex(dim, config) if dry_run else MemoryIndex.create(store, dim, config)


def cmd_ingest(args) -> int:
    from lukhas_gpu.ingest.input_errors import MigrationError
    from lukhas_gpu.ingest.pipeline import Pipeline
    from lukhas_gpu.ingest.resume import Resume
    from lukhas_gpu.ingest.sources import ARRAY_SUFFIXES, PARQUET_SUFFIXES, open_source

    if args.ray:
        from .ray_ingest import cmd_ingest_ray

        if args.dedup not in (None, "off") or args.dedup_threshold is not None:
            raise ValueError("--ray ingests with dedup off (each shard's row count is its resume record); "
                             "drop --dedup / --dedup-threshold, or ingest without --ray")
        return cmd_ingest_ray(args)
    from lukhas_gpu.util.bounds import MAX_INGEST_BATCH, check_dim

    for name in ("batch_size", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size > MAX_INGEST_BATCH:
        raise ValueError(f"--batch-size must be <= {MAX_INGEST_BATCH:,} (util.bounds.MAX_INGEST_BATCH), "
                         f"got {args.batch_size:,}")
    if args.dim is not None:
        check_dim(args.dim, "--dim")
    src = args.input
    suffix = pathlib.Path(src).suffix.lower()
    is_array, is_parquet = suffix in ARRAY_SUFFIXES, suffix in PARQUET_SUFFIXES
    if is_array and not args.payloads:
        raise ValueError(f"{src} is an array of embeddings: pass its records with --payloads JSONL (row i <-> line i)")
    if not is_array and args.payloads:
        raise ValueError(f"--payloads goes with a .npy/.npz INPUT; {src} is read as "
                         f"{'Parquet' if is_parquet else 'JSONL with embedded vectors'}")
    source = open_source(src, payloads=args.payloads, npz_key=args.npz_key, embedding_column=args.embedding_column)
    columns, warn = _columns_note(source)
    if warn:  # a text column under another name: said before the ingest, not only after it
        print(f"lukhas-gpu ingest: warning: {src}: {columns}", file=sys.stderr)
    index = display = None
    try:
        total = source.total
        if is_array:
            source.check_counts()
        store = pathlib.Path(args.store)
        index = _store_index(store, dim=args.dim, preset=args.preset, records=total, input_dim=source.first_dim,
                             text_index=args.text_index, max_content_bytes=args.max_content_bytes,
                             dedup=args.dedup, dedup_threshold=args.dedup_threshold)
        if source.dim is not None and source.dim != index.dim:
            raise MigrationError(f"{src}: embeddings have dimension {source.dim}, the store expects {index.dim}",
                                 path=src)
        resume = Resume(store, source.identity(), rows_now=index.stats()["rows"], total=total, restart=args.restart,
                        writes_now=index.write_count)
        display = ProgressDisplay(total, resume.skip, sys.stderr if args.json else sys.stdout)
        pipe = Pipeline(index, checkpoint_every=args.checkpoint_every, resume=resume, on_progress=display.update,
                        total=total, initial=resume.skip, source=source.path, unit=source.unit, dedup=args.dedup)
        try:
            pipe.run(source.batches(index, args.batch_size, start=resume.skip))
        except KeyboardInterrupt:
            display.close()
            print(f"lukhas-gpu ingest: interrupted after {resume.entry['ingested']:,} of {total:,} records (they are "
                  "in the store's write-ahead log); run the same command again to resume", file=sys.stderr)
            return 130
        display.close()
        count = len(index)
    finally:
        if display is not None:
            display.close()
        source.close()
        if index is not None:
            index.close()
    rate = pipe.imported / pipe.seconds if pipe.seconds > 0 else 0.0
    if args.json:
        print(json.dumps({"store": str(store), "input": args.input, "records": total, "ingested": pipe.imported,
                          "skipped_resumed": resume.skip, "seconds": pipe.seconds, "rate": rate, "count": count,
                          "dedup": pipe.dedup, "merged": pipe.merged, "new": pipe.new,
                          **({"columns_read": source.columns, "columns_not_read": source.ignored}
                             if hasattr(source, "ignored") else {}),
                          **({"scope_fields_read": _scope_fields(source)} if hasattr(source, "scope_fields") else {})}))
    else:
        resumed = f", {resume.skip:,} skipped (ingested before)" if resume.skip else ""
        print(f"{args.store}: ingested {pipe.imported:,} of {total:,} records from {args.input} "
              f"in {pipe.seconds:.1f} s ({rate:,.0f} rec/s){resumed}; the store holds {count:,} memories")
        print(f"  dedup {pipe.dedup}: {pipe.new:,} new memories, {pipe.merged:,} records merged into existing ones")
        if columns:
            print(f"  {columns}")
        if hasattr(source, "scope_fields"):
            print("  scope fields read: " + (", ".join(_scope_fields(source)) or "none (every memory in the default "
                                             "namespace, always valid)"))
    return 0


def _scope_fields(source) -> list:
    """The namespace / validity fields some record of a JSONL or payload input gave, in order."""
    from lukhas_gpu.ingest.rules import SCOPE_FIELDS

    return [f for f in SCOPE_FIELDS if f in source.scope_fields]


#: Column names that look like a memory's text but are not read as it (the content column is "content").
_TEXT_LIKE = ("text", "contents", "body", "document", "page_content", "chunk", "passage")


def _columns_note(source) -> tuple[str | None, bool]:
    """For a Parquet input: which columns are read and which are not, and whether to warn (a
    column that looks like the memories' text is not read); ``(None, False)`` for other inputs."""
    ignored = getattr(source, "ignored", None)
    if ignored is None:
        return None, False
    note = "columns read: " + ", ".join(source.columns)
    texts = [c for c in ignored if c.lower() in _TEXT_LIKE] if "content" not in source.columns else []
    if ignored:
        note += "; not read: " + ", ".join(ignored)
        if texts:
            note += f" (the memories' text is read from a column named 'content'; rename {texts[0]!r} to store it)"
    return note, bool(texts)


def cmd_migrate(args) -> int:
    from lukhas_gpu.ingest import migrate
    from lukhas_gpu.ingest.npy_rows import ArrayReader
    from lukhas_gpu.ingest.sources import count_records, first_dim
    from lukhas_gpu.store import layout as storage
    from lukhas_gpu.util.bounds import MAX_INGEST_BATCH, check_dim

    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--parity-queries", args.parity_queries, 0),
                             ("--dim", args.dim, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.batch_size > MAX_INGEST_BATCH:
        raise ValueError(f"--batch-size must be <= {MAX_INGEST_BATCH:,} (util.bounds.MAX_INGEST_BATCH), "
                         f"got {args.batch_size:,}")
    if args.dim is not None:
        check_dim(args.dim, "--dim")
    src, vectors, store = args.source, args.vectors, pathlib.Path(args.store)
    if vectors is None and pathlib.Path(src).suffix.lower() in (".npy", ".npz"):
        raise ValueError(f"{src} is an array of embeddings: pass it with --vectors, and as SOURCE the JSONL of its "
                         "records (row i <-> line i)")
    new = not (store / storage.CURRENT).exists()

    def input_dim() -> int:  # a new store's: the source's first embedding's
        if vectors is None:
            return first_dim(src)
        rows = ArrayReader(vectors, args.npz_key)
        rows.close()
        return rows.dim

    index = _store_index(store, dim=args.dim, preset=args.preset, records=count_records(src) if new else 0,
                         input_dim=input_dim, dry_run=args.dry_run, text_index=getattr(args, "text_index", False),
                         max_content_bytes=args.max_content_bytes)
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
