"""The wire forms of the server's API, shared by the server and :class:`~.client.Client`.

Vectors travel as JSON lists of lists, as base64 of little-endian float32 in a JSON string
(``vectors_b64``), or as raw little-endian float32 (``application/octet-stream``, shape in the
``X-Shape`` header: ``"nq,dim"``). Filters and rankings travel as
JSON objects whose keys are the keyword arguments of :class:`~lukhas_gpu.Filter` and
:class:`~lukhas_gpu.Rank`; times are epoch seconds or ISO-8601 strings (UTC when no offset).
A binary search answer is ``ids`` (nq*k int64) then ``scores`` (nq*k float32), little-endian,
shape in ``X-Shape: "nq,k"``. Contents are JSON strings; bytes contents are ``{"base64": ...}``.

Everything here checks sizes before allocating and raises ``ValueError``/``TypeError`` naming
the field; the server turns them into 422 answers. No pickle: numbers, strings and raw arrays.
"""
from __future__ import annotations

import base64
import datetime as _dt
import math

import numpy as np

from ..util.bounds import MAX_FILTER_TAGS

__all__ = ["SHAPE_HEADER", "DTYPE_HEADER", "BINARY", "FILTER_KEYS", "RANK_KEYS", "parse_where", "parse_rank",
           "merge_scope",
           "where_to_json", "rank_to_json", "vectors_from_json", "vectors_from_b64", "vectors_to_b64",
           "vectors_from_bytes", "vectors_to_bytes",
           "results_to_bytes", "results_from_bytes", "parse_shape", "parse_time", "content_to_json",
           "content_from_json"]

SHAPE_HEADER = "x-shape"
DTYPE_HEADER = "x-dtype"
BINARY = "application/octet-stream"
FILTER_KEYS = ("tags_all", "tags_any", "tags_none", "since", "until", "min_importance", "meta", "namespace", "as_of")
RANK_KEYS = ("similarity", "recency", "importance", "half_life", "now")
_TIME_KEYS = ("since", "until", "now", "as_of")
_F32_MAX = float(np.finfo(np.float32).max)


def parse_time(value, name: str) -> float:
    if isinstance(value, str):
        s = value.strip()
        if s[-1:] in ("Z", "z"):
            s = s[:-1] + "+00:00"
        try:
            d = _dt.datetime.fromisoformat(s)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is neither epoch seconds nor an ISO-8601 date-time") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.timezone.utc)
        return d.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be epoch seconds or an ISO-8601 string, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _object(obj, name: str, keys: tuple[str, ...]) -> dict:
    if not isinstance(obj, dict):
        raise TypeError(f"{name} must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(keys))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; known: {list(keys)}")
    return {k: (parse_time(v, f"{name}.{k}") if k in _TIME_KEYS and v is not None else v)
            for k, v in obj.items() if v is not None}


def parse_where(obj):
    """A JSON filter -> :class:`~lukhas_gpu.Filter` (``None`` for null or ``{}``)."""
    if obj is None:
        return None
    from ..query.filters import Filter

    kw = _object(obj, "where", FILTER_KEYS)
    for key in ("tags_all", "tags_any", "tags_none"):
        v = kw.get(key)
        if v is not None and not isinstance(v, (str, list)):
            raise TypeError(f"where.{key} must be a tag or a list of tags, got {type(v).__name__}")
        if isinstance(v, list) and len(v) > MAX_FILTER_TAGS:
            raise ValueError(f"where.{key} holds {len(v)} tags, at most {MAX_FILTER_TAGS}")
    flt = Filter(**kw)
    return None if flt.is_empty() else flt


def merge_scope(where, namespace=None, as_of=None):
    """A request's top-level ``namespace`` / ``as_of`` merged into its JSON ``where`` (the wire
    form; ``as_of`` stays unset when not given, so requests of the same scope still batch
    together and the search reads the clock once). ValueError when the two disagree."""
    if namespace is None and as_of is None:
        return where
    if isinstance(as_of, str):  # a query string's number
        try:
            as_of = float(as_of)
        except ValueError:
            pass
    out = dict(where) if isinstance(where, dict) else {}
    if where is not None and not isinstance(where, dict):
        raise TypeError(f"where must be a JSON object, got {type(where).__name__}")
    for key, v in (("namespace", namespace), ("as_of", as_of)):
        if v is not None:
            if out.get(key) is not None and out[key] != v:
                raise ValueError(f"{key}={v!r} and where.{key}={out[key]!r} disagree")
            out[key] = v
    return out


def parse_rank(obj):
    """A JSON ranking -> :class:`~lukhas_gpu.Rank` (``None`` for null)."""
    if obj is None:
        return None
    from ..query.ranking import Rank

    return Rank(**_object(obj, "rank", RANK_KEYS))


def _fields(obj, keys) -> dict:
    out = {}
    for k in keys:
        v = getattr(obj, k, None)
        if isinstance(v, tuple):
            v = list(v)
        if v not in (None, []):
            out[k] = v
    return out


def where_to_json(where) -> dict | None:
    """A :class:`~lukhas_gpu.Filter` (or a dict already in wire form) -> its JSON object."""
    if where is None or isinstance(where, dict):
        return where
    from ..query.metafilter import to_dict

    out = _fields(where, FILTER_KEYS)
    if "meta" in out:
        out["meta"] = to_dict(out["meta"])
    return out


def rank_to_json(rank) -> dict | None:
    """A :class:`~lukhas_gpu.Rank` (or a dict already in wire form) -> its JSON object."""
    if rank is None or isinstance(rank, dict):
        return rank
    return _fields(rank, RANK_KEYS)


def _check_rows(x: np.ndarray, dim: int, name: str) -> np.ndarray:
    if x.shape[1] != dim:
        raise ValueError(f"{name} have {x.shape[1]} dimensions, the store's are {dim}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}[{int(np.flatnonzero(bad)[0])}] contains NaN or inf")
    return x


def vectors_from_json(rows, dim: int, *, max_rows: int, name: str = "vectors") -> np.ndarray:
    """A JSON list of ``nq`` lists of ``dim`` numbers -> ``(nq, dim)`` float32; a flat list of
    ``dim`` numbers is one vector."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{name} must be a non-empty list of vectors")
    if not isinstance(rows[0], list):
        rows = [rows]
    if len(rows) > max_rows:
        raise ValueError(f"{name}: {len(rows):,} vectors in one request, at most {max_rows:,}")
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != dim:
            got = f"{len(r)} dimensions" if isinstance(r, list) else type(r).__name__
            raise ValueError(f"{name}[{i}] has {got}, the store's vectors have {dim}")
    try:
        x = np.array(rows, dtype=np.float64)  # JSON numbers are doubles: checked before the cast
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"{name} must hold numbers only") from None
    fits = np.abs(x) <= _F32_MAX  # False for NaN, inf and past float32 (a cast would overflow to inf and warn)
    if not fits.all():  # one pass when all is well; the messages from here
        _check_rows(x, dim, name)
        raise ValueError(f"{name}[{int(np.flatnonzero(~fits.all(axis=1))[0])}] holds a value beyond the float32 "
                         "range")
    return x.astype(np.float32)


def vectors_from_b64(text, dim: int, *, max_rows: int, name: str = "vectors_b64") -> np.ndarray:
    """The compact JSON form: base64 (standard alphabet, padded) of little-endian float32, row
    after row -> ``(nq, dim)`` float32 (``nq`` from the length). 384 floats this way cost the event
    loop ~10 us (parse, decode, check), as a JSON list ~25 (parse, convert, check)."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a base64 string, got {type(text).__name__}")
    row = dim * 4
    most = 4 * -(-max_rows * row // 3)  # characters of max_rows vectors, padded
    if len(text) > most:
        raise ValueError(f"{name}: {len(text):,} characters, more than {max_rows:,} vectors of {dim} float32 "
                         f"({most:,})")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise ValueError(f"{name}: invalid base64") from None
    if not raw or len(raw) % row:
        raise ValueError(f"{name} holds {len(raw):,} bytes, not whole vectors of {dim} float32 ({row} bytes each)")
    return _check_rows(np.frombuffer(raw, dtype="<f4").reshape(-1, dim), dim, name)


def vectors_to_b64(x) -> str:
    """``(nq, dim)`` (or one vector) -> the ``vectors_b64`` string."""
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def parse_shape(header: str | None, name: str = "X-Shape") -> tuple[int, int]:
    """``"nq,dim"`` -> ``(nq, dim)``."""
    if not header:
        raise ValueError(f"a binary body needs the {name} header (\"rows,columns\")")
    try:
        a, b = (int(p) for p in header.split(","))
    except ValueError:
        raise ValueError(f"{name} must be two ints \"rows,columns\", got {header!r}") from None
    if a <= 0 or b <= 0:
        raise ValueError(f"{name} must be positive, got {header!r}")
    return a, b


def vectors_from_bytes(body: bytes, shape: str | None, dtype: str | None, dim: int, *, max_rows: int,
                       name: str = "vectors") -> np.ndarray:
    """A raw little-endian float32 body -> ``(nq, dim)`` float32 (a view of ``body``, read-only)."""
    if dtype not in (None, "float32", "<f4"):
        raise ValueError(f"{DTYPE_HEADER} must be float32 (little-endian), got {dtype!r}")
    nq, d = parse_shape(shape)
    if d != dim:
        raise ValueError(f"{name} have {d} dimensions, the store's are {dim}")
    if nq > max_rows:
        raise ValueError(f"{name}: {nq:,} vectors in one request, at most {max_rows:,}")
    if len(body) != nq * d * 4:
        raise ValueError(f"the body holds {len(body):,} bytes, {nq} x {d} float32 are {nq * d * 4:,}")
    x = np.frombuffer(body, dtype="<f4").reshape(nq, d)
    return _check_rows(x, dim, name)


def vectors_to_bytes(x) -> tuple[bytes, str]:
    """``(nq, dim)`` -> (little-endian float32 bytes, the ``X-Shape`` value)."""
    a = np.ascontiguousarray(x, dtype="<f4")
    if a.ndim == 1:
        a = a[None, :]
    return a.tobytes(), f"{a.shape[0]},{a.shape[1]}"


def results_to_bytes(ids: np.ndarray, scores: np.ndarray) -> tuple[bytes, str]:
    ids = np.ascontiguousarray(ids, dtype="<i8")
    scores = np.ascontiguousarray(scores, dtype="<f4")
    return ids.tobytes() + scores.tobytes(), f"{ids.shape[0]},{ids.shape[1]}"


def results_from_bytes(body: bytes, shape: str | None) -> tuple[np.ndarray, np.ndarray]:
    nq, k = parse_shape(shape)
    if len(body) != nq * k * 12:
        raise ValueError(f"a binary answer of shape {nq}x{k} holds {nq * k * 12} bytes, got {len(body)}")
    ids = np.frombuffer(body, dtype="<i8", count=nq * k).reshape(nq, k).astype(np.int64)
    scores = np.frombuffer(body, dtype="<f4", offset=nq * k * 8).reshape(nq, k).astype(np.float32)
    return ids, scores


def content_to_json(c):
    """A content (str, bytes or None) -> JSON (bytes as ``{"base64": ...}``)."""
    if isinstance(c, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(c)).decode("ascii")}
    return c


def content_from_json(v, name: str = "contents"):
    """The inverse of :func:`content_to_json`."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, dict) and set(v) == {"base64"} and isinstance(v["base64"], str):
        try:
            return base64.b64decode(v["base64"], validate=True)
        except ValueError:
            raise ValueError(f"{name}: invalid base64") from None
    raise TypeError(f"{name} must be a string, null or {{\"base64\": ...}}, got {type(v).__name__}")
