"""The ``lukhas-gpu`` command line: ``main(argv=None)`` parses and runs one subcommand."""
from .app import main

__all__ = ["main"]
