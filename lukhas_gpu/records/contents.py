"""``ContentArena``: the text / bytes content of every memory, zstd-compressed record by record.

No Python object exists per stored content. Everything lives in two numpy columns:

* ``buffer`` -- one growable ``uint8`` array holding the records back to back;
* ``starts`` -- one ``uint64`` per row, the offset of that row's record (8 B per row; a
  record's length is read from the record itself);
* ``crcs`` -- one ``uint32`` per row, the CRC-32 of that row's record bytes, checked by
  :meth:`ContentArena.get` before decoding: a flipped bit in a memory-mapped ``content.bin`` is a
  :class:`~lukhas_gpu.util.errors.CorruptStoreError` naming the file and the rows, never an
  altered text. An arena loaded from arrays without them (a generation written before them) reads
  unchecked and computes them at its next :meth:`~ContentArena.to_arrays` (the next checkpoint).

The record format, the zstd compression of each record and the dictionary schedule are
:mod:`lukhas_gpu.records.codec`'s; the content rules (kinds, size limit) are
:mod:`lukhas_gpu.records.validate`'s. The arena owns the rows: appends, replaces (the old
records become garbage until :meth:`ContentArena.compact`), reads and persistence.
"""
from __future__ import annotations

import logging
import math
import os
import zlib

import numpy as np
import zstandard

from ..util.errors import CorruptStoreError
from ..util.memory import NPZ_MEMBER_BYTES
from .codec import (
    BYTES_OBJECT_HEADER,
    MIN_DICT_SIZE,
    MIN_TRAIN_SAMPLES,
    NONE_RECORD,
    RECENT_BYTES,
    RECENT_ITEMS,
    ContentCodec,
    extents,
    generation_of,
    is_zstd,
    raw_sizes,
)
from .columns import GrowableArray
from .crcs import blob_crcs, record_crcs
from .validate import DEFAULT_MAX_CONTENT_BYTES, KIND_BYTES, KIND_NONE, KIND_STR, ValidatedContents, validate_contents

__all__ = ["ContentArena", "ValidatedContents", "KIND_NONE", "KIND_STR", "KIND_BYTES", "planned_bytes",
           "ZSTD_CONTEXT_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_LEVEL = 3
DEFAULT_DICT_SIZE = 16384
DEFAULT_TRAIN_AFTER = 2048

_CONTENTS_FORMAT_VERSION = 1
_SETTINGS = ("level", "max_content_bytes", "dict_size", "train_after")
_SCALARS = _SETTINGS + ("raw_bytes", "stored_bytes", "garbage_bytes", "n_nonempty", "nonempty_bytes",
                        "last_train_at")
#: Scalars that are the codec's counters (the others are the arena's own).
_CODEC_SCALARS = ("n_nonempty", "nonempty_bytes", "last_train_at")


def _concat(chunks: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 data, int64 offsets of length len(chunks) + 1)`` for a list of byte strings."""
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    if chunks:
        offsets[1:] = np.cumsum([len(c) for c in chunks])
    return np.frombuffer(b"".join(chunks), dtype=np.uint8).copy(), offsets


def _split(data: np.ndarray, offsets: np.ndarray, name: str) -> list[bytes]:
    offsets = np.asarray(offsets, dtype=np.int64)
    data = np.asarray(data, dtype=np.uint8)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(data) \
            or np.any(np.diff(offsets) < 0):
        raise ValueError(f"{name}_offsets must rise from 0 to len({name}) = {len(data)}, "
                         f"got {offsets[:8].tolist()}{' ...' if len(offsets) > 8 else ''}")
    raw = data.tobytes()
    return [raw[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


class ContentArena:
    """One content (``str``, ``bytes`` or ``None``) per row, each zstd-compressed on its own.

    Rows are dense ints ``0 .. len - 1`` in append order. See the module docstring for the
    record layout and the dictionary schedule.

    Parameters
    ----------
    level : int, default 3
        zstd level. Higher levels gain little on short records and cost append time.
    max_content_bytes : int, default 65536
        Largest content accepted (encoded bytes); larger ones are rejected by :meth:`validate`.
    dict_size : int, default 16384
        Target dictionary size. Each training caps it at a quarter of the sample bytes (and
        raises it to at least 1 KiB): a dictionary larger than that mostly memorises the sample.
    train_after : int, default 2048
        The first dictionary is trained after this many non-empty contents, or after 64 KiB of
        them, whichever comes first; at least 64, which zstd needs to train anything useful.
    """

    def __init__(self, *, level: int = DEFAULT_LEVEL, max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
                 dict_size: int = DEFAULT_DICT_SIZE, train_after: int = DEFAULT_TRAIN_AFTER):
        def check_int(name, value, lo, hi=None):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < lo or (hi is not None and value > hi):
                bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be {bound}, got {value}")
            return int(value)

        level = check_int("level", level, 1, zstandard.MAX_COMPRESSION_LEVEL)
        self.max_content_bytes = check_int("max_content_bytes", max_content_bytes, 0)
        dict_size = check_int("dict_size", dict_size, MIN_DICT_SIZE)
        train_after = check_int("train_after", train_after, MIN_TRAIN_SAMPLES)

        self._buf = GrowableArray(np.uint8)
        self._starts = GrowableArray(np.uint64)
        self._crcs: GrowableArray | None = GrowableArray(np.uint32)  # None: not known (an older arena)
        #: the file the records are read from, named by a CRC mismatch (set by the store's loader)
        self.source = "<memory> content records"
        self._codec = ContentCodec(level=level, dict_size=dict_size, train_after=train_after)
        self._raw_bytes = 0
        self._stored_bytes = 0
        self._garbage_bytes = 0

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._starts)

    @property
    def level(self) -> int:
        """zstd compression level."""
        return self._codec.level

    @property
    def dict_size(self) -> int:
        """Target dictionary size."""
        return self._codec.dict_size

    @property
    def train_after(self) -> int:
        """Non-empty contents before the first dictionary training."""
        return self._codec.train_after

    @property
    def generation(self) -> int:
        """The dictionary generation new records use (0 until a dictionary is trained)."""
        return self._codec.generation

    @property
    def raw_bytes(self) -> int:
        """Total encoded size (UTF-8 / bytes) of the live contents, before compression."""
        return self._raw_bytes

    @property
    def stored_bytes(self) -> int:
        """Total size of the live records, varint and header included."""
        return self._stored_bytes

    @property
    def garbage_bytes(self) -> int:
        """Buffer bytes held by replaced records; :meth:`compact` gives them back."""
        return self._garbage_bytes

    def nbytes(self) -> dict:
        """Bytes held, by part.

        Returns
        -------
        dict
            ``records`` (the used buffer, garbage included), ``starts`` (8 per row), ``crcs``
            (4 per row),
            ``dictionaries`` (all generations), ``samples`` (recent contents kept for
            retraining, bounded) and ``total``.
        """
        out = {"records": len(self._buf), "starts": self._starts.nbytes(), "crcs": self._crc_bytes(),
               "dictionaries": self._codec.dictionary_bytes(), "samples": self._codec.samples_bytes}
        out["total"] = sum(out.values())
        return out

    def _crc_bytes(self) -> int:
        return self._crcs.nbytes() if self._crcs is not None else 0

    def memory_usage(self) -> dict:
        """Where the arena's bytes live (see :mod:`lukhas_gpu.util.memory` for the contract).

        ``content_records`` (the used buffer, garbage included: ``mapped`` when the buffer is a
        store's memory-mapped file, else ``anon`` with its unwritten capacity ``reserved``),
        ``content_offsets`` (the offsets and the CRC-32 of every record), ``content_dictionaries``,
        ``content_samples`` (the recent contents kept for retraining, with their ``bytes`` headers) and
        ``content_zstd_contexts``.
        """
        anon: dict[str, int] = {}
        out = {"anon": anon, "mapped": {}, "reserved": {}}
        records, mapped = len(self._buf), self._buf.mapped_bytes()
        if mapped:
            out["mapped"]["content_records"] = mapped
        if records > mapped:
            anon["content_records"] = records - mapped
        if not self._buf.is_mapped:
            out["reserved"]["content_records"] = self._buf.slack_bytes()
        anon["content_offsets"] = self._starts.nbytes() + self._crc_bytes()  # with the CRCs: 12 B a row
        out["reserved"]["content_offsets"] = self._starts.slack_bytes() + (
            self._crcs.slack_bytes() if self._crcs is not None else 0)
        codec = self._codec
        anon["content_dictionaries"] = codec.dictionary_bytes()
        anon["content_samples"] = codec.samples_bytes + BYTES_OBJECT_HEADER * len(codec.samples)
        ctx = codec.context_bytes()
        if ctx:
            anon["content_zstd_contexts"] = ctx
        return out

    def small_objects(self) -> list:
        """The small Python objects the arena keeps: the recent contents (``bytes``) kept for
        retraining. For the CPython pool estimate of :func:`lukhas_gpu.capacity.accounting.python_pools`."""
        return list(self._codec.samples)

    # -- validation ----------------------------------------------------------------------------
    def validate(self, items) -> ValidatedContents:
        """Check a batch of contents without storing anything, against this arena's
        ``max_content_bytes`` (see :func:`lukhas_gpu.records.validate.validate_contents`)."""
        return validate_contents(items, self.max_content_bytes)

    def _check_rows(self, rows, name: str = "rows") -> np.ndarray:
        a = np.asarray(rows)
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
            raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
        if a.ndim > 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
        a = a.reshape(-1)
        n = len(self)
        bad = (a < 0) | (a >= n)
        if bad.any():
            b = a[bad]
            raise IndexError(f"{name} out of range for {n} rows: {b[:10].tolist()}"
                             f"{' ...' if len(b) > 10 else ''}")
        return a.astype(np.int64)

    # -- writing -------------------------------------------------------------------------------
    def append(self, items) -> tuple[int, int]:
        """Append one content per item.

        Parameters
        ----------
        items : sequence of str, bytes or None, or a :class:`ValidatedContents`

        Returns
        -------
        (start, stop) : tuple of int
            The rows the items got.

        Raises
        ------
        TypeError, ValueError
            As :meth:`validate`; nothing is stored then.
        """
        payloads, kinds = self.validate(items)
        start = len(self)
        m = len(payloads)
        sizes = np.fromiter((-1 if p is None else len(p) for p in payloads), dtype=np.int64, count=m)
        pos = 0
        while pos < m:
            # Split the batch where a (re)training is due so that the rest of it already uses
            # the new dictionary.
            stop = self._codec.next_training(sizes, pos)
            blob, rec_sizes = self._codec.encode(payloads[pos:stop], kinds[pos:stop].tolist())
            base = self._buf.append(np.frombuffer(blob, dtype=np.uint8))[0]
            offsets = np.full(stop - pos, base, dtype=np.int64)
            offsets[1:] += np.cumsum(rec_sizes[:-1])
            self._starts.append(offsets)
            if self._crcs is not None:
                self._crcs.append(blob_crcs(blob, rec_sizes))
            self._stored_bytes += len(blob)
            self._raw_bytes += int(sizes[pos:stop].clip(0).sum())
            self._codec.note_samples(payloads[pos:stop])
            pos = stop
            self._maybe_train()
        return start, start + m

    def replace(self, rows, items) -> None:
        """Give existing rows new contents.

        The new records go to the end of the buffer and the rows are repointed; the old
        records become garbage (:attr:`garbage_bytes`) until :meth:`compact`.

        Parameters
        ----------
        rows : (m,) int array-like
            A row given twice takes its last item.
        items : sequence of str, bytes or None, or a :class:`ValidatedContents`
            One per row.

        Raises
        ------
        IndexError
            A row out of range.
        TypeError, ValueError
            As :meth:`validate`, or ``len(items) != len(rows)``; nothing changes then.
        """
        rows = self._check_rows(rows)
        payloads, kinds = self.validate(items)
        if len(payloads) != len(rows):
            raise ValueError(f"replace got {len(rows)} rows but {len(payloads)} contents")
        if not len(rows):
            return
        _, last = np.unique(rows[::-1], return_index=True)
        keep = np.sort(len(rows) - 1 - last)
        if len(keep) < len(rows):
            rows, kinds = rows[keep], kinds[keep]
            payloads = [payloads[i] for i in keep.tolist()]
        old_starts = self._starts.view()[rows]
        old_off, old_len, old_hdr = self._extents(old_starts)
        old_sizes = old_off + old_len - old_starts.astype(np.int64)
        old_raw = self._raw_sizes(old_off, old_len, old_hdr)
        blob, rec_sizes = self._codec.encode(payloads, kinds.tolist())
        base = self._buf.append(np.frombuffer(blob, dtype=np.uint8))[0]
        offsets = base + np.concatenate(([0], np.cumsum(rec_sizes[:-1])))
        self._starts[rows] = offsets.astype(np.uint64)
        if self._crcs is not None:
            self._crcs[rows] = blob_crcs(blob, rec_sizes)
        freed = int(old_sizes.sum())
        self._garbage_bytes += freed
        self._stored_bytes += len(blob) - freed
        self._raw_bytes += sum(len(p) for p in payloads if p is not None) - old_raw
        self._codec.note_samples(payloads)
        self._maybe_train()

    # -- reading -------------------------------------------------------------------------------
    def _extents(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return extents(self._buf.view(), starts)

    def _raw_sizes(self, off: np.ndarray, length: np.ndarray, header: np.ndarray) -> int:
        return raw_sizes(self._buf.view(), off, length, header)

    def get(self, rows) -> list:
        """The contents of the given rows.

        Parameters
        ----------
        rows : (m,) int array-like
            Any order; repeats allowed.

        Returns
        -------
        list of str, bytes or None
            One per row, of the kind that was stored.

        Raises
        ------
        IndexError
            A row out of range (the message lists them).
        """
        rows = self._check_rows(rows)
        starts = self._starts.view()[rows].tolist()
        if self._crcs is None:  # an arena of a generation written before the CRCs
            return self._codec.decode(self._buf.view(), starts)
        out, bad = self._codec.decode(self._buf.view(), starts, self._crcs.view()[rows].tolist())
        if bad:
            self._damaged(rows[bad])
        return out

    def _damaged(self, rows: np.ndarray):
        b = np.unique(rows)
        raise CorruptStoreError(self.source, f"the content record of row{'s' if len(b) > 1 else ''} "
                                             f"{', '.join(map(str, b[:10].tolist()))}{' ...' if len(b) > 10 else ''} "
                                             "fails its CRC-32 (damaged); not served")

    # -- compaction ----------------------------------------------------------------------------
    def compact(self, live_rows=None) -> int:
        """Rewrite the buffer with only the records of live rows, in row order.

        Parameters
        ----------
        live_rows : int array-like, optional
            Rows to keep (default: all). Every other row becomes ``None``.

        Returns
        -------
        int
            Buffer bytes reclaimed.

        Raises
        ------
        IndexError
            A live row out of range.
        """
        n = len(self)
        if live_rows is None:
            if not self._garbage_bytes:
                return 0  # every replace leaves garbage, so none means the buffer is already tight
            live = np.ones(n, dtype=bool)
        else:
            live = np.zeros(n, dtype=bool)
            live[self._check_rows(live_rows, "live_rows")] = True
        starts = self._starts.view().astype(np.int64)
        off, length, header = self._extents(starts)
        dead = (~live) & (header != 0)
        if dead.any():
            self._raw_bytes -= self._raw_sizes(off[dead], length[dead], header[dead])
        sizes = np.where(live, off + length - starts, len(NONE_RECORD))
        new_starts = np.zeros(n, dtype=np.int64)
        np.cumsum(sizes[:-1], out=new_starts[1:])
        total = int(new_starts[-1] + sizes[-1]) if n else 0
        old_used = len(self._buf)
        # A None record is two zero bytes, so dead rows need no copying: only live ones.
        out = np.zeros(total, dtype=np.uint8)
        buf = self._buf.view()
        live_idx = np.flatnonzero(live)
        if len(live_idx):
            # Gather in chunks of ~8 MiB so the index arrays stay small next to the buffer.
            csum = np.cumsum(sizes[live_idx])
            lo = 0
            while lo < len(live_idx):
                hi = int(np.searchsorted(csum, (csum[lo - 1] if lo else 0) + (8 << 20), "right"))
                hi = max(hi, lo + 1)
                r = live_idx[lo:hi]
                sz = sizes[r]
                within = np.arange(int(sz.sum())) - np.repeat(np.cumsum(sz) - sz, sz)
                out[np.repeat(new_starts[r], sz) + within] = buf[np.repeat(starts[r], sz) + within]
                lo = hi
        self._buf = GrowableArray(np.uint8, capacity=total)
        self._buf.append(out)
        self._starts = GrowableArray(np.uint64, capacity=n)
        self._starts.append(new_starts)
        if self._crcs is not None:  # live records are copied byte for byte; dead rows become None records
            crcs = np.where(live, self._crcs.view(), np.uint32(zlib.crc32(NONE_RECORD))).astype(np.uint32)
            self._crcs = GrowableArray(np.uint32, capacity=n)
            self._crcs.append(crcs)
        self._stored_bytes = total
        self._garbage_bytes = 0
        return old_used - total

    # -- dictionaries --------------------------------------------------------------------------
    def _maybe_train(self) -> None:
        if self._codec.maybe_train():
            self._recompress_all()

    def _recompress_all(self) -> None:
        """Re-compress every record with the first dictionary, just trained: at this point the
        arena holds at most about train_after / 64 KiB of content (plus None rows), so one
        rewrite is cheap."""
        n = len(self)
        payloads, kinds = self._codec.payloads(self._buf.view(), self._starts.view()[np.arange(n)])
        blob, rec_sizes = self._codec.encode(payloads, kinds)
        old_used = len(self._buf)
        self._buf = GrowableArray(np.uint8, capacity=max(2 * len(blob), 1024))
        self._buf.append(np.frombuffer(blob, dtype=np.uint8))
        new_starts = np.zeros(n, dtype=np.int64)
        new_starts[1:] = np.cumsum(rec_sizes[:-1])
        self._starts = GrowableArray(np.uint64, capacity=max(2 * n, 1024))
        self._starts.append(new_starts)
        self._crcs = GrowableArray(np.uint32, capacity=max(2 * n, 1024))
        self._crcs.append(blob_crcs(blob, rec_sizes))
        self._stored_bytes, self._garbage_bytes = len(blob), 0
        log.info("content dictionary 1 (%d B) trained on %d samples; %d rows re-compressed: %d -> %d B",
                 len(self._codec.dictionaries[1]), len(self._codec.samples), n, old_used, len(blob))

    # -- persistence ---------------------------------------------------------------------------
    def rebase(self, path) -> bool:
        """The records become the file ``path`` holding exactly them (a generation's
        ``content.bin`` just written and read back against its CRC), memory-mapped: page cache
        instead of anonymous RAM; appends then map it copy-on-write (:class:`GrowableArray`).
        Each record's CRC is still checked on every read. False (nothing changed) when empty."""
        n = len(self._buf)
        if not n:
            return False
        size = os.path.getsize(path)
        if size != n:
            raise ValueError(f"{path} holds {size} bytes, the arena's records {n}: not its records")
        self._buf = GrowableArray.wrap(np.memmap(path, dtype=np.uint8, mode="r", shape=(n,)))
        return True

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to rebuild the arena, as plain numpy arrays (no pickle).

        Returns
        -------
        dict of str to numpy.ndarray
            ``buffer`` (uint8, a read-only view: the used part of the buffer is never written in
            place), ``starts`` (uint64, a copy: :meth:`replace` repoints rows in place),
            ``dictionaries`` (uint8, generations 1.. back to back) with ``dictionary_offsets``
            (int64), ``samples`` / ``samples_offsets`` (the recent contents kept for retraining)
            and 0-d int64 scalars (``format_version``, settings and counters).
        """
        buffer = self._buf.view().view()
        buffer.flags.writeable = False
        codec = self._codec
        dicts, dict_offsets = _concat([d.as_bytes() for d in codec.dictionaries[1:]])
        samples, sample_offsets = _concat(list(codec.samples))
        if self._crcs is None:  # an arena loaded without them: computed now, once (the writer's
            # open checked the whole file's CRC, so these are the bytes the store wrote)
            self._crcs = GrowableArray(np.uint32, capacity=len(self))
            self._crcs.append(record_crcs(self._buf.view(), self._starts.view().tolist()))
        out = {"format_version": np.array(_CONTENTS_FORMAT_VERSION, dtype=np.int64), "buffer": buffer,
               "starts": self._starts.view().copy(), "crcs": self._crcs.view().copy(), "dictionaries": dicts,
               "dictionary_offsets": dict_offsets, "samples": samples, "samples_offsets": sample_offsets}
        for name in _SCALARS:
            value = getattr(codec, name) if name in _CODEC_SCALARS else getattr(self, name)
            out[name] = np.array(value, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays, **kwargs) -> "ContentArena":
        """Rebuild an arena from :meth:`to_arrays` output (e.g. an ``np.load``-ed npz).

        Parameters
        ----------
        arrays : mapping of str to numpy.ndarray
        **kwargs
            Constructor settings that override the saved ones (e.g. ``max_content_bytes``).

        Raises
        ------
        ValueError
            A missing array, an unknown format version, or arrays that do not fit together.
        """
        needed = ("format_version", "buffer", "starts", "dictionaries", "dictionary_offsets",
                  "samples", "samples_offsets") + _SCALARS
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise ValueError(f"content arena arrays lack {missing}")
        version = int(arrays["format_version"])
        if version != _CONTENTS_FORMAT_VERSION:
            raise ValueError(f"content arena format_version {version} is not supported "
                             f"(this code reads {_CONTENTS_FORMAT_VERSION})")
        settings = {k: int(arrays[k]) for k in _SETTINGS}
        settings.update(kwargs)
        self = cls(**settings)
        buffer = np.asarray(arrays["buffer"])
        starts = np.asarray(arrays["starts"])
        if buffer.dtype != np.uint8 or buffer.ndim != 1:
            raise ValueError(f"buffer must be 1-D uint8, got {buffer.dtype} {buffer.shape}")
        if starts.dtype != np.uint64 or starts.ndim != 1:
            raise ValueError(f"starts must be 1-D uint64, got {starts.dtype} {starts.shape}")
        if len(starts) and int(starts.max()) + 2 > len(buffer):
            raise ValueError(f"starts point up to {int(starts.max())}, past the {len(buffer)}-byte buffer")
        for d in _split(arrays["dictionaries"], arrays["dictionary_offsets"], "dictionary"):
            self._codec.adopt(zstandard.ZstdCompressionDict(d))
        for s in _split(arrays["samples"], arrays["samples_offsets"], "samples"):
            self._codec.add_sample(s)
        # wrapped, not copied: a memory-mapped buffer stays mapped until the next append
        self._buf = GrowableArray.wrap(arrays["buffer"] if isinstance(arrays["buffer"], np.memmap) else buffer)
        self._starts = GrowableArray(np.uint64, capacity=len(starts))
        self._starts.append(starts)
        if "crcs" in arrays:
            crcs = np.asarray(arrays["crcs"])
            if crcs.dtype != np.uint32 or crcs.shape != starts.shape:
                raise ValueError(f"crcs must be uint32 of one per row ({len(starts)}), got {crcs.dtype} {crcs.shape}")
            self._crcs = GrowableArray(np.uint32, capacity=len(crcs))
            self._crcs.append(crcs)
        else:  # written before the records had CRCs: read unchecked until the next checkpoint
            self._crcs = None
        for name in _SCALARS[len(_SETTINGS):]:
            if name in _CODEC_SCALARS:
                setattr(self._codec, name, int(arrays[name]))
            else:
                setattr(self, f"_{name}", int(arrays[name]))
        if len(starts):
            _, _, header = self._extents(starts)
            gens = generation_of(header[is_zstd(header)])
            if len(gens) and int(gens.max()) > self.generation:
                raise ValueError(f"records use dictionary generation {int(gens.max())} but only "
                                 f"{self.generation} dictionaries were saved")
        return self


#: zstd contexts of the arena (``memory_size()`` at level 3 with 16 KiB dictionaries): after
#: ingestion, the compressor with its digested dictionary and the decompressors used; in a store
#: just opened, only the objects (contexts are allocated on first use).
ZSTD_CONTEXT_BYTES = {"built": 534_000, "opened": 5_000}


def planned_bytes(count: int, avg: float, ratio: float, *, opened: bool, records_mapped: bool = False) -> dict:
    """The bytes of a :class:`ContentArena` holding ``count`` contents of ``avg`` raw bytes stored
    at ``ratio`` (stored / raw, records included), as its ``memory_usage()`` names them, plus
    ``disk`` (for ``lukhas_gpu.plan``): records (memory-mapped in a store ``opened``, or a
    writer's after a checkpoint: ``records_mapped``), offsets, the dictionaries trained from the
    first contents and the recent samples kept."""
    records = count * (avg * ratio if avg > 0 else len(NONE_RECORD))
    anon: dict = {}
    mapped: dict = {}
    (mapped if opened or records_mapped else anon)["content_records"] = records
    anon["content_offsets"] = 12 * count  # the offset and the CRC-32 of every record
    dictionaries = samples = kept = 0.0
    if avg > 0 and count:
        first = min(count, max(64, min(2048, math.ceil(65536 / avg))))  # contents at the first training
        dictionaries = max(1024.0, min(16384.0, first * avg / 4)) if count >= 64 else 0.0
        kept = min(count, RECENT_ITEMS, max(1, int(RECENT_BYTES // avg)))
        samples = kept * avg
        anon["content_zstd_contexts"] = ZSTD_CONTEXT_BYTES["opened" if opened else "built"]
    anon["content_dictionaries"] = dictionaries
    anon["content_samples"] = samples + BYTES_OBJECT_HEADER * kept
    disk = {"content_records": records,
            "content_index": 12 * count + dictionaries + samples + 18 * NPZ_MEMBER_BYTES}
    return {"anon": anon, "mapped": mapped, "disk": disk}
