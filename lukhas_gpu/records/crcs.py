"""The CRC-32 of content records (:mod:`lukhas_gpu.records.contents`' per-row ``crcs``): of records
laid back to back with known sizes (at append / replace), and of records found at their start offsets,
each extent read from its own varint length (at a checkpoint of an arena loaded without CRCs)."""
from __future__ import annotations

import zlib

import numpy as np

__all__ = ["blob_crcs", "record_crcs"]


def blob_crcs(blob, sizes) -> np.ndarray:
    """CRC-32 of each of the records of ``sizes`` bytes laid back to back in ``blob``."""
    mv, out, pos = memoryview(blob), np.empty(len(sizes), np.uint32), 0
    crc32 = zlib.crc32
    for i, n in enumerate(np.asarray(sizes, np.int64).tolist()):
        out[i] = crc32(mv[pos:pos + n])
        pos += n
    return out


def record_crcs(buf: np.ndarray, starts) -> np.ndarray:
    """CRC-32 of the record at each of ``starts`` in ``buf``, its extent read from its own varint
    length (bounded by the buffer, so a damaged length gives a wrong CRC, never an IndexError)."""
    mv, end = memoryview(buf), len(buf)
    crc32 = zlib.crc32
    out = np.empty(len(starts), np.uint32)
    for i, s in enumerate(starts):
        n, p, shift = 0, s, 0
        while p < end:
            b = mv[p]
            p += 1
            n |= (b & 0x7F) << shift
            if b < 0x80 or shift > 56:
                break
            shift += 7
        out[i] = crc32(mv[s:min(p + 1 + n, end)])
    return out
