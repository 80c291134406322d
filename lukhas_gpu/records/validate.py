"""The validation rules and limits of a memory's record: tags, timestamp, importance, content.

One owner for every rule, so that an ingest pipeline can check a batch before it adds it (and
report the bad rows) with exactly the checks the index applies. Each ``validate_*`` function
takes a whole batch, changes nothing, and returns it in normalised form; errors are
``TypeError`` / ``ValueError`` naming the bad item by its index in the batch.

Limits:

* tags: each non-empty, at most :data:`MAX_TAG_BYTES` UTF-8 bytes, without NUL; at most
  :data:`MAX_TAGS_PER_MEMORY` distinct tags per memory (tags are compared byte for byte; no
  Unicode normalisation is applied, so ``"é"`` composed and decomposed are different tags);
* timestamps: finite epoch seconds, ``datetime`` (naive means UTC) or ``numpy.datetime64``;
* importance: finite, in ``[0, 1]``; stored as ``round(importance * IMPORTANCE_SCALE)``;
* contents: ``str`` (encodable as UTF-8), ``bytes`` or ``None``, at most ``max_content_bytes``
  (default :data:`DEFAULT_MAX_CONTENT_BYTES`) once encoded.
"""
from __future__ import annotations

import datetime as _dt
import operator
import reprlib
import time
from typing import NamedTuple

import numpy as np

__all__ = ["MAX_TAG_BYTES", "MAX_TAGS_PER_MEMORY", "DEFAULT_IMPORTANCE", "IMPORTANCE_SCALE",
           "DEFAULT_MAX_CONTENT_BYTES", "KIND_NONE", "KIND_STR", "KIND_BYTES", "ValidatedContents",
           "validate_tags", "validate_timestamps", "validate_importance", "validate_contents",
           "to_epoch_seconds", "check_count", "check_tag", "check_tag_batch", "check_tag_container",
           "check_tag_count", "check_tag_item", "short_repr"]

# -- tags ----------------------------------------------------------------------------------------
MAX_TAG_BYTES = 256
#: A row's tag count is stored as a uint8.
MAX_TAGS_PER_MEMORY = 255

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60


def short_repr(value) -> str:
    """``repr`` cut to about 60 characters, for error messages that quote user input."""
    return _short.repr(value)


def check_count(n, name: str = "n") -> int:
    """``n`` as a non-negative int (``TypeError`` / ``ValueError`` otherwise)."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(n).__name__}") from None
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


def check_tag(where: str, tag: str) -> None:
    """Raise ``ValueError`` unless ``tag`` (a ``str``) is a storable tag; ``where`` names it."""
    if not tag:
        raise ValueError(f"{where} contains an empty tag; tags must be non-empty strings")
    if "\x00" in tag:
        raise ValueError(f"{where} tag {_short.repr(tag)} contains a NUL character")
    try:
        nbytes = len(tag.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where} tag {_short.repr(tag)} is not encodable as UTF-8 "
                         f"({exc.reason} at character {exc.start})") from None
    if nbytes > MAX_TAG_BYTES:
        raise ValueError(f"{where} tag {_short.repr(tag)} is {nbytes} UTF-8 bytes; "
                         f"the limit is {MAX_TAG_BYTES}")


def check_tag_item(where: str, j: int, tag) -> None:
    """Raise ``TypeError`` unless item ``j`` of a memory's tag list is a ``str``."""
    if not isinstance(tag, str):
        raise TypeError(f"{where} item {j} must be str, got {type(tag).__name__} {_short.repr(tag)}")


def check_tag_container(where: str, mem) -> None:
    """Raise ``TypeError`` unless one memory's tags ``mem`` are a list or tuple (``None`` is
    handled by the caller: no tags)."""
    if isinstance(mem, (list, tuple)):
        return
    if isinstance(mem, str):
        raise TypeError(f"{where} is a bare str {_short.repr(mem)}; a memory's tags must be a "
                        f"list or tuple of str (a bare str would be split into one tag per "
                        f"character): write [{_short.repr(mem)}]")
    raise TypeError(f"{where} must be a list or tuple of str, or None; "
                    f"got {type(mem).__name__}")


def check_tag_count(where: str, k: int) -> None:
    """Raise ``ValueError`` if a memory has more than :data:`MAX_TAGS_PER_MEMORY` distinct tags."""
    if k > MAX_TAGS_PER_MEMORY:
        raise ValueError(f"{where} has {k} distinct tags; the limit is {MAX_TAGS_PER_MEMORY} per memory")


def check_tag_batch(tags, n) -> int:
    """Check the batch-level shape of ``tags`` (None, or a sequence of ``n`` tag lists).

    Returns ``n`` as an int; raises ``TypeError`` for a bare str or a non-sequence and
    ``ValueError`` for a length other than ``n``.
    """
    n = check_count(n)
    if tags is None:
        return n
    if isinstance(tags, (str, bytes, bytearray)):
        raise TypeError(f"tags must be None or a sequence of {n} tag lists (one per memory), "
                        f"got a bare {type(tags).__name__} {_short.repr(tags)}")
    try:
        m = len(tags)
    except TypeError:
        raise TypeError(f"tags must be None or a sequence of {n} tag lists (one per memory), "
                        f"got {type(tags).__name__}") from None
    if m != n:
        raise ValueError(f"tags has {m} entries but the batch has n={n} memories")
    return n


def validate_tags(tags, n: int) -> list[tuple[str, ...]]:
    """Check a batch of tag lists against the tag rules, without a vocabulary.

    The same checks, in the same order and with the same messages, as
    :meth:`lukhas_gpu.records.tags.TagIndex.validate`.

    Parameters
    ----------
    tags : None or sequence of (list or tuple of str, or None), length ``n``
        One entry per memory; ``None`` (for the batch or for one memory) means no tags.
    n : int
        Number of memories in the batch.

    Returns
    -------
    list of tuple of str, length ``n``
        Each memory's tags as plain ``str``, duplicates dropped (first occurrence kept).

    Raises
    ------
    TypeError
        ``tags`` is not a sequence; an entry is not a list/tuple/None (a bare ``str``
        included); a tag is not a ``str``.
    ValueError
        ``len(tags) != n``; a tag is empty, longer than :data:`MAX_TAG_BYTES` UTF-8 bytes,
        contains NUL or is not encodable; a memory has more than :data:`MAX_TAGS_PER_MEMORY`
        distinct tags.

    Examples
    --------
    >>> validate_tags([["a", "b", "a"], None], 2)
    [('a', 'b'), ()]
    """
    n = check_tag_batch(tags, n)
    if tags is None:
        return [()] * n
    out = []
    for i, mem in enumerate(tags):
        if mem is None:
            out.append(())
            continue
        where = f"tags[{i}]"
        check_tag_container(where, mem)
        seen: dict[str, None] = {}
        for j, tag in enumerate(mem):
            check_tag_item(where, j, tag)
            tag = str.__str__(tag)  # a plain str, not a caller's str subclass
            if tag not in seen:
                check_tag(where, tag)
                seen[tag] = None
        check_tag_count(where, len(seen))
        out.append(tuple(seen))
    return out


# -- timestamps ----------------------------------------------------------------------------------
def to_epoch_seconds(value, name: str = "timestamp") -> float:
    """One timestamp (epoch seconds int/float, ``datetime``, ``numpy.datetime64``) -> float seconds.

    A naive ``datetime`` is taken as UTC.
    """
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp()
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise ValueError(f"{name} is NaT")
        return float(value.astype("datetime64[us]").astype(np.int64)) / 1e6
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be epoch seconds, a datetime or a numpy datetime64, got {type(value).__name__}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def validate_timestamps(values, n: int) -> np.ndarray:
    """A batch's timestamps as ``(n,)`` float64 epoch seconds.

    Parameters
    ----------
    values : None, or array-like of ``n`` epoch seconds, datetimes or datetime64
        ``None`` stamps every memory with the current time.
    n : int

    Raises
    ------
    TypeError
        A dtype that is not numeric or datetime64 (booleans included).
    ValueError
        Not ``n`` entries, a NaT, or a non-finite value (the message names the first).
    """
    if values is None:
        return np.full(n, time.time(), dtype=np.float64)
    a = np.asarray(values)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"timestamps has {len(a) if a.ndim == 1 else a.shape} entries, expected {n} (one per memory)")
    if np.issubdtype(a.dtype, np.datetime64):
        if np.isnat(a).any():
            raise ValueError(f"timestamps contain NaT (first at index {int(np.flatnonzero(np.isnat(a))[0])})")
        return a.astype("datetime64[us]").astype(np.int64).astype(np.float64) / 1e6
    if a.dtype == object:
        return np.array([to_epoch_seconds(v, f"timestamps[{i}]") for i, v in enumerate(a)], dtype=np.float64)
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"timestamps must be epoch seconds or datetime64, got dtype {a.dtype}")
    out = a.astype(np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        raise ValueError(f"timestamps must be finite (first bad at index {int(np.flatnonzero(bad)[0])})")
    return out


# -- importance ----------------------------------------------------------------------------------
DEFAULT_IMPORTANCE = 0.5
#: Importance is stored as ``round(importance * IMPORTANCE_SCALE)`` in a uint16: resolution
#: 3.1e-5, and binary fractions (0.5, 0.25, 0.125...) come back exactly.
IMPORTANCE_SCALE = 32768.0


def validate_importance(values, n: int) -> np.ndarray:
    """A batch's importances as ``(n,)`` float64 in ``[0, 1]``.

    Parameters
    ----------
    values : None, a scalar, or array-like of ``n`` floats
        ``None`` gives :data:`DEFAULT_IMPORTANCE`; a scalar applies to every memory.
    n : int

    Raises
    ------
    TypeError
        A non-numeric dtype (booleans included).
    ValueError
        Not ``n`` entries, or a value outside ``[0, 1]`` or not finite (the first is named).
    """
    if values is None:
        return np.full(n, DEFAULT_IMPORTANCE, dtype=np.float64)
    a = np.asarray(values)
    if a.ndim == 0:
        a = np.full(n, a)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"importance has {len(a) if a.ndim == 1 else a.shape} entries, expected {n} (one per memory)")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"importance must be floats in [0, 1], got dtype {a.dtype}")
    a = a.astype(np.float64)
    bad = ~(np.isfinite(a) & (a >= 0.0) & (a <= 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"importance must be in [0, 1]; importance[{i}] = {a[i]!r}")
    return a


# -- contents ------------------------------------------------------------------------------------
DEFAULT_MAX_CONTENT_BYTES = 65536
#: Content kinds, as in :attr:`ValidatedContents.kinds`.
KIND_NONE, KIND_STR, KIND_BYTES = 0, 1, 2


class ValidatedContents(NamedTuple):
    """A batch of contents in normalised form, as returned by :func:`validate_contents`.

    Attributes
    ----------
    payloads : list of bytes or None
        The encoded content of each item (``str`` as UTF-8), ``None`` for no content.
    kinds : (m,) uint8
        ``KIND_NONE`` / ``KIND_STR`` / ``KIND_BYTES`` per item, so ``str`` comes back as ``str``.
    """

    payloads: list
    kinds: np.ndarray


def validate_contents(items, max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES) -> ValidatedContents:
    """Check a batch of contents and encode them, storing nothing.

    Parameters
    ----------
    items : sequence of str, bytes or None
        A :class:`ValidatedContents` is returned as is.
    max_content_bytes : int
        Largest content accepted, in encoded bytes.

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
    limit = max_content_bytes
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
