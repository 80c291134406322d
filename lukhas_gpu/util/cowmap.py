"""A file's bytes mapped copy-on-write at the start of a larger anonymous region.

:func:`private_map` is the one rule of the private overlay that a reader's (and a checkpointed
writer's) int8 rows and a writer's content records use: the file's pages stay page cache
(shared, reclaimable, not anonymous RAM) until this process writes one, the rest of the region
is anonymous memory taken a page at a time as it is written, and the file is never written
(``MAP_PRIVATE``). Published files are never rewritten in place (a new generation is a new
directory), so the map stays valid while the region lives; unmapping the region (when its last
view is collected) unmaps the file's part too.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys

import numpy as np

__all__ = ["private_map", "OVERLAY"]

#: ``MAP_FIXED`` where the overlay is implemented (Linux, macOS); elsewhere the file is read
#: into anonymous memory instead.
_MAP_FIXED = 0x10 if sys.platform.startswith(("linux", "darwin")) else None
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)
#: Whether a file's pages stay page cache under :func:`private_map` here.
OVERLAY = _MAP_FIXED is not None


def private_map(path, file_bytes: int, capacity_bytes: int) -> np.ndarray:
    """``capacity_bytes`` (at least 1) of anonymous memory as a uint8 array whose first
    ``file_bytes`` are those of ``path``, mapped copy-on-write over them."""
    region = mmap.mmap(-1, max(capacity_bytes, file_bytes, 1),
                       flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
    data = np.frombuffer(region, dtype=np.uint8)  # keeps the region alive
    if not file_bytes:
        return data
    if not OVERLAY:  # no overlay here: a private copy
        data[:file_bytes] = np.fromfile(path, dtype=np.uint8, count=file_bytes)
        return data
    anchor = ctypes.c_char.from_buffer(region)
    addr = ctypes.addressof(anchor)
    del anchor  # the region must not stay exported (it could then never be unmapped)
    length = -(-file_bytes // mmap.PAGESIZE) * mmap.PAGESIZE  # the file's last page, zero-filled past its end
    fd = os.open(path, os.O_RDONLY)
    try:
        got = _libc_mmap(addr, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
    finally:
        os.close(fd)
    if got != addr:
        err = ctypes.get_errno()
        raise OSError(err, f"mapping {path} copy-on-write failed: {os.strerror(err)}", str(path))
    return data


def _libc_mmap(addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.mmap
    fn.restype = ctypes.c_void_p
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    return fn(addr, length, prot, flags, fd, offset)
