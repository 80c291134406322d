"""Rows of a 2-D float array in a ``.npy`` file or a ``.npz`` member, never loaded whole."""
from __future__ import annotations

import logging
import struct
import zipfile

import numpy as np

from .input_errors import MigrationError

log = logging.getLogger(__name__)

__all__ = ["ArrayReader", "to_f32"]


class ArrayReader:
    """Rows of a 2-D float array in a ``.npy`` file or a ``.npz`` member, never loaded whole.

    ``access`` says how: ``"mmap"`` (a ``.npy``, or an uncompressed member, mapped at its offset
    inside the archive), ``"stream"`` (a compressed member, decompressed batch by batch) or
    ``"loaded"`` (a compressed Fortran-ordered member, see below).
    """

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        self._mm = None
        self._zip = self._info = self._fp = None
        self._pos = 0
        if zipfile.is_zipfile(path):
            self._open_member(key)
        else:
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise MigrationError(f"{path}: not a readable .npy or .npz file: {e}", path=path) from e
            self._check(arr.shape, arr.dtype, path)
            self._mm, self.access = arr, "mmap"

    def _check(self, shape, dtype, where: str) -> None:
        if dtype.hasobject or dtype.kind != "f":
            raise MigrationError(f"{where}: embeddings must be a float array, got dtype {dtype}", path=self.path)
        if len(shape) != 2:
            raise MigrationError(f"{where}: embeddings must be 2-D (n, dim), got shape {shape}", path=self.path)
        self.n, self.dim = int(shape[0]), int(shape[1])
        self.dtype = np.dtype(dtype)

    def _open_member(self, key: str) -> None:
        zf = zipfile.ZipFile(self.path)
        name = key + ".npy"
        if name not in zf.namelist():
            keys = [k[:-4] for k in zf.namelist() if k.endswith(".npy")]
            zf.close()
            raise MigrationError(f"{self.path} has no array {key!r}; it holds {keys}", path=self.path)
        info = zf.getinfo(name)
        where = f"{self.path}[{key!r}]"
        try:
            with zf.open(info) as fp:
                shape, fortran, dtype = _read_npy_header(fp, where)
                self._check(shape, dtype, where)
                data_offset = fp.tell()
        except BaseException:
            zf.close()
            raise
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
            start = _member_data_start(self.path, info) + data_offset
            if self.n == 0:
                self._mm = np.empty(shape, dtype=dtype)
            else:
                self._mm = np.memmap(self.path, dtype=dtype, mode="r", offset=start, shape=shape,
                                     order="F" if fortran else "C")
            zf.close()
            self.access = "mmap"
        elif fortran:
            # a compressed Fortran-ordered array is stored column by column, so rows cannot be
            # streamed: it is decompressed and loaded once, whole (never with pickle)
            with zf.open(info) as f:
                self._mm = np.lib.format.read_array(f, allow_pickle=False)
            zf.close()
            self.access = "loaded"
            log.warning("%s is compressed and Fortran-ordered: loaded whole (%d MB)", where,
                        self._mm.nbytes >> 20)
        else:
            self._zip, self._info = zf, info
            self._fp = zf.open(info)
            _read_npy_header(self._fp, where)
            self.access = "stream"

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` rows, as a float32 copy."""
        a, b = self._pos, self._pos + count
        if b > self.n:
            raise MigrationError(f"{self.path}: asked for rows {a}..{b - 1}, it holds {self.n}", path=self.path)
        self._pos = b
        if self._mm is not None:
            return to_f32(self._mm[a:b])
        return to_f32(self._read_stream(self._fp, count))

    def _read_stream(self, fp, count: int) -> np.ndarray:
        nbytes = count * self.dim * self.dtype.itemsize
        buf = fp.read(nbytes)
        if len(buf) != nbytes:
            raise MigrationError(f"{self.path}[{self.key!r}] is truncated: {len(buf)} of {nbytes} bytes",
                                 path=self.path)
        return np.frombuffer(buf, dtype=self.dtype).reshape(count, self.dim)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at sorted indices ``rows``, float32 (a stream is decompressed once more for them)."""
        if self._mm is not None:
            return to_f32(self._mm[rows])
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        step = 16384
        with self._zip.open(self._info) as fp:
            _read_npy_header(fp, self.path)
            for a in range(0, self.n, step):
                m = min(step, self.n - a)
                block = self._read_stream(fp, m)
                sel = (rows >= a) & (rows < a + m)
                if sel.any():
                    out[sel] = to_f32(block[rows[sel] - a])
        return out

    def skip(self, count: int) -> None:
        """Move past the next ``count`` rows (a stream is read past, a mapping is not read)."""
        if self._mm is not None:
            if self._pos + count > self.n:
                raise MigrationError(f"{self.path}: cannot skip {count} rows from row {self._pos}, it holds {self.n}",
                                     path=self.path)
            self._pos += count
            return
        done = 0
        while done < count:
            step = min(65536, count - done)
            self.read(step)
            done += step

    def close(self) -> None:
        if self._fp is not None:
            self._fp.close()
        if self._zip is not None:
            self._zip.close()
        self._mm = None


def to_f32(a: np.ndarray) -> np.ndarray:
    """``a`` as a float32 copy; values beyond the float32 range become infinite (and are rejected later)."""
    # values beyond the float32 range become inf here and are rejected as non-finite
    with np.errstate(over="ignore"):
        return np.array(a, dtype=np.float32)


def _read_npy_header(fp, where: str):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            return fmt.read_array_header_1_0(fp)
        if version == (2, 0):
            return fmt.read_array_header_2_0(fp)
    except ValueError as e:
        raise MigrationError(f"{where}: not a .npy array: {e}") from e
    raise MigrationError(f"{where}: .npy format version {version} is not supported for float arrays")


def _member_data_start(path: str, info: zipfile.ZipInfo) -> int:
    """Offset of a member's data in the archive: after its local header, whose name and extra
    field lengths may differ from the central directory's (zip64 extras)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    sig, *_, name_len, extra_len = struct.unpack("<4s5H3L2H", header)
    if sig != b"PK\x03\x04":
        raise MigrationError(f"{path}: bad zip local header for {info.filename}", path=path)
    return info.header_offset + 30 + name_len + extra_len
