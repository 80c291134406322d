"""The content record format and its zstd codec: per-record compression and the dictionary schedule.

A record is ``varint(len(payload)) + header + payload``. The varint is unsigned LEB128 (one byte
for payloads under 128 B, which is most compressed short texts). The header byte is::

    bit 7     1 = payload is a zstd frame, 0 = payload is the raw content
    bit 6     1 = the content is ``bytes``, 0 = it is ``str`` (UTF-8)
    bits 0-5  zstd: the dictionary generation (0 = no dictionary, 1..63 = trained dictionaries)
              raw:  1 = a content, 0 = no content (``None``; header 0x00, empty payload)

so ``None`` is the two zero bytes ``00 00`` and every kind round-trips exactly.

Each record is compressed on its own, so any row decodes without touching its neighbours. Short
texts barely compress alone; a trained zstd dictionary is what makes them shrink (roughly 0.45 of
raw for ~70-byte sentences, against ~1.0 without). The dictionary life cycle
(:class:`ContentCodec`):

1. Until the first training, records are compressed without a dictionary (or kept raw when that
   is smaller -- the choice is made per record and recorded in the header).
2. Once ``train_after`` non-empty contents, or 64 KiB of them, have arrived (at least 64 either
   way), a dictionary is trained on them and every record written so far is re-compressed with
   it (by the arena that owns the records: :meth:`ContentCodec.maybe_train` says when).
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
import zlib

import numpy as np
import zstandard

from ..util.memory import zstd_context_bytes
from .validate import KIND_BYTES, KIND_NONE, KIND_STR

__all__ = ["ContentCodec", "extents", "raw_sizes", "NONE_RECORD", "MAX_GENERATION", "MIN_TRAIN_SAMPLES",
           "MIN_DICT_SIZE", "is_zstd", "generation_of"]

log = logging.getLogger(__name__)

# -- record header bits --------------------------------------------------------------------------
_ZSTD = 0x80
_BYTES = 0x40
_GEN_MASK = 0x3F
_RAW = 0x01
NONE_RECORD = b"\x00\x00"
#: Generations are 6 bits of the header; generation 0 is "no dictionary".
MAX_GENERATION = 63

# -- dictionary schedule -------------------------------------------------------------------------
#: zstd's trainer needs a few dozen samples to find anything; fewer gives an error or a useless
#: dictionary.
MIN_TRAIN_SAMPLES = 64
#: First training also fires once this much raw content has arrived: ~100x a 1 KiB dictionary is
#: plenty, and waiting longer leaves more records compressed without one.
_FIRST_TRAIN_BYTES = 64 * 1024
MIN_DICT_SIZE = 1024
# The constants below are read at call time (not bound as defaults) so tests can change them.
#: Retraining attempts stop here: by then the dictionary has seen a stable distribution, and the
#: schedule (one attempt per doubling) would otherwise keep going forever.
_RETRAIN_UNTIL = 1 << 20
#: A candidate must shrink the held-out sample by this fraction to be adopted: a new dictionary
#: costs its bytes forever, and a marginal gain is usually noise between two samples.
_RETRAIN_GAIN = 0.03
_HOLDOUT_EVERY = 5
#: The recent contents kept for (re)training: bounded in count and in bytes, whatever is stored.
#: ~2000 samples of ~70 B is ~100x a 1-2 KiB dictionary and enough for a 16 KiB one.
RECENT_ITEMS = 2000
RECENT_BYTES = 4 << 20
#: Dictionary ids are fixed (zstd would pick random ones) so that training is reproducible; below
#: 32768 is reserved by the zstd format.
_DICT_ID_BASE = 32768
#: CPython's header of a ``bytes`` object (the recent contents are kept as ``bytes``).
BYTES_OBJECT_HEADER = 33


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _compressor(level: int, dictionary: zstandard.ZstdCompressionDict | None) -> zstandard.ZstdCompressor:
    params = zstandard.ZstdCompressionParameters(
        format=zstandard.FORMAT_ZSTD1_MAGICLESS, compression_level=level,
        write_content_size=1, write_checksum=0, write_dict_id=0)
    return zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params)


def is_zstd(header: np.ndarray) -> np.ndarray:
    """Which record headers (uint8 array) announce a zstd frame."""
    return (header & _ZSTD) != 0


def generation_of(header: np.ndarray) -> np.ndarray:
    """The dictionary generation of zstd record headers."""
    return header & _GEN_MASK


# -- record parsing (vectorised, over the arena's uint8 buffer) -----------------------------------
def extents(buf: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised record parse: payload offsets, payload lengths (int64) and headers (uint8)."""
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


def raw_sizes(buf: np.ndarray, off: np.ndarray, length: np.ndarray, header: np.ndarray) -> int:
    """Total raw size of the given records (zstd frames carry their content size)."""
    zstd = (header & _ZSTD) != 0
    total = int(length[(~zstd) & (header != 0)].sum())
    if zstd.any():
        mv = memoryview(buf)
        fmt = zstandard.FORMAT_ZSTD1_MAGICLESS
        for a, n in zip(off[zstd].tolist(), length[zstd].tolist()):
            total += zstandard.get_frame_parameters(mv[a:a + n], format=fmt).content_size
    return total


class ContentCodec:
    """Encodes and decodes content records; owns the zstd dictionaries and their schedule.

    Parameters
    ----------
    level : int
        zstd level.
    dict_size : int
        Target dictionary size (each training caps it at a quarter of the sample bytes and
        raises it to at least 1 KiB).
    train_after : int
        Non-empty contents before the first training (or 64 KiB of them; at least 64).

    Attributes
    ----------
    dictionaries : list
        Index = generation; entry 0 is ``None`` ("no dictionary").
    samples : collections.deque of bytes
        The recent non-empty contents kept for (re)training (bounded in count and bytes).
    samples_bytes : int
        Their total size.
    n_nonempty, nonempty_bytes : int
        Non-empty contents ever noted (appends and replaces) and their raw bytes.
    last_train_at : int
        ``n_nonempty`` at the last training attempt; 0 before the first.
    """

    def __init__(self, *, level: int, dict_size: int, train_after: int):
        self.level, self.dict_size, self.train_after = int(level), int(dict_size), int(train_after)
        self.dictionaries: list[zstandard.ZstdCompressionDict | None] = [None]
        self._compressor = _compressor(self.level, None)
        self._compress = self._compressor.compress
        self._decompress: dict[int, object] = {}
        self.samples: collections.deque[bytes] = collections.deque()
        self.samples_bytes = 0
        self.n_nonempty = 0
        self.nonempty_bytes = 0
        self.last_train_at = 0

    @property
    def generation(self) -> int:
        """The dictionary generation new records use (0 until a dictionary is trained)."""
        return len(self.dictionaries) - 1

    # -- records -------------------------------------------------------------------------------
    def encode(self, payloads: list, kinds: list) -> tuple[bytes, np.ndarray]:
        """The records of a batch back to back, and each record's size (int64)."""
        compress = self._compress
        zstd_header = _ZSTD | self.generation
        parts = []
        sizes = []
        for p, kind in zip(payloads, kinds):
            if p is None:
                parts.append(NONE_RECORD)
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

    def decompressor(self, gen: int):
        """The ``decompress`` function of dictionary generation ``gen`` (created on first use)."""
        dec = self._decompress.get(gen)
        if dec is None:
            dec = zstandard.ZstdDecompressor(dict_data=self.dictionaries[gen],
                                             format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompress
            self._decompress[gen] = dec
        return dec

    def decode(self, buf: np.ndarray, starts: list, crcs: list | None = None) -> list:
        """The contents (str, bytes or None) of the records at ``starts`` (a list of int) in ``buf``.

        With ``crcs`` (one CRC-32 per record, a list of int), each record's bytes are checked
        before they are decoded: the positions that fail are returned instead, as
        ``(None, [i, ...])`` (nothing decoded from damaged bytes), else ``(contents, [])``."""
        mv = memoryview(buf)
        decs = self._decompress
        out = []
        end = len(mv)
        bad = []
        for i, s in enumerate(starts):
            n = mv[s]
            p = s + 1
            if n >= 0x80:
                n &= 0x7F
                shift = 7
                while p < end and shift < 64:
                    b = mv[p]
                    p += 1
                    n |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
            if crcs is not None and zlib.crc32(mv[s:p + 1 + n]) != crcs[i]:
                bad.append(i)
                continue
            if bad:
                continue
            h = mv[p]
            p += 1
            if h & _ZSTD:
                dec = decs.get(h & _GEN_MASK) or self.decompressor(h & _GEN_MASK)
                data = dec(mv[p:p + n])
                out.append(data if h & _BYTES else data.decode("utf-8"))
            elif h & _BYTES:
                out.append(mv[p:p + n].tobytes())
            elif h:
                out.append(str(mv[p:p + n], "utf-8"))
            else:
                out.append(None)
        if crcs is not None:
            return (None, bad) if bad else (out, bad)
        return out

    def payloads(self, buf: np.ndarray, starts: np.ndarray) -> tuple[list, list]:
        """Like :meth:`decode`, but as ``(payload bytes or None, kinds)`` for re-encoding."""
        off, length, header = extents(buf, starts)
        mv = memoryview(buf)
        payloads, kinds = [], []
        for a, n, h in zip(off.tolist(), length.tolist(), header.tolist()):
            if h == 0:
                payloads.append(None)
                kinds.append(KIND_NONE)
                continue
            kinds.append(KIND_BYTES if h & _BYTES else KIND_STR)
            payloads.append(self.decompressor(h & _GEN_MASK)(mv[a:a + n]) if h & _ZSTD
                            else mv[a:a + n].tobytes())
        return payloads, kinds

    # -- dictionary schedule -------------------------------------------------------------------
    def note_samples(self, payloads: list) -> None:
        """Count the non-empty contents of a written batch and keep the most recent for training."""
        nonempty = [p for p in payloads if p]
        self.n_nonempty += len(nonempty)
        self.nonempty_bytes += sum(map(len, nonempty))
        recent = self.samples
        for p in nonempty[-RECENT_ITEMS:]:
            recent.append(p)
            self.samples_bytes += len(p)
            while len(recent) > RECENT_ITEMS or (self.samples_bytes > RECENT_BYTES and len(recent) > 1):
                self.samples_bytes -= len(recent.popleft())

    def add_sample(self, sample: bytes) -> None:
        """Keep ``sample`` as a recent content without counting it (restoring a saved codec)."""
        self.samples.append(sample)
        self.samples_bytes += len(sample)

    def _training_open(self) -> bool:
        return self.generation < MAX_GENERATION and 2 * self.last_train_at <= _RETRAIN_UNTIL

    def next_training(self, sizes: np.ndarray, pos: int) -> int:
        """End (exclusive) of the chunk of ``sizes[pos:]`` (raw sizes, -1 for None) after which a
        training is due; ``len(sizes)`` when none is."""
        m = len(sizes)
        if not self._training_open():
            return m
        s = sizes[pos:]
        nonempty = s > 0
        count = self.n_nonempty + np.cumsum(nonempty)
        if self.last_train_at == 0:
            nbytes = self.nonempty_bytes + np.cumsum(np.where(nonempty, s, 0))
            due = (count >= MIN_TRAIN_SAMPLES) & ((count >= self.train_after) | (nbytes >= _FIRST_TRAIN_BYTES))
        else:
            due = count >= 2 * self.last_train_at
        # The counts only rise at non-empty items, so the first due item is always a sample.
        i = int(np.argmax(due))
        return pos + i + 1 if due[i] else m

    def maybe_train(self) -> bool:
        """Train (or retrain) when the schedule says so.

        Returns True when the *first* dictionary was just adopted: the records written so far
        were compressed without one, and the caller re-encodes them (:meth:`payloads`, then
        :meth:`encode`).
        """
        if not self._training_open():
            return False
        c = self.n_nonempty
        if self.last_train_at == 0:
            if c >= MIN_TRAIN_SAMPLES and (c >= self.train_after or self.nonempty_bytes >= _FIRST_TRAIN_BYTES):
                self.last_train_at = c
                dictionary = self._train(list(self.samples))
                if dictionary is not None:
                    self.adopt(dictionary)
                    return True
        elif c >= 2 * self.last_train_at:
            self._retrain()
        return False

    def _train(self, samples: list[bytes]) -> zstandard.ZstdCompressionDict | None:
        total = sum(map(len, samples))
        size = max(MIN_DICT_SIZE, min(self.dict_size, total // 4))
        try:
            return zstandard.train_dictionary(size, samples, dict_id=_DICT_ID_BASE + self.generation + 1,
                                              level=self.level)
        except zstandard.ZstdError as e:
            # Too little or too repetitive data: keep the current dictionary, retry at the next doubling.
            log.info("content dictionary training on %d samples (%d B) failed: %s", len(samples), total, e)
            return None

    def adopt(self, dictionary: zstandard.ZstdCompressionDict, compressor=None) -> None:
        """Make ``dictionary`` the next generation, used by every record encoded from now on."""
        self.dictionaries.append(dictionary)
        self._compressor = compressor or _compressor(self.level, dictionary)
        self._compress = self._compressor.compress

    def _retrain(self) -> None:
        self.last_train_at = self.n_nonempty
        samples = list(self.samples)
        held = samples[::_HOLDOUT_EVERY]
        train = [s for i, s in enumerate(samples) if i % _HOLDOUT_EVERY]
        if len(train) < MIN_TRAIN_SAMPLES:
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
                 self.generation + 1, self.n_nonempty, candidate_size, current_size,
                 "adopted" if adopt else "rejected")
        if adopt:
            self.adopt(candidate, new)

    # -- accounting ------------------------------------------------------------------------------
    def dictionary_bytes(self) -> int:
        """Bytes of all trained dictionaries."""
        return sum(len(d) for d in self.dictionaries[1:])

    def context_bytes(self) -> int:
        """zstd contexts: the compressor (with its digested dictionary) and one decompressor per
        dictionary generation used so far."""
        ctx = zstd_context_bytes(self._compressor)
        return ctx + sum(zstd_context_bytes(getattr(d, "__self__", None)) for d in self._decompress.values())
