"""``lukhas-gpu search``: top-k memories for query vectors from a file or stdin, filtered and ranked."""
from __future__ import annotations

import argparse
import json
import math
import sys

from .store_cmds import text

__all__ = ["add_parsers", "cmd_search", "open_for_search", "QUERY_BATCH"]

#: Queries searched per batch when they come from a file.
QUERY_BATCH = 1024


def add_parsers(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser(
        "search", help="top-k memories for query vectors (from a file or stdin), with filters and ranking",
        formatter_class=fmt,
        description="Opens STORE read-only (it sees the last checkpoint and every write acknowledged in the\n"
                    "log, changing no file) and searches each query. A sharded root (a directory with\n"
                    "shards.json, written by `lukhas-gpu ingest --ray`) is searched over every shard, with\n"
                    "global ids (shard << 32 | row).\n\n"
                    "Queries: --query-file F, a .npy (dim,) or (n, dim) array or a JSONL of\n"
                    '{"embedding": [...]} (or bare [...]) lines; without it, the same JSON lines from stdin,\n'
                    "each answered as it arrives.\n\n"
                    "--text Q (repeatable) searches the contents by BM25 (a store created with text_index);\n"
                    "with --query-file too, each query vector is fused with its --text (in order) by --fusion.")
    s.add_argument("store", help="store directory, or a sharded root")
    s.add_argument("--query-file", metavar="F", help=".npy or JSONL of query vectors (default: JSON lines on stdin)")
    s.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    s.add_argument("--text", action="append", metavar="Q", help="a BM25 query text (repeatable: one query each)")
    s.add_argument("--fusion", choices=("rrf", "weighted"), default="rrf",
                   help="how --text and the query vectors are fused (default: rrf)")
    s.add_argument("--tags-all", nargs="+", metavar="T", help="memories carrying every one of these tags")
    s.add_argument("--tags-any", nargs="+", metavar="T", help="... at least one of these tags")
    s.add_argument("--tags-none", nargs="+", metavar="T", help="... none of these tags")
    s.add_argument("--since", type=_time_arg, metavar="S", help="timestamp >= S (epoch seconds or ISO-8601; UTC "
                                                                "when no offset)")
    s.add_argument("--until", type=_time_arg, metavar="S", help="timestamp <= S (epoch seconds or ISO-8601)")
    s.add_argument("--min-importance", type=float, metavar="X", help="importance >= X (in [0, 1])")
    s.add_argument("--meta", type=_json_arg, metavar="JSON",
                   help='conditions on metadata keys, e.g. \'{"author": "ann", "year": {"$gte": 2020}}\'')
    s.add_argument("--namespace", metavar="NAME", help='only memories of this namespace ("" the default one)')
    s.add_argument("--as-of", type=_time_arg, metavar="S", help="the memories valid at S (default: now)")
    s.add_argument("--similarity", type=float, default=1.0, metavar="W",
                   help="weight of cosine similarity in the ranked score (default: 1)")
    s.add_argument("--recency", type=float, default=0.0, metavar="W",
                   help="weight of recency decay 0.5**(age/half-life) (default: 0, off)")
    s.add_argument("--importance", type=float, default=0.0, metavar="W", help="weight of importance (default: 0)")
    s.add_argument("--half-life", type=float, default=None, metavar="SECONDS",
                   help="age at which recency halves (default: one day)")
    s.add_argument("--diversity", type=float, default=0.0, metavar="X",
                   help="maximal marginal relevance in [0, 1]: near-copies give way to other results (default: 0, off)")
    s.add_argument("--nprobe", type=int, metavar="N", help="IVF lists visited (default: the store's tuning or config)")
    s.add_argument("--rerank", type=int, metavar="R", help="candidates re-scored per result (default: the store's)")
    s.add_argument("--contents", action="store_true", help="print the memories' contents too")
    s.add_argument("--json", action="store_true",
                   help='print one JSON object per query: {"query", "ids", "scores"[, "contents"]}')
    s.set_defaults(func=cmd_search, catch_errors=True)


def _json_arg(arg: str):
    try:
        return json.loads(arg)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None


def _time_arg(arg: str) -> float:
    try:
        v = float(arg)
    except ValueError:
        from lukhas_gpu.ingest.rules import iso_seconds

        try:
            return iso_seconds(arg)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{arg!r} is neither epoch seconds nor an ISO-8601 date-time") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{arg!r} is not finite")
    return v


def _query_vector(obj, dim: int, where: str):
    import numpy as np

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
    import numpy as np

    from lukhas_gpu.ingest.input_errors import InvalidRecord
    from lukhas_gpu.ingest.sources import loads

    buf, first, n = [], 0, 0
    for lineno, raw in lines:
        try:
            obj = loads(raw)
        except InvalidRecord as e:
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
    import numpy as np

    from lukhas_gpu.ingest.sources import records

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
    yield from _jsonl_queries(records(f), f, dim, QUERY_BATCH)


def _results(index, args, where, rank):
    """``(first query number, SearchResult)`` per batch: vectors, BM25 texts, or both fused."""
    texts = args.text
    if texts and args.query_file is None:
        if rank is not None or args.diversity:
            raise ValueError("--similarity/--recency/--importance/--diversity apply to query vectors: "
                             "give --query-file too")
        yield 0, index.search_text(texts, args.k, where=where)
        return
    for first, q in _queries(args, index.dim):
        if texts:
            if first + len(q) > len(texts):
                raise ValueError(f"{first + len(q)} query vectors but {len(texts)} --text: one text per vector")
            yield first, index.search(q, args.k, where=where, rank=rank, text=texts[first: first + len(q)],
                                      fusion=args.fusion, diversity=args.diversity, nprobe=args.nprobe,
                                      rerank=args.rerank)
        else:
            yield first, index.search(q, args.k, where=where, rank=rank, diversity=args.diversity, nprobe=args.nprobe,
                                      rerank=args.rerank)


def open_for_search(path):
    """A reader of the store at ``path``, or a :class:`~lukhas_gpu.distributed.ShardedIndex`
    over every shard when ``path`` is a sharded root."""
    from lukhas_gpu.distributed.rootfiles import is_sharded_root

    if is_sharded_root(path):
        from lukhas_gpu.distributed import ShardedIndex

        return ShardedIndex.open(path)
    from lukhas_gpu import MemoryIndex

    return MemoryIndex.open(path, mode="r")


def cmd_search(args) -> int:
    import numpy as np

    from lukhas_gpu import Filter, Rank

    where = Filter(tags_all=args.tags_all, tags_any=args.tags_any, tags_none=args.tags_none, since=args.since,
                   until=args.until, min_importance=args.min_importance, meta=args.meta, namespace=args.namespace,
                   as_of=args.as_of)
    rank = None
    if args.recency or args.importance or args.similarity != 1.0 or args.half_life is not None:
        extra = {} if args.half_life is None else {"half_life": args.half_life}
        rank = Rank(args.similarity, args.recency, args.importance, **extra)
    index = open_for_search(args.store)
    flt = None if where.is_empty() else where
    try:
        for first, res in _results(index, args, flt, rank):
            ids, scores = np.asarray(res.ids), np.asarray(res.scores)
            contents = res.contents() if args.contents else None
            for r in range(len(ids)):
                live = ids[r] >= 0
                row_ids, row_scores = ids[r][live].tolist(), scores[r][live].tolist()
                row_contents = [text(c) for c, ok in zip(contents[r], live) if ok] if contents else None
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
