"""Which input records are storable: the owners' rules, applied to a batch, worded for a reader.

The decision is never made here. Each check hands the batch to the validator of the component
that stores the value -- :meth:`~lukhas_gpu.records.tags.TagIndex.validate`,
:meth:`~lukhas_gpu.records.contents.ContentArena.validate`,
:meth:`~lukhas_gpu.records.metadata.MetadataColumns.validate` and
:func:`~lukhas_gpu.records.metadata.to_epoch_seconds`, :func:`~lukhas_gpu.util.arrays.as_batch`
and :func:`~lukhas_gpu.util.arrays.check_nonzero` -- so a record accepted here is one
:meth:`MemoryIndex.add` accepts. What this module adds is the reader's view: the *first* bad
record of a batch (found by bisecting on prefixes, which costs ``O(log n)`` validator calls and
only on the error path) and a message in the words of the input file (its field names).

Each ``bad_*`` function returns ``(i, why)``: the index of the first bad item and the reason, or
``(len(batch), "")`` when every item is good.

These are local adapters: the owners validate whole batches and raise a message naming the
batch index. When ``records/`` grows per-item public validators, these become thin.
"""
from __future__ import annotations

import datetime as _dt
import math

import numpy as np

from ..records.contents import ContentArena
from ..records.metadata import MetadataColumns, to_epoch_seconds
from ..records.scopes import Validity, check_namespace
from ..records.tags import TagIndex
from .input_errors import InvalidRecord

__all__ = ["bad_embedding", "bad_tags", "bad_contents", "bad_timestamps", "bad_importance", "bad_namespaces",
           "bad_windows", "first_problem", "epoch_seconds", "window_seconds", "iso_seconds", "json_type",
           "SCOPE_FIELDS", "EMBEDDING_NOT_FINITE"]

#: The fields of an input record (JSONL keys, Parquet columns) that scope a memory: its namespace
#: and its validity window (``records.scopes``).
SCOPE_FIELDS = ("namespace", "valid_from", "valid_to")

#: The reason given for a non-finite embedding (a float64 value beyond the float32 range becomes
#: infinite when the batch is cast to float32, so it is reported the same way).
EMBEDDING_NOT_FINITE = "embedding contains NaN or infinity (or a value beyond the float32 range)"
_ZERO = "embedding is all zeros, which has no direction under metric='cosine'"


def _first_failing(n: int, fails) -> int:
    """The smallest ``i`` with ``fails(i + 1)``, given ``fails(n)`` and not ``fails(0)``.

    ``fails(m)`` says whether the prefix of ``m`` items holds a bad item; every owner validator
    checks items independently, so that is monotone in ``m``.
    """
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return hi - 1


def _raises(check) -> bool:
    try:
        check()
    except (TypeError, ValueError):
        return True
    return False


def bad_embedding(x: np.ndarray, *, cosine: bool) -> tuple[int, str]:
    """The first row of ``x`` ((n, d) float32) that the index would reject, and why."""
    from ..util.arrays import as_batch, check_nonzero  # torch: only where vectors are checked

    n = len(x)
    if n == 0:
        return 0, ""
    stop = n
    if _raises(lambda: as_batch(x, None)):
        stop = _first_failing(n, lambda m: _raises(lambda: as_batch(x[:m], None)))
    if cosine and stop:
        t = as_batch(x[:stop], None)[0]
        if _raises(lambda: check_nonzero(t, "embeddings")):
            return _first_failing(stop, lambda m: _raises(lambda: check_nonzero(t[:m], "embeddings"))), _ZERO
    return (stop, EMBEDDING_NOT_FINITE) if stop < n else (n, "")


def bad_tags(tags: list) -> tuple[int, str]:
    """The first memory's tag list that the tag index would reject (as its validator words it)."""
    n = len(tags)
    index = TagIndex()
    if not _raises(lambda: index.validate(tags, n)):
        return n, ""
    i = _first_failing(n, lambda m: _raises(lambda: index.validate(tags[:m], m)))
    try:
        index.validate([tags[i]], 1)
    except (TypeError, ValueError) as e:
        return i, str(e).replace("tags[0]", '"tags"', 1)
    raise AssertionError("unreachable: a bad prefix ends with a bad item")  # pragma: no cover


def bad_contents(contents: list, max_bytes: int) -> tuple[int, str]:
    """The first content the content arena would reject (too large, not encodable, not text)."""
    n = len(contents)
    arena = ContentArena(max_content_bytes=max_bytes)
    if not _raises(lambda: arena.validate(contents)):
        return n, ""
    i = _first_failing(n, lambda m: _raises(lambda: arena.validate(contents[:m])))
    c = contents[i]
    if isinstance(c, str):
        try:
            size = f"{len(c.encode('utf-8'))} bytes of UTF-8"
        except UnicodeEncodeError:
            return i, '"content" is not valid Unicode (it holds a lone surrogate escape)'
    elif isinstance(c, bytes):
        size = f"{len(c)} bytes"
    else:
        return i, f'"content" must be a string, bytes or null, got {type(c).__name__}'
    return i, f'"content" is {size}, over the index\'s max_content_bytes ({max_bytes})'


def bad_timestamps(ts: np.ndarray, given: np.ndarray) -> tuple[int, str]:
    """The first given timestamp (float64 epoch seconds; ``given`` False: none, filled at add)
    that the metadata columns would reject."""
    n = len(ts)
    v = np.where(given, ts, 0.0)
    if not _raises(lambda: MetadataColumns.validate(n, timestamps=v)):
        return n, ""
    i = _first_failing(n, lambda m: _raises(lambda: MetadataColumns.validate(m, timestamps=v[:m])))
    return i, f'"timestamp" must be finite, got {float(ts[i])!r}'


def bad_importance(imp: np.ndarray) -> tuple[int, str]:
    """The first importance (float64) that the metadata columns would reject."""
    n = len(imp)
    if not _raises(lambda: MetadataColumns.validate(n, importance=imp)):
        return n, ""
    i = _first_failing(n, lambda m: _raises(lambda: MetadataColumns.validate(m, importance=imp[:m])))
    return i, f'"importance" must be in [0, 1], got {float(imp[i])!r}'


def bad_namespaces(names: list) -> tuple[int, str]:
    """The first namespace name (a str) the namespaces would reject (too long, not UTF-8)."""
    for i, name in enumerate(names):
        try:
            check_namespace(name, '"namespace"')
        except (TypeError, ValueError) as e:
            return i, str(e)
    return len(names), ""


def bad_windows(valid_from: np.ndarray, valid_to: np.ndarray) -> tuple[int, str]:
    """The first validity window (float64 ``valid_from``, ``valid_to``; -inf / inf where open)
    the validity columns would reject (NaN, an end before its start, a start at +inf)."""
    n = len(valid_from)
    if not _raises(lambda: Validity.validate(n, valid_from, valid_to)):
        return n, ""
    i = _first_failing(n, lambda m: _raises(lambda: Validity.validate(m, valid_from[:m], valid_to[:m])))
    try:
        Validity.validate(1, valid_from[i:i + 1], valid_to[i:i + 1])
    except (TypeError, ValueError) as e:
        return i, str(e).replace(" for memory 0", "")
    raise AssertionError("unreachable: a bad prefix ends with a bad item")  # pragma: no cover


def first_problem(n: int, *, x=None, cosine: bool = False, contents=None, max_content: int = 0, tags=None,
                  timestamps=None, ts_given=None, importance=None, namespaces=None, valid_from=None,
                  valid_to=None) -> tuple[int, str, str]:
    """``(i, field, why)`` of the first bad record among the first ``n`` of a batch, over every
    column given (None: not checked); ``(n, "", "")`` when all are good. On a tie the fields
    are reported in the order embedding, content, tags, timestamp, importance, namespace,
    validity window (``valid_from`` and ``valid_to`` come together, -inf / inf where open)."""
    found = []
    if x is not None:
        found.append((*bad_embedding(x[:n], cosine=cosine), 0, "embedding"))
    if contents is not None:
        found.append((*bad_contents(contents[:n], max_content), 1, "content"))
    if tags is not None:
        found.append((*bad_tags(tags[:n]), 2, "tags"))
    if timestamps is not None:
        found.append((*bad_timestamps(timestamps[:n], ts_given[:n]), 3, "timestamp"))
    if importance is not None:
        found.append((*bad_importance(importance[:n]), 4, "importance"))
    if namespaces is not None:
        found.append((*bad_namespaces(namespaces[:n]), 5, "namespace"))
    if valid_from is not None:
        found.append((*bad_windows(valid_from[:n], valid_to[:n]), 6, "validity window"))
    found = [f for f in found if f[0] < n]
    if not found:
        return n, "", ""
    i, why, _, field = min(found, key=lambda f: (f[0], f[2]))
    return i, field, why


def json_type(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def epoch_seconds(v) -> float:
    """One input timestamp -> float epoch seconds: ``None`` -> NaN (the time of the add), an
    ISO-8601 string (no offset: UTC), or what :func:`~lukhas_gpu.records.metadata.to_epoch_seconds`
    takes. Raises :class:`InvalidRecord`."""
    if v is None:
        return math.nan
    if isinstance(v, str):
        return iso_seconds(v)
    try:
        return to_epoch_seconds(v)
    except TypeError:
        raise InvalidRecord(f'"timestamp" must be epoch seconds or an ISO-8601 string, got {json_type(v)}') from None
    except (ValueError, OverflowError):
        raise InvalidRecord(f'"timestamp" must be finite, got {v!r}') from None


def window_seconds(v, name: str) -> float | None:
    """One input validity bound (``name``: ``valid_from`` or ``valid_to``) -> float epoch
    seconds, None when missing (open); a number (the validity columns check it) or an ISO-8601
    string. Raises :class:`InvalidRecord` for another type."""
    if v is None:
        return None
    if isinstance(v, str):
        return iso_seconds(v, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidRecord(f'"{name}" must be epoch seconds or an ISO-8601 string, got {json_type(v)}')
    try:
        return float(v)
    except OverflowError:
        raise InvalidRecord(f'"{name}" is beyond the float range, got {v!r}') from None


def iso_seconds(text: str, name: str = "timestamp") -> float:
    """ISO-8601 (extended format) -> epoch seconds; no UTC offset means UTC. Raises
    :class:`InvalidRecord` (a ValueError, naming the field ``name``) for anything else."""
    s = text.strip()
    if s[-1:] in ("Z", "z"):  # datetime.fromisoformat accepts it only from Python 3.11
        s = s[:-1] + "+00:00"
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise InvalidRecord(f'"{name}" {text!r} is not an ISO-8601 date-time') from None
    return to_epoch_seconds(d)  # the owner's rule: a naive date-time is UTC
