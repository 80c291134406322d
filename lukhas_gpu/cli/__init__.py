"""The ``lukhas-gpu`` command line: ``main(argv=None)`` parses and runs one subcommand.

One module per command family: :mod:`.plan`, :mod:`.store_cmds` (verify, rollback, stats, get,
delete), :mod:`.search_cmd`, :mod:`.ingest` (ingest, migrate), :mod:`.bench`; :mod:`.main` builds the
parser and dispatches. No module imports torch, faiss or the index at import time.
"""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
