"""On-disk layout of a store: generations, manifest, checksums, atomic publication, lock.

A store is a directory::

    store/
      CURRENT              name of the published generation ("gen-000007"), replaced atomically
      gen-000006/          its parent, kept for rollback()
      gen-000007/
        manifest.json      format version, config, counts, size and CRC-32 of every file, the
                           parent generation and the id of the log it absorbed (see lineage.py)
        vectors.i8         int8 rerank vectors, raw (rows x dim): memory-mapped on open
        vectors.crc.npz    CRC-32 of each block of 64 rows (readers check a block when first read)
        content.bin        the content arena's records, raw: memory-mapped on open
        content.npz        the arena's offsets, record CRC-32s, dictionaries and counters
        metadata.npz       timestamp, importance, flags columns
        tags.npz           tag vocabulary and per-memory tag lists (bitmaps rebuilt on load)
        deleted.roaring    tombstones (roaring bitmap, portable serialisation)
        encoder.npz        the encoder's scales and projection
        ann.faiss          the IVF-PQ index (FAISS's own writer), when trained
        idmap.npz          external ids (optional: IndexConfig.external_ids)
        docmeta.npz        free metadata and declared fields (optional: written once used)
        tagdrift.npz       per-tag drift references (optional: without it, no reference yet)
        trials.npz         the last trials' reports, JSON bytes (optional)
        sparse.indices/.values, sparse.npz   sparse vectors (CSR arena), when any was added
        text.indices/.values, text.npz       the BM25 term counts and vocabulary (text_index)
        stage.npz, namespaces.npz, validity.npz, links.npz, content_hash.npz   (optional: the
                           candidate stage, namespaces, validity windows, links, content hashes)
      wal.log              operations since the published generation (see wal.py)
      wal.log.next         a rollback's new log, before it replaces wal.log (see lineage.py)
      LOCK                 the one writer's flock (the file holds its pid, for messages)

A checkpoint writes ``gen-N.tmp/``, fsyncs every file and the directory, renames it to
``gen-N``, then replaces ``CURRENT`` (write, fsync, rename, fsync the store directory): a crash
at any point leaves either the old or the new generation published, never a mix. No pickle
anywhere: ``np.load(..., allow_pickle=False)``, FAISS's writer, raw binary and JSON.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import shutil
import stat
import zlib

import numpy as np

from ..util.bounds import MAX_DIM, MAX_ROWS
from ..util.errors import CorruptStoreError, StoreError

log = logging.getLogger(__name__)

__all__ = ["STORE_FORMAT", "FORMAT_VERSION", "StoreError", "CorruptStoreError", "StoreLockedError", "Generation",
           "publish", "current_generation", "previous_generation", "read_manifest", "check_files",
           "acquire_lock", "release_lock", "StoreLock", "lock_holder", "check_manifest",
           "copy_verified", "verify_crc", "generations", "MAX_DIM", "MAX_ROWS", "fsync_dir",
           "crc32_file", "generation_number", "load_npz", "GENERATION_FILES", "REQUIRED", "MAPPED", "MANIFEST_CRC",
           "manifest_crc", "CURRENT", "LOCK", "WAL", "VECTOR_CRCS", "VECTORS_WORK", "PROGRESS", "MANIFEST",
           "WAL_NEXT", "generation_name", "parent_number", "ancestry", "check_manifest_crc"]

STORE_FORMAT = "lukhas_gpu-store"
FORMAT_VERSION = 1
# -- the store directory's files (this module is the one place that names them) ------------------
CURRENT = "CURRENT"
LOCK = "LOCK"
WAL = "wal.log"
#: A rollback's new, empty log, written in full before it replaces ``WAL`` (its commit point).
WAL_NEXT = "wal.log.next"
#: The writer's working copy of the vectors (appends never touch a published generation).
VECTORS_WORK = "vectors.work"
#: The CLI's resumable-ingest state.
PROGRESS = "ingest-progress.json"
# -- a generation's files ------------------------------------------------------------------------
MANIFEST = "manifest.json"
#: The manifest's field holding the CRC-32 of its other fields.
MANIFEST_CRC = "manifest_crc32"
VECTORS = "vectors.i8"
CONTENT = "content.bin"
CONTENT_INDEX = "content.npz"
METADATA = "metadata.npz"
TAGS = "tags.npz"
TOMBSTONES = "deleted.roaring"
ENCODER = "encoder.npz"
CALIBRATION = "calibration.npz"
PROBE = "probe.npz"
DRIFT = "drift.npz"
ANN = "ann.faiss"
TUNING = "tuning.npz"
IDMAP = "idmap.npz"
DOCMETA = "docmeta.npz"
#: CRC-32 of each block of int8 rows, checked by readers as blocks are first read (optional:
#: older generations have none; their readers check the whole vectors file at first use).
VECTOR_CRCS = "vectors.crc.npz"
#: Sparse vectors and the BM25 text index (optional: stores without them still open).
SPARSE, SPARSE_INDICES, SPARSE_VALUES = "sparse.npz", "sparse.indices", "sparse.values"
TEXT, TEXT_INDICES, TEXT_VALUES = "text.npz", "text.indices", "text.values"
#: Optional too (a generation without one: no per-tag drift reference, no trial report, no candidate
#: stage, every memory in the default namespace and always valid, no link, content hashes recomputed).
TAG_DRIFT, TRIALS, STAGE = "tagdrift.npz", "trials.npz", "stage.npz"
NAMESPACES, VALIDITY, LINKS, CONTENT_HASHES = "namespaces.npz", "validity.npz", "links.npz", "content_hash.npz"
#: Every file a generation may hold, and the component whose bytes it stores (``stats()`` disk).
GENERATION_FILES = {VECTORS: "vectors_int8", ANN: "ann", CONTENT: "content_records",
                    CONTENT_INDEX: "content_index", METADATA: "metadata", TAGS: "tags",
                    TOMBSTONES: "tombstones", ENCODER: "encoder", CALIBRATION: "calibration",
                    PROBE: "probe", DRIFT: "drift_monitor", TUNING: "tuning", MANIFEST: "manifest",
                    STAGE: "candidate_stage", TAG_DRIFT: "tag_drift", TRIALS: "trials",
                    IDMAP: "external_ids", DOCMETA: "doc_metadata", VECTOR_CRCS: "vectors_crc",
                    SPARSE: "sparse_index", SPARSE_INDICES: "sparse_indices", SPARSE_VALUES: "sparse_values",
                    TEXT: "text_index", TEXT_INDICES: "text_indices", TEXT_VALUES: "text_values",
                    NAMESPACES: "namespaces", VALIDITY: "validity",
                    LINKS: "links", CONTENT_HASHES: "content_hashes"}
#: Files every generation has (the others depend on the index's phase).
REQUIRED = (VECTORS, CONTENT, CONTENT_INDEX, METADATA, TAGS, TOMBSTONES, ENCODER)
#: Files memory-mapped on open: their sizes are checked on open, their checksums by verify().
MAPPED = (VECTORS, CONTENT)
_CHUNK = 1 << 22
#: Bounds a manifest is held to before anything is allocated from it (``MAX_DIM`` and ``MAX_ROWS``
#: are the caller's bounds too, owned by ``util.bounds``).
MAX_FILE_BYTES = 1 << 48


class StoreLockedError(StoreError):
    """Another process holds the store open for writing."""


def fsync_dir(path, *, quiet: bool = False) -> None:
    """Flush a directory entry change (create / rename). ``quiet``: a no-op where directories
    cannot be opened or fsynced (the log's choice; a generation's publish wants the error)."""
    try:
        fd = os.open(str(path) or ".", os.O_RDONLY)
    except OSError:
        if quiet:  # pragma: no cover - e.g. Windows
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not quiet:  # pragma: no cover - some filesystems refuse fsync on directories
            raise
    finally:
        os.close(fd)


def crc32_file(path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _gen_name(n: int) -> str:
    return f"gen-{n:06d}"


generation_name = _gen_name


class Generation:
    """A generation directory being written: files are added, then :meth:`publish` makes it live."""

    def __init__(self, root, number: int):
        self.root = pathlib.Path(root)
        self.number = number
        self.final = self.root / _gen_name(number)
        self.tmp = self.root / (_gen_name(number) + ".tmp")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.files: dict[str, dict] = {}

    def path(self, name: str) -> pathlib.Path:
        return self.tmp / name

    def added(self, name: str, crc: int | None = None) -> None:
        """Record a file written into the generation (size and CRC-32), after fsyncing it.

        With ``crc`` (computed from the bytes in memory as they were written) the file is read
        back and must match: a generation never lists bytes that differ from what was meant.
        """
        p = self.tmp / name
        with _naming(p):
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
            on_disk = crc32_file(p)
        if crc is not None:
            verify_crc(p, on_disk, crc)
        self.files[name] = {"bytes": p.stat().st_size, "crc32": on_disk}

    def save_npz(self, name: str, arrays: dict) -> None:
        with _naming(self.tmp / name), open(self.tmp / name, "wb") as f:
            np.savez(f, **arrays)
        self.added(name)

    def save_raw(self, name: str, array: np.ndarray) -> None:
        crc = 0
        with _naming(self.tmp / name), open(self.tmp / name, "wb") as f:
            a = np.ascontiguousarray(array)
            step = max(1, _CHUNK // max(a.itemsize * (a.shape[1] if a.ndim > 1 else 1), 1))
            for i in range(0, len(a), step):
                chunk = a[i: i + step].tobytes()
                crc = zlib.crc32(chunk, crc)
                f.write(chunk)
        self.added(name, crc)

    def save_bytes(self, name: str, data: bytes) -> None:
        with _naming(self.tmp / name), open(self.tmp / name, "wb") as f:
            f.write(data)
        self.added(name, zlib.crc32(data))

    def discard(self) -> None:
        """Remove the unpublished directory (after a failed write: frees its space)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def publish(self, manifest: dict) -> pathlib.Path:
        manifest = {**manifest, "format": STORE_FORMAT, "format_version": FORMAT_VERSION,
                    "generation": self.number, "files": self.files}
        manifest[MANIFEST_CRC] = manifest_crc(manifest)
        with _naming(self.tmp / MANIFEST), open(self.tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.tmp)
        if self.final.exists():  # a leftover of a crashed publish that never became CURRENT
            shutil.rmtree(self.final)
        os.rename(self.tmp, self.final)
        fsync_dir(self.root)
        publish(self.root, self.final.name)
        return self.final


class _naming:
    """Re-raise an OSError (ENOSPC, EIO...) or a zip writer's error with the file's name in it."""

    def __init__(self, path):
        self.path = str(path)

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, f"{e.strerror or e} (writing {self.path})", self.path) from e
        return False


def publish(root, gen_name: str) -> None:
    """Make ``gen_name`` the published generation (atomic replace of CURRENT)."""
    root = pathlib.Path(root)
    tmp = root / (CURRENT + ".tmp")
    with _naming(tmp), open(tmp, "w") as f:
        f.write(gen_name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / CURRENT)
    fsync_dir(root)


def generations(root) -> list[int]:
    """The numbers of the store's complete generation directories, oldest first."""
    return _generations(pathlib.Path(root))


def _generations(root: pathlib.Path) -> list[int]:
    out = []
    for p in root.glob("gen-*"):
        if p.is_dir() and not p.name.endswith(".tmp"):
            try:
                out.append(int(p.name[4:]))
            except ValueError:
                pass
    return sorted(out)


def current_generation(root) -> pathlib.Path:
    root = pathlib.Path(root)
    cur = root / CURRENT
    if not cur.exists():
        raise StoreError(f"{root} is not a lukhas_gpu store (no {CURRENT} file); create one with MemoryIndex.create")
    try:
        name = cur.read_text(encoding="ascii").strip()
    except (UnicodeDecodeError, OSError) as e:
        raise CorruptStoreError(cur, f"unreadable ({type(e).__name__}); the generations are gen-* beside it") from None
    if not re.fullmatch(r"gen-\d{6,}", name):
        raise CorruptStoreError(cur, f"does not name a generation (holds {name[:40]!r})")
    path = root / name
    if not path.is_dir():
        raise CorruptStoreError(cur, f"names generation {name!r}, which does not exist")
    return path


def previous_generation(root) -> pathlib.Path | None:
    """The parent of the published generation (the rollback target), if it is still on disk."""
    root = pathlib.Path(root)
    chain = ancestry(root, generation_number(current_generation(root)), 2)
    return root / _gen_name(chain[1]) if len(chain) > 1 else None


def parent_number(root, number: int) -> int | None:
    """The generation that generation ``number`` was checkpointed from: its manifest's ``parent``
    (CRC-checked; None for a store's first). A manifest older than the field: the largest
    number on disk below it. Raises CorruptStoreError/StoreError for an unreadable manifest."""
    gen_dir = pathlib.Path(root) / _gen_name(number)
    manifest = read_manifest(gen_dir)
    check_manifest_crc(gen_dir, manifest)
    if "parent" in manifest:
        return manifest["parent"]
    older = [g for g in _generations(pathlib.Path(root)) if g < number]
    return older[-1] if older else None


def ancestry(root, number: int, depth: int | None = None) -> list[int]:
    """``number`` and its ancestors on disk, newest first (at most ``depth``); it stops at an
    ancestor that is gone (pruned) or whose manifest is unreadable."""
    root, out = pathlib.Path(root), [number]
    while depth is None or len(out) < depth:
        try:
            parent = parent_number(root, out[-1])
        except StoreError:
            break
        if parent is None or parent in out or not (root / _gen_name(parent)).is_dir():
            break
        out.append(parent)
    return out


def next_generation_number(root) -> int:
    gens = _generations(pathlib.Path(root))
    return (gens[-1] + 1) if gens else 1


def prune(root, keep: int = 2) -> None:
    """Keep the published generation and its ancestors, ``keep`` in all; remove the others --
    older ancestors and abandoned branches (what a rollback left) -- and stale ``.tmp``
    directories. The newest number is always kept, so a number is never used twice."""
    root = pathlib.Path(root)
    cur = generation_number(current_generation(root))
    gens = _generations(root)
    chain = ancestry(root, cur, keep)
    keep_set = set(chain) | {gens[-1]}
    if len(chain) < keep:
        try:
            parent_number(root, chain[-1])
        except StoreError:  # an unreadable manifest ended the chain: keep what the old rule kept too
            keep_set |= set(gens[-keep:])
    for g in gens:
        if g not in keep_set:
            shutil.rmtree(root / _gen_name(g), ignore_errors=True)
    for p in root.glob("gen-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def generation_number(gen_dir) -> int:
    """The number of a generation directory (``gen-000007`` -> 7)."""
    return int(pathlib.Path(gen_dir).name[4:])


def read_manifest(gen_dir) -> dict:
    path = pathlib.Path(gen_dir) / MANIFEST
    if path.is_symlink() or pathlib.Path(gen_dir).is_symlink():  # never read outside the store
        raise CorruptStoreError(path, "is a link; a generation's files are plain files inside the store")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptStoreError(path, "missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptStoreError(path, f"not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        raise CorruptStoreError(path, f"not a {STORE_FORMAT} manifest")

    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        hint = ("no upgrade path from it exists: re-import the source data with lukhas_gpu.migrate"
                if isinstance(version, int) and version < FORMAT_VERSION
                else "it was written by a newer lukhas_gpu; upgrade the package")
        raise StoreError(f"{path}: store format version {version}, this lukhas_gpu reads {FORMAT_VERSION}: {hint}")
    check_manifest(path, manifest)
    return manifest


def manifest_crc(manifest: dict) -> int:
    """CRC-32 of a manifest's content (canonical JSON, its own CRC field left out): a damaged
    manifest is caught wherever the damage is, a value (a size, a date) as much as the syntax."""
    return zlib.crc32(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8"))


def check_manifest(path, manifest: dict) -> None:
    """The manifest's numbers within the format's bounds, before anything is sized from them:
    ``dim`` in 1..MAX_DIM, ``rows`` in 0..MAX_ROWS, ``count`` in 0..rows, the vectors file of
    exactly ``rows * dim`` bytes, every file size in 0..MAX_FILE_BYTES."""
    def bounded(key, lo, hi):
        v = manifest.get(key)
        if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
            raise CorruptStoreError(path, f"{key} = {v!r} is outside the format's bounds {lo}..{hi}")
        return v

    dim = bounded("dim", 1, MAX_DIM)
    rows = bounded("rows", 0, MAX_ROWS)
    bounded("count", 0, rows)
    if manifest.get("parent") is not None:  # the lineage (older manifests have neither field)
        gen = manifest.get("generation")
        bounded("parent", 0, gen - 1 if isinstance(gen, int) and not isinstance(gen, bool) else 2**63)
    if manifest.get("log_id") is not None:
        bounded("log_id", 1, 2**64 - 1)
    if manifest.get("writes") is not None:  # the write count it absorbed (index/writecount.py)
        bounded("writes", 0, 2**63 - 1)
    if not isinstance(manifest.get("config"), dict):
        raise CorruptStoreError(path, "has no config table")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptStoreError(path, "has no file table")
    for name, meta in files.items():
        if not (isinstance(meta, dict) and all(isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool)
                                               for k in ("bytes", "crc32"))
                and 0 <= meta["bytes"] <= MAX_FILE_BYTES and 0 <= meta["crc32"] < 1 << 32):
            raise CorruptStoreError(path, f"has a malformed or out-of-bounds entry for {str(name)[:60]!r}")
    vec = files.get(VECTORS)
    if isinstance(vec, dict) and vec["bytes"] != rows * dim:
        raise CorruptStoreError(path, f"lists {VECTORS} of {vec['bytes']} bytes, but rows x dim = {rows} x {dim}")


def check_files(gen_dir, manifest: dict, *, checksums: bool | str = "small") -> None:
    """Check every file of the manifest: present, of its size, and (``checksums``) its CRC-32.

    ``checksums="small"`` checks the CRC of every file except the memory-mapped bulk files
    (``MAPPED``), whose sizes are still checked: fast enough for ``open``; ``True`` checks all
    (``verify``). FAISS is never handed a file whose CRC has not been checked.
    """
    gen_dir = pathlib.Path(gen_dir)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptStoreError(gen_dir / MANIFEST, "has no file table")
    for name in REQUIRED:
        if name not in files:
            raise CorruptStoreError(gen_dir / MANIFEST, f"does not list {name}, which every generation has")
    if gen_dir.is_symlink():
        raise CorruptStoreError(gen_dir, "is a link; a generation is a directory inside the store")
    for name, meta in files.items():
        if name not in GENERATION_FILES or name == MANIFEST:  # plain names of the format, never a path
            raise CorruptStoreError(gen_dir / MANIFEST, f"lists {name!r}, which is not a file of this format")
        if not (isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and isinstance(meta.get("crc32"), int)
                and meta["bytes"] >= 0):
            raise CorruptStoreError(gen_dir / MANIFEST, f"has a malformed entry for {name}")
        p = gen_dir / name
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise CorruptStoreError(p, "missing") from None
        if not stat.S_ISREG(st.st_mode):  # a link could point outside the store
            raise CorruptStoreError(p, "is not a regular file (a link or a directory); refused")
        size = st.st_size
        if size != meta["bytes"]:
            raise CorruptStoreError(p, f"{size} bytes, the manifest says {meta['bytes']} (truncated or altered)")
        if checksums is True or (checksums == "small" and name not in MAPPED):
            verify_crc(p, crc32_file(p), meta["crc32"])
    check_manifest_crc(gen_dir, manifest)  # last: the checks above name a malformed entry


def check_manifest_crc(gen_dir, manifest: dict) -> None:
    """The manifest's own CRC-32 (older manifests have none)."""
    if MANIFEST_CRC in manifest:
        body = {k: v for k, v in manifest.items() if k != MANIFEST_CRC}
        if manifest[MANIFEST_CRC] != manifest_crc(body):
            raise CorruptStoreError(pathlib.Path(gen_dir) / MANIFEST, f"CRC-32 {manifest_crc(body):08x} of its "
                                    f"content, it says {manifest[MANIFEST_CRC]!r} (corrupted)")


def verify_crc(path, crc: int, expected: int) -> None:
    if crc != expected:
        raise CorruptStoreError(path, f"CRC-32 {crc:08x}, the manifest says {expected:08x} (corrupted)")


def copy_verified(src, dst, expected_crc: int) -> None:
    """Copy ``src`` to ``dst``, computing the CRC-32 of the bytes as they are copied; raises
    :class:`CorruptStoreError` naming ``src`` (and removes ``dst``) if it is not ``expected_crc``,
    so a damaged file is never carried forward. Errors writing ``dst`` name it."""
    crc = 0
    try:
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            while chunk := fi.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
                try:
                    fo.write(chunk)
                except OSError as e:
                    raise OSError(e.errno, f"{e.strerror} (writing {dst}, a copy of {src})", str(dst)) from e
        verify_crc(src, crc, expected_crc)
    except BaseException:
        pathlib.Path(dst).unlink(missing_ok=True)
        raise


def load_npz(gen_dir, name: str) -> dict:
    p = pathlib.Path(gen_dir) / name
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / format errors: name the file
        raise CorruptStoreError(p, f"unreadable ({type(e).__name__}: {e})") from None


# -- the writer's lock ---------------------------------------------------------------------------
class StoreLock:
    """The writer's lock on a store: an exclusive ``fcntl.flock`` on its ``LOCK`` file, the one
    source of truth. The kernel drops it when the descriptor is closed -- by :meth:`release`, by
    the garbage collector, or by the process dying -- so a dead writer's lock is simply free and
    there is no pid-liveness race. The pid written into the file only names the holder in the
    message a second writer gets."""

    def __init__(self, root, fd: int):
        self.root, self.fd = pathlib.Path(root), fd

    @property
    def held(self) -> bool:
        return self.fd >= 0

    def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            key = _lock_key(self.root)
            if _held.get(key) is not None and _held[key]() in (self, None):
                del _held[key]
            os.close(fd)  # releases the flock

    def __del__(self):  # an index dropped without close(): its lock goes with it
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


_held: dict = {}  # lock key -> weak reference to the StoreLock this process holds


def _lock_key(root) -> str:
    return os.path.realpath(root)


def _holds(key: str) -> bool:
    ref = _held.get(key)
    return ref is not None and ref() is not None and ref().held


def lock_holder(root) -> int | None:
    """The pid written in the store's LOCK file (the holder, if the lock is held), or None."""
    try:
        return int((pathlib.Path(root) / LOCK).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def acquire_lock(root) -> StoreLock:
    """Take the store's writer lock (``flock`` on ``LOCK``; see :class:`StoreLock`).

    Raises
    ------
    StoreLockedError
        Another process (or another open index of this one) holds it; the message names the pid.
    """
    import fcntl
    import weakref

    root = pathlib.Path(root)
    path = root / LOCK
    key = _lock_key(root)
    if _holds(key):
        import gc

        gc.collect()  # an index dropped without close() still holds it until collected
    if _holds(key):
        raise StoreLockedError(f"{root} is already open for writing in this process (pid {os.getpid()}); "
                               f"close() that index first, or open with mode='r' to read beside it")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = lock_holder(root)
            raise StoreLockedError(f"{root} is open for writing by process {owner or '?'} (lock file {path}); "
                                   "open it with mode='r' to read beside it") from None
        previous = os.pread(fd, 32, 0).strip()
        if previous and previous != str(os.getpid()).encode():
            log.info("took the lock of %s, last held by process %s (gone)", root, previous.decode(errors="replace"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    lock = StoreLock(root, fd)
    _held[key] = weakref.ref(lock)
    return lock


def release_lock(root) -> None:
    """Release this process's writer lock on ``root`` (nothing if it holds none)."""
    ref = _held.pop(_lock_key(root), None)
    lock = ref() if ref is not None else None
    if lock is not None:
        lock.release()
