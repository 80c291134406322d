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

from . import bench, ingest, plan, search, serve, store

__all__ = ["main", "build_parser", "EXIT_BROKEN_PIPE"]

#: Exit status after stdout's reader went away (``| head``): 128 + SIGPIPE, what a shell reports
#: for a program that SIGPIPE ended.
EXIT_BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lukhas-gpu", description="A compact vector memory index.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    bench.add_parsers(sub)
    store.add_parsers(sub, "verify", "rollback", "recover", "stats")
    plan.add_parsers(sub)
    ingest.add_ingest_parser(sub)
    search.add_parsers(sub)
    store.add_parsers(sub, "get", "delete")
    ingest.add_migrate_parser(sub)
    serve.add_parsers(sub)
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
    from lukhas_gpu.ingest.errors import MissingExtra
    from lukhas_gpu.store.layout import StoreError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        raise
    except (StoreError, ValueError, TypeError, OSError, MissingExtra) as e:
        # the library's messages name the file, line or id; a traceback would add nothing
        msg = " ".join(str(e).split("\n"))
        print(f"lukhas-gpu {args.command}: error: {msg}", file=sys.stderr)
        return 1


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
