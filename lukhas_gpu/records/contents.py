"""``ContentArena``: the text / bytes content of every memory, zstd-compressed record by record.

No Python object exists per stored content. Everything lives in two numpy columns:

* ``buffer`` -- one growable ``uint8`` array holding the records back to back;
* ``starts`` -- one ``uint64`` per row, the offset of that row's record (8 B per row, the only
  per-row array: a record's length is read from the record itself).

A record is ``varint(len(payload)) + header + payload``. The varint is unsigned LEB128 (one byte
for payloads under 128 B, which is most compressed short texts). The header byte is::

    bit 7     1 = payload is a zstd frame, 0 = payload is the raw content
    bit 6     1 = the content is ``bytes``, 0 = it is ``str`` (UTF-8)
    bits 0-5  zstd: the dictionary generation (0 = no dictionary, 1..63 = trained dictionaries)
              raw:  1 = a content, 0 = no content (``None``; header 0x00, empty payload)

so ``None`` is the two zero bytes ``00 00`` and every kind round-trips exactly.

Each record is compressed on its own, so any row decodes without touching its neighbours. Short
texts barely compress alone; a trained zstd dictionary is what makes them shrink (roughly 0.45 of
raw for ~70-byte sentences, against ~1.0 without). The dictionary life cycle:

1. Until the first training, records are compressed without a dictionary (or kept raw when that
   is smaller -- the choice is made per record and recorded in the header).
2. Once ``train_after`` non-empty contents, or 64 KiB of them, have arrived (at least 64 either
   way), a dictionary is trained on them and every record written so far is re-compressed with
   it (the buffer is rewritten once; it is small at that point).
3. "Retrain when it pays": each time the number of non-empty contents written has doubled since
   the last training attempt (attempts stop after 2**20 contents), a candidate is trained on the
   most recent contents and kept only if it compresses a held-out fifth of them at least 3%
   smaller than the current one. Older records keep pointing at older dictionaries, which are
   kept (a few KB each); new records use the newest.

Frames are written magicless, without a dictionary id or checksum but with the content size:
the header already says which dictionary, and the 4-byte magic would be ~10% of a short record.
"""
from __future__ import annotations

import collections
import logging
from typing import NamedTuple

import numpy as np
import zstandard

from .columns import GrowableArray

__all__ = ["ContentArena", "ValidatedContents", "KIND_NONE", "KIND_STR", "KIND_BYTES"]

log = logging.getLogger(__name__)

#: Content kinds, as in :attr:`ValidatedContents.kinds`.
KIND_NONE, KIND_STR, KIND_BYTES = 0, 1, 2

DEFAULT_LEVEL = 3
DEFAULT_MAX_CONTENT_BYTES = 65536
DEFAULT_DICT_SIZE = 16384
DEFAULT_TRAIN_AFTER = 2048

# -- record header bits --------------------------------------------------------------------------
_ZSTD = 0x80
_BYTES = 0x40
_GEN_MASK = 0x3F
_RAW = 0x01
_NONE_RECORD = b"\x00\x00"
#: Generations are 6 bits of the header; generation 0 is "no dictionary".
MAX_GENERATION = 63

# -- dictionary schedule -------------------------------------------------------------------------
#: zstd's trainer needs a few dozen samples to find anything; fewer gives an error or a useless
#: dictionary.
_MIN_TRAIN_SAMPLES = 64
#: First training also fires once this much raw content has arrived: ~100x a 1 KiB dictionary is
#: plenty, and waiting longer leaves more records compressed without one.
_FIRST_TRAIN_BYTES = 64 * 1024
_MIN_DICT_SIZE = 1024
#: Retraining attempts stop here: by then the dictionary has seen a stable distribution, and the
#: schedule (one attempt per doubling) would otherwise keep going forever.
_RETRAIN_UNTIL = 1 << 20
#: A candidate must shrink the held-out sample by this fraction to be adopted: a new dictionary
#: costs its bytes forever, and a marginal gain is usually noise between two samples.
_RETRAIN_GAIN = 0.03
_HOLDOUT_EVERY = 5
#: The recent contents kept for (re)training: bounded in count and in bytes, whatever is stored.
#: ~2000 samples of ~70 B is ~100x a 1-2 KiB dictionary and enough for a 16 KiB one.
_RECENT_ITEMS = 2000
_RECENT_BYTES = 4 << 20
#: Dictionary ids are fixed (zstd would pick random ones) so that training is reproducible; below
#: 32768 is reserved by the zstd format.
_DICT_ID_BASE = 32768

_FORMAT_VERSION = 1
_SCALARS = ("level", "max_content_bytes", "dict_size", "train_after", "raw_bytes", "stored_bytes",
            "garbage_bytes", "n_nonempty", "nonempty_bytes", "last_train_at")


class ValidatedContents(NamedTuple):
    """A batch of contents in normalised form, as returned by :meth:`ContentArena.validate`.

    Attributes
    ----------
    payloads : list of bytes or None
        The encoded content of each item (``str`` as UTF-8), ``None`` for no content.
    kinds : (m,) uint8
        ``KIND_NONE`` / ``KIND_STR`` / ``KIND_BYTES`` per item, so ``str`` comes back as ``str``.
    """

    payloads: list
    kinds: np.ndarray


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _compressor(level: int, dictionary: zstandard.ZstdCompressionDict | None):
    params = zstandard.ZstdCompressionParameters(
        format=zstandard.FORMAT_ZSTD1_MAGICLESS, compression_level=level,
        write_content_size=1, write_checksum=0, write_dict_id=0)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params)


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

        self.level = check_int("level", level, 1, zstandard.MAX_COMPRESSION_LEVEL)
        self.max_content_bytes = check_int("max_content_bytes", max_content_bytes, 0)
        self.dict_size = check_int("dict_size", dict_size, _MIN_DICT_SIZE)
        self.train_after = check_int("train_after", train_after, _MIN_TRAIN_SAMPLES)

        self._buf = GrowableArray(np.uint8)
        self._starts = GrowableArray(np.uint64)
        #: Index = generation; 0 is "no dictionary".
        self._dicts: list[zstandard.ZstdCompressionDict | None] = [None]
        self._compress = _compressor(self.level, None).compress
        self._decompress: dict[int, object] = {}
        self._recent: collections.deque[bytes] = collections.deque()
        self._recent_bytes = 0
        self._raw_bytes = 0
        self._stored_bytes = 0
        self._garbage_bytes = 0
        self._n_nonempty = 0       # non-empty contents ever written (appends and replaces)
        self._nonempty_bytes = 0   # their raw bytes
        self._last_train_at = 0    # _n_nonempty at the last training attempt; 0 = none yet

    # -- sizes ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._starts)

    @property
    def generation(self) -> int:
        """The dictionary generation new records use (0 until a dictionary is trained)."""
        return len(self._dicts) - 1

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
            ``records`` (the used buffer, garbage included), ``starts`` (8 per row),
            ``dictionaries`` (all generations), ``samples`` (recent contents kept for
            retraining, bounded) and ``total``.
        """
        out = {"records": len(self._buf), "starts": self._starts.nbytes(),
               "dictionaries": sum(len(d) for d in self._dicts[1:]), "samples": self._recent_bytes}
        out["total"] = sum(out.values())
        return out

    # -- validation ----------------------------------------------------------------------------
    def validate(self, items) -> ValidatedContents:
        """Check a batch of contents without storing anything.

        Parameters
        ----------
        items : sequence of str, bytes or None
            A :class:`ValidatedContents` is returned as is.

        Returns
        -------
        ValidatedContents
            ``payloads`` (bytes or None per item) and ``kinds`` (uint8 per item).

        Raises
        ------
        TypeError
            ``items`` is a single str / bytes, or an item is not str, bytes or None.
        ValueError
            A str that cannot be encoded as UTF-8 (a lone surrogate), or a content larger than
            ``max_content_bytes`` once encoded. The message names the item's index.
        """
        if isinstance(items, ValidatedContents):
            return items
        if isinstance(items, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"contents must be a sequence of str/bytes/None, got a single "
                            f"{type(items).__name__}; wrap it in a list")
        payloads: list = []
        kinds = bytearray()
        limit = self.max_content_bytes
        for i, item in enumerate(items):
            if item is None:
                payloads.append(None)
                kinds.append(KIND_NONE)
                continue
            if isinstance(item, str):
                try:
                    data = item.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ValueError(f"contents[{i}] is a str that cannot be encoded as UTF-8 "
                                     f"({e.reason} at position {e.start})") from None
                kinds.append(KIND_STR)
            elif isinstance(item, bytes):
                data = bytes(item)  # a bytes subclass (np.bytes_) comes back as plain bytes
                kinds.append(KIND_BYTES)
            else:
                raise TypeError(f"contents[{i}] must be str, bytes or None, got {type(item).__name__}")
            if len(data) > limit:
                raise ValueError(f"contents[{i}] is {len(data)} bytes encoded, above the limit of "
                                 f"{limit} (max_content_bytes)")
            payloads.append(data)
        return ValidatedContents(payloads, np.frombuffer(bytes(kinds), dtype=np.uint8))

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
            stop = self._next_training(sizes, pos)
            blob, rec_sizes = self._encode(payloads[pos:stop], kinds[pos:stop].tolist())
            base = self._buf.append(np.frombuffer(blob, dtype=np.uint8))[0]
            offsets = np.full(stop - pos, base, dtype=np.int64)
            offsets[1:] += np.cumsum(rec_sizes[:-1])
            self._starts.append(offsets)
            self._stored_bytes += len(blob)
            self._raw_bytes += int(sizes[pos:stop].clip(0).sum())
            self._note_samples(payloads[pos:stop])
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
        blob, rec_sizes = self._encode(payloads, kinds.tolist())
        base = self._buf.append(np.frombuffer(blob, dtype=np.uint8))[0]
        offsets = base + np.concatenate(([0], np.cumsum(rec_sizes[:-1])))
        self._starts[rows] = offsets.astype(np.uint64)
        freed = int(old_sizes.sum())
        self._garbage_bytes += freed
        self._stored_bytes += len(blob) - freed
        self._raw_bytes += sum(len(p) for p in payloads if p is not None) - old_raw
        self._note_samples(payloads)
        self._maybe_train()

    def _encode(self, payloads: list, kinds: list) -> tuple[bytes, np.ndarray]:
        """The records of a batch back to back, and each record's size (int64)."""
        compress = self._compress
        zstd_header = _ZSTD | self.generation
        parts = []
        sizes = []
        for p, kind in zip(payloads, kinds):
            if p is None:
                parts.append(_NONE_RECORD)
                sizes.append(2)
                continue
            kind_bit = _BYTES if kind == KIND_BYTES else 0
            header = _RAW | kind_bit
            body = p
            if p:
                c = compress(p)
                if len(c) < len(p):  # ties stay raw: raw decodes for free
                    body, header = c, zstd_header | kind_bit
            n = len(body)
            prefix = bytes((n, header)) if n < 0x80 else _varint(n) + bytes((header,))
            parts.append(prefix)
            parts.append(body)
            sizes.append(len(prefix) + n)
        return b"".join(parts), np.asarray(sizes, dtype=np.int64)

    # -- reading -------------------------------------------------------------------------------
    def _extents(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised record parse: payload offsets, payload lengths (int64) and headers (uint8)."""
        buf = self._buf.view()
        pos = np.asarray(starts, dtype=np.int64).copy()
        b = buf[pos].astype(np.int64)
        length = b & 0x7F
        more = b >= 0x80
        pos += 1
        shift = 7
        while more.any():
            i = np.flatnonzero(more)
            b = buf[pos[i]].astype(np.int64)
            length[i] |= (b & 0x7F) << shift
            pos[i] += 1
            more[i] = b >= 0x80
            shift += 7
        return pos + 1, length, buf[pos]

    def _raw_sizes(self, off: np.ndarray, length: np.ndarray, header: np.ndarray) -> int:
        """Total raw size of the given records (zstd frames carry their content size)."""
        zstd = (header & _ZSTD) != 0
        total = int(length[(~zstd) & (header != 0)].sum())
        if zstd.any():
            mv = memoryview(self._buf.view())
            fmt = zstandard.FORMAT_ZSTD1_MAGICLESS
            for a, n in zip(off[zstd].tolist(), length[zstd].tolist()):
                total += zstandard.get_frame_parameters(mv[a:a + n], format=fmt).content_size
        return total

    def _decompressor(self, gen: int):
        dec = self._decompress.get(gen)
        if dec is None:
            dec = zstandard.ZstdDecompressor(dict_data=self._dicts[gen],
                                             format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompress
            self._decompress[gen] = dec
        return dec

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
        mv = memoryview(self._buf.view())
        decs = self._decompress
        out = []
        for s in starts:
            n = mv[s]
            p = s + 1
            if n >= 0x80:
                n &= 0x7F
                shift = 7
                while True:
                    b = mv[p]
                    p += 1
                    n |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
            h = mv[p]
            p += 1
            if h & _ZSTD:
                dec = decs.get(h & _GEN_MASK) or self._decompressor(h & _GEN_MASK)
                data = dec(mv[p:p + n])
                out.append(data if h & _BYTES else data.decode("utf-8"))
            elif h & _BYTES:
                out.append(mv[p:p + n].tobytes())
            elif h:
                out.append(str(mv[p:p + n], "utf-8"))
            else:
                out.append(None)
        return out

    def _payloads(self, rows: np.ndarray) -> tuple[list, list]:
        """Like :meth:`get`, but as ``(payload bytes or None, kinds)`` for re-encoding."""
        off, length, header = self._extents(self._starts.view()[rows])
        mv = memoryview(self._buf.view())
        payloads, kinds = [], []
        for a, n, h in zip(off.tolist(), length.tolist(), header.tolist()):
            if h == 0:
                payloads.append(None)
                kinds.append(KIND_NONE)
                continue
            kinds.append(KIND_BYTES if h & _BYTES else KIND_STR)
            payloads.append(self._decompressor(h & _GEN_MASK)(mv[a:a + n]) if h & _ZSTD
                            else mv[a:a + n].tobytes())
        return payloads, kinds

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
        sizes = np.where(live, off + length - starts, len(_NONE_RECORD))
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
        self._stored_bytes = total
        self._garbage_bytes = 0
        return old_used - total

    # -- dictionaries --------------------------------------------------------------------------
    def _note_samples(self, payloads: list) -> None:
        nonempty = [p for p in payloads if p]
        self._n_nonempty += len(nonempty)
        self._nonempty_bytes += sum(map(len, nonempty))
        recent = self._recent
        for p in nonempty[-_RECENT_ITEMS:]:
            recent.append(p)
            self._recent_bytes += len(p)
            while len(recent) > _RECENT_ITEMS or (self._recent_bytes > _RECENT_BYTES and len(recent) > 1):
                self._recent_bytes -= len(recent.popleft())

    def _training_open(self) -> bool:
        return self.generation < MAX_GENERATION and 2 * self._last_train_at <= _RETRAIN_UNTIL

    def _next_training(self, sizes: np.ndarray, pos: int) -> int:
        """End (exclusive) of the chunk of ``sizes[pos:]`` after which a training is due."""
        m = len(sizes)
        if not self._training_open():
            return m
        s = sizes[pos:]
        nonempty = s > 0
        count = self._n_nonempty + np.cumsum(nonempty)
        if self._last_train_at == 0:
            nbytes = self._nonempty_bytes + np.cumsum(np.where(nonempty, s, 0))
            due = (count >= _MIN_TRAIN_SAMPLES) & ((count >= self.train_after) | (nbytes >= _FIRST_TRAIN_BYTES))
        else:
            due = count >= 2 * self._last_train_at
        # The counts only rise at non-empty items, so the first due item is always a sample.
        i = int(np.argmax(due))
        return pos + i + 1 if due[i] else m

    def _maybe_train(self) -> None:
        if not self._training_open():
            return
        c = self._n_nonempty
        if self._last_train_at == 0:
            if c >= _MIN_TRAIN_SAMPLES and (c >= self.train_after or self._nonempty_bytes >= _FIRST_TRAIN_BYTES):
                self._first_training()
        elif c >= 2 * self._last_train_at:
            self._retrain()

    def _train(self, samples: list[bytes]) -> zstandard.ZstdCompressionDict | None:
        total = sum(map(len, samples))
        size = max(_MIN_DICT_SIZE, min(self.dict_size, total // 4))
        try:
            return zstandard.train_dictionary(size, samples, dict_id=_DICT_ID_BASE + self.generation + 1,
                                              level=self.level)
        except zstandard.ZstdError as e:
            # Too little or too repetitive data: keep the current dictionary, retry at the next doubling.
            log.info("content dictionary training on %d samples (%d B) failed: %s", len(samples), total, e)
            return None

    def _adopt(self, dictionary: zstandard.ZstdCompressionDict, compressor=None) -> None:
        self._dicts.append(dictionary)
        self._compress = (compressor or _compressor(self.level, dictionary)).compress

    def _first_training(self) -> None:
        self._last_train_at = self._n_nonempty
        dictionary = self._train(list(self._recent))
        if dictionary is None:
            return
        self._adopt(dictionary)
        # Re-compress everything written so far: at this point the arena holds at most about
        # train_after / 64 KiB of content (plus None rows), so one rewrite is cheap.
        n = len(self)
        payloads, kinds = self._payloads(np.arange(n))
        blob, rec_sizes = self._encode(payloads, kinds)
        old_used = len(self._buf)
        self._buf = GrowableArray(np.uint8, capacity=max(2 * len(blob), 1024))
        self._buf.append(np.frombuffer(blob, dtype=np.uint8))
        new_starts = np.zeros(n, dtype=np.int64)
        new_starts[1:] = np.cumsum(rec_sizes[:-1])
        self._starts = GrowableArray(np.uint64, capacity=max(2 * n, 1024))
        self._starts.append(new_starts)
        self._stored_bytes, self._garbage_bytes = len(blob), 0
        log.info("content dictionary 1 (%d B) trained on %d samples; %d rows re-compressed: %d -> %d B",
                 len(dictionary), len(self._recent), n, old_used, len(blob))

    def _retrain(self) -> None:
        self._last_train_at = self._n_nonempty
        samples = list(self._recent)
        held = samples[::_HOLDOUT_EVERY]
        train = [s for i, s in enumerate(samples) if i % _HOLDOUT_EVERY]
        if len(train) < _MIN_TRAIN_SAMPLES:
            return
        candidate = self._train(train)
        if candidate is None:
            return
        new = _compressor(self.level, candidate)

        def stored(compress):
            return sum(min(len(compress(s)), len(s)) for s in held)

        current_size, candidate_size = stored(self._compress), stored(new.compress)
        adopt = candidate_size <= (1.0 - _RETRAIN_GAIN) * current_size
        log.info("content dictionary candidate %d at %d contents: held-out %d B vs %d B now; %s",
                 self.generation + 1, self._n_nonempty, candidate_size, current_size,
                 "adopted" if adopt else "rejected")
        if adopt:
            self._adopt(candidate, new)

    # -- persistence ---------------------------------------------------------------------------
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
        dicts, dict_offsets = _concat([d.as_bytes() for d in self._dicts[1:]])
        samples, sample_offsets = _concat(list(self._recent))
        out = {"format_version": np.array(_FORMAT_VERSION, dtype=np.int64), "buffer": buffer,
               "starts": self._starts.view().copy(), "dictionaries": dicts,
               "dictionary_offsets": dict_offsets, "samples": samples, "samples_offsets": sample_offsets}
        for name in _SCALARS:
            attr = name if name in ("level", "max_content_bytes", "dict_size", "train_after") else f"_{name}"
            out[name] = np.array(getattr(self, attr), dtype=np.int64)
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
        if version != _FORMAT_VERSION:
            raise ValueError(f"content arena format_version {version} is not supported "
                             f"(this code reads {_FORMAT_VERSION})")
        settings = {k: int(arrays[k]) for k in ("level", "max_content_bytes", "dict_size", "train_after")}
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
            self._adopt(zstandard.ZstdCompressionDict(d))
        for s in _split(arrays["samples"], arrays["samples_offsets"], "samples"):
            self._recent.append(s)
            self._recent_bytes += len(s)
        # wrapped, not copied: a memory-mapped buffer stays mapped until the next append
        self._buf = GrowableArray.wrap(arrays["buffer"] if isinstance(arrays["buffer"], np.memmap) else buffer)
        self._starts = GrowableArray(np.uint64, capacity=len(starts))
        self._starts.append(starts)
        for name in _SCALARS[4:]:
            setattr(self, f"_{name}", int(arrays[name]))
        if len(starts):
            _, _, header = self._extents(starts)
            gens = header[(header & _ZSTD) != 0] & _GEN_MASK
            if len(gens) and int(gens.max()) > self.generation:
                raise ValueError(f"records use dictionary generation {int(gens.max())} but only "
                                 f"{self.generation} dictionaries were saved")
        return self
