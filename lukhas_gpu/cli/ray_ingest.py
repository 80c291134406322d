"""``lukhas-gpu ingest --ray``: a sharded root filled on a Ray cluster (:func:`lukhas_gpu.distributed.ingest`).

Ray is imported only when ``--ray`` is given; the options the single-store ingest shares
(``--dim``, ``--preset``, ``--text-index``, ``--max-content-bytes``, ``--batch-size``,
``--embedding-column``, ``--json``) mean the same here.
"""
from __future__ import annotations

import json
import sys

from .progress import ProgressDisplay

__all__ = ["add_ray_options", "cmd_ingest_ray"]

#: Shards of a new root when --shards is not given.
DEFAULT_SHARDS = 2
#: Columns read when the input has them, by their standard names (as in a Parquet ingest).
_OPTIONAL = ("content", "tags", "timestamp", "importance")


def add_ray_options(p) -> None:
    g = p.add_argument_group("on a Ray cluster (the ray extra)")
    g.add_argument("--ray", action="store_true",
                   help="ingest on Ray into a sharded root STORE of --shards stores (resumable)")
    g.add_argument("--shards", type=int, metavar="N",
                   help=f"shard stores of a new root (default: {DEFAULT_SHARDS}; an existing root's own count)")
    g.add_argument("--address", metavar="ADDR",
                   help="the Ray cluster to use (default: RAY_ADDRESS, else a local cluster for this run)")


def cmd_ingest_ray(args) -> int:
    from lukhas_gpu import IndexConfig
    from lukhas_gpu.ingest.input_errors import MissingExtra

    if args.payloads or args.restart:
        raise ValueError(f"--{'payloads' if args.payloads else 'restart'} does not go with --ray (the input is one "
                         "Parquet or JSONL source; a sharded root resumes only the ingest it began with)")
    try:
        import ray
    except ImportError as e:
        raise MissingExtra(f'--ray needs Ray, which is not installed ({e}); pip install "lukhas-gpu[ray]"') from None
    from lukhas_gpu.distributed import ingest, rootfiles
    from lukhas_gpu.distributed.stages import input_columns

    shards = args.shards
    if shards is None:
        shards = rootfiles.read_root(args.store)["shards"] if rootfiles.is_sharded_root(args.store) else DEFAULT_SHARDS

    present = set(input_columns(args.input))
    columns = {f"{name}_column": name if name in present else None for name in _OPTIONAL}
    from lukhas_gpu.util.bounds import check_max_content_bytes

    check_max_content_bytes(args.max_content_bytes, "--max-content-bytes")
    config = IndexConfig.preset(args.preset, **({"text_index": True} if args.text_index else {}),
                                **({"max_content_bytes": args.max_content_bytes} if args.max_content_bytes else {}))
    display: list = []

    def show(p) -> None:
        if not display:
            display.append(ProgressDisplay(p.total, p.initial, sys.stderr if args.json else sys.stdout))
        display[0].update(p)

    started = not ray.is_initialized()
    if started:
        ray.init(address=args.address, logging_level="warning")
    try:
        report = ingest(args.input, args.store, shards=shards, dim=args.dim, config=config,
                        embedding_column=args.embedding_column, batch_size=args.batch_size, progress=show, **columns)
    except KeyboardInterrupt:
        print("lukhas-gpu ingest: interrupted (what the shards acknowledged is in their write-ahead logs); run the "
              "same command again to resume", file=sys.stderr)
        return 130
    finally:
        if display:
            display[0].close()
        if started:
            ray.shutdown()
    print(json.dumps(report.to_dict()) if args.json else report.summary())
    return 0
