"""The parser and the dispatch of ``lukhas-gpu``: ``main(argv=None)`` -> parser -> one command.

Each command module adds its subcommands (``add_parsers(sub)``) and sets ``func`` (and
``catch_errors``: report the library's errors as one line on stderr, exit code 1). Only the
modules' top levels run here; what a command needs (the index, torch, faiss) is imported when it
runs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from . import bench, ingest, links_cmd, monitor_cmds, plan, scope_cmds, search_cmd, serve_cmd, store_cmds

__all__ = ["main", "build_parser", "EXIT_BROKEN_PIPE"]

#: Exit status after stdout's reader went away (``| head``): 128 + SIGPIPE, what a shell reports
#: for a program that SIGPIPE ended.
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lukhas-gpu", description="A compact vector memory index.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    bench.add_parsers(sub)
    store_cmds.add_parsers(sub, "verify", "rollback", "recover", "stats")
    plan.add_parsers(sub)
    ingest.add_ingest_parser(sub)
    search_cmd.add_parsers(sub)
    store_cmds.add_parsers(sub, "get", "delete", "tune")
    links_cmd.add_parsers(sub)
    monitor_cmds.add_parsers(sub)
    scope_cmds.add_parsers(sub)
    ingest.add_migrate_parser(sub)
    serve_cmd.add_parsers(sub)
    return p


def main(argv=None) -> int:
    """Run ``lukhas-gpu`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        return _run(args)
    except BrokenPipeError:
        return _broken_pipe()


def _run(args) -> int:
    if not getattr(args, "catch_errors", False):
        return int(args.func(args) or 0)
    from lukhas_gpu.ingest.input_errors import MissingExtra
    from lukhas_gpu.store.layout import StoreError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise
    except (StoreError, ValueError, TypeError, OSError, MissingExtra) as e:
        # the library's messages name the file, line or id; a traceback would add nothing
        msg = for_cli(" ".join(str(e).split("\n")))
        print(f"lukhas-gpu {args.command}: error: {msg}", file=sys.stderr)
        return 1


#: The library's advice (Python calls) and what a command-line user does instead.
CLI_ADVICE = (
    ("create it with IndexConfig(text_index=True)",
     "build the store with `lukhas-gpu ingest --text-index` (a store gets its text index when it is created)"),
    ("close() that index first, or open with mode='r' to read beside it",
     "stop that writer first; `search`, `get` and `stats` read beside it"),
    ("open it with mode='r' to read beside it", "stop that writer first; `search`, `get` and `stats` read beside it"),
    ("create one with MemoryIndex.create", "create one with `lukhas-gpu ingest`"),
    ("over the index's max_content_bytes", "over the store's largest content (`ingest --max-content-bytes`, "
                                           "fixed when a store is created)"),
)


def for_cli(message: str) -> str:
    """``message`` with the library's Python advice replaced by the command that does it."""
    for python, command in CLI_ADVICE:
        message = message.replace(python, command)
    return message


def _broken_pipe() -> int:
    """stdout's reader is gone (``lukhas-gpu search ... | head``): stop quietly.

    As the Python documentation advises (``signal``, "Note on SIGPIPE"), stdout is pointed at
    devnull so that the interpreter's final flush does not raise again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (a test's stand-in)
        pass
    return EXIT_BROKEN_PIPE
