"""The device mirror's upkeep (``gpu_resident``): built from the host rows on first use, grown
by ``add``, dropped for good when the device runs out of memory (the IVF then serves)."""
from __future__ import annotations

import logging

import torch

from ..util.arrays import tensor_view
from ..vectors.policy import FIT_SAMPLE, sample_index

log = logging.getLogger(__name__)

__all__ = ["mirror_ready", "grow_mirror"]


def mirror_ready(index):
    """The device mirror, built from the host rows on first use; ``None`` when the mode is off,
    nothing is stored, the projection is not fitted yet (the exact host scan serves those small
    stores), or the device had no room for it."""
    parts = index.parts
    if parts.mirror is not None or not parts.mirror_wanted:
        return parts.mirror
    with parts.build_lock:  # searches under the shared lock: one builds, the others wait for it
        if parts.mirror is not None or not parts.mirror_wanted:
            return parts.mirror
        return _build(index, parts)


def _build(index, parts):
    enc = parts.encoder
    n = parts.rows
    if n == 0 or not enc.quantizer_fitted or not enc.projection_fitted:
        return None
    from ..vectors.mirror import DeviceMirror

    if not enc.resident_fitted:  # a store written before the resident mode existed
        enc.fit_resident(enc.dequantize(parts.vectors[sample_index(n, FIT_SAMPLE, index.config.seed)]))
    mirror = DeviceMirror(enc.dim_out, index.device, capacity=max(n, index.config.capacity or 0))
    step = index.config.batch_size
    for a in range(0, n, step):
        rows = tensor_view(parts.vectors[a: min(n, a + step)])
        if not grow_mirror(index, lambda: enc.resident_from(rows), mirror):
            return None
    if parts.tombstones:
        mirror.delete(parts.tombstones.array())
    parts.mirror = mirror  # published whole: a search beside never sees it half filled
    return mirror


def grow_mirror(index, codes, mirror=None) -> bool:
    """Append ``codes()`` to the mirror (``parts.mirror``, or one being built); out of device
    memory, drop the mirror for good."""
    parts = index.parts
    try:
        (parts.mirror if mirror is None else mirror).append(codes())
        return True
    except torch.cuda.OutOfMemoryError:
        log.warning("gpu_resident: the %s device has no room for %d more rows of %d B; searches "
                    "go back to the IVF candidates", index.device, parts.rows, parts.encoder.dim_out)
        parts.mirror, parts.mirror_wanted = None, False
        return False

