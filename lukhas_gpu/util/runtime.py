"""The RssAnon that this process's first use of torch and FAISS added, measured when it happens.

Importing torch and FAISS and their first calls (torch's first GEMM, FAISS's first k-means and
IVF) leave memory resident that no index holds: the libraries' code data, allocator arenas,
BLAS and OpenMP thread buffers. It is paid once per process, is the largest single item of a
small index (~130 MB against ~1 KB per memory) and depends on the machine (threads, BLAS
build), so it is measured here, in windows where nothing else happens:

* ``import_torch``, ``import_faiss``: RssAnon around the library's import, when lukhas_gpu's
  code is the first to import it (an import hook, :func:`install`, put on ``sys.meta_path`` by
  ``import lukhas_gpu``); a library the caller loads is the caller's and is not recorded;
* ``encode``: RssAnon around the process's first encode, less the codes it returns;
* ``train``: RssAnon around the process's first training (k-means, the IVF filled, the heap
  trimmed), less what the trained index holds;
* ``search``: RssAnon around the process's first search (its OpenMP workers' malloc arenas and
  the FAISS/BLAS scratch they keep), less the results;
* ``tune``: RssAnon around the process's first background tuning run (a thread of its own: its
  malloc arena, OpenMP team and OpenBLAS buffer stay after the run; 47-82 MB measured, the
  largest after torch's import), less what the index grew by meanwhile (adds in other threads).

A window reads the whole process: another thread allocating meanwhile (the caller's own
threads) is counted with it. A window is measured only when no other window is open in another
thread (while the background tuner's window is open, a first search is not measured there: what
it leaves is read by the tuner's window, and the next search tries again). Each window is
recorded once per process (:func:`measured`); free heap is given back before and after, so that
temporaries are not. ``stats()`` reports the sum as ``anon["runtime_libraries"]`` on the
process's first index to use the vector path; ``plan()`` adds :func:`planned`: for each window
a fresh process meets, the figure measured here, else :data:`DEFAULT_BYTES`.
"""
from __future__ import annotations

import contextlib
import sys
import threading

from .memtrim import rss_anon, trim

__all__ = ["install", "first_use", "done", "measured", "total", "planned", "DEFAULT_BYTES", "WINDOWS"]

#: The windows, in the order a process meets them.
WINDOWS = ("import_torch", "import_faiss", "encode", "train", "search", "tune")
#: What each window costs a fresh process when it has not been measured here, as measured by
#: ``benchmarks/bench_rss_stats.py`` and single-step probes (2026-12-07, 40k-50k memories,
#: ``production``) on a 2-core AMD EPYC VM, x86-64 Linux, glibc 2.36, Python 3.11, torch 2.13.0
#: (CPU build, MKL) and faiss-cpu 1.15.1 (OpenBLAS), 2 threads: torch's import 128.3-128.8 MB,
#: FAISS's 3.1-5.5 MB, the first encode ~0.02 MB, the first training 3.4-4.2 MB, the first
#: searches alone (1 to 1,000 queries, one filtered) 9-10 MB; the first background tuning run
#: 47-49 MB alone and 82 MB when the first searches ran during it (as they do after an ingest:
#: the run starts at training), which is the figure used here.
DEFAULT_BYTES = {"import_torch": 128 << 20, "import_faiss": 4 << 20, "encode": 0, "train": 4 << 20,
                 "search": 9 << 20, "tune": 78 << 20}

_lock = threading.Lock()
_bytes: dict[str, int] = {}
#: The windows being measured now: ``{window: thread ident}``.
_open: dict[str, int] = {}
#: Windows met while another thread's window was open: what they left is in that one's figure.
_absorbed: set[str] = set()
#: The libraries whose first import is measured, and the window each is recorded as.
_LIBRARIES = {"torch": "import_torch", "faiss": "import_faiss"}


class _Measured:
    """A library's loader, measuring the RssAnon its module's execution adds."""

    def __init__(self, loader, window: str):
        self._loader, self._window = loader, window

    def __getattr__(self, name):  # everything else is the real loader's
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # the library sees its own loader
        before = rss_anon()
        self._loader.exec_module(module)
        after = rss_anon()
        with _lock:
            if before is not None and after is not None and self._window not in _bytes:
                _bytes[self._window] = max(0, after - before)


class _Finder:
    """On ``sys.meta_path`` from ``import lukhas_gpu`` on: the first import of torch or faiss that
    lukhas_gpu's own code asks for is measured; an import by the caller is the caller's."""

    def find_spec(self, name, path=None, target=None):
        window = _LIBRARIES.get(name)
        if window is None or window in _bytes or not _asked_by_us():
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Measured(spec.loader, window)
                return spec
        return None


def _asked_by_us() -> bool:
    """Whether the import statement being run is in a lukhas_gpu module."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return frame is not None and str(frame.f_globals.get("__name__", "")).startswith("lukhas_gpu")


def install() -> None:
    """Measure the libraries' imports from now on (``import lukhas_gpu`` calls it; idempotent)."""
    with _lock:
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())


class _Window:
    """What a :func:`first_use` window leaves held (subtracted from its growth)."""

    held = 0


@contextlib.contextmanager
def first_use(window: str):
    """Measure the RssAnon growth of the block when it is the process's first ``window``.

    The block sets ``.held`` on the yielded object to the bytes it leaves held on purpose (its
    results, the index's own growth), which are not the libraries'. Free heap is given back
    before and after, so that neither an earlier batch's free chunks nor this block's
    temporaries are measured. Not measured (tried again next time) while another window is open
    in another thread, or when the block raises.
    """
    if window not in WINDOWS[2:]:
        raise ValueError(f"window must be one of {WINDOWS[2:]}, got {window!r}")
    w = _Window()
    with _lock:
        skip = window in _bytes or bool(_open)
        if not skip:
            _open[window] = threading.get_ident()
        elif window not in _bytes and any(t != threading.get_ident() for t in _open.values()):
            _absorbed.add(window)
    if skip:
        yield w
        return
    try:
        trim()
        before = rss_anon()
        yield w
        trim()
        after = rss_anon()
        with _lock:
            if before is not None and after is not None and window not in _bytes:
                _bytes[window] = max(0, after - before - int(w.held))
    finally:
        with _lock:
            _open.pop(window, None)


def done(window: str) -> bool:
    """Whether this process has measured ``window`` (no lock: one dict lookup, for the
    lean route of plain searches, which takes the general route until the first search's window is done)."""
    return window in _bytes


def measured() -> dict[str, int]:
    """``{window: bytes}`` of the windows this process has measured so far."""
    with _lock:
        return {k: _bytes[k] for k in WINDOWS if k in _bytes}


def total() -> int:
    """The bytes this process's first use of the libraries added so far (0 when not measured)."""
    return sum(measured().values())


def planned(trained: bool, tuned: bool = False) -> int:
    """The runtime bytes ``plan()`` adds for a fresh process: the libraries' imports, the first
    encode and search, the first training (``trained``) and background tuning run (``tuned``),
    each the figure measured in this process when it has one, else :data:`DEFAULT_BYTES`'s.
    (An import the caller made before ``import lukhas_gpu`` is not measured: its default is
    used, since a fresh process pays it. A window met while another thread's was open, and not
    measured since, adds nothing: the other window read what it left.)"""
    seen = measured()
    with _lock:
        absorbed = set(_absorbed)
    needed = [k for k in WINDOWS if (k != "train" or trained) and (k != "tune" or tuned)]
    return sum(seen.get(k, 0 if k in absorbed else DEFAULT_BYTES[k]) for k in needed)
