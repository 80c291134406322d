"""Writing a generation from the components' arrays and reading them back (see :mod:`.layout`).

Persistence knows files, not components: the index hands :func:`write_generation` what each
component's ``to_arrays()`` gave (``npz`` members, ``raw`` arrays, ``blobs`` of bytes, and
``writers`` for FAISS's own format), and :class:`GenerationReader` gives back the same, checked
against the manifest first. No pickle anywhere.
"""
from __future__ import annotations

import datetime as _dt
import logging
import pathlib

import numpy as np

from . import layout

log = logging.getLogger(__name__)

__all__ = ["write_generation", "GenerationReader"]


def write_generation(root, *, raw: dict, npz: dict, blobs: dict, writers: dict, manifest: dict,
                     keep: int = 2) -> pathlib.Path:
    """Write a new generation of the store at ``root`` and publish it atomically.

    Parameters
    ----------
    raw : {file name: ndarray}
        Written as raw bytes (memory-mapped on open).
    npz : {file name: {member: ndarray}}
    blobs : {file name: bytes}
    writers : {file name: callable(path)}
        Formats written by their owner's own writer (FAISS).
    manifest : dict
        Fields recorded beside the file table (dim, rows, count, config, ...).
    keep : int
        Generations kept after publishing (the previous one stays for ``rollback``).
    """
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    gen = layout.Generation(root, layout.next_generation_number(root))
    for name in [*raw, *npz, *blobs, *writers]:
        if name not in layout.GENERATION_FILES:
            raise ValueError(f"{name!r} is not a file of the store format")
    try:
        _check_space(root, raw, blobs)
        for name, a in raw.items():
            gen.save_raw(name, a)
        for name, arrays in npz.items():
            gen.save_npz(name, arrays)
        for name, data in blobs.items():
            gen.save_bytes(name, data)
        for name, write in writers.items():
            try:
                write(str(gen.path(name)))
            except RuntimeError as e:  # FAISS reports a failed write (ENOSPC) as a RuntimeError
                raise OSError(f"could not write {gen.path(name)}: {e}") from e
            gen.added(name)
        manifest = {**manifest, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        path = gen.publish(manifest)
    except BaseException:
        # Nothing was published (CURRENT still names the last good generation): free the space.
        gen.discard()  # the unpublished .tmp directory only
        raise
    # Only now, with the new generation published (every file read back against the CRC of the
    # bytes meant), may older ones go; the previous one stays for rollback.
    layout.prune(root, keep=keep)
    return path


def _check_space(root: pathlib.Path, raw: dict, blobs: dict) -> None:
    """Say up front when the bulk of a generation (its raw arrays and blobs) cannot fit."""
    import shutil

    need = sum(int(np.asarray(a).nbytes) for a in raw.values()) + sum(len(b) for b in blobs.values())
    free = shutil.disk_usage(root).free
    if need > free:
        raise OSError(28, f"a checkpoint of {root} needs at least {need:,} bytes, {free:,} are free", str(root))


class GenerationReader:
    """A published generation, its manifest read and its files checked (sizes always; CRC-32 of
    every file with ``checksums=True``, of every file but the memory-mapped ones with
    ``"small"``)."""

    def __init__(self, gen_dir, *, checksums: bool | str = "small"):
        self.path = pathlib.Path(gen_dir)
        self.manifest = layout.read_manifest(self.path)
        layout.check_files(self.path, self.manifest, checksums=checksums)
        self.files = self.manifest["files"]

    def has(self, name: str) -> bool:
        return name in self.files

    def file(self, name: str) -> pathlib.Path:
        if name not in self.files:
            raise layout.CorruptStoreError(self.path / layout.MANIFEST, f"does not list {name}")
        return self.path / name

    def npz(self, name: str) -> dict:
        return layout.load_npz(self.path, name) if self.has(name) else {}

    def bytes(self, name: str) -> bytes:
        return self.file(name).read_bytes()

    def raw(self, name: str, dtype=np.uint8) -> np.ndarray:
        """A read-only memory map of a raw file (an empty array for an empty file)."""
        p = self.file(name)
        return np.memmap(p, dtype=dtype, mode="r") if p.stat().st_size else np.zeros(0, dtype=dtype)
