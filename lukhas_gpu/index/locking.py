"""The index's lock, for the facade and the mixins that add public methods to it."""
from __future__ import annotations

import functools

__all__ = ["locked"]


def locked(method):
    """Run ``method`` holding the index's lock (``MemoryIndex.lock``, a re-entrant lock held by
    every call that reads or changes the index, so a background retrain or retune can swap its
    result in between two calls)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return wrapper
