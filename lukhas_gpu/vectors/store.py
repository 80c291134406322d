"""A growable store of fixed-width int8 rows: the rerank / exact-scan vectors.

Rows live in one contiguous numpy array -- anonymous memory, or a file-backed memory map whose
pages belong to the page cache (reclaimable, not counted as anonymous RAM). Capacity grows
geometrically; untouched capacity is never resident, so growth costs no RSS beyond the rows
written.

A *private* store (:meth:`VectorStore.attach` with ``private=True``: a reader replaying the
write-ahead log) maps a published file copy-on-write (``MAP_PRIVATE``) at the start of an
anonymous region: its rows stay page cache shared with every other reader, appended rows (and
any row changed, e.g. by a re-calibration) are anonymous memory of this process, and the file
is never written. Measured on 200,000 x 384 rows: attaching costs no copy and no anonymous RAM,
where reading the file into memory costs its whole size per reader. A row changed in place costs
the pages it spans (tracked per page: they are carried over when the store grows and reported as
anonymous).

A durable writer's rows take the same form (:meth:`VectorStore.rebase`): after each checkpoint
its in-memory rows are replaced by the generation's file just written and read back, mapped the
same way, so only the rows written since the last checkpoint are anonymous. Published files are
never rewritten in place (a new generation is a new directory; old ones are unlinked), so the
map stays valid. The rows' block CRCs at the rebase are kept: the next checkpoint checks that
the blocks no write changed still match them, so bytes damaged on disk under the map are named
(:class:`~lukhas_gpu.util.errors.CorruptStoreError`) instead of carried into a generation with
fresh CRCs.

A store over a published file that it does not verify while copying (a reader's map) is given
the CRC-32 of each block of ``CRC_BLOCK_ROWS`` rows (:meth:`VectorStore.expect_crcs`) and checks a
block the first time a row of it is read: :meth:`VectorStore.checked` for the rows a search
re-scores, :attr:`VectorStore.array` (every block) for a scan; once half the blocks are checked
the rest are checked at once, so a warmed reader pays nothing per search. A damaged block is a
:class:`~lukhas_gpu.util.errors.CorruptStoreError` naming the file and its rows, never a score.
"""
from __future__ import annotations

import mmap
import os
import tempfile
import zlib

import numpy as np

from ..util.cowmap import private_map
from ..util.errors import CorruptStoreError
from ..util.memory import NPZ_MEMBER_BYTES, huge_page_slack

__all__ = ["VectorStore", "CRC_BLOCK_ROWS", "planned_bytes"]

#: Rows per CRC-32 block of the published vectors (4 B of checksum per 64 rows, 1/16 B a memory): small enough that
#: the first searches check only the blocks of the rows they re-score.
CRC_BLOCK_ROWS = 64

#: Doubling: each row is copied once on average as the store grows (1.5 copied it twice and cost
#: 10% of an ingest). Capacity never written is never resident, so the slack costs no RAM.
_GROWTH = 2.0
_MIN_CAPACITY = 4096


class VectorStore:
    """Append-only ``(n, dim)`` int8 rows addressed by row number.

    Parameters
    ----------
    dim : int
    storage : {"memory", "mmap"}
    path : str, optional
        File backing an ``mmap`` store; default a temporary file in ``spill_dir`` (deleted when
        the store is closed or collected).
    """

    def __init__(self, dim: int, *, storage: str = "memory", path: str | None = None,
                 spill_dir: str | None = None, dtype=np.int8):
        if storage not in ("memory", "mmap"):
            raise ValueError(f"storage must be 'memory' or 'mmap', got {storage!r}")
        self.dim, self.storage, self.dtype = int(dim), storage, np.dtype(dtype)
        self._n = 0
        self._owns_file = False
        self._path = path
        if storage == "mmap" and path is None:
            fd, self._path = tempfile.mkstemp(prefix="lukhas_vectors_", suffix=".i8", dir=spill_dir)
            os.close(fd)
            self._owns_file = True
        self._data = self._allocate(0)
        self.readonly = False
        self._private_rows = None
        self._dirty = None  # a private store: the file's pages changed in place (bool per page)
        self._base = None  # a rebased store: (block CRCs, block rows) of its file's rows
        self._crc = None

    @classmethod
    def attach(cls, path, dim: int, n: int, *, writable: bool, in_memory: bool = False,
               private: bool = False) -> "VectorStore":
        """A store over an existing raw file of ``n`` rows: memory-mapped (read-only unless
        ``writable``, appends then grow that file), or read into anonymous memory.

        ``private=True`` (with ``writable=False``): mapped copy-on-write, so rows can be appended
        and changed in this process's memory while the file is never written (see the module
        docstring)."""
        self = cls.__new__(cls)
        self.dim, self.dtype = int(dim), np.dtype(np.int8)
        self._n = int(n)
        self._owns_file = False
        self._path = str(path)
        self._private_rows = self._dirty = self._base = None
        self._crc = None
        if private:
            if writable:
                raise ValueError("a private store is never writable to its file: pass writable=False")
            self.storage, self.readonly = "mmap", False
            self._map_file(max(self._n, _MIN_CAPACITY))
            return self
        if in_memory:
            self.storage = "memory"
            self._data = self._allocate(max(n, 1))
            self._data[:n] = np.fromfile(path, dtype=self.dtype, count=n * dim).reshape(n, dim)
        else:
            self.storage = "mmap"
            if n == 0:
                self._data = self._allocate(0) if writable else np.empty((1, dim), dtype=self.dtype)
            else:
                self._data = np.memmap(path, dtype=self.dtype, mode="r+" if writable else "r", shape=(n, dim))
        self.readonly = not writable
        return self

    # -- allocation ----------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> np.ndarray:
        shape = (max(capacity, 1), self.dim)
        if self.storage == "memory":
            return np.empty(shape, dtype=self.dtype)
        nbytes = shape[0] * self.dim * self.dtype.itemsize
        with open(self._path, "r+b") as f:
            f.truncate(nbytes)  # sparse: unwritten pages take no disk and no RAM
        return np.memmap(self._path, dtype=self.dtype, mode="r+", shape=shape)

    def _map_file(self, capacity: int) -> None:
        """Map this store's file (its first ``_n`` rows) copy-on-write, nothing changed yet; on
        an error (the map refused) the store is as it was."""
        rows = self._private_rows
        self._private_rows = self._n
        try:
            data = self._private_map(capacity)
        except BaseException:
            self._private_rows = rows
            raise
        self._dirty = np.zeros(-(-self._n * self.dim // mmap.PAGESIZE), bool)
        self._data = data  # the old rows are freed with the last view of them

    def rebase(self, path, crcs=None, block_rows: int = CRC_BLOCK_ROWS) -> bool:
        """Replace the rows held by those of ``path``, a file holding exactly these rows (a
        generation just written and read back against its CRC), mapped copy-on-write: the
        rows move from anonymous RAM to the page cache. ``crcs``: their block CRCs (as
        :meth:`block_crcs` gave them), checked on the next :meth:`block_crcs` for every block
        no write changed. A store on a file of its own (``mmap``) or read-only is left as it is:
        False. An OSError (the map refused) leaves the store as it was."""
        if self.readonly or (self.storage == "mmap" and self._private_rows is None):
            return False
        size = os.path.getsize(path)
        if size != self.nbytes():
            raise ValueError(f"{path} holds {size} bytes, the store {self.nbytes()}: not its rows")
        capacity = max(self.capacity, self._n, _MIN_CAPACITY)
        old_path, self._path = self._path, str(path)
        try:
            self._map_file(capacity)
        except BaseException:
            self._path = old_path
            raise
        self.storage, self._crc = "mmap", None
        self.keep_crcs(crcs, block_rows)
        return True

    def keep_crcs(self, crcs, block_rows: int = CRC_BLOCK_ROWS) -> None:
        """The block CRCs of a mapped store's file rows, as verified (``None``: none kept):
        the next :meth:`block_crcs` checks every block no write changed against them."""
        if crcs is not None and self._private_rows is None:
            raise ValueError("block CRCs are kept for a store mapped copy-on-write only")
        self._base = None if crcs is None else (np.asarray(crcs, np.uint32).copy(), int(block_rows))

    def _private_map(self, capacity: int) -> np.ndarray:
        """``capacity`` rows of anonymous memory whose first ``_private_rows`` rows are the file,
        mapped copy-on-write over them (:func:`~lukhas_gpu.util.cowmap.private_map`)."""
        nfile = self._private_rows * self.dim
        data = private_map(self._path, nfile, max(capacity, 1) * self.dim)
        return data[: max(capacity, 1) * self.dim].view(self.dtype).reshape(-1, self.dim)

    def reserve(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        if self._private_rows is not None:
            # the file's rows come mapped again; the rows of this process (appended, or the
            # pages changed since the file was mapped) are copied
            new = self._private_map(capacity)
            new[self._private_rows: self._n] = self._data[self._private_rows: self._n]
            if self._dirty.any():
                nfile = self._private_rows * self.dim
                src, dst = self._data.reshape(-1).view(np.uint8), new.reshape(-1).view(np.uint8)
                for lo, hi in _runs(self._dirty):
                    a, b = lo * mmap.PAGESIZE, min(hi * mmap.PAGESIZE, nfile)
                    dst[a:b] = src[a:b]
            self._data = new
            return
        if self.storage == "memory":
            new = self._allocate(capacity)
            new[: self._n] = self._data[: self._n]
            self._data = new
        else:
            self._data.flush()
            del self._data
            self._data = self._allocate(capacity)

    # -- rows ----------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self._data.shape[0]) if self._n or self._data.shape[0] > 1 else 0

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self.dim)

    def append(self, rows: np.ndarray) -> tuple[int, int]:
        """Append ``(m, dim)`` rows; returns the ``[start, stop)`` row range they got."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows must have shape (m, {self.dim}), got {rows.shape}")
        if rows.dtype != self.dtype:
            raise TypeError(f"rows must be {self.dtype}, got {rows.dtype}")
        if self.readonly:
            raise RuntimeError("this vector store is read-only (the index was opened with mode='r')")
        start, stop = self._n, self._n + rows.shape[0]
        if stop > self.capacity:
            self.reserve(max(stop, int(self.capacity * _GROWTH), _MIN_CAPACITY))
        self._data[start:stop] = rows
        self._n = stop
        return start, stop

    def __getitem__(self, key):
        return self.array[key]

    def __setitem__(self, key, value):
        self.array[key] = value
        if self._private_rows:  # mapped rows now differ from the file: their pages are this process's
            self._mark_dirty(key)

    def _mark_dirty(self, key) -> None:
        nfile, dim, page = self._private_rows, self.dim, mmap.PAGESIZE
        if isinstance(key, slice):
            lo, hi, step = key.indices(self._n)
            if step == 1 and hi > lo:
                lo, hi = min(lo, nfile), min(hi, nfile)
                if hi > lo:
                    self._dirty[lo * dim // page: -(-hi * dim // page)] = True
                return
            key = np.arange(lo, hi, step)
        rows = np.arange(self._n)[key] if not isinstance(key, np.ndarray) or key.dtype == bool else key
        rows = np.asarray(rows, np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + self._n, rows)
        rows = rows[rows < nfile]
        first, last = rows * dim // page, ((rows + 1) * dim - 1) // page
        span = int((last - first).max(initial=0)) + 1
        pages = (first[:, None] + np.arange(span)[None, :])
        self._dirty[np.minimum(pages, last[:, None]).reshape(-1)] = True

    @property
    def array(self) -> np.ndarray:
        """A view of the rows written (no copy); every block of the file checked first (once)."""
        if (crc := self._crc) is not None:  # one read: a search beside may finish the checks
            self._verify_blocks(crc, None)
        return self._data[: self._n]

    def checked(self, rows) -> np.ndarray:
        """The rows table (as :attr:`array`) after checking only the blocks that hold ``rows``
        (int array of any shape; -1 padding ignored): what a re-score of candidates reads."""
        if (crc := self._crc) is not None:
            r = np.asarray(rows, dtype=np.int64).reshape(-1)
            r = r[(r >= 0) & (r < crc[2])]
            self._verify_blocks(crc, np.unique(r // crc[1]))
        return self._data[: self._n]

    # -- checksums ------------------------------------------------------------------------------
    def block_crcs(self, block_rows: int = CRC_BLOCK_ROWS) -> np.ndarray:
        """CRC-32 of each block of ``block_rows`` rows (the last one partial): uint32."""
        a = self._data[: self._n]
        out = np.array([zlib.crc32(a[i: i + block_rows]) for i in range(0, self._n, block_rows)], np.uint32)
        if self._base is not None and self._private_rows is not None and block_rows == self._base[1]:
            self._check_base(out)
        return out

    def _check_base(self, crcs: np.ndarray) -> None:
        """The blocks of the mapped file that no write changed still hold the rows they held at
        :meth:`rebase`: else the file was damaged under the map (never carried forward)."""
        base, block_rows = self._base
        nfile, dim, page = self._private_rows, self.dim, mmap.PAGESIZE
        full = min(len(base), nfile // block_rows)  # whole blocks of the file
        if not full:
            return
        b = np.arange(full)
        first, last = b * block_rows * dim // page, ((b + 1) * block_rows * dim - 1) // page
        dirty = np.concatenate([[0], np.cumsum(self._dirty)])
        clean = dirty[last + 1] == dirty[first]
        bad = np.flatnonzero(clean & (crcs[:full] != base[:full]))
        if len(bad):
            lo = int(bad[0]) * block_rows
            raise CorruptStoreError(self._path, f"int8 rows {lo}..{lo + block_rows - 1} (block {int(bad[0])}) changed "
                                                "on disk since they were written (damaged); not carried forward")

    def expect_crcs(self, crcs, block_rows: int, source: str) -> None:
        """Check the rows present now (the file's) against ``crcs`` (one per block of ``block_rows``
        rows), each block when first read; ValueError if they do not cover these rows."""
        crcs = np.asarray(crcs)
        n = self._n
        block_rows = int(block_rows)
        if block_rows < 1 or crcs.dtype != np.uint32 or crcs.shape != (-(-n // block_rows),):
            raise ValueError(f"{len(crcs)} block CRCs of {block_rows} rows ({crcs.dtype}) do not cover {n} rows")
        self._crc = (crcs, block_rows, n, str(source), np.zeros(len(crcs), bool))

    def _verify_blocks(self, crc, blocks) -> None:
        """Check ``blocks`` (None: every one) of ``crc`` (``self._crc`` as the caller read it).
        Searches holding the index's shared lock may run this at once: a block is marked
        checked only once its CRC matched, and ``_crc`` dropped only when every block is."""
        crcs, block_rows, n, source, ok = crc
        if blocks is not None and 2 * (int(ok.sum()) + len(blocks)) >= len(ok):
            blocks = None  # half the file checked: the rest at once, so later reads cost nothing
        todo = np.flatnonzero(~ok) if blocks is None else blocks[~ok[blocks]]
        for b in todo.tolist():
            lo, hi = b * block_rows, min(n, (b + 1) * block_rows)
            if zlib.crc32(self._data[lo:hi]) != crcs[b]:
                raise CorruptStoreError(source, f"int8 rows {lo}..{hi - 1} (block {b}) fail their CRC-32 (damaged); "
                                                "not served")
            ok[b] = True
        if (blocks is None or ok.all()) and self._crc is crc:
            self._crc = None  # every block checked: nothing left to do on later reads

    def nbytes(self) -> int:
        return self._n * self.dim * self.dtype.itemsize

    @property
    def spill_path(self) -> str | None:
        """The temporary file backing an ``mmap`` store that made its own (deleted on
        :meth:`close`); ``None`` for a store over a given or attached file, or in memory."""
        return self._path if self._owns_file and self._path else None

    def memory_usage(self) -> dict:
        """Where the rows live (see :mod:`lukhas_gpu.util.memory` for the contract).

        ``vectors_int8``: the rows written, ``mapped`` for a memory-mapped store, else ``anon``
        with the unwritten capacity ``reserved``; numpy advises huge pages for large buffers, so
        half a huge page of that capacity is resident on average (``vectors_slack``).
        """
        used = self.nbytes()
        if self._private_rows is not None:
            mapped = min(self._private_rows, self._n) * self.dim * self.dtype.itemsize
            mapped = max(0, mapped - int(self._dirty.sum()) * mmap.PAGESIZE)  # pages changed: this process's
            own = {"vectors_int8": used - mapped} if used > mapped else {}
            return {"mapped": {"vectors_int8": mapped}, "anon": own} if mapped else {"anon": own}
        if self.storage == "mmap":
            return {"mapped": {"vectors_int8": used}}
        cap = self.capacity * self.dim * self.dtype.itemsize
        anon = {"vectors_int8": used}
        slack = huge_page_slack(used, cap)
        if slack:
            anon["vectors_slack"] = slack
        return {"anon": anon, "reserved": {"vectors_int8": cap - used}}

    def flush(self) -> None:
        if self.storage == "mmap" and self._private_rows is None:
            self._data.flush()

    def close(self) -> None:
        data, self._data = self._data, None
        del data
        if self._owns_file and self._path and os.path.exists(self._path):
            os.unlink(self._path)
            self._owns_file = False

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def _runs(flags: np.ndarray):
    """``[lo, hi)`` of each run of True in a bool array."""
    d = np.diff(np.concatenate([[0], flags.view(np.int8), [0]]))
    return zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist())


def planned_bytes(count: int, dim: int, *, capacity_rows: int, mapped: bool) -> dict:
    """The bytes of a :class:`VectorStore` holding ``count`` int8 rows of ``dim`` (``capacity_rows``
    reserved), as its ``memory_usage()`` names them, plus ``disk`` (for ``lukhas_gpu.plan``):
    ``mapped`` for a memory-mapped store or one opened read-only, else ``anon`` with the huge-page
    slack of the reserved capacity."""
    vec = count * dim
    disk = {"vectors_int8": vec, "vectors_crc": 4 * -(-count // CRC_BLOCK_ROWS) + 2 * NPZ_MEMBER_BYTES}
    if mapped:
        return {"mapped": {"vectors_int8": vec}, "disk": disk}
    anon = {"vectors_int8": vec}
    slack = huge_page_slack(vec, capacity_rows * dim)
    if slack:
        anon["vectors_slack"] = slack
    return {"anon": anon, "disk": disk}
